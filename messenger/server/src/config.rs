//! Server configuration: defaults, then a TOML file, then environment and flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything an operator can set. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// UDP address to listen on (default `127.0.0.1:7443`; use `0.0.0.0:7443` to serve others).
    pub listen: SocketAddr,
    /// The server's domain (default `localhost`): every device name it vouches for is
    /// `qpq1:user@<domain>/device`, in its key-transparency log and in its users' MLS
    /// credentials. Fixed when the database is created: a server refuses to start with
    /// another domain than the one its log was written under.
    pub domain: String,
    /// Where the database, TLS files and blobs live.
    pub data_dir: PathBuf,
    /// PEM certificate chain; with `tls_key`, replaces the generated self-signed certificate.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Names the self-signed certificate is valid for (default `["localhost"]`).
    pub tls_names: Vec<String>,
    /// Serve Prometheus metrics over HTTP at this address (default: off). qrpc's call,
    /// connection and push metrics (`qrpc_calls_total`, `qrpc_call_duration_seconds`,
    /// `qrpc_connections_open`, `qrpc_push_dropped_total`) at `http://<address>/metrics`.
    /// Plain HTTP with no authentication: bind it to loopback or a private network.
    pub metrics_listen: Option<SocketAddr>,
    /// Put the caller's IP address in the per-call audit log line (default false: the line
    /// names the method, connection, account, duration and status only).
    pub log_peer_addresses: bool,
    /// Where the state lives and how the nodes of a cluster talk (default: one node on
    /// SQLite).
    pub cluster: Cluster,
    /// Log lines as text (default; colours only on a terminal) or as JSON objects, one per
    /// line, for log collectors.
    pub log_format: LogFormat,
    /// Federation with other qpq servers (default: off). See docs/federation.md.
    pub federation: Federation,
    /// Limits.
    pub limits: Limits,
    /// Plugins, asked in this order (default: none). Needs a server built with the
    /// `plugins` feature. See docs/plugins.md.
    pub plugins: Vec<PluginConfig>,
}

/// One plugin: a WebAssembly component and its bounds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Its name, in logs and errors.
    pub name: String,
    /// The component file (`.wasm`; a `.wat` text component works too).
    pub path: PathBuf,
    /// When the plugin fails (traps, runs out of time or memory): allow the event (true) or
    /// deny it with `Unavailable` (default false: fail closed).
    #[serde(default)]
    pub fail_open: bool,
    /// The time one call may take, in milliseconds (default 50); a plugin that takes longer is
    /// stopped and counts as failed. The host gives the thread back every 5 ms meanwhile.
    #[serde(default = "default_plugin_time_ms")]
    pub time_budget_ms: u64,
    /// The most linear memory the plugin may grow to, in MiB (default 16); growing beyond
    /// fails its call.
    #[serde(default = "default_plugin_memory_mib")]
    pub memory_limit_mib: u32,
    /// The plugin's own configuration, passed to its `init`.
    #[serde(default)]
    pub config: toml::Table,
}

fn default_plugin_time_ms() -> u64 {
    50
}

fn default_plugin_memory_mib() -> u32 {
    16
}

impl PluginConfig {
    /// A plugin at `path` with the default bounds and an empty configuration.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        Self {
            name: name.into(),
            path: path.into(),
            fail_open: false,
            time_budget_ms: default_plugin_time_ms(),
            memory_limit_mib: default_plugin_memory_mib(),
            config: toml::Table::new(),
        }
    }
}

/// A trusted peer server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationPeer {
    /// Its domain (`b.example`): its users are `name@b.example`.
    pub domain: String,
    /// SHA-256 of its TLS certificate's public key (SubjectPublicKeyInfo), 64 hex digits, as
    /// `qpq-server` prints at start (`federation key pin`). Its connections must present this
    /// key, and this server accepts only this key from it.
    pub key_pin: String,
    /// Where to reach it (`ip:port`), instead of looking it up in DNS.
    #[serde(default)]
    pub address: Option<SocketAddr>,
}

