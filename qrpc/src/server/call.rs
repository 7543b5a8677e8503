//! One call on the server: read the opening frame, run the service, write the response frames.
//!
//! Every failure here ends this call only: a bad frame gets a status or a stream reset, a
//! panicking handler gets `Internal`, and a client that resets the stream makes the server drop
//! the handler future.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::shared::Shared;
use crate::body::{MessageStream, RequestBody, ResponseBody, ServerRequest, ServerResponse};
use crate::call_state::{Rejection, RequestEvent, ServerCallState};
use crate::context::{Peer, RequestContext};
use crate::extension::{CallExtension, EXTENSION_STATUS, ExtensionError};
use crate::frame::ResponseFrame;
use crate::io::write_response;
use crate::protocol::reset;
use crate::status::{Code, Status};
use crate::stream::{RecvHalf, SendHalf, WriteFailed};

/// How long a finished call waits for the client to acknowledge its last bytes, so that a
/// graceful shutdown does not cut responses short.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// A call's request stream and the state machine that applies the call rules to it.
pub(crate) struct Incoming {
    recv: RecvHalf,
    state: ServerCallState,
}

impl Incoming {
    fn new(recv: RecvHalf, max_payload: u32) -> Self {
        Self {
            recv,
            state: ServerCallState::new(max_payload),
        }
    }

    /// The next event of the request stream, reading from QUIC as the rules need.
    async fn next(&mut self) -> RequestEvent {
        loop {
            if let Some(event) = self.state.poll() {
                return event;
            }
            let input = self.recv.read_input().await;
            self.state.handle(input);
        }
    }

    /// Reads what is already buffered (the stream's FIN, usually) without waiting.
    fn take_end_if_ready(&mut self) {
        if let Some(input) = self.recv.read_input().now_or_never() {
            self.state.handle(input);
        }
    }

    fn stop(&mut self, code: quinn::VarInt) {
        self.recv.stop(code);
    }
}

pub(super) async fn serve_call<S>(
    mut send: SendHalf,
    recv: RecvHalf,
    connection: Peer,
    shared: Arc<Shared>,
    service: S,
) where
    S: Service<ServerRequest<RequestBody>, Response = ServerResponse<ResponseBody>>
        + Send
        + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send,
{
    let early = recv.is_0rtt();
    let mut incoming = Incoming::new(recv, shared.config.max_payload);
    let mut extension = None;
    let event = {
        let opening = async {
            loop {
                match incoming.next().await {
                    RequestEvent::Extension(payload) => extension = Some(payload),
                    other => return other,
                }
            }
        };
        let mut opening = std::pin::pin!(opening);
        // A request that arrived whole with its stream (the usual unary call) needs no timer.
        match opening.as_mut().now_or_never() {
            Some(event) => Ok(event),
            None => tokio::time::timeout(shared.config.header_timeout, opening).await,
        }
    };
    let first = match event {
        Err(_) => {
            if let Some(rejection) = incoming.state.header_timeout() {
                reject(&mut send, &mut incoming, rejection).await;
            }
            return;
        }
        Ok(RequestEvent::Open(frame)) => frame,
        Ok(RequestEvent::Probe { request_id }) => {
            answer_probe(&mut send, request_id, extension.as_deref()).await;
            return;
        }
        Ok(RequestEvent::Rejected(rejection)) => {
            reject(&mut send, &mut incoming, rejection).await;
            return;
        }
        Ok(
            RequestEvent::Cancelled
            | RequestEvent::End
            | RequestEvent::Message(_)
            | RequestEvent::Extension(_),
        ) => {
            // Reset by the client or connection lost: the client is no longer listening.
            send.reset(reset::CANCELLED);
            return;
        }
    };
    // The deadline counts from when the opening frame was read.
    let extension = match extension.as_deref().map(CallExtension::decode) {
        None => None,
        Some(Ok(extension)) => Some(extension),
        Some(Err(err)) => {
            let status = extension_refused(&err);
            let rejection = Rejection {
                answer: Some((first.request_id, status)),
                stop: Some(reset::PROTOCOL_ERROR),
                reset: None,
            };
            reject(&mut send, &mut incoming, rejection).await;
            return;
        }
    };

    let method_id = first.method_id;
    let request_id = first.request_id;
    // A method of another protocol than the connection's is as unknown as a missing one.
    let method = shared.routes.method_on(method_id, connection.alpn());
    if method.is_some_and(|m| !m.kind.client_streams()) {
        // The request is whole: take the stream's end if it came with it, so the stream is
        // finished rather than stopped (which would cost the client a STOP_SENDING frame).
        incoming.take_end_if_ready();
    }
    if early && !method.is_some_and(|m| m.idempotent) {
        // 0-RTT data can be replayed: run nothing from it but idempotent methods.
        tracing::debug!(
            method_id,
            request_id,
            "non-idempotent call in 0-RTT data refused"
        );
        incoming.stop(reset::TOO_EARLY);
        send.reset(reset::TOO_EARLY);
        return;
    }
    // Every log line of the handler and the layers is tied to its call.
    let span = tracing::debug_span!(
        "call",
        method = %method.map_or_else(|| format!("#{method_id}"), |m| m.to_string()),
        request_id,
        connection = connection.id(),
        peer = %connection.remote_address(),
        early_data = early,
        traceparent = tracing::field::Empty,
    );
    if let Some(parent) = extension
        .as_ref()
        .and_then(|e| e.metadata.get("traceparent"))
        .and_then(traceparent)
    {
        span.record("traceparent", tracing::field::display(parent));
    }
    let opened = Opened {
        frame: first,
        method,
        early,
        extension,
    };
    serve_opened(send, incoming, opened, connection, &shared, service)
        .instrument(span)
        .await;
}

