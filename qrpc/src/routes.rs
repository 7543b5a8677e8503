//! Method descriptors, handlers and the router that maps a method id to its handler.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::body::{Request, RequestBody, Response, ResponseBody, ResponseStream, Streaming};
use crate::context::RequestContext;
use crate::status::Status;

/// The four call kinds (`docs/wire-protocol.md`, "Call kinds").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CallKind {
    /// One request, one response.
    Unary,
    /// One request, a stream of responses.
    ServerStreaming,
    /// A stream of requests, one response.
    ClientStreaming,
    /// A stream of requests and a stream of responses.
    Bidi,
}

impl CallKind {
    /// Whether the client sends a stream (and so opens the call with an empty frame).
    pub fn client_streams(self) -> bool {
        matches!(self, Self::ClientStreaming | Self::Bidi)
    }

    /// Whether the server answers with a stream.
    pub fn server_streams(self) -> bool {
        matches!(self, Self::ServerStreaming | Self::Bidi)
    }
}

/// Static description of one method: what logs, layers and tooling need to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodInfo {
    /// The wire id, unique within a server.
    pub id: u16,
    /// Fully qualified service name, such as `echo.v1.Echo`.
    pub service: &'static str,
    /// Method name as written in the `.proto`, such as `Say`.
    pub name: &'static str,
    /// The call kind.
    pub kind: CallKind,
    /// Whether calling it twice has the effect of calling it once (the `.proto` sets
    /// `idempotency_level`). Only such calls travel in 0-RTT data, which can be replayed.
    pub idempotent: bool,
}

impl fmt::Display for MethodInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.service, self.name)
    }
}

/// Static description of a service: its name and methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceDescriptor {
    /// Fully qualified service name.
    pub name: &'static str,
    /// Every method of the service.
    pub methods: &'static [MethodInfo],
}

impl ServiceDescriptor {
    /// The method with `id`, if the service has one.
    pub fn method(&self, id: u16) -> Option<&'static MethodInfo> {
        self.methods.iter().find(|m| m.id == id)
    }

    /// The method called `name`, if the service has one.
    pub fn method_by_name(&self, name: &str) -> Option<&'static MethodInfo> {
        self.methods.iter().find(|m| m.name == name)
    }
}

type HandlerFn = dyn Fn(Request<RequestBody>) -> BoxFuture<'static, Result<Response<ResponseBody>, Status>>
    + Send
    + Sync;

/// A type-erased method handler over raw requests.
#[derive(Clone)]
pub struct Handler(Arc<HandlerFn>);

impl Handler {
    /// A handler from a function over raw requests.
    pub fn from_fn<F, Fut>(f: F) -> Self
    where
        F: Fn(Request<RequestBody>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Response<ResponseBody>, Status>> + Send + 'static,
    {
        Self(Arc::new(move |req| f(req).boxed()))
    }

    /// A unary handler: decodes the request, encodes the response.
    pub fn unary<Req, Resp, F, Fut>(f: F) -> Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(RequestContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        Self::from_fn(move |req: Request<RequestBody>| {
            let f = Arc::clone(&f);
            async move {
                let (ctx, body) = req.into_parts();
                let msg = Req::decode(body.into_unary())?;
                let resp = f(ctx, msg).await?;
                Ok(Response::new(ResponseBody::Unary(
                    resp.encode_to_vec().into(),
                )))
            }
        })
    }

    /// A server-streaming handler.
    pub fn server_streaming<Req, Resp, F, Fut>(f: F) -> Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(RequestContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ResponseStream<Resp>, Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        Self::from_fn(move |req: Request<RequestBody>| {
            let f = Arc::clone(&f);
            async move {
                let (ctx, body) = req.into_parts();
                let msg = Req::decode(body.into_unary())?;
                let stream = f(ctx, msg).await?;
                Ok(Response::new(ResponseBody::Stream(encode_stream(stream))))
            }
        })
    }

    /// A client-streaming handler.
    pub fn client_streaming<Req, Resp, F, Fut>(f: F) -> Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(RequestContext, Streaming<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        Self::from_fn(move |req: Request<RequestBody>| {
            let f = Arc::clone(&f);
            async move {
                let (ctx, body) = req.into_parts();
                let stream = Streaming::new(body.into_streaming()?);
                let resp = f(ctx, stream).await?;
                Ok(Response::new(ResponseBody::Unary(
                    resp.encode_to_vec().into(),
                )))
            }
        })
    }

    /// A bidi-streaming handler.
    pub fn bidi<Req, Resp, F, Fut>(f: F) -> Self
    where
        Req: prost::Message + Default + 'static,
        Resp: prost::Message + 'static,
        F: Fn(RequestContext, Streaming<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ResponseStream<Resp>, Status>> + Send + 'static,
    {
        let f = Arc::new(f);
        Self::from_fn(move |req: Request<RequestBody>| {
            let f = Arc::clone(&f);
            async move {
                let (ctx, body) = req.into_parts();
                let stream = Streaming::new(body.into_streaming()?);
                let out = f(ctx, stream).await?;
                Ok(Response::new(ResponseBody::Stream(encode_stream(out))))
            }
        })
    }

    fn call(
        &self,
        req: Request<RequestBody>,
    ) -> BoxFuture<'static, Result<Response<ResponseBody>, Status>> {
        (self.0)(req)
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handler")
    }
}

fn encode_stream<T: prost::Message + 'static>(
    stream: ResponseStream<T>,
) -> crate::body::MessageStream {
    Box::pin(stream.map(|item| item.map(|m| Bytes::from(m.encode_to_vec()))))
}

