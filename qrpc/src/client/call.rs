//! One call on the client: the [`CallService`] service beneath client layers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use quinn::SendStream;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::config::{ClientConfig, ClientError};
use super::connection::{ConnectionState, EarlyHandle, EarlyStreams, Link, Live};
use super::push::PushEvents;
use crate::body::MessageStream;
use crate::call_state::{ClientCallState, ResponseEvent};
use crate::extension::{CallExtension, EXTENSION_METHOD_ID, MAX_EXTENSION_LEN};
use crate::frame::RequestFrame;
use crate::io::write_requests;
use crate::metadata::{Metadata, MetadataSlot};
use crate::method::CallKind;
use crate::protocol::reset;
use crate::status::Status;
use crate::tls::ClientTls;

/// What the client sends on a call.
pub enum OutgoingBody {
    /// One message in the opening frame (unary and server-streaming calls).
    Single(Bytes),
    /// An empty opening frame, then one frame per message (client-streaming and bidi calls).
    Stream(BoxStream<'static, Bytes>),
}

impl std::fmt::Debug for OutgoingBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Single(b) => f.debug_tuple("Single").field(&b.len()).finish(),
            Self::Stream(_) => f.debug_tuple("Stream").finish(),
        }
    }
}

/// A call as client layers see it: the method, its kind, the outgoing body and its options.
#[derive(Debug)]
pub struct CallRequest {
    /// Method to call.
    pub method_id: u16,
    /// The call kind.
    pub kind: CallKind,
    /// What to send.
    pub body: OutgoingBody,
    /// Whether the method is idempotent: a unary or server-streaming call marked so may be
    /// sent as 0-RTT data on a resumed connection, and is sent again if the server rejects
    /// that data. Never set it for a method with side effects: 0-RTT data can be replayed.
    pub idempotent: bool,
    /// Metadata sent to the server with the call. A server that does not speak the call
    /// extension (`docs/wire-protocol.md` §11) never sees it: the call goes out without it.
    pub metadata: Metadata,
    /// How long the caller waits for the call. The client ends the call with
    /// `DeadlineExceeded` when it passes, and a server that speaks the call extension learns
    /// the time left and cancels the handler then too.
    pub timeout: Option<Duration>,
    /// Filled with the server's response metadata, if it sends any; made only for a call
    /// that carries the extension (no other call can be answered metadata).
    response_metadata: Option<MetadataSlot>,
    /// The caller reads the response metadata: the call carries an extension frame (the server
    /// answers metadata only to calls that do) even without a deadline or metadata of its own.
    wants_response_metadata: bool,
}

impl CallRequest {
    fn new(method_id: u16, kind: CallKind, body: OutgoingBody) -> Self {
        Self {
            method_id,
            kind,
            body,
            idempotent: false,
            metadata: Metadata::new(),
            timeout: None,
            response_metadata: None,
            wants_response_metadata: false,
        }
    }

    /// A unary call.
    pub fn unary(method_id: u16, request: Bytes) -> Self {
        Self::new(method_id, CallKind::Unary, OutgoingBody::Single(request))
    }

    /// A server-streaming call.
    pub fn server_streaming(method_id: u16, request: Bytes) -> Self {
        Self::new(
            method_id,
            CallKind::ServerStreaming,
            OutgoingBody::Single(request),
        )
    }

    /// A client-streaming call.
    pub fn client_streaming(method_id: u16, requests: BoxStream<'static, Bytes>) -> Self {
        Self::new(
            method_id,
            CallKind::ClientStreaming,
            OutgoingBody::Stream(requests),
        )
    }

    /// A bidi-streaming call.
    pub fn bidi(method_id: u16, requests: BoxStream<'static, Bytes>) -> Self {
        Self::new(method_id, CallKind::Bidi, OutgoingBody::Stream(requests))
    }