/// Federation: this server relays its users' messages to users of the listed peers and
/// accepts theirs, over the federation protocol (ALPN `qpq-fed/1`, mutual TLS) on the same
/// UDP port as clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Federation {
    /// Serve and use federation (default false).
    pub enabled: bool,
    /// The servers trusted to federate: nothing is relayed to or accepted from any other.
    pub peers: Vec<FederationPeer>,
    /// Domains refused even when listed in `peers` (a quick way to stop one).
    pub deny: Vec<String>,
    /// The DNS server asked for `_qpq-fed._udp.<domain>` SRV and A/AAAA records of peers
    /// without an `address` (default: the system's resolver).
    pub dns_server: Option<SocketAddr>,
    /// The port used when DNS has an address but no SRV record (default 7443).
    pub default_port: u16,
    /// How long a message may wait for an unreachable server before its sender is told it
    /// failed (default 604800 s, 7 days).
    pub give_up_secs: u64,
    /// The first retry delay after a failed relay (default 2000 ms); it doubles per failure.
    pub retry_initial_ms: u64,
    /// The longest retry delay (default 600 s).
    pub retry_max_secs: u64,
    /// How often every peer is probed (FederationHealth) while messages wait for it; a probe
    /// that succeeds makes the next attempt due at once (default 30 s).
    pub health_probe_secs: u64,
    /// Messages a destination's outbox may hold (default 100000).
    pub max_outbox_per_destination: u64,
    /// Messages one local user may have waiting for one destination (default 5000).
    pub max_outbox_per_sender: u64,
    /// Payload bytes one local user may have waiting for one destination (default 64 MiB).
    pub max_outbox_bytes_per_sender: u64,
    /// Lookups about users of other servers (keys, devices, log heads) one local user may
    /// make per minute (default 600; each device of a batch counts).
    pub remote_lookups_per_minute_per_user: u32,
    /// Federation calls one peer may make per second (default 200).
    pub calls_per_second_per_peer: u32,
    /// Messages one peer may relay per second (default 1000).
    pub messages_per_second_per_peer: u32,
    /// Key packages one peer may take per minute of one local user's (default 30).
    pub key_package_fetches_per_minute_per_peer_and_user: u32,
    /// Messages from strangers (senders the recipient never wrote to) one peer may relay per
    /// minute to one local user, over all its senders (default 120): a peer inventing senders
    /// gets no more than this into anyone's queue.
    pub stranger_messages_per_minute_per_peer_and_user: u32,
}

impl Default for Federation {
    fn default() -> Self {
        Self {
            enabled: false,
            peers: Vec::new(),
            deny: Vec::new(),
            dns_server: None,
            default_port: 7443,
            give_up_secs: 7 * 24 * 3600,
            retry_initial_ms: 2000,
            retry_max_secs: 600,
            health_probe_secs: 30,
            max_outbox_per_destination: 100_000,
            max_outbox_per_sender: 5000,
            max_outbox_bytes_per_sender: 64 << 20,
            remote_lookups_per_minute_per_user: 600,
            calls_per_second_per_peer: 200,
            messages_per_second_per_peer: 1000,
            key_package_fetches_per_minute_per_peer_and_user: 30,
            stranger_messages_per_minute_per_peer_and_user: 120,
        }
    }
}

impl Federation {
    /// Checks the peer list and the timings.
    pub fn validate(&self, own_domain: &str) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(format!("federation: {m}")));
        let mut seen = std::collections::HashSet::new();
        let mut pins = std::collections::HashSet::new();
        for peer in &self.peers {
            if !qpq_core::address::is_domain(&peer.domain) {
                return invalid(format!("peers: \"{}\" is not a domain name", peer.domain));
            }
            if peer.domain == own_domain {
                return invalid(format!(
                    "peers: \"{}\" is this server's own domain",
                    peer.domain
                ));
            }
            if !seen.insert(peer.domain.as_str()) {
                return invalid(format!("peers: \"{}\" is listed twice", peer.domain));
            }
            let Ok(pin) = qrpc::tls::parse_fingerprint(&peer.key_pin) else {
                return invalid(format!(
                    "peers: the key_pin of \"{}\" must be 64 hex digits",
                    peer.domain
                ));
            };
            if !pins.insert(pin) {
                return invalid(format!(
                    "peers: \"{}\" has the key_pin of another peer (a key names one server)",
                    peer.domain
                ));
            }
        }
        if self.retry_initial_ms == 0 || self.retry_max_secs == 0 || self.give_up_secs == 0 {
            return invalid(
                "retry_initial_ms, retry_max_secs and give_up_secs must be positive".into(),
            );
        }
        if self.messages_per_second_per_peer < 50 {
            return invalid(
                "messages_per_second_per_peer must be at least 50 (one relay batch)".into(),
            );
        }
        if self.calls_per_second_per_peer == 0
            || self.key_package_fetches_per_minute_per_peer_and_user == 0
            || self.stranger_messages_per_minute_per_peer_and_user == 0
            || self.remote_lookups_per_minute_per_user == 0
            || self.max_outbox_per_sender == 0
            || self.max_outbox_bytes_per_sender == 0
        {
            return invalid("the per-peer and per-user limits must be positive".into());
        }
        if self.health_probe_secs == 0 || self.max_outbox_per_destination == 0 {
            return invalid(
                "health_probe_secs and max_outbox_per_destination must be positive".into(),
            );
        }
        Ok(())
    }
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Which store a node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded SQLite database in the data directory (one node).
    #[default]
    Sqlite,
    /// A PostgreSQL database every node of the cluster shares.
    Postgres,
}

