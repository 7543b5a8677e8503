//! A client's push events: as they arrived ([`PushEvents`], [`RawPush`]) and decoded
//! ([`TypedPushEvents`]).

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::event::PushEvent;
use crate::frame::PushFrame;
use crate::status::Status;

/// A client's push events, decoded. An event that does not decode yields an error and the
/// stream goes on.
#[derive(Debug)]
pub struct TypedPushEvents<E> {
    inner: PushEvents,
    _marker: std::marker::PhantomData<fn() -> E>,
}

impl<E: PushEvent> TypedPushEvents<E> {
    /// A typed view of a client's push events.
    pub fn new(inner: PushEvents) -> Self {
        Self {
            inner,
            _marker: std::marker::PhantomData,
        }
    }

    /// The next event; `None` once the client is closed for good.
    pub async fn recv(&mut self) -> Option<Result<E, crate::status::Status>> {
        Some(self.inner.recv().await?.decode())
    }
}

impl<E: PushEvent> futures::Stream for TypedPushEvents<E> {
    type Item = Result<E, crate::status::Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use futures::StreamExt;
        self.inner
            .poll_next_unpin(cx)
            .map(|push| push.map(RawPush::decode))
    }
}

/// One push event as it arrived: its event type and encoded payload. Decode it with the
/// generated event enum ([`RawPush::decode`]), or take [`PushEvents::typed`] for a stream of
/// decoded events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawPush {
    event_type: u16,
    payload: bytes::Bytes,
}

impl RawPush {
    /// The event type (an id from the push channel's `.proto`).
    pub fn event_type(&self) -> u16 {
        self.event_type
    }

    /// The encoded event.
    pub fn payload(&self) -> &bytes::Bytes {
        &self.payload
    }

    /// Decodes the event as `E` (a generated push channel's `Event`).
    pub fn decode<E: PushEvent>(self) -> Result<E, Status> {
        E::decode_payload(self.event_type, self.payload)
    }
}

impl RawPush {
    fn from_frame(frame: PushFrame) -> Self {
        Self {
            event_type: frame.event_type,
            payload: frame.payload,
        }
    }
}

/// The stream of push events a client receives. See [`Client::push_events`](super::Client::push_events).
#[derive(Debug)]
pub struct PushEvents {
    rx: mpsc::Receiver<PushFrame>,
}

impl PushEvents {
    pub(super) fn new(rx: mpsc::Receiver<PushFrame>) -> Self {
        Self { rx }
    }

    /// The next event; `None` once the client is closed for good.
    pub async fn recv(&mut self) -> Option<RawPush> {
        self.rx.recv().await.map(RawPush::from_frame)
    }

    /// The same events, decoded as `E` (a generated push channel's `Event`).
    pub fn typed<E: PushEvent>(self) -> TypedPushEvents<E> {
        TypedPushEvents::new(self)
    }
}

impl Stream for PushEvents {
    type Item = RawPush;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RawPush>> {
        self.rx
            .poll_recv(cx)
            .map(|frame| frame.map(RawPush::from_frame))
    }
}
