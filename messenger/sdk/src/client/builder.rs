//! [`QpqClientBuilder`]: where a client's server, store and limits are chosen.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use qrpc::tls::ClientTls;
use tokio::sync::{Notify, broadcast};
use zeroize::Zeroizing;

use crate::error::{SdkError, SdkResult};
use crate::events::ConnectionState;
use crate::store::{MemoryStore, SqlStore, Store, StoreKey};

use crate::client::Inner;
use crate::client::QpqClient;
use crate::client::Tasks;
use crate::client::limits::ClientLimits;
use crate::client::limits::InvitationPolicy;
use crate::faults::CrashPoint;

/// Configures a [`QpqClient`]; see [`QpqClient::builder`].
#[derive(Debug, Default)]
pub struct QpqClientBuilder {
    pub(crate) server: Option<SocketAddr>,
    pub(crate) fallback_servers: Vec<SocketAddr>,
    pub(crate) tls: Option<ClientTls>,
    pub(crate) data_dir: Option<PathBuf>,
    pub(crate) key: Option<StoreKey>,
    pub(crate) limits: ClientLimits,
    pub(crate) crash: Option<CrashPoint>,
    pub(crate) in_memory: bool,
    pub(crate) invitations: InvitationPolicy,
}

impl QpqClientBuilder {
    /// Tests only (the `testing` feature): the first time the client reaches `point`, it
    /// fails there: a crash point stops the background tasks as if the process were killed
    /// (reported as `Offline` with "simulated crash"); [`CrashPoint::StoreFailure`] fails
    /// like a local store error, and the client goes on in the same process.
    #[cfg(feature = "testing")]
    pub fn crash_at(mut self, point: CrashPoint) -> Self {
        self.crash = Some(point);
        self
    }

    /// Which invitations are joined at once (default [`InvitationPolicy::FromKnown`]).
    pub fn invitations(mut self, policy: InvitationPolicy) -> Self {
        self.invitations = policy;
        self
    }

    /// The server's address.
    pub fn server(mut self, addr: SocketAddr) -> Self {
        self.server = Some(addr);
        self
    }

    /// The other nodes of the server's cluster (same certificate, same accounts): when the
    /// connection is lost, the client reconnects to the next address, so a node that dies
    /// costs its clients a few seconds (the connection's idle timeout, 4 s, or less when the
    /// node comes back and resets it), not the outage.
    pub fn fallback_servers(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.fallback_servers = addrs.into_iter().collect();
        self
    }

    /// Trusts exactly the server certificate with this SHA-256 (printed by `qpq-server`).
    pub fn pin(mut self, fingerprint: [u8; 32]) -> Self {
        self.tls = Some(ClientTls::pinned(fingerprint));
        self
    }

    /// Any other trust setting (CA roots, say).
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Where the encrypted store lives (one directory per account and device).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Encrypts the store with a key stretched from `passphrase` (Argon2id, per-store salt).
    pub fn passphrase(mut self, passphrase: impl Into<String>) -> Self {
        self.key = Some(StoreKey::Passphrase(Zeroizing::new(passphrase.into())));
        self
    }

    /// Encrypts the store with a raw 32-byte key.
    pub fn raw_key(mut self, key: [u8; 32]) -> Self {
        self.key = Some(StoreKey::Raw(Zeroizing::new(key)));
        self
    }

    /// Keeps everything in memory instead of a data directory (tests, throwaway bots):
    /// nothing survives the process, and no data directory or store key is needed.
    pub fn in_memory(mut self) -> Self {
        self.in_memory = true;
        self
    }

    /// Replaces the limits.
    pub fn limits(mut self, limits: ClientLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Opens the local store (offline). Nothing talks to the server until
    /// [`register`](QpqClient::register), [`login`](QpqClient::login) or
    /// [`connect`](QpqClient::connect).
    pub fn build(self) -> SdkResult<QpqClient> {
        let server = self
            .server
            .ok_or_else(|| SdkError::Config("server address missing".into()))?;
        let tls = self
            .tls
            .ok_or_else(|| SdkError::Config("server trust (pin or tls) missing".into()))?;
        let mut dir_lock = None;
        let store: Box<dyn Store> = if self.in_memory {
            Box::new(MemoryStore::new()?)
        } else {
            let dir = self
                .data_dir
                .ok_or_else(|| SdkError::Config("data directory missing".into()))?;
            let key = self.key.ok_or_else(|| {
                SdkError::Config("store key (passphrase or raw key) missing".into())
            })?;
            qpq_core::files::private_dir(&dir)?;
            dir_lock = Some(crate::store::sql::lock_dir(&dir)?);
            Box::new(SqlStore::open(&dir, &key)?)
        };
        let (events, _) = broadcast::channel(self.limits.event_buffer.max(1));
        Ok(QpqClient {
            tasks: Arc::new(Tasks::default()),
            inner: Arc::new(Inner {
                store,
                server,
                fallback_servers: self.fallback_servers,
                tls,
                limits: self.limits,
                rpc: tokio::sync::Mutex::new(None),
                keys: Mutex::new(None),
                events,
                connection: Mutex::new(ConnectionState::Offline {
                    reason: "not connected yet".into(),
                }),
                outbox_wake: Notify::new(),
                relay_failures_due: Notify::new(),
                session_generation: std::sync::atomic::AtomicU64::new(0),
                sealed_bytes_sent: std::sync::atomic::AtomicU64::new(0),
                envelopes_opened: std::sync::atomic::AtomicU64::new(0),
                peer_keys: Mutex::new(HashMap::new()),
                peer_identities: Mutex::new(HashMap::new()),
                warnings: Mutex::default(),
                unverifiable: Mutex::new(HashMap::new()),
                invitations: self.invitations,
                one_at_a_time: std::sync::atomic::AtomicBool::new(false),
                channel_answers_recorded: std::sync::atomic::AtomicU64::new(1),
                channel_answers_none_at: std::sync::atomic::AtomicU64::new(0),
                channel_leaves: Mutex::new(Vec::new()),
                crash: Mutex::new(self.crash),
                dir_lock: Mutex::new(dir_lock),
            }),
        })
    }
}
