//! Typed calls: messages in, messages out, each of the four call kinds once, typed by the
//! method's [`MethodInfo`] (so its idempotence, and with it 0-RTT, is never lost).

use bytes::Bytes;
use futures::StreamExt;
use prost::Message as _;
use tower::{Service, ServiceExt};

use super::call::{CallRequest, single_response};
use crate::body::{MessageStream, Streaming};
use crate::metadata::{Metadata, MetadataSlot};
use crate::method::MethodInfo;
use crate::request::{IntoRequest, IntoStreamingRequest, Response};
use crate::status::Status;

/// What typed calls go through: a [`Client`](super::Client), or any tower service over
/// [`CallRequest`]s (a client behind client-side layers).
pub trait Transport:
    Service<
        CallRequest,
        Response = MessageStream,
        Error: Into<tower::BoxError>,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Transport for T where
    T: Service<
            CallRequest,
            Response = MessageStream,
            Error: Into<tower::BoxError>,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

async fn send<T: Transport>(transport: &T, request: CallRequest) -> Result<MessageStream, Status> {
    transport
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| Status::from_error(e.into()))
}

fn taken(slot: Option<&MetadataSlot>) -> Metadata {
    slot.and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).take())
        .unwrap_or_default()
}

/// Sends a call with one response, and takes that response with the server's metadata.
async fn answered<T: Transport, Resp: prost::Message + Default>(
    transport: &T,
    mut call: CallRequest,
) -> Result<Response<Resp>, Status> {
    let slot = call.response_metadata();
    single(send(transport, call).await?, slot.as_ref()).await
}

async fn single<Resp: prost::Message + Default>(
    mut responses: MessageStream,
    slot: Option<&MetadataSlot>,
) -> Result<Response<Resp>, Status> {
    let bytes = single_response(&mut responses).await?;
    Ok(Response::new(decode_response(bytes)?, taken(slot)))
}

pub(crate) fn decode_response<T: prost::Message + Default>(bytes: Bytes) -> Result<T, Status> {
    T::decode(bytes).map_err(|e| Status::internal(format!("undecodable response: {e}")))
}

/// The call of a unary or server-streaming method: one request message with its options.
fn single_message_call<Req: prost::Message>(
    method: &MethodInfo,
    request: impl IntoRequest<Req>,
    server_streams: bool,
) -> CallRequest {
    let (message, metadata, timeout) = request.into_request().into_parts();
    let payload = message.encode_to_vec().into();
    let call = if server_streams {
        CallRequest::server_streaming(method.id, payload)
    } else {
        CallRequest::unary(method.id, payload)
    };
    call.with_idempotent(method.idempotent)
        .with_metadata(metadata)
        .with_timeout(timeout)
}

/// A unary call of `method` through `transport`. The response's metadata is empty unless the
/// request carried a deadline or metadata (see [`unary_with_metadata`]).
pub async fn unary<T, Req, Resp>(
    transport: &T,
    method: &MethodInfo,
    request: impl IntoRequest<Req>,
) -> Result<Response<Resp>, Status>
where
    T: Transport,
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    answered(transport, single_message_call(method, request, false)).await
}

/// A unary call of `method` through `transport` whose caller reads the server's metadata: it
/// always carries the call extension (negotiated once per connection), so a server that sets
/// response metadata sends it. Such a call waits for the handshake of a resumed connection
/// (the extension is negotiated on it), so it never travels as 0-RTT data.
pub async fn unary_with_metadata<T, Req, Resp>(
    transport: &T,
    method: &MethodInfo,
    request: impl IntoRequest<Req>,
) -> Result<Response<Resp>, Status>
where
    T: Transport,
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let call = single_message_call(method, request, false).reading_response_metadata();
    answered(transport, call).await
}

/// A server-streaming call of `method` through `transport`.
pub async fn server_streaming<T, Req, Resp>(
    transport: &T,
    method: &MethodInfo,
    request: impl IntoRequest<Req>,
) -> Result<Streaming<Resp>, Status>
where
    T: Transport,
    Req: prost::Message,
    Resp: prost::Message + Default,
{
    let mut call = single_message_call(method, request, true);
    let slot = call.response_metadata();
    Ok(Streaming::from_server(send(transport, call).await?, slot))
}

fn streaming_call<R>(method: &MethodInfo, requests: R, bidi: bool) -> CallRequest
where
    R: IntoStreamingRequest,
    R::Message: prost::Message + 'static,
{
    let (messages, metadata, timeout) = requests.into_streaming_request().into_parts();
    let messages = messages.map(|r| Bytes::from(r.encode_to_vec())).boxed();
    let call = if bidi {
        CallRequest::bidi(method.id, messages)
    } else {
        CallRequest::client_streaming(method.id, messages)
    };
    call.with_idempotent(method.idempotent)
        .with_metadata(metadata)
        .with_timeout(timeout)
}

/// A client-streaming call of `method` through `transport`. The response's metadata is empty
/// unless the request carried a deadline or metadata (see [`client_streaming_with_metadata`]).
pub async fn client_streaming<T, R, Resp>(
    transport: &T,
    method: &MethodInfo,
    requests: R,
) -> Result<Response<Resp>, Status>
where
    T: Transport,
    R: IntoStreamingRequest,
    R::Message: prost::Message + 'static,
    Resp: prost::Message + Default,
{
    answered(transport, streaming_call(method, requests, false)).await
}

/// A client-streaming call of `method` whose caller reads the server's metadata (see
/// [`unary_with_metadata`]).
pub async fn client_streaming_with_metadata<T, R, Resp>(
    transport: &T,
    method: &MethodInfo,
    requests: R,
) -> Result<Response<Resp>, Status>
where
    T: Transport,
    R: IntoStreamingRequest,
    R::Message: prost::Message + 'static,
    Resp: prost::Message + Default,
{
    let call = streaming_call(method, requests, false).reading_response_metadata();
    answered(transport, call).await
}

/// A bidi-streaming call of `method` through `transport`.
pub async fn bidi<T, R, Resp>(
    transport: &T,
    method: &MethodInfo,
    requests: R,
) -> Result<Streaming<Resp>, Status>
where
    T: Transport,
    R: IntoStreamingRequest,
    R::Message: prost::Message + 'static,
    Resp: prost::Message + Default,
{
    let mut call = streaming_call(method, requests, true);
    let slot = call.response_metadata();
    Ok(Streaming::from_server(send(transport, call).await?, slot))
}
