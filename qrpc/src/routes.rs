//! Method descriptors, handlers and the router that maps a method id to its handler.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};

use crate::body::{
    RequestBody, ResponseBody, ResponseStream, ServerRequest, ServerResponse, Streaming,
};
use crate::context::RequestContext;
use crate::method::{MethodInfo, ServiceDescriptor};
use crate::status::Status;

type HandlerFn = dyn Fn(
        ServerRequest<RequestBody>,
    ) -> BoxFuture<'static, Result<ServerResponse<ResponseBody>, Status>>
    + Send
    + Sync;

/// A type-erased method handler over raw requests.
#[derive(Clone)]
pub struct Handler(Arc<HandlerFn>);

impl Handler {
    /// A handler from a function over raw requests.
    pub fn from_fn<F, Fut>(f: F) -> Self
    where
        F: Fn(ServerRequest<RequestBody>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<ServerResponse<ResponseBody>, Status>> + Send + 'static,
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
        Self(Arc::new(move |req| {
            let f = Arc::clone(&f);
            serve_unary(req, move |ctx, msg| f(ctx, msg))
        }))
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
        Self(Arc::new(move |req| {
            let f = Arc::clone(&f);
            serve_server_streaming(req, move |ctx, msg| f(ctx, msg))
        }))
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
        Self(Arc::new(move |req| {
            let f = Arc::clone(&f);
            serve_client_streaming(req, move |ctx, msgs| f(ctx, msgs))
        }))
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
        Self(Arc::new(move |req| {
            let f = Arc::clone(&f);
            serve_bidi(req, move |ctx, msgs| f(ctx, msgs))
        }))
    }

    fn call(
        &self,
        req: ServerRequest<RequestBody>,
    ) -> BoxFuture<'static, Result<ServerResponse<ResponseBody>, Status>> {
        (self.0)(req)
    }
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Handler")
    }
}

/// The future a served call resolves to.
pub type CallFuture = BoxFuture<'static, Result<ServerResponse<ResponseBody>, Status>>;

/// Serves one unary call with `f`: decodes the request, encodes the response.
pub fn serve_unary<Req, Resp, F, Fut>(req: ServerRequest<RequestBody>, f: F) -> CallFuture
where
    Req: prost::Message + Default + 'static,
    Resp: prost::Message + 'static,
    F: FnOnce(RequestContext, Req) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    async move {
        let (ctx, body) = req.into_parts();
        let msg = Req::decode(body.into_unary())?;
        Ok(unary_response(&f(ctx, msg).await?))
    }
    .boxed()
}

/// Serves one server-streaming call with `f`.
pub fn serve_server_streaming<Req, Resp, F, Fut>(
    req: ServerRequest<RequestBody>,
    f: F,
) -> CallFuture
where
    Req: prost::Message + Default + 'static,
    Resp: prost::Message + 'static,
    F: FnOnce(RequestContext, Req) -> Fut + Send + 'static,
    Fut: Future<Output = Result<ResponseStream<Resp>, Status>> + Send + 'static,
{
    async move {
        let (ctx, body) = req.into_parts();
        let msg = Req::decode(body.into_unary())?;
        Ok(stream_response(f(ctx, msg).await?))
    }
    .boxed()
}

