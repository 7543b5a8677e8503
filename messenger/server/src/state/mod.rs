//! State shared by every service, split by concern: the store, sessions and limits, the
//! key-transparency log ([`kt`]), arrivals and their waiters ([`arrivals`]) and the
//! stranger-check memory ([`strangers`]). Blob uploads keep no state here: the store takes
//! each chunk only where the stored bytes end.
//!
//! Secrets (the OPAQUE server setup, the log's signing key) are crate-private: nothing
//! outside the server reaches them through this type.

pub mod arrivals;
pub mod kt;
pub mod strangers;

use std::sync::Arc;

use qpq_core::identity::IdentityKey;
use qpq_core::kt::MerkleLog;
use qpq_proto::auth_flows::OpaqueSuite;
use qpq_proto::v1::{self, cluster_poke::Poke};
use qrpc::{PeerIdentity, PushRegistry};

use crate::abuse::Limiters;
use crate::bus::ClusterBus;
use crate::clock::Clock;
use crate::config::Limits;
use crate::session::{EndReason, Sessions};
use crate::store::{DeviceId, QueueLimits, Store, StoreResult};

pub use arrivals::ArrivalWatch;

/// Shared server state.
pub struct AppState<S> {
    pub(crate) store: S,
    pub(crate) registry: PushRegistry,
    pub(crate) limits: Limits,
    /// The server's domain: the one in every device name it vouches for.
    pub(crate) domain: String,
    /// OPAQUE server keys (secret).
    pub(crate) opaque: opaque_ke::ServerSetup<OpaqueSuite>,
    /// The key-transparency log, with its latest signed head.
    kt: tokio::sync::Mutex<kt::KtLog>,
    /// Signs tree heads (secret).
    pub(crate) kt_key: IdentityKey,
    pub(crate) limiters: Limiters,
    pub(crate) sessions: Arc<Sessions>,
    pub(crate) clock: Clock,
    arrivals: Arc<arrivals::Arrivals>,
    /// Store queries made by `FetchWait` calls (a metric, and what the amplification test
    /// watches).
    pub fetch_wait_queries: std::sync::atomic::AtomicU64,
    /// `FetchWait` calls that found nothing and began to wait (a metric; tests wait for it
    /// so that what answers a call is the wake-up, not its first look).
    pub fetch_waits_parked: std::sync::atomic::AtomicU64,
    /// `(recipient, sender)` pairs recently checked, with the answer (does the recipient know
    /// the sender?) and until when it holds: spares the stranger check a store read on every
    /// message. Forgotten when the recipient writes to the sender and when channels change.
    strangers: strangers::StrangerMemory,
    /// Tells the other nodes of a cluster what they must apply too.
    pub(crate) bus: ClusterBus,
    /// Federation with other servers, when enabled.
    pub(crate) federation: Option<Arc<crate::federation::Federation>>,
    /// The operator's plugins (none by default).
    pub(crate) plugins: crate::plugins::Plugins,
}

/// `percent` % of `total`, at least 1.
fn share(total: u64, percent: u8) -> u64 {
    (u128::from(total) * u128::from(percent) / 100).clamp(1, u128::from(u64::MAX)) as u64
}

impl<S> std::fmt::Debug for AppState<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<S: Store> AppState<S> {
    /// Assembles the state; `kt_log` must already hold every stored leaf.
    pub fn new(
        store: S,
        registry: PushRegistry,
        limits: Limits,
        opaque: opaque_ke::ServerSetup<OpaqueSuite>,
        kt_log: MerkleLog,
        kt_key: IdentityKey,
    ) -> Self {
        Self {
            limiters: Limiters::new(&limits),
            store,
            arrivals: Arc::new(arrivals::Arrivals::new(registry.clone())),
            registry,
            limits,
            domain: "localhost".into(),
            opaque,
            kt: tokio::sync::Mutex::new(kt::KtLog {
                log: kt_log,
                head: None,
            }),
            kt_key,
            sessions: Arc::new(Sessions::new(Clock::system())),
            clock: Clock::system(),
            fetch_wait_queries: std::sync::atomic::AtomicU64::new(0),
            fetch_waits_parked: std::sync::atomic::AtomicU64::new(0),
            strangers: strangers::StrangerMemory::default(),
            bus: ClusterBus::Local,
            federation: None,
            plugins: crate::plugins::Plugins::none(),
        }
    }

    /// Sets the plugins (default: none).
    pub fn with_plugins(mut self, plugins: crate::plugins::Plugins) -> Self {
        self.plugins = plugins;
        self
    }

    /// The server's plugins (to reload them).
    pub fn plugins(&self) -> &crate::plugins::Plugins {
        &self.plugins
    }

    /// Sets federation (default: none).
    pub fn with_federation(mut self, federation: Arc<crate::federation::Federation>) -> Self {
        self.federation = Some(federation);
        self
    }

