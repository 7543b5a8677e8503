//! Server push: events from the server to one connection, on one long-lived unidirectional
//! stream per connection.
//!
//! **Ordering.** The server opens at most one push stream per connection, lazily, on the first
//! event, and writes events in the order they entered the connection's queue. QUIC delivers a
//! stream's bytes in order, so a client sees a connection's events in exactly the order the
//! server queued them. There is no ordering across connections.
//!
//! **Bounded memory.** Each connection has a bounded queue (`ServerConfig::push_queue_capacity`
//! events, each at most `max_payload` bytes). Beyond that, QUIC flow control holds back the writer
//! of a client that does not read. [`PushSender::try_send`] fails with [`PushError::Full`] rather
//! than growing the queue, and [`PushSender::send`] waits for room.
//!
//! **Unreliable channels.** Events of a channel marked `(qrpc.unreliable)` (or sent with
//! [`PushSender::send_unreliable`]) go in QUIC DATAGRAM frames (RFC 9221), one event per
//! datagram, encoded exactly like a push-stream frame. They are not retransmitted, may arrive
//! out of order with respect to every other event, and may be dropped (by the network, by
//! quinn's bounded datagram send buffer, or by a client whose push buffer is full). An event
//! larger than [`ServerConfig::max_datagram_event`](crate::ServerConfig::max_datagram_event) or
//! the path's datagram limit, or for a client that does not accept datagrams, goes on the push
//! stream instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::event::PushEvent;
use crate::frame::PushFrame;
use crate::identity::PeerIdentity;
use crate::stream::{Conn, DatagramSent, SendHalf};

/// Why a push event was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The connection's push queue is full: its client is not reading fast enough.
    #[error("push queue full")]
    Full,
    /// The connection is gone.
    #[error("connection closed")]
    Closed,
    /// The event is larger than the push payload limit.
    #[error("push payload of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Payload length.
        len: usize,
        /// Limit.
        max: u32,
    },
}

/// Sends push events to one connection. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PushSender {
    tx: mpsc::Sender<PushFrame>,
    max_payload: u32,
    connection_id: u64,
    datagrams: Option<Datagrams>,
}

/// The connection an unreliable event is sent on, and the largest datagram event.
#[derive(Clone, Debug)]
struct Datagrams {
    conn: crate::io::QuicSlot,
    max_event: usize,
}

/// How [`PushSender::send_unreliable`] sent an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum UnreliableDelivery {
    /// In a QUIC datagram.
    Datagram,
    /// On the push stream: the client does not accept datagrams, or the event is too large
    /// for one.
    Stream,
}

impl PushSender {
    pub(crate) fn new(
        capacity: usize,
        max_payload: u32,
        connection_id: u64,
    ) -> (Self, mpsc::Receiver<PushFrame>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (
            Self {
                tx,
                max_payload,
                connection_id,
                datagrams: None,
            },
            rx,
        )
    }

    /// Lets unreliable events go out as datagrams on `conn`, up to `max_event` bytes each.
    pub(crate) fn with_datagrams(mut self, conn: crate::io::QuicSlot, max_event: usize) -> Self {
        self.datagrams = Some(Datagrams { conn, max_event });
        self
    }

    /// Sends an event of an unreliable channel without waiting: in a QUIC datagram when the
    /// client accepts datagrams and the encoded event fits, otherwise queued on the push stream
    /// as [`try_send`](Self::try_send) does.
    pub fn send_unreliable(
        &self,
        event_type: u16,
        payload: Bytes,
    ) -> Result<UnreliableDelivery, PushError> {
        let frame = self.frame(event_type, payload)?;
        if let Some(datagrams) = &self.datagrams {
            let encoded_len = crate::frame::PUSH_HEADER_LEN + frame.payload.len();
            let sent = datagrams.conn.with(|conn| {
                let limit = conn
                    .max_datagram_size()
                    .map(|path| path.min(datagrams.max_event));
                if limit.is_none_or(|limit| encoded_len > limit) {
                    return None;
                }
                match conn.send_datagram(frame.to_bytes()) {
                    DatagramSent::Sent => Some(Ok(UnreliableDelivery::Datagram)),
                    DatagramSent::Closed => Some(Err(PushError::Closed)),
                    // Unsupported, disabled or too large after all: use the stream.
                    DatagramSent::Refused(err) => {
                        tracing::debug!(%err, "datagram refused; using the push stream");
                        None
                    }
                }
            });
            // Otherwise the stream takes it; once the connection ended, the push queue answers
            // `Closed`.
            if let Some(Some(result)) = sent {
                return result;
            }
        }
        self.enqueue(frame)?;
        Ok(UnreliableDelivery::Stream)
    }

    fn frame(&self, event_type: u16, payload: Bytes) -> Result<PushFrame, PushError> {
        if payload.len() > self.max_payload as usize {
            return Err(PushError::TooLarge {
                len: payload.len(),
                max: self.max_payload,
            });
        }
        Ok(PushFrame {
            event_type,
            payload,
        })
    }

    /// Queues an event without waiting; fails with [`PushError::Full`] when the queue is full.
    pub fn try_send(&self, event_type: u16, payload: Bytes) -> Result<(), PushError> {
        let frame = self.frame(event_type, payload)?;
        self.enqueue(frame)
    }

    fn enqueue(&self, frame: PushFrame) -> Result<(), PushError> {
        self.tx.try_send(frame).map_err(|e| {
            crate::metrics::push_dropped();
            match e {
                mpsc::error::TrySendError::Full(_) => PushError::Full,
                mpsc::error::TrySendError::Closed(_) => PushError::Closed,
            }
        })
    }

