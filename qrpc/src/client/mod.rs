//! The client: one QUIC connection shared by every clone, many concurrent calls, push
//! events, reconnect with backoff, and client-side tower layers.

mod call;
mod config;
mod connection;
mod push;
pub(crate) mod typed;

use std::net::SocketAddr;
use std::sync::Arc;

use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

pub use call::{CallRequest, CallService, OutgoingBody};
pub use config::{ClientConfig, ClientError, ReconnectPolicy};
pub use connection::{ConnectionState, Disconnect};
pub use push::{PushEvents, RawPush, TypedPushEvents};

use crate::body::{MessageStream, Streaming};
use crate::method::MethodInfo;
use crate::request::{IntoRequest, IntoStreamingRequest, Response};
use crate::status::Status;
use crate::tls::ClientTls;

type BoxedCallService = BoxCloneSyncService<CallRequest, MessageStream, tower::BoxError>;

/// Configures and connects a [`Client`].
pub struct ClientBuilder<L = tower_layer::Identity> {
    addr: SocketAddr,
    tls: ClientTls,
    config: ClientConfig,
    layer: L,
}

impl<L> std::fmt::Debug for ClientBuilder<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("addr", &self.addr)
            .field("tls", &self.tls)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<L> ClientBuilder<L> {
    /// Replaces the whole configuration.
    ///
    /// ```
    /// let mut config = qrpc::ClientConfig::default();
    /// config
    ///     .connect_timeout(std::time::Duration::from_secs(3))
    ///     .alpn(vec![b"my-app/1".to_vec()]);
    /// # let tls = qrpc::tls::ClientTls::pinned([0; 32]);
    /// let builder = qrpc::Client::builder("127.0.0.1:4433".parse()?, tls).config(config);
    /// # let _ = builder;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn config(mut self, config: ClientConfig) -> Self {
        self.config = config;
        self
    }

    /// Adjusts limits and timeouts in place.
    pub fn configure(mut self, f: impl FnOnce(&mut ClientConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// Wraps every call in `layer` (a tower layer over [`CallRequest`]). The first layer added
    /// is the outermost.
    pub fn layer<N>(self, layer: N) -> ClientBuilder<tower_layer::Stack<N, L>> {
        ClientBuilder {
            addr: self.addr,
            tls: self.tls,
            config: self.config,
            layer: tower_layer::Stack::new(layer, self.layer),
        }
    }

    /// Connects; fails if the first connection cannot be made.
    pub async fn connect(self) -> Result<Client, ClientError>
    where
        L: Layer<CallService>,
        L::Service: Service<CallRequest, Response = MessageStream> + Clone + Send + Sync + 'static,
        <L::Service as Service<CallRequest>>::Error: Into<tower::BoxError>,
        <L::Service as Service<CallRequest>>::Future: Send + 'static,
    {
        let (channel, push) = CallService::connect(self.addr, &self.tls, self.config).await?;
        let service = self.layer.layer(channel.clone()).map_err(Into::into);
        Ok(Client {
            channel,
            service: BoxCloneSyncService::new(service),
            push: Arc::new(std::sync::Mutex::new(Some(push))),
        })
    }
}

/// A qrpc client. Cheap to clone: clones share one connection and issue calls concurrently.
///
/// The connection is the session: state the server binds to a connection (such as a login) is
/// lost when the client reconnects. Watch [`Client::state`] to re-establish it.
#[derive(Clone)]
pub struct Client {
    channel: CallService,
    service: BoxedCallService,
    push: Arc<std::sync::Mutex<Option<PushEvents>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("call_service", &self.channel)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder for a client of the server at `addr`.
    pub fn builder(addr: SocketAddr, tls: ClientTls) -> ClientBuilder {
        ClientBuilder {
            addr,
            tls,
            config: ClientConfig::default(),
            layer: tower_layer::Identity::new(),
        }
    }

    /// Connects with default settings.
    pub async fn connect(addr: SocketAddr, tls: ClientTls) -> Result<Self, ClientError> {
        Self::builder(addr, tls).connect().await
    }

    /// The per-call stream service beneath the client's layers (no layer applies to calls made
    /// through it).
    pub fn call_service(&self) -> &CallService {
        &self.channel
    }

    /// Takes the stream of push events. Only the first call gets it; later calls get `None`.
    ///
    /// Events arrive in the order the server queued them on this connection; after a reconnect
    /// the same stream carries the new connection's events.
    pub fn push_events(&self) -> Option<PushEvents> {
        self.push.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Watches the connection state (connected, reconnecting, failed).
    pub fn state(&self) -> tokio::sync::watch::Receiver<ConnectionState> {
        self.channel.state()
    }

    /// Watches how connections end: holds the last [`Disconnect`] (application close code and
    /// reason) once the first connection is lost, updated before the state changes to
    /// reconnecting or closed. An application reads it to tell a server-side close (a
    /// revoked session, say) from a network failure.
    pub fn disconnects(&self) -> tokio::sync::watch::Receiver<Option<Disconnect>> {
        self.channel.disconnects()
    }

    /// Moves the client to a new local UDP socket (QUIC connection migration): calls in
    /// flight continue and the server sees the new address.
    pub fn rebind(&self, local: SocketAddr) -> std::io::Result<()> {
        self.channel.rebind(local)
    }

    /// Closes the connection; later calls fail with `Unavailable`.
    pub fn close(&self) {
        self.channel.close();
    }

    async fn dispatch(&self, request: CallRequest) -> Result<MessageStream, Status> {
        self.service
            .clone()
            .oneshot(request)
            .await
            .map_err(Status::from_error)
    }

    /// Any call as a [`CallRequest`], through the client's layers: raw bytes in, a raw
    /// message stream out. The typed methods below are built on it.
    pub async fn call(&self, request: CallRequest) -> Result<MessageStream, Status> {
        self.dispatch(request).await
    }

    /// A unary call of `method`. `request` is the message, a reference to it, or a
    /// [`Request`](crate::Request) with a timeout and metadata; the [`Response`] carries the
    /// server's metadata. An idempotent method may travel as 0-RTT data (see
    /// [`ClientConfig::zero_rtt`]).
    pub async fn unary<Req, Resp>(
        &self,
        method: &MethodInfo,
        request: impl IntoRequest<Req>,
    ) -> Result<Response<Resp>, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        typed::unary(self, method, request).await
    }

    /// A server-streaming call of `method` (see [`unary`](Self::unary) for `request`).
    pub async fn server_streaming<Req, Resp>(
        &self,
        method: &MethodInfo,
        request: impl IntoRequest<Req>,
    ) -> Result<Streaming<Resp>, Status>
    where
        Req: prost::Message,
        Resp: prost::Message + Default,
    {
        typed::server_streaming(self, method, request).await
    }

    /// A client-streaming call of `method`: `requests` is a stream of messages or a
    /// [`Request`](crate::Request) wrapping one.
    pub async fn client_streaming<R, Resp>(
        &self,
        method: &MethodInfo,
        requests: R,
    ) -> Result<Response<Resp>, Status>
    where
        R: IntoStreamingRequest,
        R::Message: prost::Message + 'static,
        Resp: prost::Message + Default,
    {
        typed::client_streaming(self, method, requests).await
    }

    /// A bidi-streaming call of `method` (see [`client_streaming`](Self::client_streaming)).
    pub async fn bidi<R, Resp>(
        &self,
        method: &MethodInfo,
        requests: R,
    ) -> Result<Streaming<Resp>, Status>
    where
        R: IntoStreamingRequest,
        R::Message: prost::Message + 'static,
        Resp: prost::Message + Default,
    {
        typed::bidi(self, method, requests).await
    }
}

/// A client is the transport of generated clients, and can sit under client-side layers of
/// its own: `EchoClient::new(ServiceBuilder::new().layer(..).service(client))`.
impl Service<CallRequest> for Client {
    type Response = MessageStream;
    type Error = Status;
    type Future = futures::future::MapErr<
        futures::future::BoxFuture<'static, Result<MessageStream, tower::BoxError>>,
        fn(tower::BoxError) -> Status,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Status>> {
        self.service.poll_ready(cx).map_err(Status::from_error)
    }

    fn call(&mut self, request: CallRequest) -> Self::Future {
        futures::TryFutureExt::map_err(self.service.call(request), Status::from_error)
    }
}