/// How the nodes of a cluster reach each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// No other node (the default).
    #[default]
    Local,
    /// A NATS subject every node subscribes to.
    Nats,
}

/// A cluster of nodes serving one messenger: they share one PostgreSQL database (messages,
/// accounts, keys, the key-transparency log and its signing key, the OPAQUE server setup,
/// the stateless-reset secret, blobs) and one NATS subject (pokes between nodes). A single
/// node on SQLite needs none of it.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cluster {
    /// `"sqlite"` (default) or `"postgres"`.
    pub store: StoreKind,
    /// The PostgreSQL URL (`postgres://user:password@host:5432/db`) when `store =
    /// "postgres"`; also `QPQ_POSTGRES_URL`. It may hold a password: it is never logged or
    /// printed whole.
    pub postgres_url: Option<String>,
    /// `"local"` (default) or `"nats"`.
    pub bus: BusKind,
    /// The NATS URL when `bus = "nats"` (`nats://host:4222`); also `QPQ_NATS_URL`.
    pub nats_url: Option<String>,
    /// The subject prefix every node of this cluster uses (default `qpq`): several clusters
    /// can share one NATS with different prefixes.
    pub nats_prefix: String,
    /// This node's name, unique in the cluster and the same across its restarts (required
    /// with `nodes > 1`; default: `node-<random>` on the bus, the listen address for the
    /// reset key). It appears in logs, marks the node's own pokes, and keys the node's
    /// stateless resets.
    pub node_id: Option<String>,
    /// How many nodes serve the cluster (default 1): every per-user, per-account and per-IP
    /// rate limit of a node is its configured value divided by this, so a client spreading
    /// its calls over every node gets no more than the configured limit in all.
    pub nodes: u32,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may hold passwords.
        let redacted = |u: &Option<String>| u.as_deref().map(crate::bus::redact);
        f.debug_struct("Cluster")
            .field("store", &self.store)
            .field("postgres_url", &redacted(&self.postgres_url))
            .field("bus", &self.bus)
            .field("nats_url", &redacted(&self.nats_url))
            .field("nats_prefix", &self.nats_prefix)
            .field("node_id", &self.node_id)
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl Default for Cluster {
    fn default() -> Self {
        Self {
            store: StoreKind::Sqlite,
            postgres_url: None,
            bus: BusKind::Local,
            nats_url: None,
            nats_prefix: "qpq".into(),
            node_id: None,
            nodes: 1,
        }
    }
}

