//! Requests, responses and their bodies, raw (bytes) and typed (prost messages).

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::{Stream, StreamExt};

use crate::context::RequestContext;
use crate::status::Status;

/// A boxed stream of raw messages or a status that ends it.
pub type MessageStream = Pin<Box<dyn Stream<Item = Result<Bytes, Status>> + Send + 'static>>;

/// A boxed stream of typed messages, as a streaming handler returns it.
pub type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// A request: the call's context and its body.
#[derive(Debug)]
pub struct ServerRequest<T> {
    context: RequestContext,
    body: T,
}

impl<T> ServerRequest<T> {
    /// A request from its parts.
    pub fn new(context: RequestContext, body: T) -> Self {
        Self { context, body }
    }

    /// The call's context.
    pub fn context(&self) -> &RequestContext {
        &self.context
    }

    /// The call's context, mutably (layers add extensions here).
    pub fn context_mut(&mut self) -> &mut RequestContext {
        &mut self.context
    }

    /// The body.
    pub fn body(&self) -> &T {
        &self.body
    }

    /// Splits the request into context and body.
    pub fn into_parts(self) -> (RequestContext, T) {
        (self.context, self.body)
    }
}

/// A response body on the server side.
#[derive(Debug)]
pub struct ServerResponse<T> {
    body: T,
}

impl<T> ServerResponse<T> {
    /// A response carrying `body`.
    pub fn new(body: T) -> Self {
        Self { body }
    }

    /// The body.
    pub fn into_inner(self) -> T {
        self.body
    }

    /// The body, by reference.
    pub fn get_ref(&self) -> &T {
        &self.body
    }
}

/// The raw body of a request as the server received it.
///
/// Every call opens with one request frame. For unary and server-streaming calls it carries the
/// request message; for client-streaming and bidi calls it is an empty *open* frame and the
/// messages follow in later frames (`docs/wire-protocol.md`, "Call kinds").
pub struct RequestBody {
    first: Bytes,
    rest: MessageStream,
}

impl RequestBody {
    /// A body from the first frame's payload and the stream of later frames.
    pub fn new(first: Bytes, rest: MessageStream) -> Self {
        Self { first, rest }
    }

    /// A body holding one message and nothing after it.
    pub fn unary(message: Bytes) -> Self {
        Self::new(message, Box::pin(futures::stream::empty()))
    }

    /// The request message of a unary or server-streaming call.
    pub fn into_unary(self) -> Bytes {
        self.first
    }

    /// The request messages of a client-streaming or bidi call.
    ///
    /// Fails with `InvalidArgument` when the open frame carried a payload, which means the
    /// client called this method as if it were unary.
    pub fn into_streaming(self) -> Result<MessageStream, Status> {
        if !self.first.is_empty() {
            return Err(Status::invalid_argument(
                "streaming call opened with a non-empty frame",
            ));
        }
        Ok(self.rest)
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("first_len", &self.first.len())
            .finish_non_exhaustive()
    }
}

/// The raw body of a response as a handler produces it.
pub enum ResponseBody {
    /// Exactly one message: a unary or client-streaming call.
    Unary(Bytes),
    /// Zero or more messages: a server-streaming or bidi call. An `Err` ends the call with
    /// that status.
    Stream(MessageStream),
}

impl fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unary(b) => f.debug_tuple("Unary").field(&b.len()).finish(),
            Self::Stream(_) => f.debug_tuple("Stream").finish(),
        }
    }
}

/// A typed stream of incoming messages: the request messages of a client-streaming or bidi
/// handler, or the responses of a server-streaming or bidi call on the client.
///
/// An undecodable message yields `InvalidArgument` (or `Internal` on the client) and ends
/// the stream.
pub struct Streaming<T> {
    inner: MessageStream,
    /// On the client, where the server's response metadata arrives.
    metadata: Option<crate::metadata::MetadataSlot>,
    done: bool,
    decode_code: crate::status::Code,
    _marker: PhantomData<fn() -> T>,
}

impl<T: prost::Message + Default> Streaming<T> {
    /// A typed stream over raw messages received by a server.
    pub fn new(inner: MessageStream) -> Self {
        Self {
            inner,
            metadata: None,
            done: false,
            decode_code: crate::status::Code::InvalidArgument,
            _marker: PhantomData,
        }
    }

    /// A typed stream over raw messages received by a client: a bad message from the server is
    /// the server's fault, so it maps to `Internal`.
    pub(crate) fn from_server(
        inner: MessageStream,
        metadata: Option<crate::metadata::MetadataSlot>,
    ) -> Self {
        Self {
            decode_code: crate::status::Code::Internal,
            metadata,
            ..Self::new(inner)
        }
    }

    /// On the client, the server's response metadata: known once the first message (or the
    /// end of the stream) has arrived; empty if the server sent none, which it does unless the
    /// call carried a deadline or metadata. On the server, handlers read the client's
    /// metadata from their `RequestContext` instead.
    pub fn metadata(&self) -> crate::metadata::Metadata {
        self.metadata
            .as_ref()
            .and_then(|slot| slot.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// The next message, `None` at the end.
    pub async fn message(&mut self) -> Result<Option<T>, Status> {
        self.next().await.transpose()
    }
}

impl<T: prost::Message + Default> Stream for Streaming<T> {
    type Item = Result<T, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item =
            match futures::ready!(self.inner.poll_next_unpin(cx)) {
                None => None,
                Some(Ok(bytes)) => Some(T::decode(bytes).map_err(|e| {
                    Status::new(self.decode_code, format!("undecodable message: {e}"))
                })),
                Some(Err(status)) => Some(Err(status)),
            };
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        Poll::Ready(item)
    }
}

impl<T> fmt::Debug for Streaming<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Streaming")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}
