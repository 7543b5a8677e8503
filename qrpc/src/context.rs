//! What a handler and a layer know about a call: the peer, the connection and its state.
//!
//! The connection is the session: a handler that authenticates a peer binds an [`PeerIdentity`] to
//! the [`Peer`], and every later call on that connection sees it.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

pub use crate::extensions::Extensions;
pub use crate::identity::PeerIdentity;
use crate::io::QuicSlot;
use crate::metadata::Metadata;
use crate::method::MethodInfo;
use crate::push::{PushRegistry, PushSender};
use crate::stream::Conn;

#[derive(Default)]
struct ConnectionData {
    identity: Option<PeerIdentity>,
    extensions: Extensions,
}

struct ConnectionInner {
    /// Empty for a detached connection (tests of layers and handlers), and once the connection
    /// ended.
    quic: QuicSlot,
    /// Whether this is a detached connection.
    detached: bool,
    id: u64,
    remote: SocketAddr,
    /// The negotiated application protocol.
    alpn: Option<Box<[u8]>>,
    state: Mutex<ConnectionData>,
    push: PushSender,
    registry: PushRegistry,
    /// Cancelled when the server begins a graceful shutdown.
    shutdown: tokio_util::sync::CancellationToken,
}

/// A server-side handle to one client connection and its state. Cheap to clone.
#[derive(Clone)]
pub struct Peer(Arc<ConnectionInner>);

impl Peer {
    /// The application's handle to `quic`; `push` gets to send datagrams (events of up to
    /// `max_datagram_event` bytes) through the same slot.
    pub(crate) fn new(
        conn: Conn,
        push: PushSender,
        max_datagram_event: usize,
        registry: PushRegistry,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Self {
        let quic = conn.quic();
        let remote = quic.remote_address();
        let id = quic.stable_id() as u64;
        // Negotiated in the client's first flight, so known even for a 0-RTT connection.
        let alpn = crate::stream::negotiated_alpn(quic).map(Vec::into_boxed_slice);
        let slot = QuicSlot::new(conn);
        let push = push.with_datagrams(slot.clone(), max_datagram_event);
        Self(Arc::new(ConnectionInner {
            quic: slot,
            detached: false,
            id,
            remote,
            alpn,
            state: Mutex::new(ConnectionData::default()),
            push,
            registry,
            shutdown,
        }))
    }

    /// A connection not backed by QUIC; see [`testing::detached_peer`](crate::testing::detached_peer).
    #[cfg(feature = "testing")]
    pub(crate) fn detached(remote: SocketAddr, registry: PushRegistry) -> Self {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 48);
        let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (push, _) = PushSender::new(1, 0, id);
        Self(Arc::new(ConnectionInner {
            quic: QuicSlot::empty(),
            detached: true,
            id,
            remote,
            alpn: None,
            state: Mutex::new(ConnectionData::default()),
            push,
            registry,
            shutdown: tokio_util::sync::CancellationToken::new(),
        }))
    }

    fn state(&self) -> MutexGuard<'_, ConnectionData> {
        // A poisoned lock only means a handler panicked while holding it; the state itself
        // (an identity and a type map) stays consistent, so keep serving.
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The connection's id, unique among this server's live connections.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The peer's current address (it can change when the client migrates); its last one once
    /// the connection ended.
    pub fn remote_address(&self) -> SocketAddr {
        self.0
            .quic
            .with(|conn| conn.quic().remote_address())
            .unwrap_or(self.0.remote)
    }

    /// The peer's address when the connection was accepted.
    pub fn initial_remote_address(&self) -> SocketAddr {
        self.0.remote
    }