    /// Federation, when this server federates.
    pub fn federation(&self) -> Option<&Arc<crate::federation::Federation>> {
        self.federation.as_ref()
    }

    /// Tells `user`'s connected devices that one of their messages could not be relayed
    /// (failure `id`; they read it with `RelayFailures`).
    pub async fn relay_failed(&self, user: &str, id: u64) {
        let event = v1::server_event_push::Event::RelayFailed(v1::RelayFailed { id });
        if let Ok(devices) = self.store.list_devices(user.to_owned()).await {
            for d in devices {
                self.registry
                    .try_send_event(&DeviceId::new(user, d.device).identity(), &event);
            }
        }
    }

    /// Sets the server's domain (default `localhost`).
    pub fn with_domain(mut self, domain: String) -> Self {
        self.domain = domain;
        self
    }

    /// Sets this node's rate limiters (default: sized by the limits given to [`new`](Self::new);
    /// a node of a cluster gets its share, [`Limits::per_node`]).
    pub fn with_limiters(mut self, limiters: Limiters) -> Self {
        self.limiters = limiters;
        self
    }

    /// Sets the cluster bus (default: one node, [`ClusterBus::Local`]).
    pub fn with_bus(mut self, bus: ClusterBus) -> Self {
        self.bus = bus;
        self
    }

    /// The cluster bus.
    pub fn bus(&self) -> &ClusterBus {
        &self.bus
    }

    /// Sets the time source (default: the system clock).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.sessions = Arc::new(Sessions::new(clock.clone()));
        self.clock = clock;
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Reaches logged-in connections by `user/device`.
    pub fn registry(&self) -> &PushRegistry {
        &self.registry
    }

    /// The limits the server runs with.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The rate limiters.
    pub fn limiters(&self) -> &Limiters {
        &self.limiters
    }