/// A call whose opening frame arrived and may run.
struct Opened {
    frame: crate::frame::RequestFrame,
    method: Option<crate::method::MethodInfo>,
    /// It arrived in 0-RTT data.
    early: bool,
    /// The call's extension, if its stream began with one.
    extension: Option<CallExtension>,
}

/// The W3C `traceparent` in `value` (`version-traceid-parentid-flags`, lowercase hex, 55
/// characters), if it has that shape: only such a value, and only its 55 characters, reaches
/// the logs.
fn traceparent(value: &str) -> Option<&str> {
    let head = value.get(..55)?;
    let rest = &value[55..];
    let parts: Vec<&str> = head.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    let shaped = parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && !zero(parts[1])
        && hex(parts[2], 16)
        && !zero(parts[2])
        && hex(parts[3], 2)
        // Version 00 is exactly 55 characters; later versions may append `-...`.
        && (rest.is_empty() || (parts[0] != "00" && rest.starts_with('-')));
    shaped.then_some(head)
}

/// The status a call whose extension broke the rules ends with.
fn extension_refused(err: &ExtensionError) -> Status {
    match err {
        ExtensionError::TooLarge(_) | ExtensionError::TooManyEntries(_) => {
            Status::resource_exhausted(err.to_string())
        }
        _ => Status::invalid_argument(err.to_string()),
    }
}

/// Deadlines further away than this are no deadline: a handler that converts its deadline (to
/// a timestamp, say) never meets an instant centuries away.
const MAX_DEADLINE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Answers a probe: this server speaks the call extension.
async fn answer_probe(send: &mut SendHalf, request_id: u32, payload: Option<&[u8]>) {
    let answered = match payload.map(CallExtension::decode) {
        Some(Err(err)) => send_status(send, request_id, &extension_refused(&err)).await,
        _ => send_ok(send, request_id, CallExtension::hello()).await,
    };
    if answered.is_ok() {
        send.finish();
        let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
    }
}