    /// Marks the call idempotent or not (see [`CallRequest::idempotent`]).
    pub fn with_idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }

    /// Sets the metadata sent with the call (see [`CallRequest::metadata`]).
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the call's timeout (see [`CallRequest::timeout`]).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.timeout = timeout;
        self
    }

    /// Where the response metadata will be, for a call that can be answered any (one that
    /// carries the extension): ask once the call's options are set.
    pub(crate) fn response_metadata(&mut self) -> Option<MetadataSlot> {
        if !self.has_extension() {
            return None;
        }
        Some(Arc::clone(
            self.response_metadata
                .get_or_insert_with(MetadataSlot::default),
        ))
    }

    /// The caller reads the response metadata (see `wants_response_metadata`).
    pub(crate) fn reading_response_metadata(mut self) -> Self {
        self.wants_response_metadata = true;
        self
    }

    /// Whether the call needs the extension frame.
    fn has_extension(&self) -> bool {
        self.timeout.is_some() || !self.metadata.is_empty() || self.wants_response_metadata
    }

    /// A copy to send again (only single-message bodies can be copied).
    fn copy_single(&self, payload: &Bytes) -> Self {
        Self {
            method_id: self.method_id,
            kind: self.kind,
            body: OutgoingBody::Single(payload.clone()),
            idempotent: self.idempotent,
            metadata: self.metadata.clone(),
            timeout: self.timeout,
            response_metadata: self.response_metadata.clone(),
            wants_response_metadata: self.wants_response_metadata,
        }
    }
}

/// The raw call service: opens one stream per call on the shared connection. Cheap to clone.
#[derive(Clone)]
pub struct CallService {
    link: Arc<Link>,
    next_request_id: Arc<AtomicU32>,
}

impl std::fmt::Debug for CallService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallService")
            .field("state", &*self.link.state().borrow())
            .finish()
    }
}

impl CallService {
    pub(super) async fn connect(
        addr: SocketAddr,
        tls: &ClientTls,
        config: ClientConfig,
    ) -> Result<(Self, PushEvents), ClientError> {
        let (link, push) = Link::connect(addr, tls, config).await?;
        Ok((
            Self {
                link,
                next_request_id: Arc::new(AtomicU32::new(1)),
            },
            push,
        ))
    }

    pub(super) fn state(&self) -> tokio::sync::watch::Receiver<ConnectionState> {
        self.link.state()
    }

    pub(super) fn disconnects(
        &self,
    ) -> tokio::sync::watch::Receiver<Option<super::connection::Disconnect>> {
        self.link.disconnects()
    }

    pub(super) fn rebind(&self, local: SocketAddr) -> std::io::Result<()> {
        self.link.endpoint.rebind(std::net::UdpSocket::bind(local)?)
    }

    pub(super) fn close(&self) {
        self.link.close();
    }

