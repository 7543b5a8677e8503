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
use quinn::{RecvStream, SendStream};
use tower::{Service, ServiceExt};

use super::Shared;
use crate::body::{MessageStream, Request, RequestBody, Response, ResponseBody};
use crate::context::{Connection, RequestContext};
use crate::frame::{FrameError, RequestHeader, ResponseFrame};
use crate::io::{FrameReader, ReadFrameError, write_response};
use crate::protocol::reset;
use crate::status::{Code, Status};

/// How long a finished call waits for the client to acknowledge its last bytes, so that a
/// graceful shutdown does not cut responses short.
const ACK_WAIT: Duration = Duration::from_secs(5);

pub(super) async fn serve_call<S>(
    mut send: SendStream,
    recv: RecvStream,
    connection: Connection,
    shared: Arc<Shared>,
    service: S,
) where
    S: Service<Request<RequestBody>, Response = Response<ResponseBody>> + Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send,
{
    let max_payload = shared.config.max_payload;
    let early = recv.is_0rtt();
    let mut reader = FrameReader::new(recv, max_payload);
    let first =
        match tokio::time::timeout(shared.config.header_timeout, reader.next_request()).await {
            Err(_) => {
                reader.stop(reset::HEADER_TIMEOUT);
                let _ = send.reset(reset::HEADER_TIMEOUT);
                return;
            }
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => {
                // The client finished the stream without sending a frame: nothing to answer.
                let _ = send.reset(reset::PROTOCOL_ERROR);
                return;
            }
            Ok(Err(err)) => {
                reject_opening(&mut send, &mut reader, err).await;
                return;
            }
        };

    let method_id = first.method_id;
    let request_id = first.request_id;
    let method = shared.routes.method(method_id);
    if early && !method.is_some_and(|m| m.idempotent) {
        // 0-RTT data can be replayed: run nothing from it but idempotent methods.
        tracing::debug!(
            method_id,
            request_id,
            "non-idempotent call in 0-RTT data refused"
        );
        reader.stop(reset::TOO_EARLY);
        let _ = send.reset(reset::TOO_EARLY);
        return;
    }
    let mut ctx = RequestContext::new(connection, method_id, method, request_id);
    ctx.set_early_data(early);
    let rest = request_messages(reader, method_id, request_id);
    let request = Request::new(ctx, RequestBody::new(first.payload, rest));

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
        result = call => result.unwrap_or_else(|_| Err(panicked())),
        _ = stopped => {
            // The client cancelled: dropping `call` drops the handler future.
            tracing::debug!(method_id, request_id, "call cancelled by client");
            return;
        }
    };

    let result = match outcome {
        Ok(response) => match response.into_inner() {
            ResponseBody::Unary(payload) => send_ok(&mut send, request_id, payload).await,
            ResponseBody::Stream(stream) => send_stream(&mut send, request_id, stream).await,
        },
        Err(status) => send_status(&mut send, request_id, &status).await,
    };
    if result.is_err() {
        // The client stopped reading or the connection is gone; nothing more to say.
        return;
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
}

fn panicked() -> Status {
    tracing::error!("handler panicked; the call ends with Internal");
    Status::internal("handler panicked")
}

/// Answers an opening frame that could not be read. The request id is known when the header
/// was complete; otherwise the status goes out with request id 0.
async fn reject_opening(send: &mut SendStream, reader: &mut FrameReader, err: ReadFrameError) {
    let (status, stop) = match &err {
        ReadFrameError::Frame(FrameError::PayloadTooLarge { len, max }) => (
            Status::resource_exhausted(format!(
                "request payload of {len} bytes exceeds the limit of {max} bytes"
            )),
            Some(reset::PAYLOAD_TOO_LARGE),
        ),
        ReadFrameError::Frame(other) => (
            Status::invalid_argument(other.to_string()),
            Some(reset::PROTOCOL_ERROR),
        ),
        ReadFrameError::Truncated(_) => (
            Status::invalid_argument("stream ended inside the request frame"),
            None,
        ),
        ReadFrameError::Stream(_) => {
            // Reset by the client or connection lost: the client is no longer listening.
            let _ = send.reset(reset::CANCELLED);
            return;
        }
    };
    let request_id = reader
        .buffered()
        .and_then(|buf| RequestHeader::peek(buf, u32::MAX).ok().flatten())
        .map_or(0, |h| h.request_id);
    if let Some(code) = stop {
        reader.stop(code);
    }
    tracing::debug!(%status, request_id, "rejected malformed request");
    if send_status(send, request_id, &status).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(ACK_WAIT, send.stopped()).await;
    }
}

/// The request messages after the opening frame, checked to belong to this call.
fn request_messages(reader: FrameReader, method_id: u16, request_id: u32) -> MessageStream {
    Box::pin(futures::stream::unfold(
        Some(reader),
        move |state| async move {
            let mut reader = state?;
            let item = match reader.next_request().await {
                Ok(None) => return None,
                Ok(Some(frame))
                    if frame.method_id == method_id && frame.request_id == request_id =>
                {
                    return Some((Ok(frame.payload), Some(reader)));
                }
                Ok(Some(_)) => {
                    reader.stop(reset::PROTOCOL_ERROR);
                    Status::invalid_argument("request frame belongs to another call")
                }
                Err(ReadFrameError::Frame(FrameError::PayloadTooLarge { len, max })) => {
                    reader.stop(reset::PAYLOAD_TOO_LARGE);
                    Status::resource_exhausted(format!(
                        "request payload of {len} bytes exceeds the limit of {max} bytes"
                    ))
                }
                Err(ReadFrameError::Frame(err)) => Status::invalid_argument(err.to_string()),
                Err(ReadFrameError::Truncated(_)) => {
                    Status::invalid_argument("stream ended inside a request frame")
                }
                Err(ReadFrameError::Stream(_)) => {
                    Status::cancelled("client reset the request stream")
                }
            };
            Some((Err(item), None))
        },
    ))
}

async fn send_ok(
    send: &mut SendStream,
    request_id: u32,
    payload: Bytes,
) -> Result<(), quinn::WriteError> {
    let frame = ResponseFrame {
        status: Code::Ok.as_u8(),
        request_id,
        payload,
    };
    write_response(send, &frame).await
}

async fn send_status(
    send: &mut SendStream,
    request_id: u32,
    status: &Status,
) -> Result<(), quinn::WriteError> {
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

async fn send_stream(
    send: &mut SendStream,
    request_id: u32,
    mut stream: MessageStream,
) -> Result<(), quinn::WriteError> {
    let stopped = send.stopped();
    let mut stopped = std::pin::pin!(stopped);
    loop {
        let next = tokio::select! {
            next = AssertUnwindSafe(stream.next()).catch_unwind() => next,
            _ = &mut stopped => return Err(quinn::WriteError::ClosedStream),
        };
        match next {
            Ok(None) => return Ok(()),
            Ok(Some(Ok(payload))) => send_ok(send, request_id, payload).await?,
            Ok(Some(Err(status))) => return send_status(send, request_id, &status).await,
            Err(_) => return send_status(send, request_id, &panicked()).await,
        }
    }
}