/// Runs an opened call: the service, then its response frames.
async fn serve_opened<S>(
    mut send: SendHalf,
    incoming: Incoming,
    opened: Opened,
    connection: Peer,
    shared: &Shared,
    service: S,
) where
    S: Service<ServerRequest<RequestBody>, Response = ServerResponse<ResponseBody>>
        + Send
        + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send,
{
    let Opened {
        frame: first,
        method,
        early,
        extension,
    } = opened;
    let method_id = first.method_id;
    let request_id = first.request_id;
    let started = std::time::Instant::now();
    let finished = |code: Code| shared.metrics.finished(method_id, code, started.elapsed());
    let mut ctx = RequestContext::new(connection, method_id, method, request_id);
    ctx.set_early_data(early);
    let deadline = extension.as_ref().and_then(|e| {
        e.timeout
            .filter(|t| *t <= MAX_DEADLINE)
            .and_then(|t| tokio::time::Instant::now().checked_add(t))
    });
    // A client that sent an extension frame reads one back; others never see it.
    let response_metadata = extension.map(|e| ctx.set_call_extension(e.metadata, deadline));
    let expired = async move {
        match deadline {
            Some(deadline) => tokio::time::sleep_until(deadline).await,
            None => std::future::pending().await,
        }
    };
    let mut expired = std::pin::pin!(expired);
    let rest = request_messages(incoming);
    let request = ServerRequest::new(ctx, RequestBody::new(first.payload, rest));

    let call = AssertUnwindSafe(async move {
        let svc = service
            .ready_oneshot()
            .await
            .map_err(|e| Status::from_error(e.into()))?;
        let mut svc = svc;
        svc.call(request)
            .await
            .map_err(|e| Status::from_error(e.into()))
    })
    .catch_unwind();
    let stopped = send.stopped();
    let outcome = tokio::select! {
        // The handler first: one that is ready at once never makes the stream's state (and
        // quinn's connection lock) be asked whether the client went away.
        biased;
        result = call => result.unwrap_or_else(|_| Err(panicked())),
        _ = stopped => {
            // The client cancelled: dropping `call` drops the handler future.
            tracing::debug!(method_id, request_id, "call cancelled by client");
            finished(Code::Cancelled);
            return;
        }
        () = &mut expired => Err(deadline_passed()),
    };

    if let Some(metadata) = response_metadata {
        // Whatever the handler set before its response is sent with it.
        if send_metadata(&mut send, request_id, &metadata)
            .await
            .is_err()
        {
            finished(Code::Cancelled);
            return;
        }
    }
    let result = match outcome {
        Ok(response) => match response.into_inner() {
            ResponseBody::Unary(payload) => send_ok(&mut send, request_id, payload)
                .await
                .map(|()| Code::Ok),
            ResponseBody::Stream(stream) => {
                send_stream(&mut send, request_id, stream, expired).await
            }
        },
        Err(status) => send_status(&mut send, request_id, &status)
            .await
            .map(|()| status.code()),
    };
    let Ok(code) = result else {
        // The client stopped reading or the connection is gone; nothing more to say.
        finished(Code::Cancelled);
        return;
    };
    finished(code);
    send.finish();
    // Held until the client acknowledged the response, so a graceful shutdown does not cut it
    // short. No timer: acknowledgements are the transport's, and a peer that vanished ends
    // with its connection (idle timeout, or the shutdown grace).
    send.stopped().await;
}

fn deadline_passed() -> Status {
    tracing::debug!("the call's deadline passed; the handler is dropped");
    Status::deadline_exceeded("the call's deadline passed")
}

/// Sends the response extension frame, if the handler set any metadata.
async fn send_metadata(
    send: &mut SendHalf,
    request_id: u32,
    metadata: &crate::context::ResponseMetadata,
) -> Result<(), WriteFailed> {
    let metadata = metadata.take();
    if metadata.is_empty() {
        return Ok(());
    }
    let payload = match CallExtension::new(None, metadata).encode() {
        Ok(payload) => payload,
        Err(err) => {
            // The handler's metadata is over the limits: the call goes on without it.
            tracing::warn!(%err, "response metadata not sent");
            return Ok(());
        }
    };
    let frame = ResponseFrame {
        status: EXTENSION_STATUS,
        request_id,
        payload,
    };
    write_response(send, &frame).await
}