/// Serves one client-streaming call with `f`.
pub fn serve_client_streaming<Req, Resp, F, Fut>(
    req: ServerRequest<RequestBody>,
    f: F,
) -> CallFuture
where
    Req: prost::Message + Default + 'static,
    Resp: prost::Message + 'static,
    F: FnOnce(RequestContext, Streaming<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Resp, Status>> + Send + 'static,
{
    async move {
        let (ctx, body) = req.into_parts();
        let stream = Streaming::new(body.into_streaming()?);
        Ok(unary_response(&f(ctx, stream).await?))
    }
    .boxed()
}

/// Serves one bidi-streaming call with `f`.
pub fn serve_bidi<Req, Resp, F, Fut>(req: ServerRequest<RequestBody>, f: F) -> CallFuture
where
    Req: prost::Message + Default + 'static,
    Resp: prost::Message + 'static,
    F: FnOnce(RequestContext, Streaming<Req>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<ResponseStream<Resp>, Status>> + Send + 'static,
{
    async move {
        let (ctx, body) = req.into_parts();
        let stream = Streaming::new(body.into_streaming()?);
        Ok(stream_response(f(ctx, stream).await?))
    }
    .boxed()
}

/// Answers a call whose method the service does not have.
pub fn serve_unimplemented(req: &ServerRequest<RequestBody>) -> CallFuture {
    let id = req.context().method_id();
    futures::future::ready(Err(Status::unimplemented(format!(
        "method id {id} is not served here"
    ))))
    .boxed()
}

/// A handler's single response message, encoded.
fn unary_response<T: prost::Message>(message: &T) -> ServerResponse<ResponseBody> {
    ServerResponse::new(ResponseBody::Unary(message.encode_to_vec().into()))
}

/// A handler's response stream, encoded message by message.
fn stream_response<T: prost::Message + 'static>(
    stream: ResponseStream<T>,
) -> ServerResponse<ResponseBody> {
    let encoded = stream.map(|item| item.map(|m| Bytes::from(m.encode_to_vec())));
    ServerResponse::new(ResponseBody::Stream(Box::pin(encoded)))
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

/// A service a qrpc server can host: a tower service over raw calls that says which methods
/// it serves. Generated `<Service>Server` types implement it; so do [`Methods`] (hand-written
/// services) and [`Named`] (a service behind per-service layers).
pub trait NamedService {
    /// The service's name and methods.
    fn descriptor(&self) -> &'static ServiceDescriptor;
}

/// Everything a server asks of a service it hosts: a tower service over raw calls that names
/// its methods, cheap to clone, shareable across tasks. Implemented for every such type;
/// generated servers, [`Methods`] and [`Named`] all qualify.
pub trait HostedService:
    tower::Service<
        ServerRequest<RequestBody>,
        Response = ServerResponse<ResponseBody>,
        Error: Into<tower::BoxError>,
        Future: Send + 'static,
    > + NamedService
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HostedService for S where
    S: tower::Service<
            ServerRequest<RequestBody>,
            Response = ServerResponse<ResponseBody>,
            Error: Into<tower::BoxError>,
            Future: Send + 'static,
        > + NamedService
        + Clone
        + Send
        + Sync
        + 'static
{
}

/// A hand-written service: a handler per method of a [`ServiceDescriptor`]. A method of the
/// descriptor without a handler answers `Unimplemented`.
#[derive(Clone, Debug)]
pub struct Methods {
    descriptor: &'static ServiceDescriptor,
    handlers: Arc<HashMap<u16, Handler>>,
}

impl Methods {
    /// A service with the methods of `descriptor` and no handlers yet.
    pub fn new(descriptor: &'static ServiceDescriptor) -> Self {
        Self {
            descriptor,
            handlers: Arc::default(),
        }
    }

    /// Serves `method` with `handler`.
    ///
    /// # Panics
    /// If `method` is not one of the descriptor's methods: that is a programming error that
    /// would otherwise make the method unreachable.
    pub fn route(mut self, method: MethodInfo, handler: Handler) -> Self {
        assert!(
            self.descriptor.methods.contains(&method),
            "{method} is not a method of {}",
            self.descriptor.name
        );
        Arc::make_mut(&mut self.handlers).insert(method.id, handler);
        self
    }
}

impl NamedService for Methods {
    fn descriptor(&self) -> &'static ServiceDescriptor {
        self.descriptor
    }
}

impl tower::Service<ServerRequest<RequestBody>> for Methods {
    type Response = ServerResponse<ResponseBody>;
    type Error = Status;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ServerRequest<RequestBody>) -> Self::Future {
        match self.handlers.get(&req.context().method_id()) {
            Some(handler) => handler.call(req),
            None => serve_unimplemented(&req),
        }
    }
}

/// A service behind per-service layers that keeps the inner service's descriptor, so a server
/// can still route to it. Made by [`LayerExt::named_layer`].
#[derive(Clone, Debug)]
pub struct Named<S> {
    inner: S,
    descriptor: &'static ServiceDescriptor,
}

impl<S> NamedService for Named<S> {
    fn descriptor(&self) -> &'static ServiceDescriptor {
        self.descriptor
    }
}

impl<S, B> tower::Service<B> for Named<S>
where
    S: tower::Service<B>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: B) -> Self::Future {
        self.inner.call(req)
    }
}

/// Wraps one service in a layer, as tonic's `LayerExt` does: the layers apply to that service's
/// calls only, and the result can still be added to a server.
///
/// ```
/// # use qrpc::{LayerExt, Methods, ServiceDescriptor};
/// # static DESCRIPTOR: ServiceDescriptor = ServiceDescriptor { name: "demo.Ping", methods: &[] };
/// let timeout = tower::timeout::TimeoutLayer::new(std::time::Duration::from_secs(2));
/// let cert = qrpc::tls::SelfSigned::generate(&["localhost"]).unwrap();
/// let server = qrpc::Server::builder()
///     .tls(cert.server_tls())
///     .add_service(timeout.named_layer(Methods::new(&DESCRIPTOR)));
/// ```
pub trait LayerExt {
    /// `self` applied to `service`, keeping `service`'s descriptor.
    fn named_layer<S>(&self, service: S) -> Named<<Self as tower_layer::Layer<S>>::Service>
    where
        Self: tower_layer::Layer<S>,
        S: NamedService,
    {
        let descriptor = service.descriptor();
        Named {
            inner: self.layer(service),
            descriptor,
        }
    }
}