/// Limits that protect the server and its users.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request payload (default 4 MiB).
    pub max_payload_bytes: u32,
    /// Concurrent calls per connection (default 32; quinn sets aside state for each on every
    /// connection, so this is also a memory knob).
    pub max_concurrent_streams: u32,
    /// Batch several datagrams into one UDP send (segmentation offload; default false: each
    /// connection then keeps a transmit buffer of one datagram instead of about 13 KB, which
    /// matters with thousands of idle connections; bulk sends make more system calls).
    pub udp_segmentation_offload: bool,
    /// Run idempotent calls (session resume, fetches, lookups) from 0-RTT data of resumed
    /// connections (default true): a reconnecting client gets its first answers one round trip
    /// sooner. Nothing else ever runs from 0-RTT data.
    pub zero_rtt: bool,
    /// Messages a device queue may hold (default 10,000).
    pub max_queue_depth: u64,
    /// Payload bytes a device queue may hold (default 256 MiB).
    pub max_queue_bytes: u64,
    /// Largest message payload accepted by Enqueue and BatchEnqueue (default 1 MiB).
    pub max_message_bytes: u32,
    /// Messages one sending user (all its devices together) may have waiting in one
    /// recipient queue (default 1,000). Sealed sends, which name no sender, share one such
    /// allowance per queue.
    pub max_pending_per_sender: u64,
    /// Payload bytes one sending user may have waiting in one recipient queue (default
    /// 32 MiB); sealed sends share one such allowance per queue.
    pub max_pending_bytes_per_sender: u64,
    /// Channels one user may own (default 500).
    pub max_channels_per_user: u32,
    /// Users one CreateChannel or UpdateChannel call may invite (default 100).
    pub max_channel_invites_per_call: u32,
    /// Users one user may invite to channels per minute (default 120).
    pub channel_invites_per_minute_per_user: u32,
    /// Key publishes (a new key bundle, or a new last-resort key package) per device per hour
    /// (default 20): each one that changes anything adds a leaf to the key-transparency log,
    /// which every server start replays.
    pub key_publishes_per_hour_per_device: u32,
    /// The share of a queue's depth and bytes (`max_queue_depth`, `max_queue_bytes`) one
    /// sending user, or all sealed senders together, may fill, in percent (default 10): with
    /// the per-sender limits above, the lower bound applies.
    pub max_queue_share_percent: u8,
    /// Messages a stranger (a sender the recipient never wrote to and shares no channel
    /// with) may have waiting in one recipient queue (default 20).
    pub max_pending_per_stranger: u64,
    /// Payload bytes a stranger may have waiting in one recipient queue (default 1 MiB).
    pub max_pending_bytes_per_stranger: u64,
    /// Messages one user may enqueue per second, across devices (default 200, also the burst).
    pub messages_per_second_per_user: u32,
    /// Messages one user may send to strangers per minute (default 30, also the burst).
    pub stranger_messages_per_minute_per_user: u32,
    /// Other write calls (keys, channels, blobs, devices, endpoints, acks, logout) per second
    /// per user (default 50, also the burst).
    pub writes_per_second_per_user: u32,
    /// Key-package fetches per minute by one user for the devices of one other user
    /// (default 10, also the burst).
    pub key_package_fetches_per_minute_per_pair: u32,
    /// Key-package fetches per minute by one user in all (default 300, also the burst).
    pub key_package_fetches_per_minute_per_user: u32,
    /// Login attempts per minute against one account, from anywhere (default 10).
    pub logins_per_minute_per_account: u32,
    /// Login, registration and session-resume attempts one connection may make (default 10).
    pub auth_attempts_per_connection: u32,
    /// Session resumes per minute per client IP (default 60).
    pub resumes_per_minute_per_ip: u32,
    /// Typing notifications one user may send per minute (default 30, also the burst).
    pub typing_per_minute_per_user: u32,
    /// Devices one user may have (default 10).
    pub max_devices_per_user: u32,
    /// `FetchWait` calls one connection may have waiting at once (default 4).
    pub max_fetch_waits_per_connection: u32,
    /// How often the janitor prunes expired sessions and idle limiter state (default 60 s).
    pub janitor_interval_secs: u64,
    /// Messages one fetch returns at most (default 500).
    pub max_fetch: u32,
    /// Longest `fetchWait` (default 60,000 ms).
    pub max_fetch_wait_ms: u32,
    /// One-time key packages stored per device (default 100).
    pub max_key_packages: u32,
    /// Largest blob (default 100 MiB).
    pub max_blob_bytes: u64,
    /// Blob bytes one user may store (default 1 GiB).
    pub blob_quota_bytes: u64,
    /// Session lifetime (default 30 days).
    pub session_ttl_secs: u64,
    /// Calls per second per client IP (default 500).
    pub calls_per_second_per_ip: u32,
    /// Registration and login attempts per minute per client IP (default 30).
    pub logins_per_minute_per_ip: u32,
    /// Unauthenticated (sealed) enqueues per second per client IP (default 50).
    pub sealed_enqueues_per_second_per_ip: u32,
    /// SQLite connections in the pool (default 8).
    pub db_pool_size: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7443)),
            domain: "localhost".into(),
            data_dir: default_data_dir(),
            tls_cert: None,
            tls_key: None,
            tls_names: vec!["localhost".into()],
            metrics_listen: None,
            log_peer_addresses: false,
            cluster: Cluster::default(),
            log_format: LogFormat::Text,
            federation: Federation::default(),
            limits: Limits::default(),
            plugins: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 4 * 1024 * 1024,
            max_concurrent_streams: 32,
            udp_segmentation_offload: false,
            zero_rtt: true,
            max_queue_depth: 10_000,
            max_queue_bytes: 256 * 1024 * 1024,
            max_message_bytes: 1024 * 1024,
            max_pending_per_sender: 1_000,
            max_pending_bytes_per_sender: 32 * 1024 * 1024,
            max_queue_share_percent: 10,
            key_publishes_per_hour_per_device: 20,
            max_channels_per_user: 500,
            max_channel_invites_per_call: 100,
            channel_invites_per_minute_per_user: 120,
            max_pending_per_stranger: 20,
            max_pending_bytes_per_stranger: 1024 * 1024,
            messages_per_second_per_user: 200,
            stranger_messages_per_minute_per_user: 30,
            writes_per_second_per_user: 50,
            key_package_fetches_per_minute_per_pair: 10,
            key_package_fetches_per_minute_per_user: 300,
            logins_per_minute_per_account: 10,
            auth_attempts_per_connection: 10,
            resumes_per_minute_per_ip: 60,
            typing_per_minute_per_user: 30,
            max_devices_per_user: 10,
            max_fetch_waits_per_connection: 4,
            janitor_interval_secs: 60,
            max_fetch: 500,
            max_fetch_wait_ms: 60_000,
            max_key_packages: 100,
            max_blob_bytes: 100 * 1024 * 1024,
            blob_quota_bytes: 1024 * 1024 * 1024,
            session_ttl_secs: 30 * 24 * 3600,
            calls_per_second_per_ip: 500,
            logins_per_minute_per_ip: 30,
            sealed_enqueues_per_second_per_ip: 50,
            db_pool_size: 8,
        }
    }
}

