//! The client: one QUIC connection shared by every clone, many concurrent calls, push
//! events, reconnect with backoff, and client-side tower layers.

mod call;
mod connection;
pub(crate) mod typed;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tower::util::BoxCloneSyncService;
use tower::{Layer, Service, ServiceExt};

pub(crate) use call::MetadataSlot;
pub use call::{CallRequest, Channel, OutgoingBody};
pub use connection::{ConnectionState, Disconnect, PushEvents, RawPush};

use crate::body::{MessageStream, Streaming};
use crate::frame::DEFAULT_MAX_PAYLOAD;
use crate::protocol::DEFAULT_ALPN;
use crate::request::{IntoRequest, IntoStreamingRequest, Response};
use crate::routes::MethodInfo;
use crate::status::Status;
use crate::tls::{ClientTls, TlsError};

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TLS configuration was rejected.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The local UDP socket could not be bound.
    #[error("cannot bind a local socket: {0}")]
    Bind(std::io::Error),
    /// The connection attempt could not start (for example an invalid server name).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed (for example the server's certificate is not trusted).
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The handshake did not finish within the connect timeout.
    #[error("connection attempt timed out")]
    Timeout,
}

/// How the client reconnects after losing its connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Whether to reconnect at all (default true).
    pub enabled: bool,
    /// Delay before the first retry (default 100 ms); doubles after every failure.
    pub initial_backoff: Duration,
    /// Upper bound of the delay (default 5 s).
    pub max_backoff: Duration,
    /// Attempts before giving up; `None` retries forever (default `None`).
    pub max_attempts: Option<u32>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

/// Client limits and timeouts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Largest payload of one response or push frame the client accepts (default 4 MiB).
    pub max_payload: u32,
    /// Handshake timeout, and how long a call waits for a connection (default 10 s).
    pub connect_timeout: Duration,
    /// Interval of QUIC keep-alive pings, which also keep the push stream open (default 10 s).
    pub keep_alive_interval: Option<Duration>,
    /// Idle timeout of the connection (default 30 s).
    pub idle_timeout: Duration,
    /// Push events buffered before the client stops reading the push stream (default 64).
    pub push_buffer: usize,
    /// ALPN protocol ids offered (default `qrpc/1`).
    pub alpn: Vec<Vec<u8>>,
    /// The local address to bind; by default loopback for a loopback server, else unspecified.
    pub local_addr: Option<SocketAddr>,
    /// Reconnect behaviour.
    pub reconnect: ReconnectPolicy,
    /// QUIC transport preset (default [`TransportProfile::Rpc`](crate::TransportProfile::Rpc)).
    pub transport_profile: crate::TransportProfile,
    /// Whether a resumed connection sends idempotent calls as 0-RTT data (default true).
    ///
    /// A client resumes a TLS session when its [`ClientTls`] (or a clone of it) reached the
    /// same server before, in this client or another. Then [`ClientBuilder::connect`] and every
    /// reconnect return without waiting for the handshake: unary and server-streaming calls of
    /// methods marked idempotent go out at once, in the first flight; every other call waits
    /// for the handshake to complete. If the server rejects the 0-RTT data, the idempotent calls
    /// are sent again, once, after the handshake. Because the handshake is not awaited, a
    /// server that vanished since the session was made is not a connect error: if the
    /// handshake fails, the calls waiting on it wait for the next connection, as they do while
    /// the client reconnects, and fail with `Unavailable` after the connect timeout.
    pub zero_rtt: bool,
    /// Whether the client accepts QUIC datagrams (default true). Servers send the events of
    /// unreliable push channels as datagrams to clients that accept them, and on the push
    /// stream to clients that do not.
    pub datagrams: bool,
}

impl ClientConfig {
    pub(crate) fn transport(&self) -> quinn::TransportConfig {
        let mut transport = quinn::TransportConfig::default();
        self.transport_profile.apply(&mut transport);
        transport
            .keep_alive_interval(self.keep_alive_interval)
            .max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok())
            // The server opens exactly one push stream per connection.
            .max_concurrent_uni_streams(1u32.into());
        if !self.datagrams {
            transport.datagram_receive_buffer_size(None);
        }
        transport
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            connect_timeout: Duration::from_secs(10),
            keep_alive_interval: Some(Duration::from_secs(10)),
            idle_timeout: Duration::from_secs(30),
            push_buffer: 64,
            alpn: vec![DEFAULT_ALPN.to_vec()],
            local_addr: None,
            reconnect: ReconnectPolicy::default(),
            transport_profile: crate::TransportProfile::default(),
            zero_rtt: true,
            datagrams: true,
        }
    }
}

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
        L: Layer<Channel>,
        L::Service: Service<CallRequest, Response = MessageStream> + Clone + Send + Sync + 'static,
        <L::Service as Service<CallRequest>>::Error: Into<tower::BoxError>,
        <L::Service as Service<CallRequest>>::Future: Send + 'static,
    {
        let (channel, push) = Channel::connect(self.addr, &self.tls, self.config).await?;
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
    channel: Channel,
    service: BoxedCallService,
    push: Arc<std::sync::Mutex<Option<PushEvents>>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("channel", &self.channel)
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

    /// The raw channel beneath the layers.
    pub fn channel(&self) -> &Channel {
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