    /// The local address of the client's UDP socket.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.link.endpoint.local_addr()
    }

    async fn call(self, request: CallRequest) -> Result<MessageStream, Status> {
        // A deadline too far away to represent is no deadline.
        let deadline = request.timeout.and_then(|t| Instant::now().checked_add(t));
        match deadline {
            None => self.call_until(request, None).await,
            Some(deadline) => {
                tokio::time::timeout_at(deadline, self.call_until(request, Some(deadline)))
                    .await
                    .unwrap_or_else(|_| Err(deadline_exceeded()))
            }
        }
    }

    async fn call_until(
        self,
        mut request: CallRequest,
        deadline: Option<Instant>,
    ) -> Result<MessageStream, Status> {
        // A resumed connection whose handshake fails is replaced by the supervisor like any
        // lost connection; the call then waits for the next one, as a call does when it finds
        // no connection, within the same connect timeout.
        let give_up = tokio::time::Instant::now() + self.link.config.connect_timeout;
        loop {
            let live = self.link.connection().await?;
            let retry = |err: Status| {
                if tokio::time::Instant::now() < give_up {
                    tracing::debug!(%err, "resumed handshake failed; waiting for a new connection");
                    Ok(())
                } else {
                    Err(err)
                }
            };
            let replay = match &request.body {
                OutgoingBody::Single(payload)
                    if request.idempotent && live.is_early() && !request.has_extension() =>
                {
                    request.copy_single(payload)
                }
                _ => {
                    // Not replay-safe: wait until the handshake completes, so nothing of this
                    // call travels as 0-RTT data.
                    match live.handshake_done().await {
                        Ok(_) => {
                            return self
                                .open(&live, request, deadline)
                                .await
                                .map(|(stream, _)| stream);
                        }
                        Err(err) => {
                            retry(err)?;
                            continue;
                        }
                    }
                }
            };
            let sent = self.open(&live, request, deadline).await;
            // A stream opened once the handshake had completed (it may complete while the
            // call is being opened) is not 0-RTT data and reaches the server whatever became
            // of the early data; only a stream sent as 0-RTT data is lost with it.
            let sent_early = sent.as_ref().map_or(true, |(_, early)| *early);
            match live.handshake_done().await {
                Ok(accepted) if accepted || !sent_early => return sent.map(|(stream, _)| stream),
                Ok(_) => {
                    // The server rejected the 0-RTT data: the call never reached its
                    // application.
                    drop(sent);
                    tracing::debug!(
                        method_id = replay.method_id,
                        "0-RTT rejected; sending again"
                    );
                    return self
                        .open(&live, replay, deadline)
                        .await
                        .map(|(stream, _)| stream);
                }
                Err(err) => {
                    // Idempotent, so sending it again on the next connection is safe even if
                    // the early copy did reach the server.
                    drop(sent);
                    retry(err)?;
                    request = replay;
                }
            }
        }
    }

    /// Opens the call's stream and sends the request; also says whether the stream went out
    /// as 0-RTT data.
    async fn open(
        &self,
        live: &Live,
        request: CallRequest,
        deadline: Option<Instant>,
    ) -> Result<(MessageStream, bool), Status> {
        let speaks = request.has_extension() && self.speaks_extension(live).await?;
        if request.has_extension() && !speaks {
            tracing::debug!(
                method_id = request.method_id,
                "the server does not speak the call extension: deadline kept locally, metadata not sent"
            );
        }
        // A stream opened once the handshake was over is never 0-RTT data: looked at before
        // opening (a cheap watch), so quinn, whose answer takes its connection lock, is asked
        // only while the handshake may still be running.
        let maybe_early = live.is_early();
        let (send, recv) = live.conn.open_bi().await.map_err(connection_lost)?;
        let extension = if speaks {
            // The server learns the time left when the call leaves, not the time asked.
            let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            Some(
                CallExtension::new(timeout, request.metadata.clone())
                    .encode()
                    .map_err(|e| Status::invalid_argument(e.to_string()))?,
            )
        } else {
            None
        };
        let early = maybe_early && recv.is_0rtt();
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let mut send = ResetOnDrop::new(send, live.early_streams(early));
        let mut state = ClientCallState::new(
            request_id,
            !request.kind.server_streams(),
            self.link.config.max_payload,
        );
        if extension.is_some() {
            state = state.accept_extension();
        }
        let mut reader = ResponseReader {
            recv: Some(recv),
            state,
            _sender: None,
            early_streams: live.early_streams(early),
            deadline,
            response_metadata: request.response_metadata.clone(),
        };
        let extension = extension.map(|payload| RequestFrame {
            method_id: EXTENSION_METHOD_ID,
            request_id,
            payload,
        });
        match request.body {
            OutgoingBody::Single(payload) => {
                let opening = RequestFrame {
                    method_id: request.method_id,
                    request_id,
                    payload,
                };
                match send.write_opening(extension, opening).await {
                    Ok(()) => send.finish(),
                    // The server stopped reading (for example an oversize payload): its status
                    // is on the response stream.
                    Err(quinn::WriteError::Stopped(_)) => send.disarm(),
                    Err(err) => return Err(write_failed(err)),
                }
                Ok((reader.into_stream(), early))
            }
            OutgoingBody::Stream(messages) => {
                let opening = RequestFrame {
                    method_id: request.method_id,
                    request_id,
                    payload: Bytes::new(),
                };
                match send.write_opening(extension, opening).await {
                    Ok(()) => {}
                    Err(quinn::WriteError::Stopped(_)) => {
                        send.disarm();
                        return Ok((reader.into_stream(), early));
                    }
                    Err(err) => return Err(write_failed(err)),
                }
                let (cancel_tx, cancel_rx) = oneshot::channel();
                tokio::spawn(send_messages(
                    send,
                    messages,
                    request.method_id,
                    request_id,
                    cancel_rx,
                ));
                reader._sender = Some(cancel_tx);
                Ok((reader.into_stream(), early))
            }
        }
    }
}

impl CallService {
    /// Whether the server speaks the call extension; the first call that needs to know asks
    /// it once for the connection (a probe: an extension frame alone on a stream).
    async fn speaks_extension(&self, live: &Live) -> Result<bool, Status> {
        let probe = {
            let mut slot = live.extension.lock().unwrap_or_else(|e| e.into_inner());
            slot.get_or_insert_with(|| {
                probe(
                    live.clone(),
                    Arc::clone(&self.next_request_id),
                    self.link.config.connect_timeout,
                )
                .boxed()
                .shared()
            })
            .clone()
        };
        probe.await
    }
}