impl<L> LayerExt for L {}

type BoxedService = tower::util::BoxCloneSyncService<
    ServerRequest<RequestBody>,
    ServerResponse<ResponseBody>,
    Status,
>;

/// The method table the server builds from its services.
#[derive(Debug, Default)]
pub(crate) struct RouterBuilder {
    routes: HashMap<u16, Route>,
    errors: Vec<DuplicateMethodId>,
}

/// One method: its description, the service that has it, and the application protocol it is
/// reachable on (`None`: the server's default protocols).
#[derive(Clone)]
struct Route {
    info: MethodInfo,
    service: BoxedService,
    protocol: Option<Arc<[u8]>>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("info", &self.info)
            .field(
                "protocol",
                &self.protocol.as_deref().map(String::from_utf8_lossy),
            )
            .finish_non_exhaustive()
    }
}

impl RouterBuilder {
    /// Router every method of `service`'s descriptor to it. A method id taken by an earlier
    /// service is recorded as an error that [`Server::bind`](crate::Server::bind) reports.
    pub(crate) fn add_service<S: HostedService>(&mut self, service: S, protocol: Option<Vec<u8>>) {
        let descriptor = service.descriptor();
        let protocol: Option<Arc<[u8]>> = protocol.map(Into::into);
        let boxed = BoxedService::new(tower::ServiceExt::map_err(service, |e: S::Error| {
            Status::from_error(e.into())
        }));
        for method in descriptor.methods {
            match self.routes.get(&method.id) {
                Some(existing) => self.errors.push(DuplicateMethodId {
                    id: method.id,
                    first: existing.info.to_string(),
                    second: method.to_string(),
                }),
                None => {
                    self.routes.insert(
                        method.id,
                        Route {
                            info: *method,
                            service: boxed.clone(),
                            protocol: protocol.clone(),
                        },
                    );
                }
            }
        }
    }

    pub(crate) fn build(self) -> Result<Router, DuplicateMethodId> {
        if let Some(err) = self.errors.into_iter().next() {
            return Err(err);
        }
        let protocols = self
            .routes
            .values()
            .filter_map(|route| route.protocol.clone())
            .collect();
        Ok(Router(Arc::new(Table {
            routes: self.routes,
            protocols,
        })))
    }
}

/// The router's methods, and the protocols that have services of their own.
struct Table {
    routes: HashMap<u16, Route>,
    protocols: std::collections::HashSet<Arc<[u8]>>,
}

impl Table {
    /// The route of `id` if it is reachable on a connection that negotiated `alpn`.
    fn route(&self, id: u16, alpn: Option<&[u8]>) -> Option<&Route> {
        let route = self.routes.get(&id)?;
        let reachable = match (&route.protocol, alpn) {
            (Some(protocol), Some(alpn)) => **protocol == *alpn,
            (Some(_), None) => false,
            (None, Some(alpn)) => !self.protocols.contains(alpn),
            (None, None) => true,
        };
        reachable.then_some(route)
    }
}

/// The innermost service of a server: dispatches a raw request by method id to the service
/// that has the method. An id no service has gets `Unimplemented`.
#[derive(Clone)]
pub struct Router(Arc<Table>);

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.methods()).finish()
    }
}

impl Router {
    /// The registered method with `id`.
    pub fn method(&self, id: u16) -> Option<MethodInfo> {
        self.0.routes.get(&id).map(|route| route.info)
    }

    /// The method with `id` if a connection that negotiated `alpn` may call it (see
    /// [`Server::add_service_on`](crate::Server::add_service_on)).
    pub fn method_on(&self, id: u16, alpn: Option<&[u8]>) -> Option<MethodInfo> {
        self.0.route(id, alpn).map(|route| route.info)
    }

    /// Every registered method.
    pub fn methods(&self) -> impl Iterator<Item = &MethodInfo> {
        self.0.routes.values().map(|route| &route.info)
    }
}

impl tower::Service<ServerRequest<RequestBody>> for Router {
    type Response = ServerResponse<ResponseBody>;
    type Error = Status;
    type Future = CallFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ServerRequest<RequestBody>) -> Self::Future {
        match self
            .0
            .route(req.context().method_id(), req.context().peer().alpn())
        {
            Some(route) => tower::ServiceExt::oneshot(route.service.clone(), req).boxed(),
            None => serve_unimplemented(&req),
        }
    }
}