/// Two services registered the same method id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("method id {id} is registered twice: by {first} and by {second}")]
pub struct DuplicateMethodId {
    /// The contested id.
    pub id: u16,
    /// The method registered first.
    pub first: String,
    /// The method registered second.
    pub second: String,
}

/// The method table a service registers into; see [`RpcService`].
#[derive(Debug, Default)]
pub struct RoutesBuilder {
    routes: HashMap<u16, (MethodInfo, Handler)>,
    errors: Vec<DuplicateMethodId>,
}

impl RoutesBuilder {
    /// Registers a handler for `method`. A second handler for the same id is recorded as an
    /// error that [`Server::bind`](crate::Server::bind) reports.
    pub fn add(&mut self, method: MethodInfo, handler: Handler) -> &mut Self {
        match self.routes.get(&method.id) {
            Some((existing, _)) => self.errors.push(DuplicateMethodId {
                id: method.id,
                first: existing.to_string(),
                second: method.to_string(),
            }),
            None => {
                self.routes.insert(method.id, (method, handler));
            }
        }
        self
    }

    pub(crate) fn build(self) -> Result<Routes, DuplicateMethodId> {
        if let Some(err) = self.errors.into_iter().next() {
            return Err(err);
        }
        Ok(Routes(Arc::new(self.routes)))
    }
}

/// A service that can be served: generated server adapters implement it.
pub trait RpcService: Send + 'static {
    /// The service's static description.
    fn descriptor(&self) -> &'static ServiceDescriptor;
    /// Registers every method of the service.
    fn register(self, routes: &mut RoutesBuilder);
}

/// The innermost service of a server: dispatches a raw request by method id.
///
/// An id with no handler gets `Unimplemented`.
#[derive(Clone, Debug)]
pub struct Routes(Arc<HashMap<u16, (MethodInfo, Handler)>>);

impl Routes {
    /// The registered method with `id`.
    pub fn method(&self, id: u16) -> Option<MethodInfo> {
        self.0.get(&id).map(|(info, _)| *info)
    }

    /// Every registered method.
    pub fn methods(&self) -> impl Iterator<Item = &MethodInfo> {
        self.0.values().map(|(info, _)| info)
    }
}

impl tower::Service<Request<RequestBody>> for Routes {
    type Response = Response<ResponseBody>;
    type Error = Status;
    type Future = BoxFuture<'static, Result<Response<ResponseBody>, Status>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<RequestBody>) -> Self::Future {
        let id = req.context().method_id();
        match self.0.get(&id) {
            Some((_, handler)) => handler.call(req),
            None => futures::future::ready(Err(Status::unimplemented(format!(
                "method id {id} is not served here"
            ))))
            .boxed(),
        }
    }
}