/// Asks the server once whether it speaks the call extension. A server that does not answer
/// within `within` is taken not to (and remembered so, for the connection): calls then go as
/// plain frames instead of each waiting for it.
async fn probe(live: Live, request_ids: Arc<AtomicU32>, within: Duration) -> Result<bool, Status> {
    match tokio::time::timeout(within, ask_extension(&live, &request_ids)).await {
        Ok(answer) => answer,
        Err(_) => {
            tracing::debug!("no answer to the call-extension probe; calls go without it");
            Ok(false)
        }
    }
}

async fn ask_extension(live: &Live, request_ids: &AtomicU32) -> Result<bool, Status> {
    // Never in 0-RTT data: the answer must come from this connection's server.
    live.handshake_done().await?;
    let (send, recv) = live.conn.open_bi().await.map_err(connection_lost)?;
    let request_id = request_ids.fetch_add(1, Ordering::Relaxed);
    let mut send = ResetOnDrop::new(send, None);
    let frame = RequestFrame {
        method_id: EXTENSION_METHOD_ID,
        request_id,
        payload: CallExtension::hello(),
    };
    send.write(std::slice::from_ref(&frame))
        .await
        .map_err(write_failed)?;
    send.finish();
    let max_answer = u32::try_from(MAX_EXTENSION_LEN).unwrap_or(u32::MAX);
    let mut reader = ResponseReader {
        recv: Some(recv),
        state: ClientCallState::new(request_id, true, max_answer),
        _sender: None,
        early_streams: None,
        deadline: None,
        response_metadata: None,
    };
    let speaks = match reader.next().await {
        Some(Ok(answer)) => CallExtension::decode(&answer).is_ok(),
        // The connection went away: the next connection is asked again.
        Some(Err(status)) if status.code() == crate::status::Code::Unavailable => {
            return Err(status);
        }
        // Any other answer (Unimplemented, Unauthenticated, ...) is a server without it.
        Some(Err(_)) | None => false,
    };
    tracing::debug!(speaks, "call extension probed");
    Ok(speaks)
}

fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("the call's deadline passed")
}

impl tower::Service<CallRequest> for CallService {
    type Response = MessageStream;
    type Error = Status;
    type Future = BoxFuture<'static, Result<MessageStream, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: CallRequest) -> Self::Future {
        self.clone().call(request).boxed()
    }
}

/// A send stream that is reset with `CANCELLED` if dropped before it was finished, so that a
/// dropped call never looks like a complete request to the server. A stream sent as 0-RTT data
/// hands its handle to the connection's [`EarlyStreams`] instead of dropping it.
struct ResetOnDrop {
    /// `None` only while being dropped.
    send: Option<SendStream>,
    armed: bool,
    early_streams: Option<Arc<EarlyStreams>>,
}

impl ResetOnDrop {
    fn new(send: SendStream, early_streams: Option<Arc<EarlyStreams>>) -> Self {
        Self {
            send: Some(send),
            armed: true,
            early_streams,
        }
    }

    async fn write(&mut self, frames: &[RequestFrame]) -> Result<(), quinn::WriteError> {
        match self.send.as_mut() {
            Some(send) => write_requests(send, frames).await,
            None => Err(quinn::WriteError::ClosedStream),
        }
    }

    /// Writes a call's opening frame, after its extension frame if it has one, in one write
    /// (the two leave in the same packet when they fit).
    async fn write_opening(
        &mut self,
        extension: Option<RequestFrame>,
        opening: RequestFrame,
    ) -> Result<(), quinn::WriteError> {
        match extension {
            Some(extension) => self.write(&[extension, opening]).await,
            None => self.write(std::slice::from_ref(&opening)).await,
        }
    }

    fn finish(&mut self) {
        self.armed = false;
        if let Some(send) = self.send.as_mut() {
            let _ = send.finish();
        }
    }

    fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        let Some(mut send) = self.send.take() else {
            return;
        };
        if self.armed {
            let _ = send.reset(reset::CANCELLED);
        }
        if let Some(early) = &self.early_streams {
            early.release(EarlyHandle::Send(send));
        }
    }
}

