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
use qrpc::{PeerIdentity, PushRegistry};

use crate::abuse::Limiters;
use crate::clock::Clock;
use crate::config::Limits;
use crate::session::Sessions;
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
        }
    }

    /// Sets the server's domain (default `localhost`).
    pub fn with_domain(mut self, domain: String) -> Self {
        self.domain = domain;
        self
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

    /// `writer` just wrote to `reader`: from now on `writer` knows `reader`.
    pub fn wrote_to(&self, writer: &str, reader: &str) {
        self.strangers.wrote_to(writer, reader);
    }

    /// Channel memberships changed: every remembered stranger answer may be stale.
    pub fn channels_changed(&self) {
        self.strangers.channels_changed();
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
    /// notification to the device's connections.
    pub fn message_arrived(&self, device: &DeviceId, seq: u64) {
        self.arrivals.arrived(device, seq);
    }

    /// Devices with a `FetchWait` in progress (for tests and metrics).
    pub fn waiting_devices(&self) -> usize {
        self.arrivals.waiting_devices()
    }

    /// One janitor pass: deletes expired sessions and endpoints, forgets idle rate-limit keys,
    /// ended sessions and unwatched devices. Returns the rows deleted from the store.
    pub async fn janitor_pass(&self) -> u64 {
        self.limiters.prune();
        self.sessions.prune();
        self.arrivals.prune();
        match self.store.delete_expired(self.now_ms()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "janitor could not delete expired rows");
                0
            }
        }
    }

    /// Pushes an event to every device of `user`.
    pub async fn push_to_user<E: qrpc::PushEvent>(&self, user: &str, event: &E) {
        if let Ok(devices) = self.store.list_devices(user.to_owned()).await {
            for d in devices {
                let identity: PeerIdentity = DeviceId::new(user, d.device).identity();
                self.registry.try_send_event(&identity, event);
            }
        }
    }
}