impl Limits {
    /// This node's share of the rate limits when `nodes` nodes serve the cluster: every
    /// per-user, per-account, per-pair, per-device and per-IP rate divided by `nodes`,
    /// rounded down (at least 1), so that the nodes together allow no more than the
    /// configured rate. Bounds kept in the database (queues, quotas, devices) are shared
    /// already and stay as they are.
    pub fn per_node(&self, nodes: u32) -> Self {
        let nodes = nodes.max(1);
        let share = |v: u32| (v / nodes).max(1);
        let mut l = self.clone();
        for rate in [
            &mut l.sealed_enqueues_per_second_per_ip,
            &mut l.messages_per_second_per_user,
            &mut l.stranger_messages_per_minute_per_user,
            &mut l.writes_per_second_per_user,
            &mut l.key_package_fetches_per_minute_per_pair,
            &mut l.key_package_fetches_per_minute_per_user,
            &mut l.logins_per_minute_per_ip,
            &mut l.logins_per_minute_per_account,
            &mut l.resumes_per_minute_per_ip,
            &mut l.typing_per_minute_per_user,
            &mut l.channel_invites_per_minute_per_user,
            &mut l.key_publishes_per_hour_per_device,
            &mut l.calls_per_second_per_ip,
        ] {
            *rate = share(*rate);
        }
        l
    }
}

/// The platform's data directory for the server (`~/.local/share/quicproquo-server` on
/// Linux), or `./qpq-data` when there is no home directory.
pub fn default_data_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "quicproquo-server")
        .map_or_else(|| PathBuf::from("qpq-data"), |d| d.data_dir().to_path_buf())
}