fn panicked() -> Status {
    tracing::error!("handler panicked; the call ends with Internal");
    Status::internal("handler panicked")
}

/// Ends a call whose request stream broke the rules, as the rules say: stop the request
/// stream, then reset the response stream or answer with a status.
async fn reject(send: &mut SendHalf, incoming: &mut Incoming, rejection: Rejection) {
    if let Some(code) = rejection.stop {
        incoming.stop(code);
    }
    if let Some(code) = rejection.reset {
        send.reset(code);
        return;
    }
    if let Some((request_id, status)) = rejection.answer {
        tracing::debug!(%status, request_id, "rejected malformed request");
        if send_status(send, request_id, &status).await.is_ok() {
            send.finish();
            let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
        }
    }
}

/// The request messages after the opening frame, as the rules deliver them.
fn request_messages(incoming: Incoming) -> MessageStream {
    Box::pin(futures::stream::unfold(
        Some(incoming),
        |state| async move {
            let mut incoming = state?;
            let item = match incoming.next().await {
                RequestEvent::Message(payload) => return Some((Ok(payload), Some(incoming))),
                RequestEvent::End => return None,
                RequestEvent::Cancelled => Status::cancelled("client reset the request stream"),
                RequestEvent::Rejected(rejection) => {
                    if let Some(code) = rejection.stop {
                        incoming.stop(code);
                    }
                    rejection.answer.map_or_else(
                        || Status::invalid_argument("malformed request stream"),
                        |(_, status)| status,
                    )
                }
                // The rules give one opening frame only, before any message.
                RequestEvent::Open(_) | RequestEvent::Extension(_) | RequestEvent::Probe { .. } => {
                    Status::internal("request stream opened twice")
                }
            };
            Some((Err(item), None))
        },
    ))
}

async fn send_ok(send: &mut SendHalf, request_id: u32, payload: Bytes) -> Result<(), WriteFailed> {
    let frame = ResponseFrame {
        status: Code::Ok.as_u8(),
        request_id,
        payload,
    };
    write_response(send, &frame).await
}

async fn send_status(
    send: &mut SendHalf,
    request_id: u32,
    status: &Status,
) -> Result<(), WriteFailed> {
    // A handler must not answer a failed call with OK; report such a status as Unknown.
    let code = match status.code() {
        Code::Ok => Code::Unknown,
        code => code,
    };
    let frame = ResponseFrame {
        status: code.as_u8(),
        request_id,
        payload: status.to_payload(),
    };
    write_response(send, &frame).await
}

/// Writes a response stream; returns the code the call ended with.
async fn send_stream(
    send: &mut SendHalf,
    request_id: u32,
    mut stream: MessageStream,
    mut expired: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<Code, WriteFailed> {
    // One watch for the whole stream where the transport gives one that owns its state.
    let mut watch = send.stopped_owned();
    loop {
        let next = {
            let stopped = async {
                match watch.as_mut() {
                    Some(watch) => watch.as_mut().await,
                    None => send.stopped().await,
                }
            };
            tokio::select! {
                next = AssertUnwindSafe(stream.next()).catch_unwind() => next,
                () = stopped => return Err(WriteFailed::stopped()),
                () = &mut expired => Ok(Some(Err(deadline_passed()))),
            }
        };
        match next {
            Ok(None) => return Ok(Code::Ok),
            Ok(Some(Ok(payload))) => send_ok(send, request_id, payload).await?,
            Ok(Some(Err(status))) => {
                return send_status(send, request_id, &status)
                    .await
                    .map(|()| status.code());
            }
            Err(_) => {
                return send_status(send, request_id, &panicked())
                    .await
                    .map(|()| Code::Internal);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::traceparent;

    #[test]
    fn only_a_well_formed_traceparent_reaches_the_logs() {
        let good = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(traceparent(good), Some(good));
        // A later version may append fields; only the first 55 characters are kept.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert_eq!(traceparent(later), Some(&later[..55]));
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 injected=1",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "",
        ] {
            assert_eq!(traceparent(bad), None, "{bad}");
        }
    }
}