    /// The application protocol (ALPN) the connection negotiated; `None` when detached.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.0.alpn.as_deref()
    }

    /// The certificate chain the peer presented and the server verified (leaf first), when
    /// the server asks for client certificates ([`ServerTls::with_client_auth`](crate::tls::ServerTls::with_client_auth))
    /// and the peer sent one; `None` otherwise.
    pub fn peer_certificates(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        self.0.quic.with(|conn| {
            conn.quic()
                .peer_identity()?
                .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                .ok()
                .map(|certs| *certs)
        })?
    }

    /// The identity bound to this connection, if a handler bound one.
    pub fn identity(&self) -> Option<PeerIdentity> {
        self.state().identity.clone()
    }

    /// Binds `identity` to this connection: later calls see it, and the server's
    /// [`PushRegistry`] can reach this connection by it. Replaces any earlier identity.
    ///
    /// Atomic: concurrent binds and clears of one connection apply one after another, so the
    /// bound identity and the registry always agree (pushes for one identity never reach a
    /// connection bound to another).
    pub fn bind_identity(&self, identity: PeerIdentity) {
        self.bind_identity_with(identity, |_| ());
    }

    /// Binds `identity` as [`bind_identity`](Self::bind_identity) does and, in the same
    /// critical section, runs `f` on the connection's extensions: session state kept there
    /// (a session record, say) changes together with the identity, never apart from it.
    pub fn bind_identity_with<R>(
        &self,
        identity: PeerIdentity,
        f: impl FnOnce(&mut Extensions) -> R,
    ) -> R {
        let mut state = self.state();
        // The registry's lock is taken inside the state lock, never the other way round.
        if let Some(previous) = state.identity.replace(identity.clone()) {
            self.0.registry.unregister(&previous, self.id());
        }
        self.0
            .registry
            .register(identity, self.id(), self.0.push.clone());
        f(&mut state.extensions)
    }

    /// Removes the bound identity (for example on logout or session expiry), atomically with
    /// respect to binds.
    pub fn clear_identity(&self) -> Option<PeerIdentity> {
        let mut state = self.state();
        let previous = state.identity.take();
        if let Some(previous) = &previous {
            self.0.registry.unregister(previous, self.id());
        }
        previous
    }

    /// Runs `f` with the connection's extension map, for state beyond the identity.
    pub fn with_extensions<R>(&self, f: impl FnOnce(&mut Extensions) -> R) -> R {
        f(&mut self.state().extensions)
    }

    /// The sender for push events to this connection.
    pub fn push(&self) -> &PushSender {
        &self.0.push
    }

    /// Closes the connection with an application error code and a reason for the peer.
    pub fn close(&self, code: quinn::VarInt, reason: &[u8]) {
        self.0.quic.with(|conn| conn.close(code, reason));
    }

    /// Whether the connection has closed (never for a detached connection).
    pub fn is_closed(&self) -> bool {
        !self.0.detached && self.0.quic.with(Conn::is_closed).unwrap_or(true)
    }

    /// Completes when the connection closes, for whatever reason; never for a detached
    /// connection. Lets an application release per-connection state at once.
    pub async fn closed(&self) {
        if self.0.detached {
            return std::future::pending::<()>().await;
        }
        // Waiting holds a handle of its own, released when the connection closes.
        if let Some(conn) = self.0.quic.with(Conn::clone) {
            conn.closed().await;
        }
    }

    /// Completes when the server begins a graceful shutdown (never for a detached
    /// connection). In-flight calls get the server's shutdown grace to finish; a handler that
    /// waits on its own (a long poll, a subscription) should select on this and answer at
    /// once, so that shutdown does not wait out the grace.
    pub async fn server_shutdown(&self) {
        self.0.shutdown.cancelled().await;
    }

    /// Whether the server has begun a graceful shutdown.
    pub fn is_server_shutting_down(&self) -> bool {
        self.0.shutdown.is_cancelled()
    }

    /// Round-trip time estimate of the connection (zero when detached).
    pub fn rtt(&self) -> std::time::Duration {
        self.0
            .quic
            .with(|conn| conn.quic().rtt())
            .unwrap_or(std::time::Duration::ZERO)
    }

    /// The connection ended: its identity is unbound and the handle to quinn's connection
    /// dropped (see [`QuicSlot`]).
    pub(crate) fn on_closed(&self) {
        self.0.quic.clear();
        self.clear_identity();
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id())
            .field("remote", &self.remote_address())
            .field("identity", &self.identity())
            .finish()
    }
}

/// Response metadata a handler sets while the call runs; sent before its response.
#[derive(Debug, Clone, Default)]
pub(crate) struct ResponseMetadata(Arc<Mutex<Metadata>>);

impl ResponseMetadata {
    fn lock(&self) -> std::sync::MutexGuard<'_, Metadata> {
        // Each critical section is one insert or take: a panic cannot leave it half-done.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What was set, leaving nothing.
    pub(crate) fn take(&self) -> Metadata {
        std::mem::take(&mut *self.lock())
    }
}

/// What a handler and a layer see of one call.
#[derive(Debug)]
pub struct RequestContext {
    connection: Peer,
    method_id: u16,
    method: Option<MethodInfo>,
    request_id: u32,
    extensions: Extensions,
    early_data: bool,
    metadata: Metadata,
    deadline: Option<tokio::time::Instant>,
    /// Only for a call whose client sent the extension: no other client is answered any.
    response_metadata: Option<ResponseMetadata>,
}

impl RequestContext {
    /// A context for a call; the server builds these (tests use
    /// [`testing::request_context`](crate::testing::request_context)).
    pub(crate) fn new(
        connection: Peer,
        method_id: u16,
        method: Option<MethodInfo>,
        request_id: u32,
    ) -> Self {
        Self {
            connection,
            method_id,
            method,
            request_id,
            extensions: Extensions::new(),
            early_data: false,
            metadata: Metadata::new(),
            deadline: None,
            response_metadata: None,
        }
    }

    /// Sets what the call's extension frame carried; returns the handle of the response
    /// metadata, for the server to send.
    pub(crate) fn set_call_extension(
        &mut self,
        metadata: Metadata,
        deadline: Option<tokio::time::Instant>,
    ) -> ResponseMetadata {
        self.metadata = metadata;
        self.deadline = deadline;
        self.response_metadata
            .get_or_insert_with(ResponseMetadata::default)
            .clone()
    }