    /// Live sessions by device.
    pub fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }

    /// The time source of every expiry and stored timestamp.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Milliseconds since the Unix epoch by the server's clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The bounds of every recipient queue.
    pub fn queue_limits(&self) -> QueueLimits {
        let l = &self.limits;
        QueueLimits {
            max_messages: l.max_queue_depth,
            max_bytes: l.max_queue_bytes,
            sender_messages: l
                .max_pending_per_sender
                .min(share(l.max_queue_depth, l.max_queue_share_percent)),
            sender_bytes: l
                .max_pending_bytes_per_sender
                .min(share(l.max_queue_bytes, l.max_queue_share_percent)),
            stranger_messages: l.max_pending_per_stranger,
            stranger_bytes: l.max_pending_bytes_per_stranger,
        }
    }

    /// `writer` just wrote to `reader`: from now on `writer` knows `reader`, on every node.
    pub async fn wrote_to(&self, writer: &str, reader: &str) {
        self.strangers.wrote_to(writer, reader);
        self.bus
            .publish(Poke::WroteTo(v1::WroteTo {
                writer: writer.to_owned(),
                reader: reader.to_owned(),
            }))
            .await;
    }

    /// Channel memberships changed: every remembered stranger answer may be stale, on every
    /// node.
    pub async fn channels_changed(&self) {
        self.strangers.channels_changed();
        self.bus
            .publish(Poke::ChannelsChanged(v1::ChannelsChanged {}))
            .await;
    }

    /// Ends every session of `device` on every node (revocation); `keep_open` is the
    /// caller's own connection on this node, which still needs its answer.
    pub async fn end_device_sessions(
        &self,
        device: &DeviceId,
        reason: EndReason,
        keep_open: Option<u64>,
    ) {
        self.sessions.end_device(device, reason, keep_open);
        self.bus
            .publish(Poke::EndSessions(v1::EndSessions {
                target: Some(v1::end_sessions::Target::Device(v1::DeviceRef {
                    user: device.user.clone(),
                    device: device.device.clone(),
                })),
                reason: reason.as_str().into(),
            }))
            .await;
    }

    /// Ends every session resumed from the token with this hash, on every node (logout).
    pub async fn end_token_sessions(
        &self,
        token_hash: [u8; 32],
        reason: EndReason,
        keep_open: Option<u64>,
    ) {
        self.sessions.end_token(token_hash, reason, keep_open);
        self.bus
            .publish(Poke::EndSessions(v1::EndSessions {
                target: Some(v1::end_sessions::Target::TokenHash(
                    token_hash.to_vec().into(),
                )),
                reason: reason.as_str().into(),
            }))
            .await;
    }

    /// Applies another node's poke to this node's state.
    pub fn apply_poke(&self, poke: Poke) {
        match poke {
            Poke::Arrived(a) => self
                .arrivals
                .arrived(&DeviceId::new(a.user, a.device), a.seq),
            Poke::EndSessions(end) => {
                let Some(reason) = EndReason::from_word(&end.reason) else {
                    return;
                };
                match end.target {
                    Some(v1::end_sessions::Target::Device(d)) => {
                        self.sessions
                            .end_device(&DeviceId::new(d.user, d.device), reason, None);
                    }
                    Some(v1::end_sessions::Target::TokenHash(hash)) => {
                        if let Ok(hash) = <[u8; 32]>::try_from(hash.as_ref()) {
                            self.sessions.end_token(hash, reason, None);
                        }
                    }
                    None => {}
                }
            }
            Poke::ChannelsChanged(_) => self.strangers.channels_changed(),
            Poke::WroteTo(w) => self.strangers.wrote_to(&w.writer, &w.reader),
            Poke::PushToUser(p) => {
                let Ok(event_type) = u16::try_from(p.event_type) else {
                    return;
                };
                for device in p.devices {
                    let identity = DeviceId::new(p.user.clone(), device).identity();
                    if p.unreliable {
                        if let Ok(event) =
                            <v1::ephemeral_event_push::Event as qrpc::PushEvent>::decode_payload(
                                event_type,
                                p.payload.clone(),
                            )
                        {
                            self.registry.try_send_event(&identity, &event);
                        }
                    } else if let Ok(event) =
                        <v1::server_event_push::Event as qrpc::PushEvent>::decode_payload(
                            event_type,
                            p.payload.clone(),
                        )
                    {
                        self.registry.try_send_event(&identity, &event);
                    }
                }
            }
        }
    }

    /// Which of `recipients` know `sender` (wrote to it or share a channel), reusing recent
    /// answers and asking the store for the rest.
    pub async fn known_to(&self, sender: &str, recipients: &[String]) -> StoreResult<Vec<bool>> {
        self.strangers
            .known_to(&self.store, sender, recipients)
            .await
    }

    /// Watches the newest seq enqueued for `device` from now on (for `FetchWait`).
    pub fn watch_arrivals(&self, device: &DeviceId) -> ArrivalWatch {
        self.arrivals.watch(device)
    }

    /// Wakes `FetchWait` callers of `device` whose position is before `seq`, and pushes a
    /// notification to the device's connections, on every node.
    pub async fn message_arrived(&self, device: &DeviceId, seq: u64) {
        self.arrivals.arrived(device, seq);
        self.bus
            .publish(Poke::Arrived(v1::Arrived {
                user: device.user.clone(),
                device: device.device.clone(),
                seq,
            }))
            .await;
    }

    /// Devices with a `FetchWait` in progress (for tests and metrics).
    pub fn waiting_devices(&self) -> usize {
        self.arrivals.waiting_devices()
    }

    /// One janitor pass: deletes expired sessions and endpoints, forgets idle rate-limit keys,
    /// ended sessions and unwatched devices. Returns the rows deleted from the store.
    pub async fn janitor_pass(&self) -> u64 {
        self.limiters.prune();
        if let Some(fed) = &self.federation {
            fed.prune();
        }
        self.sessions.prune();
        self.arrivals.prune();
        self.end_sessions_gone_from_the_store().await;
        match self.store.delete_expired(self.now_ms()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "janitor could not delete expired rows");
                0
            }
        }
    }

    /// Ends the live sessions on this node whose row is gone from the store: revoked or
    /// logged out through another node whose poke never arrived (pokes are at most once). The
    /// janitor runs this, so a lost poke keeps a revoked device at most one janitor interval.
    pub async fn end_sessions_gone_from_the_store(&self) {
        for (token_hash, device) in self.sessions.live_tokens() {
            match self.store.session(token_hash.to_vec()).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    let reason = match self.store.device_exists(device).await {
                        Ok(false) => EndReason::Revoked,
                        _ => EndReason::LoggedOut,
                    };
                    self.sessions.end_token(token_hash, reason, None);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "janitor could not check live sessions");
                    return;
                }
            }
        }
    }

    /// Pushes an event to every device of `user`, on whichever node holds its connections.
    pub async fn push_to_user<E: qrpc::PushEvent>(&self, user: &str, event: &E) {
        let Ok(devices) = self.store.list_devices(user.to_owned()).await else {
            return;
        };
        let devices: Vec<String> = devices.into_iter().map(|d| d.device).collect();
        for device in &devices {
            let identity: PeerIdentity = DeviceId::new(user, device.clone()).identity();
            self.registry.try_send_event(&identity, event);
        }
        if !devices.is_empty() {
            self.bus
                .publish(Poke::PushToUser(v1::PushToUser {
                    user: user.to_owned(),
                    unreliable: E::UNRELIABLE,
                    event_type: u32::from(event.event_type()),
                    payload: event.encode_payload(),
                    devices,
                }))
                .await;
        }
    }
}
