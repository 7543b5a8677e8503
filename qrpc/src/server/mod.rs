//! The server: a builder in the style of tonic, an accept loop, and graceful shutdown.

mod call;
mod config;
mod shared;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::task::TaskTracker;
use tower::Service;
use tower_layer::{Identity as IdentityLayer, Layer, Stack};
use tracing::Instrument;

pub use config::ServerConfig;
use shared::Shared;

use crate::body::{RequestBody, ResponseBody, ServerRequest, ServerResponse};
use crate::context::Peer;
use crate::protocol::close;
use crate::push::{PushRegistry, PushSender};
use crate::routes::{DuplicateMethodId, HostedService, Router, RouterBuilder};
use crate::tls::{ServerTls, TlsError};

/// Why a server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Two services registered the same method id.
    #[error(transparent)]
    DuplicateMethod(#[from] DuplicateMethodId),
    /// No TLS configuration was given.
    #[error("no TLS configuration: call Server::tls")]
    NoTls,
    /// The TLS configuration was rejected.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Builds and runs a qrpc server.
///
/// ```no_run
/// # async fn run(svc: qrpc::Methods) -> Result<(), Box<dyn std::error::Error>> {
/// let cert = qrpc::tls::SelfSigned::generate(&["localhost"])?;
/// qrpc::Server::builder()
///     .tls(cert.server_tls())
///     .layer(qrpc::middleware::AuditLayer::new())
///     .add_service(svc)
///     .serve("127.0.0.1:4433".parse()?)
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server<L = IdentityLayer> {
    config: ServerConfig,
    tls: Option<ServerTls>,
    layer: L,
    routes: RouterBuilder,
    registry: PushRegistry,
}

impl Server<IdentityLayer> {
    /// A server with default limits, no services and no layers.
    pub fn builder() -> Self {
        Self {
            config: ServerConfig::default(),
            tls: None,
            layer: IdentityLayer::new(),
            routes: RouterBuilder::default(),
            registry: PushRegistry::new(),
        }
    }
}

impl<L> Server<L> {
    /// The certificate and key to serve with.
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Replaces every limit and timeout at once.
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Adjusts limits and timeouts in place.
    pub fn configure(mut self, f: impl FnOnce(&mut ServerConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// Wraps every call in `layer`. The first layer added is the outermost.
    pub fn layer<N>(self, layer: N) -> Server<Stack<N, L>> {
        Server {
            config: self.config,
            tls: self.tls,
            layer: Stack::new(layer, self.layer),
            routes: self.routes,
            registry: self.registry,
        }
    }

    /// Hosts `service`: a generated `<Service>Server`, a hand-written [`Methods`](crate::Methods),
    /// or either behind per-service layers ([`LayerExt::named_layer`](crate::LayerExt)). Layers
    /// added with [`layer`](Self::layer) wrap every service; a service's own layers run inside
    /// them. A method id served twice makes [`bind`](Self::bind) fail with
    /// [`ServerError::DuplicateMethod`].
    pub fn add_service(mut self, service: impl HostedService) -> Self {
        self.routes.add_service(service, None);
        self
    }

    /// Hosts `service` for connections that negotiate the application protocol `alpn` only,
    /// and offers `alpn` beside the configured ones. Services added with
    /// [`add_service`](Self::add_service) are then not reachable from such connections, and
    /// these not from any other: a call to a method of the other protocol gets
    /// `Unimplemented`. Method ids stay unique across protocols. Layers added with
    /// [`layer`](Self::layer) wrap these calls too; [`Peer::alpn`](crate::Peer::alpn) tells
    /// them apart.
    pub fn add_service_on(mut self, alpn: impl Into<Vec<u8>>, service: impl HostedService) -> Self {
        let alpn = alpn.into();
        if !self.config.alpn.contains(&alpn) {
            self.config.alpn.push(alpn.clone());
        }
        self.routes.add_service(service, Some(alpn));
        self
    }

    /// Serves browsers too: WebTransport sessions (ALPN `h3`) at `config`'s path, from the
    /// page origins it allows, get the services added with [`add_service`](Self::add_service)
    /// (not those of [`add_service_on`](Self::add_service_on)), through the same layers and
    /// limits. See [`webtransport`](crate::webtransport). Feature `webtransport`.
    #[cfg(feature = "webtransport")]
    pub fn webtransport(mut self, config: crate::webtransport::WebTransport) -> Self {
        let h3 = crate::protocol::H3_ALPN.to_vec();
        if !self.config.alpn.contains(&h3) {
            self.config.alpn.push(h3);
        }
        self.config.webtransport = Some(config);
        self
    }

    /// The registry that reaches this server's connections by their bound identity.
    pub fn push_registry(&self) -> PushRegistry {
        self.registry.clone()
    }

    /// The server's whole call path (every layer over the router) without a socket: for
    /// driving the real stack in-process, as tests and fuzz targets do with
    /// `qrpc::testing::detached_peer` connections (feature `testing`).
    pub fn into_service<S>(self) -> Result<S, DuplicateMethodId>
    where
        L: Layer<Router, Service = S>,
    {
        let routes = self.routes.build()?;
        Ok(self.layer.layer(routes))
    }

    /// Binds the UDP socket; the server serves once [`BoundServer::serve`] runs.
    pub fn bind<S>(self, addr: SocketAddr) -> Result<BoundServer<S>, ServerError>
    where
        L: Layer<Router, Service = S>,
    {
        let routes = self.routes.build()?;
        let tls = self.tls.ok_or(ServerError::NoTls)?;
        let crypto = tls.quic_config(&self.config.alpn, self.config.zero_rtt);
        #[cfg(feature = "webtransport")]
        let crypto = match self.config.webtransport().and_then(|w| w.certificates()) {
            Some(browser) => tls.quic_config_for_browsers(
                &self.config.alpn,
                self.config.zero_rtt,
                browser.clone(),
            ),
            None => crypto,
        };
        let mut quic = quinn::ServerConfig::with_crypto(Arc::new(crypto?));
        quic.transport_config(self.config.transport());
        let socket =
            std::net::UdpSocket::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
        let runtime = quinn::default_runtime().ok_or_else(|| ServerError::Bind {
            addr,
            source: std::io::Error::other("no async runtime"),
        })?;
        let endpoint = quinn::Endpoint::new(self.config.endpoint(), Some(quic), socket, runtime)
            .map_err(|source| ServerError::Bind { addr, source })?;
        let service = self.layer.layer(routes.clone());
        let metrics = crate::metrics::CallMetrics::new(routes.methods());
        Ok(BoundServer {
            endpoint,
            shared: Arc::new(Shared {
                config: self.config,
                routes,
                registry: self.registry,
                calls: TaskTracker::new(),
                shutting_down: AtomicBool::new(false),
                shutdown: tokio_util::sync::CancellationToken::new(),
                metrics,
            }),
            service,
        })
    }

    /// Binds `addr` and serves until the process ends.
    pub async fn serve<S>(self, addr: SocketAddr) -> Result<(), ServerError>
    where
        L: Layer<Router, Service = S>,
        S: Service<ServerRequest<RequestBody>, Response = ServerResponse<ResponseBody>>
            + Clone
            + Send
            + 'static,
        S::Error: Into<tower::BoxError>,
        S::Future: Send,
    {
        self.bind(addr)?.serve().await;
        Ok(())
    }

    /// Binds `addr` and serves until `signal` completes, then shuts down gracefully.
    pub async fn serve_with_shutdown<S>(
        self,
        addr: SocketAddr,
        signal: impl Future<Output = ()> + Send,
    ) -> Result<(), ServerError>
    where
        L: Layer<Router, Service = S>,
        S: Service<ServerRequest<RequestBody>, Response = ServerResponse<ResponseBody>>
            + Clone
            + Send
            + 'static,
        S::Error: Into<tower::BoxError>,
        S::Future: Send,
    {
        self.bind(addr)?.serve_with_shutdown(signal).await;
        Ok(())
    }
}

/// A server bound to its socket, ready to serve.
pub struct BoundServer<S> {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    service: S,
}

impl<S> std::fmt::Debug for BoundServer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("local_addr", &self.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl<S> BoundServer<S>
where
    S: Service<ServerRequest<RequestBody>, Response = ServerResponse<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send,
{
    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The registry that reaches this server's connections by their bound identity.
    pub fn push_registry(&self) -> PushRegistry {
        self.shared.registry.clone()
    }

    /// Serves until the process ends.
    pub async fn serve(self) {
        self.serve_with_shutdown(std::future::pending()).await;
    }

    /// Serves until `signal` completes, then shuts down gracefully: stop accepting connections
    /// and calls (new calls are reset with `REFUSED`), let in-flight calls finish within
    /// `shutdown_grace`, then close every connection. Returns once the closed connections have
    /// drained (three probe timeouts: milliseconds on a local network, at most 10 s); the
    /// endpoint's driver then releases the socket, so a restart in the same process can bind
    /// the address again right away.
    pub async fn serve_with_shutdown(self, signal: impl Future<Output = ()> + Send) {
        let Self {
            endpoint,
            shared,
            service,
        } = self;
        let connections = TaskTracker::new();
        let mut signal = std::pin::pin!(signal);
        loop {
            tokio::select! {
                () = &mut signal => break,
                incoming = endpoint.accept() => match incoming {
                    Some(incoming) => {
                        let span = tracing::debug_span!(
                            "connection",
                            peer = %incoming.remote_address(),
                            id = tracing::field::Empty,
                        );
                        connections.spawn(
                            handle_connection(incoming, Arc::clone(&shared), service.clone())
                                .instrument(span),
                        );
                    }
                    None => break,
                },
            }
        }
        tracing::info!("shutting down: no new connections or calls");
        shared.shutting_down.store(true, Ordering::SeqCst);
        // Connections that arrive while calls drain are refused (CONNECTION_REFUSED), so their
        // clients back off and retry at once instead of waiting out a handshake that never
        // comes. Once the endpoint is closed, quinn refuses them itself and this ends.
        let refusing = tokio::spawn({
            let endpoint = endpoint.clone();
            async move {
                while let Some(incoming) = endpoint.accept().await {
                    incoming.refuse();
                }
            }
        });
        shared.shutdown.cancel();
        shared.calls.close();
        let graceful = tokio::time::timeout(shared.config.shutdown_grace, shared.calls.wait())
            .await
            .is_ok();
        if graceful {
            endpoint.close(close::NO_ERROR, b"server shut down");
        } else {
            tracing::warn!("shutdown grace expired with calls still in flight");
            endpoint.close(close::SHUTDOWN, b"server shut down; grace expired");
        }
        connections.close();
        connections.wait().await;
        let _ = refusing.await;
        // Closed connections drain for three probe timeouts (RFC 9000 §10.2) and the endpoint
        // keeps its socket until they have: wait, so that the address is free when this
        // returns. Milliseconds on a quiet path; bounded for pathological round-trip times.
        if tokio::time::timeout(DRAIN_BOUND, endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::warn!("closed connections still draining; the address may stay bound a while");
        }
    }
}

/// The longest a stopped server waits for its closed connections to drain.
const DRAIN_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

async fn handle_connection<S>(incoming: quinn::Incoming, shared: Arc<Shared>, service: S)
where
    S: Service<ServerRequest<RequestBody>, Response = ServerResponse<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send,
{
    let remote = incoming.remote_address();
    let Some(quic) = establish(incoming, &shared).await else {
        return;
    };
    let Some(conn) = session(quic, &shared).await else {
        return;
    };
    let (push, push_rx) = PushSender::new(
        shared.config.push_queue_capacity,
        shared.config.max_payload,
        conn.quic().stable_id() as u64,
    );
    tokio::spawn(crate::push::run_writer(conn.clone(), push_rx));
    let connection = Peer::new(
        conn.clone(),
        push,
        shared.config.max_datagram_event,
        shared.registry.clone(),
        shared.shutdown.clone(),
    );
    tracing::Span::current().record("id", connection.id());
    tracing::debug!(%remote, "connection established");
    crate::metrics::connection_opened();
    loop {
        match conn.accept_call().await {
            Ok((mut send, mut recv)) => {
                if shared.shutting_down.load(Ordering::SeqCst) {
                    send.reset(crate::protocol::reset::REFUSED);
                    recv.stop(crate::protocol::reset::REFUSED);
                    continue;
                }
                // Each call runs in its own span (see `call::serve_call`), a child of the
                // connection's.
                shared.calls.spawn(
                    call::serve_call(
                        send,
                        recv,
                        connection.clone(),
                        Arc::clone(&shared),
                        service.clone(),
                    )
                    .in_current_span(),
                );
            }
            Err(err) => {
                tracing::debug!(%remote, id = connection.id(), %err, "connection closed");
                break;
            }
        }
    }
    connection.on_closed();
    crate::metrics::connection_closed();
}

/// What a connection serves: its QUIC connection, or for an `h3` connection the WebTransport
/// session opened on it (`None` when the session was refused or failed).
#[cfg_attr(not(feature = "webtransport"), allow(clippy::unused_async))]
async fn session(quic: quinn::Connection, shared: &Shared) -> Option<crate::stream::Conn> {
    #[cfg(feature = "webtransport")]
    if let Some(config) = shared.config.webtransport() {
        if crate::stream::negotiated_alpn(&quic).as_deref() == Some(crate::protocol::H3_ALPN) {
            return crate::webtransport::accept(quic, config, shared.config.handshake_timeout)
                .await;
        }
        // The endpoint granted every connection a browser's three unidirectional streams;
        // a native client gets no more, and any it opens is stopped unread.
        quic.set_max_concurrent_uni_streams(0u32.into());
        tokio::spawn(refuse_uni_streams(quic.clone()));
    }
    #[cfg(not(feature = "webtransport"))]
    let _ = shared;
    Some(crate::stream::Conn::Quic(quic))
}

/// Stops every unidirectional stream a native client opens (it has no use for one) until the
/// connection ends.
#[cfg(feature = "webtransport")]
async fn refuse_uni_streams(quic: quinn::Connection) {
    while let Ok(mut recv) = quic.accept_uni().await {
        tracing::debug!("unidirectional stream from a native client stopped");
        let _ = recv.stop(crate::protocol::reset::PROTOCOL_ERROR);
    }
}

/// Completes the handshake. With 0-RTT enabled the connection is served at once (a resumed
/// client's 0-RTT calls are in its first flight); streams opened before the handshake is done
/// are marked 0-RTT and only idempotent methods run from them. The handshake timeout still
/// applies: a client that never finishes is closed.
async fn establish(incoming: quinn::Incoming, shared: &Shared) -> Option<quinn::Connection> {
    let remote = incoming.remote_address();
    let timeout = shared.config.handshake_timeout;
    let mut connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(err) => {
            tracing::debug!(%remote, %err, "connection refused");
            return None;
        }
    };
    if shared.config.checks_alpn_first() {
        // The ALPN is known from the client's first flight; a protocol that needs a client
        // certificate waits for the whole handshake (no 0-RTT) and is checked before serving,
        // and so does a WebTransport session (HTTP/3 sessions are served after the handshake).
        let alpn = tokio::time::timeout(timeout, connecting.handshake_data())
            .await
            .ok()?
            .ok()?
            .downcast::<quinn::crypto::rustls::HandshakeData>()
            .ok()?
            .protocol;
        if let Some(alpn) = alpn
            .as_ref()
            .filter(|a| shared.config.client_certificate_required.contains(a))
        {
            return establish_authenticated(connecting, timeout, alpn).await;
        }
        if alpn.as_deref() == Some(crate::protocol::H3_ALPN) {
            return finish_handshake(connecting, timeout).await;
        }
    }
    let connecting = if shared.config.zero_rtt {
        match connecting.into_0rtt() {
            Ok((conn, done)) => {
                let watched = conn.clone();
                tokio::spawn(async move {
                    if tokio::time::timeout(timeout, done).await.is_err() {
                        tracing::debug!(%remote, "handshake timed out");
                        watched.close(close::NO_ERROR, b"handshake timed out");
                    }
                });
                return Some(conn);
            }
            Err(connecting) => connecting,
        }
    } else {
        connecting
    };
    finish_handshake(connecting, timeout).await
}

/// Waits for the whole handshake, within `timeout`.
async fn finish_handshake(
    connecting: quinn::Connecting,
    timeout: std::time::Duration,
) -> Option<quinn::Connection> {
    let remote = connecting.remote_address();
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(err)) => {
            tracing::debug!(%remote, %err, "handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%remote, "handshake timed out");
            None
        }
    }
}

/// Completes the handshake of a connection whose protocol requires a client certificate, and
/// closes it if the peer presented none (a certificate that was presented has been verified
/// by the TLS configuration's client verifier already).
async fn establish_authenticated(
    connecting: quinn::Connecting,
    timeout: std::time::Duration,
    alpn: &[u8],
) -> Option<quinn::Connection> {
    let remote = connecting.remote_address();
    let conn = finish_handshake(connecting, timeout).await?;
    if conn.peer_identity().is_none() {
        tracing::info!(
            %remote,
            alpn = %String::from_utf8_lossy(alpn),
            "connection refused: no client certificate",
        );
        conn.close(
            close::CLIENT_CERTIFICATE_REQUIRED,
            b"this protocol requires a client certificate",
        );
        return None;
    }
    Some(conn)
}