    /// Marks the call as having arrived in 0-RTT data.
    pub(crate) fn set_early_data(&mut self, early: bool) {
        self.early_data = early;
    }

    /// Whether the call arrived in 0-RTT data on a resumed connection. Only idempotent
    /// methods are ever run from 0-RTT data; such a request may be a replay, so a handler
    /// must not make it the trigger for anything it must do only once.
    pub fn early_data(&self) -> bool {
        self.early_data
    }

    /// The connection the call arrived on.
    pub fn peer(&self) -> &Peer {
        &self.connection
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// The connection's id.
    pub fn connection_id(&self) -> u64 {
        self.connection.id()
    }

    /// The identity bound to the connection, if any.
    pub fn identity(&self) -> Option<PeerIdentity> {
        self.connection.identity()
    }

    /// The method id from the request frame.
    pub fn method_id(&self) -> u16 {
        self.method_id
    }

    /// The registered method, or `None` when the id is not served here.
    pub fn method(&self) -> Option<&MethodInfo> {
        self.method.as_ref()
    }

    /// The request id from the request frame.
    pub fn request_id(&self) -> u32 {
        self.request_id
    }

    /// Per-call values that layers pass to handlers.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }

    /// Mutable per-call values.
    pub fn extensions_mut(&mut self) -> &mut Extensions {
        &mut self.extensions
    }

    /// The metadata the client sent with the call (empty if none, or if the client speaks
    /// only the plain framing).
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// When the client stops waiting, if it set a deadline: the server drops the handler then
    /// and answers `DeadlineExceeded`.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.deadline
    }

    /// The time left before the deadline (zero once it passed), if the client set one.
    pub fn remaining(&self) -> Option<std::time::Duration> {
        self.deadline
            .map(|d| d.saturating_duration_since(tokio::time::Instant::now()))
    }

    /// Adds to the metadata sent back before the response. Only a client that sent an
    /// extension frame (a deadline or metadata) receives it; metadata set after the response
    /// (or a stream's first message) has gone is not sent.
    pub fn with_response_metadata<R>(&self, f: impl FnOnce(&mut Metadata) -> R) -> R {
        match &self.response_metadata {
            Some(metadata) => f(&mut metadata.lock()),
            // The client reads no response metadata: what is set goes nowhere.
            None => f(&mut Metadata::new()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn extensions_store_one_value_per_type() {
        let mut ext = Extensions::new();
        assert!(ext.insert(5u32).is_none());
        assert_eq!(ext.insert(6u32), Some(5));
        ext.insert(String::from("s"));
        assert_eq!(ext.get::<u32>(), Some(&6));
        assert_eq!(ext.remove::<String>().as_deref(), Some("s"));
        assert_eq!(ext.len(), 1);
        assert_eq!(format!("{ext:?}"), "Extensions { len: 1 }");
    }

    #[test]
    fn concurrent_binds_leave_the_identity_and_the_registry_in_agreement() {
        let registry = PushRegistry::new();
        let names: Vec<PeerIdentity> = (0..3)
            .map(|i| PeerIdentity::new(format!("user{i}")))
            .collect();
        for _ in 0..300 {
            let conn = Peer::detached("127.0.0.1:9".parse().unwrap(), registry.clone());
            let threads: Vec<_> = (0..4)
                .map(|t| {
                    let (conn, names) = (conn.clone(), names.clone());
                    std::thread::spawn(move || {
                        for i in 0..40 {
                            conn.bind_identity(names[(t + i) % names.len()].clone());
                        }
                    })
                })
                .collect();
            for thread in threads {
                thread.join().unwrap();
            }
            let bound = conn.identity().unwrap();
            for name in &names {
                let registered = registry.registered(name).contains(&conn.id());
                assert_eq!(
                    registered,
                    *name == bound,
                    "{name:?} registered: {registered}, bound: {bound:?}"
                );
            }
            conn.clear_identity();
            assert!(
                names
                    .iter()
                    .all(|n| !registry.registered(n).contains(&conn.id()))
            );
        }
    }

    #[test]
    fn bind_identity_with_changes_the_extensions_in_the_same_step() {
        let conn = Peer::detached("127.0.0.1:9".parse().unwrap(), PushRegistry::new());
        let previous = conn.bind_identity_with(PeerIdentity::new("a"), |e| e.insert(1u32));
        assert_eq!(previous, None);
        let previous = conn.bind_identity_with(PeerIdentity::new("b"), |e| e.insert(2u32));
        assert_eq!(previous, Some(1));
        assert_eq!(conn.identity(), Some(PeerIdentity::new("b")));
        assert_eq!(conn.with_extensions(|e| e.get::<u32>().copied()), Some(2));
    }
}