impl Cluster {
    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: &str| Err(ConfigError::Invalid(format!("cluster.{m}")));
        if self.store == StoreKind::Postgres && self.postgres_url.is_none() {
            return invalid(
                "postgres_url (or QPQ_POSTGRES_URL) is needed with store = \"postgres\"",
            );
        }
        if self.bus == BusKind::Nats && self.nats_url.is_none() {
            return invalid("nats_url (or QPQ_NATS_URL) is needed with bus = \"nats\"");
        }
        if self.bus == BusKind::Nats && self.store == StoreKind::Sqlite {
            return invalid(
                "bus = \"nats\" needs store = \"postgres\": nodes cannot share an SQLite file",
            );
        }
        if self.nodes == 0 {
            return invalid("nodes must be at least 1");
        }
        if self.nodes > 1 && self.bus == BusKind::Local {
            return invalid("nodes > 1 needs bus = \"nats\": the nodes must reach each other");
        }
        if self.nodes > 1 && self.node_id.is_none() {
            return invalid(
                "node_id is needed with nodes > 1: each node of a cluster has a name of its own",
            );
        }
        let name_ok = |n: &str| {
            (1..=64).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        };
        if !name_ok(&self.nats_prefix) {
            return invalid("nats_prefix: 1 to 64 characters of a-z, A-Z, 0-9, '.', '-', '_'");
        }
        if let Some(node) = &self.node_id
            && !name_ok(node)
        {
            return invalid("node_id: 1 to 64 characters of a-z, A-Z, 0-9, '.', '-', '_'");
        }
        Ok(())
    }

    /// Whether this node shares its state with others (PostgreSQL or NATS).
    pub fn is_clustered(&self) -> bool {
        self.store == StoreKind::Postgres || self.bus == BusKind::Nats
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("invalid configuration in {path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Parses a TOML document.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Checks values that would make the server misbehave.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let domain_ok = (1..=200).contains(&self.domain.len())
            && self
                .domain
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
            && qpq_core::identity::DeviceName::new("u", &self.domain, "d").is_ok();
        if !domain_ok {
            return Err(ConfigError::Invalid(
                "domain: 1 to 200 characters of a-z, 0-9, '.', '-'".into(),
            ));
        }
        let l = &self.limits;
        let positive = [
            ("max_payload_bytes", u64::from(l.max_payload_bytes)),
            (
                "max_concurrent_streams",
                u64::from(l.max_concurrent_streams),
            ),
            ("max_queue_depth", l.max_queue_depth),
            ("max_queue_bytes", l.max_queue_bytes),
            ("max_message_bytes", u64::from(l.max_message_bytes)),
            ("max_pending_per_sender", l.max_pending_per_sender),
            (
                "max_pending_bytes_per_sender",
                l.max_pending_bytes_per_sender,
            ),
            ("max_pending_per_stranger", l.max_pending_per_stranger),
            (
                "max_pending_bytes_per_stranger",
                l.max_pending_bytes_per_stranger,
            ),
            (
                "messages_per_second_per_user",
                u64::from(l.messages_per_second_per_user),
            ),
            (
                "stranger_messages_per_minute_per_user",
                u64::from(l.stranger_messages_per_minute_per_user),
            ),
            (
                "writes_per_second_per_user",
                u64::from(l.writes_per_second_per_user),
            ),
            (
                "key_package_fetches_per_minute_per_pair",
                u64::from(l.key_package_fetches_per_minute_per_pair),
            ),
            (
                "key_package_fetches_per_minute_per_user",
                u64::from(l.key_package_fetches_per_minute_per_user),
            ),
            (
                "logins_per_minute_per_account",
                u64::from(l.logins_per_minute_per_account),
            ),
            (
                "auth_attempts_per_connection",
                u64::from(l.auth_attempts_per_connection),
            ),
            (
                "resumes_per_minute_per_ip",
                u64::from(l.resumes_per_minute_per_ip),
            ),
            ("max_devices_per_user", u64::from(l.max_devices_per_user)),
            (
                "typing_per_minute_per_user",
                u64::from(l.typing_per_minute_per_user),
            ),
            (
                "max_fetch_waits_per_connection",
                u64::from(l.max_fetch_waits_per_connection),
            ),
            ("janitor_interval_secs", l.janitor_interval_secs),
            ("max_fetch", u64::from(l.max_fetch)),
            ("max_key_packages", u64::from(l.max_key_packages)),
            ("max_blob_bytes", l.max_blob_bytes),
            ("session_ttl_secs", l.session_ttl_secs),
            (
                "calls_per_second_per_ip",
                u64::from(l.calls_per_second_per_ip),
            ),
            (
                "logins_per_minute_per_ip",
                u64::from(l.logins_per_minute_per_ip),
            ),
            (
                "sealed_enqueues_per_second_per_ip",
                u64::from(l.sealed_enqueues_per_second_per_ip),
            ),
            ("db_pool_size", l.db_pool_size as u64),
            ("max_channels_per_user", u64::from(l.max_channels_per_user)),
            (
                "max_channel_invites_per_call",
                u64::from(l.max_channel_invites_per_call),
            ),
            (
                "channel_invites_per_minute_per_user",
                u64::from(l.channel_invites_per_minute_per_user),
            ),
            (
                "key_publishes_per_hour_per_device",
                u64::from(l.key_publishes_per_hour_per_device),
            ),
            (
                "max_queue_share_percent",
                u64::from(l.max_queue_share_percent),
            ),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!(
                "limits.{name} must be greater than 0"
            )));
        }
        if l.max_queue_share_percent > 100 {
            return Err(ConfigError::Invalid(
                "limits.max_queue_share_percent must be at most 100".into(),
            ));
        }
        if u64::from(l.max_message_bytes) > l.max_queue_bytes {
            return Err(ConfigError::Invalid(
                "limits.max_message_bytes must not exceed limits.max_queue_bytes".into(),
            ));
        }
        self.cluster.validate()?;
        self.federation.validate(&self.domain)?;
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::Invalid(
                "tls_cert and tls_key must be set together".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_cluster_configuration_is_checked_before_anything_starts() {
        let parse = |text: &str| Config::from_toml(text, Path::new("t.toml")).unwrap();
        let refused = |text: &str| parse(text).validate().unwrap_err().to_string();
        assert!(refused("[cluster]\nstore = \"postgres\"").contains("postgres_url"));
        assert!(refused("[cluster]\nbus = \"nats\"\nnats_url = \"nats://x\"").contains("SQLite"));
        assert!(
            refused("[cluster]\nnodes = 2\nstore = \"postgres\"\npostgres_url = \"x\"")
                .contains("nodes > 1")
        );
        assert!(refused("[cluster]\nnodes = 0").contains("at least 1"));
        assert!(
            refused("[cluster]\nnodes = 2\nstore = \"postgres\"\npostgres_url = \"x\"\nbus = \"nats\"\nnats_url = \"n\"")
                .contains("node_id is needed")
        );
        assert!(refused("[cluster]\nnode_id = \"a b\"").contains("node_id"));
        assert!(refused("[cluster]\nnats_prefix = \"\"").contains("nats_prefix"));
        let good = parse(
            "log_format = \"json\"\n[cluster]\nstore = \"postgres\"\npostgres_url = \"postgres://db/qpq\"\nbus = \"nats\"\nnats_url = \"nats://n:4222\"\nnodes = 3\nnode_id = \"n-1\"",
        );
        good.validate().unwrap();
        assert!(good.cluster.is_clustered());
        assert_eq!(good.log_format, LogFormat::Json);
        assert!(!Config::default().cluster.is_clustered());
        // Unknown keys are refused, as everywhere in the file.
        assert!(Config::from_toml("[cluster]\nstorage = \"x\"", Path::new("t")).is_err());
    }

    #[test]
    fn each_node_gets_its_share_of_the_rate_limits() {
        let l = Limits::default();
        let shared = l.per_node(3);
        assert_eq!(shared.messages_per_second_per_user, 200 / 3);
        assert_eq!(shared.logins_per_minute_per_account, 10 / 3);
        assert_eq!(shared.calls_per_second_per_ip, 500 / 3);
        // Never below one, and bounds kept in the database stay whole.
        assert_eq!(l.per_node(1_000).logins_per_minute_per_account, 1);
        assert_eq!(shared.max_queue_depth, l.max_queue_depth);
        assert_eq!(shared.max_devices_per_user, l.max_devices_per_user);
        assert_eq!(l.per_node(1), l);
    }

    #[test]
    fn empty_file_is_all_defaults_and_partial_files_override() {
        assert_eq!(
            Config::from_toml("", Path::new("x")).unwrap(),
            Config::default()
        );
        let c = Config::from_toml(
            "listen = \"0.0.0.0:9000\"\n[limits]\nmax_queue_depth = 5\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.limits.max_queue_depth, 5);
        assert_eq!(c.limits.max_fetch, Limits::default().max_fetch);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_clear_errors() {
        let err = Config::from_toml("lisen = \"x\"", Path::new("server.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.toml") && err.contains("lisen"),
            "{err}"
        );
        let mut c = Config::default();
        c.limits.max_queue_depth = 0;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("max_queue_depth")
        );
        let c = Config {
            tls_cert: Some("a.pem".into()),
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