async fn send_messages(
    mut send: ResetOnDrop,
    mut messages: BoxStream<'static, Bytes>,
    method_id: u16,
    request_id: u32,
    mut cancel: oneshot::Receiver<()>,
) {
    loop {
        let next = tokio::select! {
            next = messages.next() => next,
            _ = &mut cancel => return, // dropping `send` resets the stream
        };
        let Some(payload) = next else {
            send.finish();
            return;
        };
        let frame = RequestFrame {
            method_id,
            request_id,
            payload,
        };
        let write = tokio::select! {
            write = send.write(std::slice::from_ref(&frame)) => write,
            _ = &mut cancel => return,
        };
        if write.is_err() {
            // The server stopped reading or the connection is gone; the response says why.
            send.disarm();
            return;
        }
    }
}

/// Reads a call's response stream through the call rules ([`ClientCallState`]). Dropped before
/// the call ended, it stops the stream with `CANCELLED`, which makes the server drop the handler.
struct ResponseReader {
    /// `None` only while being dropped.
    recv: Option<quinn::RecvStream>,
    state: ClientCallState,
    /// Dropping this cancels the task that sends a streamed request.
    _sender: Option<oneshot::Sender<()>>,
    /// Set when the stream was sent as 0-RTT data: where its handle goes (see
    /// [`EarlyStreams`]).
    early_streams: Option<Arc<EarlyStreams>>,
    /// When the call's deadline passes: the stream then ends with `DeadlineExceeded`.
    deadline: Option<Instant>,
    /// Where the server's response metadata goes.
    response_metadata: Option<MetadataSlot>,
}

impl ResponseReader {
    async fn next(&mut self) -> Option<Result<Bytes, Status>> {
        loop {
            match self.state.poll() {
                Some(ResponseEvent::Extension(payload)) => match CallExtension::decode(&payload) {
                    Ok(extension) => {
                        if let Some(slot) = &self.response_metadata {
                            *slot.lock().unwrap_or_else(|e| e.into_inner()) =
                                Some(extension.metadata);
                        }
                        continue;
                    }
                    Err(err) => {
                        self.end_early();
                        return Some(Err(Status::internal(format!(
                            "malformed response extension: {err}"
                        ))));
                    }
                },
                Some(ResponseEvent::Message(payload)) => {
                    if !self.state.wants_input() {
                        // The single response is in: take the stream's end if it came with it,
                        // so the stream is finished rather than stopped (no STOP_SENDING).
                        if let Some(recv) = self.recv.as_mut() {
                            let _ = crate::io::read_input(recv).now_or_never();
                        }
                    }
                    return Some(Ok(payload));
                }
                Some(ResponseEvent::Failed(status)) => return Some(Err(status)),
                Some(ResponseEvent::End) => return None,
                None if self.state.is_done() => return None,
                None => {}
            }
            let recv = self.recv.as_mut()?;
            let input = match self.deadline {
                None => crate::io::read_input(recv).await,
                Some(deadline) => {
                    match tokio::time::timeout_at(deadline, crate::io::read_input(recv)).await {
                        Ok(input) => input,
                        Err(_) => {
                            self.end_early();
                            return Some(Err(deadline_exceeded()));
                        }
                    }
                }
            };
            self.state.handle(input);
        }
    }

    /// Ends the call from this side: stops the response stream (the server drops the handler)
    /// and gives no more events.
    fn end_early(&mut self) {
        if let Some(recv) = self.recv.as_mut() {
            let _ = recv.stop(reset::CANCELLED);
        }
        self.state.abandon();
    }

    fn into_stream(self) -> MessageStream {
        Box::pin(futures::stream::unfold(self, |mut reader| async move {
            let item = reader.next().await?;
            Some((item, reader))
        }))
    }
}

impl Drop for ResponseReader {
    fn drop(&mut self) {
        let Some(mut recv) = self.recv.take() else {
            return;
        };
        if self.state.wants_input() {
            let _ = recv.stop(reset::CANCELLED);
        }
        if let Some(early) = &self.early_streams {
            early.release(EarlyHandle::Recv(recv));
        }
    }
}

/// Takes the single response of a unary or client-streaming call.
pub(crate) async fn single_response(responses: &mut MessageStream) -> Result<Bytes, Status> {
    match responses.next().await {
        Some(result) => result,
        None => Err(Status::internal("server ended the call without a response")),
    }
}

fn connection_lost(err: quinn::ConnectionError) -> Status {
    Status::unavailable(format!("connection lost: {err}"))
}

fn write_failed(err: quinn::WriteError) -> Status {
    match err {
        quinn::WriteError::ConnectionLost(err) => connection_lost(err),
        other => Status::unavailable(format!("cannot send request: {other}")),
    }
}