    /// Queues an event, waiting for room in the queue.
    pub async fn send(&self, event_type: u16, payload: Bytes) -> Result<(), PushError> {
        let frame = self.frame(event_type, payload)?;
        self.tx.send(frame).await.map_err(|_| PushError::Closed)
    }

    /// Whether the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// The id of the connection this sender reaches.
    pub fn connection_id(&self) -> u64 {
        self.connection_id
    }
}

/// The outcome of pushing to every connection of an identity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushDelivery {
    /// Connections whose queue took the event.
    pub queued: usize,
    /// Connections whose queue was full or that were closing.
    pub dropped: usize,
}

type Registered = HashMap<PeerIdentity, Vec<PushSender>>;

/// Reaches connections by the identity bound to them. Cheap to clone; one per server.
#[derive(Clone, Debug, Default)]
pub struct PushRegistry {
    inner: Arc<Mutex<Registered>>,
}

impl PushRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Registered> {
        // The map stays consistent even if a holder panicked: every update is one insert/remove.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn register(&self, identity: PeerIdentity, connection_id: u64, sender: PushSender) {
        let mut map = self.lock();
        let senders = map.entry(identity).or_default();
        senders.retain(|s| s.connection_id != connection_id && !s.is_closed());
        senders.push(sender);
    }

    pub(crate) fn unregister(&self, identity: &PeerIdentity, connection_id: u64) {
        let mut map = self.lock();
        if let Some(senders) = map.get_mut(identity) {
            senders.retain(|s| s.connection_id != connection_id);
            if senders.is_empty() {
                map.remove(identity);
            }
        }
    }

    /// The ids of the connections registered for `identity`, closed or not.
    #[cfg(test)]
    pub(crate) fn registered(&self, identity: &PeerIdentity) -> Vec<u64> {
        self.lock()
            .get(identity)
            .map(|s| s.iter().map(|s| s.connection_id).collect())
            .unwrap_or_default()
    }

    /// The push senders of every live connection bound to `identity`.
    pub fn connections(&self, identity: &PeerIdentity) -> Vec<PushSender> {
        self.lock()
            .get(identity)
            .map(|s| s.iter().filter(|s| !s.is_closed()).cloned().collect())
            .unwrap_or_default()
    }

    /// Whether at least one live connection is bound to `identity`.
    pub fn is_online(&self, identity: &PeerIdentity) -> bool {
        !self.connections(identity).is_empty()
    }

    /// Queues an event on every connection bound to `identity`, never waiting.
    pub fn try_send_to(
        &self,
        identity: &PeerIdentity,
        event_type: u16,
        payload: Bytes,
    ) -> PushDelivery {
        let mut delivery = PushDelivery::default();
        for sender in self.connections(identity) {
            match sender.try_send(event_type, payload.clone()) {
                Ok(()) => delivery.queued += 1,
                Err(_) => delivery.dropped += 1,
            }
        }
        delivery
    }

    /// The number of identities with at least one registered connection.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no identity is registered.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

/// Drains a connection's push queue onto its push stream until the queue closes or the
/// connection ends.
pub(crate) async fn run_writer(conn: Conn, mut rx: mpsc::Receiver<PushFrame>) {
    let mut send: Option<SendHalf> = None;
    loop {
        let frame = tokio::select! {
            frame = rx.recv() => frame,
            _ = conn.closed() => None,
        };
        let Some(frame) = frame else { break };
        let stream = match &mut send {
            Some(stream) => stream,
            None => match conn.open_push().await {
                Ok(stream) => send.insert(stream),
                Err(err) => {
                    tracing::debug!(%err, "could not open push stream");
                    return;
                }
            },
        };
        if let Err(err) = crate::io::write_push(stream, &frame).await {
            tracing::debug!(%err, "push stream closed");
            return;
        }
    }
    if let Some(mut stream) = send {
        stream.finish();
    }
}

/// Sends typed events to one connection.
#[derive(Debug)]
pub struct TypedPushSender<E> {
    inner: PushSender,
    _marker: std::marker::PhantomData<fn(E)>,
}

impl<E> Clone for TypedPushSender<E> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            _marker: std::marker::PhantomData,
        }
    }
}

impl<E: PushEvent> TypedPushSender<E> {
    /// A typed view of a connection's sender.
    pub fn new(inner: PushSender) -> Self {
        Self {
            inner,
            _marker: std::marker::PhantomData,
        }
    }

    /// Queues an event without waiting (an unreliable channel's event goes as a datagram
    /// where possible).
    pub fn try_send(&self, event: &E) -> Result<(), PushError> {
        if E::UNRELIABLE {
            return self
                .inner
                .send_unreliable(event.event_type(), event.encode_payload())
                .map(drop);
        }
        self.inner
            .try_send(event.event_type(), event.encode_payload())
    }

    /// Queues an event, waiting for room (an unreliable channel's event never waits: it goes
    /// as a datagram where possible).
    pub async fn send(&self, event: &E) -> Result<(), PushError> {
        if E::UNRELIABLE {
            return self.try_send(event);
        }
        self.inner
            .send(event.event_type(), event.encode_payload())
            .await
    }
}

impl PushRegistry {
    /// Queues a typed event on every connection bound to `identity`, never waiting (an
    /// unreliable channel's event goes as a datagram where possible).
    pub fn try_send_event<E: PushEvent>(&self, identity: &PeerIdentity, event: &E) -> PushDelivery {
        if !E::UNRELIABLE {
            return self.try_send_to(identity, event.event_type(), event.encode_payload());
        }
        let payload = event.encode_payload();
        let mut delivery = PushDelivery::default();
        for sender in self.connections(identity) {
            match sender.send_unreliable(event.event_type(), payload.clone()) {
                Ok(_) => delivery.queued += 1,
                Err(_) => delivery.dropped += 1,
            }
        }
        delivery
    }
}
