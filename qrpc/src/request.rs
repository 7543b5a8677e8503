//! What a caller sends and gets back: a message with its per-call options ([`Request`]), and
//! a message with the server's metadata ([`Response`]).

use std::time::Duration;

use crate::extensions::Extensions;
use crate::metadata::Metadata;

/// A request message with its per-call options: a timeout, metadata for the server, and
/// extensions for client-side layers (never sent).
///
/// Generated clients' unary and server-streaming methods take anything that is
/// [`IntoRequest`]: the message itself, a reference to it (cloned), or a `Request` that wraps
/// it; their client-streaming and bidi methods take an [`IntoStreamingRequest`]: a stream of
/// messages, or a `Request` that wraps one.
///
/// ```
/// # #[derive(Clone, PartialEq, prost::Message)] struct SayRequest {}
/// use std::time::Duration;
///
/// let mut request = qrpc::Request::new(SayRequest {});
/// request.set_timeout(Duration::from_secs(2));
/// request.metadata_mut().insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")?;
/// # Ok::<(), qrpc::InvalidMetadata>(())
/// ```
#[derive(Debug, Default)]
pub struct Request<T> {
    message: T,
    metadata: Metadata,
    timeout: Option<Duration>,
    extensions: Extensions,
}

impl<T> Request<T> {
    /// A request with no timeout and no metadata.
    pub fn new(message: T) -> Self {
        Self {
            message,
            metadata: Metadata::new(),
            timeout: None,
            extensions: Extensions::new(),
        }
    }

    /// The message.
    pub fn get_ref(&self) -> &T {
        &self.message
    }

    /// The message, mutably.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.message
    }

    /// The message, without the options.
    pub fn into_inner(self) -> T {
        self.message
    }

    /// The metadata sent with the call.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The metadata sent with the call, mutably.
    pub fn metadata_mut(&mut self) -> &mut Metadata {
        &mut self.metadata
    }

    /// How long the caller waits for the call, if limited.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// Limits the call to `timeout`: past it the call ends with `DeadlineExceeded` on the
    /// client, and the server, told the time left, cancels the handler.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = Some(timeout);
    }

    /// [`set_timeout`](Self::set_timeout), by value.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Local values for client-side layers; never sent.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Local values for client-side layers, mutably.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// The same options around another message.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Request<U> {
        Request {
            message: f(self.message),
            metadata: self.metadata,
            timeout: self.timeout,
            extensions: self.extensions,
        }
    }

    /// Splits into message, metadata and timeout (extensions stay behind).
    pub(crate) fn into_parts(self) -> (T, Metadata, Option<Duration>) {
        (self.message, self.metadata, self.timeout)
    }
}

/// What a generated client's unary and server-streaming methods accept: a message, a reference
/// to one (cloned), or a [`Request`].
pub trait IntoRequest<T> {
    /// The request.
    fn into_request(self) -> Request<T>;
}

impl<T: prost::Message> IntoRequest<T> for T {
    fn into_request(self) -> Request<T> {
        Request::new(self)
    }
}

impl<T: prost::Message + Clone> IntoRequest<T> for &T {
    fn into_request(self) -> Request<T> {
        Request::new(self.clone())
    }
}

impl<T> IntoRequest<T> for Request<T> {
    fn into_request(self) -> Request<T> {
        self
    }
}

/// What a generated client's client-streaming and bidi methods accept: a stream of messages,
/// or a [`Request`] that wraps one.
pub trait IntoStreamingRequest {
    /// The messages.
    type Stream: futures::Stream<Item = Self::Message> + Send + 'static;
    /// One message.
    type Message;
    /// The request.
    fn into_streaming_request(self) -> Request<Self::Stream>;
}

impl<S> IntoStreamingRequest for S
where
    S: futures::Stream + Send + 'static,
{
    type Stream = S;
    type Message = S::Item;
    fn into_streaming_request(self) -> Request<S> {
        Request::new(self)
    }
}

impl<S> IntoStreamingRequest for Request<S>
where
    S: futures::Stream + Send + 'static,
{
    type Stream = S;
    type Message = S::Item;
    fn into_streaming_request(self) -> Request<S> {
        self
    }
}

/// A response message with the metadata the server sent with it.
#[derive(Debug, Clone, Default)]
pub struct Response<T> {
    message: T,
    metadata: Metadata,
}

impl<T> Response<T> {
    /// A response from its parts.
    pub fn new(message: T, metadata: Metadata) -> Self {
        Self { message, metadata }
    }

    /// The message.
    pub fn get_ref(&self) -> &T {
        &self.message
    }

    /// The message, without the metadata.
    pub fn into_inner(self) -> T {
        self.message
    }

    /// The server's response metadata: empty when it sent none, which it does unless the call
    /// carried the extension (a deadline or metadata, or a generated `*_with_metadata` call).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Splits into message and metadata.
    pub fn into_parts(self) -> (T, Metadata) {
        (self.message, self.metadata)
    }
}
