//! Assembling and running the server.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use qpq_core::identity::{IdentityKey, IdentityPublic};
use qpq_core::kt::MerkleLog;
use qpq_proto::auth_flows::OpaqueSuite;
use qpq_proto::v1;
use qrpc::middleware::{AuditLayer, AuthLayer, AuthPolicy, Quota, RateLimitLayer};
use tower::layer::util::{Identity, Stack};
use zeroize::Zeroizing;

use crate::api::{Api, SessionAuth};
use crate::bus::ClusterBus;
use crate::clock::Clock;
use crate::config::Config;
use crate::config::{BusKind, StoreKind};
use crate::error::ServerError;
use crate::state::AppState;
use crate::store::{AnyStore, PostgresStore, SqliteStore, Store};

/// A server running in the background.
#[derive(Debug)]
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// SHA-256 of its TLS certificate, for clients to pin.
    pub fingerprint: [u8; 32],
    /// The key that signs key-transparency tree heads.
    pub kt_public: IdentityPublic,
    /// SHA-256 of its TLS certificate's public key: what federated peers list it by.
    pub key_pin: [u8; 32],
    state: Arc<AppState<AnyStore>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
    /// The server's shared state: its store, sessions and counters (for monitoring and tests).
    pub fn state(&self) -> &Arc<AppState<AnyStore>> {
        &self.state
    }

    /// Shuts down gracefully and waits for it.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Waits until the server stops (after a shutdown elsewhere).
    pub async fn wait(mut self) {
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

fn quota_per_second(n: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

/// The methods callable without a session: OPAQUE, session resume, health, and sealed
/// (which needs the recipient's delivery token instead), and the federation methods (served
/// only on the federation protocol, whose connections present a pinned peer certificate,
/// which each call checks against its `origin`).
pub fn public_methods() -> AuthPolicy {
    use v1::{auth_server as a, delivery_server as d, federation_server as f, p2p_server as p};
    AuthPolicy::new().public_methods([
        f::RELAY_ENQUEUE.id,
        f::RELAY_BATCH_ENQUEUE.id,
        f::PROXY_FETCH_KEY_PACKAGE.id,
        f::PROXY_FETCH_HYBRID_KEY.id,
        f::PROXY_RESOLVE_USER.id,
        f::FEDERATION_HEALTH.id,
        f::FEDERATION_KT_HEAD.id,
        f::FEDERATION_COSIGNATURE.id,
        a::REGISTER_START.id,
        a::REGISTER_FINISH.id,
        a::LOGIN_START.id,
        a::LOGIN_FINISH.id,
        a::RESUME_SESSION.id,
        d::ENQUEUE.id,
        p::HEALTH.id,
    ])
}

/// The layer stack every call passes: audit, then the per-IP call limit, then the session
/// check. (The limits that need a user or target are applied by the handlers.)
type Layers<S> =
    Stack<AuthLayer<SessionAuth<S>>, Stack<RateLimitLayer, Stack<AuditLayer, Identity>>>;

/// Everything `start` prepares before binding: state, TLS, and the server with every layer
/// and service.
struct Prepared<S: Store> {
    state: Arc<AppState<S>>,
    server: qrpc::Server<Layers<S>>,
    fingerprint: [u8; 32],
    key_pin: [u8; 32],
    kt_public: IdentityPublic,
}

/// Opens the configured store: the SQLite file in the data directory (made owner-only before
/// SQLite first opens it), or the cluster's PostgreSQL database (an unreachable one is a
/// clear error at start).
async fn open_store(config: &Config) -> Result<AnyStore, ServerError> {
    match config.cluster.store {
        StoreKind::Sqlite => {
            // The database holds the OPAQUE server secret, the log's signing key and every
            // password file: owner-only before SQLite first opens it (its -wal and -shm files
            // copy the mode).
            let db_path = config.data_dir.join("qpq.db");
            qpq_core::files::private_file(&db_path)
                .map_err(ServerError::io("creating", &db_path))?;
            for suffix in ["-wal", "-shm"] {
                let mut side = db_path.clone().into_os_string();
                side.push(suffix);
                qpq_core::files::tighten_if_exists(std::path::Path::new(&side))
                    .map_err(ServerError::io("protecting", &side))?;
            }
            let store = SqliteStore::open(&db_path, config.limits.db_pool_size).await?;
            import_blob_files(&store, &config.data_dir.join("blobs")).await?;
            Ok(AnyStore::Sqlite(store))
        }
        StoreKind::Postgres => {
            let url = config.cluster.postgres_url.as_deref().unwrap_or_default();
            let store = PostgresStore::open(url, config.limits.db_pool_size)
                .await
                .map_err(|e| ServerError::Service {
                    service: "PostgreSQL",
                    url: crate::bus::redact(url),
                    reason: crate::util::error_chain(&e),
                })?;
            Ok(AnyStore::Postgres(store))
        }
    }
}

/// The node's TLS identity. Operator files win; otherwise a single node keeps its generated
/// certificate in the data directory, and the nodes of a cluster share one generated
/// certificate kept in the database (the first node makes it), so clients pin one
/// fingerprint whichever node they reach.
async fn cluster_tls<S: Store>(
    config: &Config,
    store: &S,
) -> Result<(qrpc::tls::ServerTls, [u8; 32]), ServerError> {
    if !config.cluster.is_clustered() || config.tls_cert.is_some() {
        return crate::tls::load_or_create(config);
    }
    let names: Vec<&str> = config.tls_names.iter().map(String::as_str).collect();
    let generated = qrpc::tls::SelfSigned::generate(&names)?;
    // One value per name, whoever wrote it first; the pair is written in one go so that a
    // certificate never meets another node's key.
    let mut candidate = Zeroizing::new(Vec::new());
    let cert_pem = generated.cert_pem();
    candidate.extend_from_slice(&(cert_pem.len() as u32).to_be_bytes());
    candidate.extend_from_slice(cert_pem.as_bytes());
    candidate.extend_from_slice(generated.key_pem().as_bytes());
    let stored = Zeroizing::new(
        store
            .init_secret("tls_self_signed".into(), candidate.to_vec())
            .await?,
    );
    let corrupt = || ServerError::Corrupt("cluster TLS certificate");
    let len = stored
        .get(..4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(corrupt)? as usize;
    let (cert, key) = stored
        .get(4..)
        .filter(|rest| rest.len() >= len)
        .map(|rest| rest.split_at(len))
        .ok_or_else(corrupt)?;
    let tls = qrpc::tls::ServerTls::from_pem(cert, key)?;
    let fingerprint = tls.leaf().map(qrpc::tls::fingerprint).ok_or_else(corrupt)?;
    Ok((tls, fingerprint))
}

async fn prepare(config: &Config, clock: Clock) -> Result<Prepared<AnyStore>, ServerError> {
    config.validate()?;
    create_private_dir(&config.data_dir)?;
    let store = open_store(config).await?;
    let (tls, fingerprint) = cluster_tls(config, &store).await?;
    // Every node of a cluster, and every start of a node, derives its stateless-reset key
    // from this one secret: a restarted node resets its predecessor's connections at once.
    let reset_secret: [u8; 32] = store
        .init_secret(
            "stateless_reset".into(),
            rand::random::<[u8; 32]>().to_vec(),
        )
        .await?
        .as_slice()
        .try_into()
        .map_err(|_| ServerError::Corrupt("stateless-reset secret"))?;
    // Bound to this node (its configured id, else its listen address): a node restarted as
    // itself resets its predecessor's connections, but no node answers for another's
    // connection ids (which would make it a stateless-reset oracle for them, RFC 9000
    // section 21.11). A cluster of several nodes names each one (`node_id` is required).
    let node_name = config
        .cluster
        .node_id
        .clone()
        .unwrap_or_else(|| config.listen.to_string());
    let reset_secret = Zeroizing::new({
        use sha2::Digest;
        let derived: [u8; 32] = sha2::Sha256::new()
            .chain_update(b"qpq node reset secret v1")
            .chain_update(reset_secret)
            .chain_update(node_name.as_bytes())
            .finalize()
            .into();
        derived
    });

    let setup_bytes = Zeroizing::new(
        store
            .init_secret(
                "opaque_setup".into(),
                opaque_ke::ServerSetup::<OpaqueSuite>::new(&mut rand_core_06::OsRng)
                    .serialize()
                    .to_vec(),
            )
            .await?,
    );
    let opaque = opaque_ke::ServerSetup::<OpaqueSuite>::deserialize(&setup_bytes)
        .map_err(|_| ServerError::Corrupt("OPAQUE server setup"))?;
    let kt_seed = Zeroizing::new(
        store
            .init_secret(
                "kt_log_key".into(),
                IdentityKey::generate().to_secret_bytes().to_vec(),
            )
            .await?,
    );
    let seed: [u8; 32] = kt_seed
        .as_slice()
        .try_into()
        .map_err(|_| ServerError::Corrupt("key-transparency signing key"))?;
    let kt_key = IdentityKey::from_secret_bytes(&seed);
    // The log's leaves name devices under the domain; it cannot change under them.
    let stored_domain = store
        .init_secret("domain".into(), config.domain.as_bytes().to_vec())
        .await?;
    if stored_domain != config.domain.as_bytes() {
        return Err(ServerError::DomainMismatch {
            stored: String::from_utf8_lossy(&stored_domain).into_owned(),
            configured: config.domain.clone(),
        });
    }
    let kt_public = kt_key.public();
    let (bus, pokes) = match config.cluster.bus {
        BusKind::Local => (ClusterBus::Local, None),
        BusKind::Nats => {
            let node = config
                .cluster
                .node_id
                .clone()
                .unwrap_or_else(|| format!("node-{:08x}", rand::random::<u32>()));
            let url = config.cluster.nats_url.as_deref().unwrap_or_default();
            let (bus, pokes) =
                crate::bus::NatsBus::connect(url, &config.cluster.nats_prefix, &node).await?;
            tracing::info!(node, "joined the cluster bus");
            (ClusterBus::Nats(bus), Some(pokes))
        }
    };
    let mut log = MerkleLog::new();
    for leaf in store.kt_leaves().await? {
        log.append_hash(leaf);
    }

    let leaf = tls.leaf().ok_or(ServerError::Corrupt("TLS certificate"))?;
    let key_pin = qrpc::tls::key_fingerprint(leaf)?;
    let federation = if config.federation.enabled {
        let fed = crate::federation::Federation::new(
            config.domain.clone(),
            config.federation.clone(),
            &tls,
            node_name.clone(),
        )
        .map_err(ServerError::Federation)?;
        tracing::info!(
            domain = %config.domain,
            key_pin = %crate::util::hex(&key_pin),
            peers = config.federation.peers.len(),
            "federating: peers list this server by this key pin"
        );
        Some(Arc::new(fed))
    } else {
        None
    };
    let tls = match &federation {
        Some(fed) => tls.with_client_auth(fed.client_auth()),
        None => tls,
    };
    let limits = config.limits.clone();
    // This node's share of every rate limit: a client spreading its calls over all nodes
    // gets no more than the configured rates in all.
    let node_limits = limits.per_node(config.cluster.nodes);
    let builder = qrpc::Server::builder().tls(tls).configure(|c| {
        c.stateless_reset_key(*reset_secret);
        // A messenger's clients keep their connections alive (every 5 s, see the SDK): a
        // connection silent for 15 s is gone.
        c.idle_timeout(std::time::Duration::from_secs(15));
        c.max_payload(limits.max_payload_bytes);
        c.max_concurrent_streams(limits.max_concurrent_streams);
        c.segmentation_offload(limits.udp_segmentation_offload);
        c.zero_rtt(limits.zero_rtt);
        c.alpn(vec![b"qpq/1".to_vec()]);
        c.shutdown_grace(std::time::Duration::from_secs(10));
        if federation.is_some() {
            c.require_client_certificate(crate::federation::ALPN);
        }
    });
    let mut state = AppState::new(
        store,
        builder.push_registry(),
        limits.clone(),
        opaque,
        log,
        kt_key,
    )
    .with_domain(config.domain.clone())
    .with_clock(clock)
    .with_limiters(crate::abuse::Limiters::new(&node_limits))
    .with_bus(bus);
    if let Some(fed) = &federation {
        state = state.with_federation(Arc::clone(fed));
    }
    let state = Arc::new(state.with_plugins(crate::plugins::Plugins::load(&config.plugins).await?));
    if let Some(mut pokes) = pokes {
        let weak = Arc::downgrade(&state);
        tokio::spawn(async move {
            while let Some(poke) = pokes.recv().await {
                let Some(state) = weak.upgrade() else { return };
                state.apply_poke(poke);
            }
        });
    }
    let api = Api::new(Arc::clone(&state));
    let builder = match &federation {
        Some(_) => builder.add_service_on(
            crate::federation::ALPN,
            v1::federation_server::FederationServer::new(api.clone()),
        ),
        None => builder,
    };
    let server = builder
        // The caller's IP address is personal data: logged only when the operator asks.
        .layer(AuditLayer::tracing(config.log_peer_addresses))
        .layer(
            RateLimitLayer::builder()
                .per_ip(quota_per_second(node_limits.calls_per_second_per_ip))
                .build(),
        )
        .layer(AuthLayer::new(
            SessionAuth::new(Arc::clone(&state)),
            public_methods(),
        ))
        .add_service(v1::auth_server::AuthServer::new(api.clone()))
        .add_service(v1::delivery_server::DeliveryServer::new(api.clone()))
        .add_service(v1::keys_server::KeysServer::new(api.clone()))
        .add_service(v1::channel_server::ChannelServer::new(api.clone()))
        .add_service(v1::user_server::UserServer::new(api.clone()))
        .add_service(v1::blob_server::BlobServer::new(api.clone()))
        .add_service(v1::device_server::DeviceServer::new(api.clone()))
        .add_service(v1::p2p_server::P2pServer::new(api));
    Ok(Prepared {
        state,
        server,
        fingerprint,
        key_pin,
        kt_public,
    })
}

/// Runs [`AppState::janitor_pass`] every `janitor_interval_secs` until aborted.
fn spawn_janitor<S: Store>(state: &Arc<AppState<S>>) -> tokio::task::JoinHandle<()> {
    let state = Arc::downgrade(state);
    let every = std::time::Duration::from_secs(
        state
            .upgrade()
            .map_or(60, |s| s.limits.janitor_interval_secs),
    );
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(state) = state.upgrade() else { return };
            let deleted = state.janitor_pass().await;
            tracing::debug!(deleted, sessions = state.sessions.len(), "janitor pass");
        }
    })
}

/// Prepares the data directory, storage, keys and TLS, binds the socket and serves in the
/// background.
pub async fn start(config: Config) -> Result<RunningServer, ServerError> {
    start_with_clock(config, Clock::system()).await
}

/// [`start`] with another time source: tests drive a [`Clock::manual`] to reach expiries
/// without waiting for them.
pub async fn start_with_clock(config: Config, clock: Clock) -> Result<RunningServer, ServerError> {
    if let Some(addr) = config.metrics_listen {
        // One exporter per process: it installs the global `metrics` recorder.
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .map_err(|e| ServerError::Metrics {
                addr,
                reason: e.to_string(),
            })?;
        tracing::info!(%addr, "serving Prometheus metrics at /metrics");
    }
    let prepared = prepare(&config, clock).await?;
    let listen = |source: Box<dyn std::error::Error + Send + Sync>| ServerError::Listen {
        addr: config.listen,
        source,
    };
    let server = prepared
        .server
        .bind(config.listen)
        .map_err(|e| listen(e.into()))?;
    let addr = server.local_addr().map_err(|e| listen(e.into()))?;
    let janitor = spawn_janitor(&prepared.state);
    let relays = crate::federation::relay::spawn(&prepared.state);
    let state = Arc::clone(&prepared.state);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        server
            .serve_with_shutdown(async move {
                let _ = rx.await;
            })
            .await;
        janitor.abort();
        for relay in relays {
            relay.abort();
        }
    });
    Ok(RunningServer {
        addr,
        fingerprint: prepared.fingerprint,
        key_pin: prepared.key_pin,
        kt_public: prepared.kt_public,
        state,
        shutdown: Some(tx),
        task: Some(task),
    })
}

/// The server's whole call path (every layer, every service) without a socket, for driving
/// the real router in-process: the authorization tests and the fuzz target use it.
#[cfg(feature = "testing")]
pub struct InProcess {
    /// The shared state (store, sessions, limiters).
    pub state: Arc<AppState<AnyStore>>,
    service: tower::util::BoxCloneSyncService<
        qrpc::ServerRequest<qrpc::RequestBody>,
        qrpc::ServerResponse<qrpc::ResponseBody>,
        tower::BoxError,
    >,
    /// Whatever must outlive the server (a test database): last, so dropped after it.
    keep: Option<Box<dyn std::any::Any + Send + Sync>>,
}

#[cfg(feature = "testing")]
impl std::fmt::Debug for InProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcess").finish_non_exhaustive()
    }
}

#[cfg(feature = "testing")]
impl InProcess {
    /// Prepares everything `start` does (data directory, database, keys) except the socket.
    pub async fn new(config: Config) -> Result<Self, ServerError> {
        let prepared = prepare(&config, Clock::system()).await?;
        let service = prepared
            .server
            .into_service()
            .map_err(|e| ServerError::Router(e.to_string()))?;
        Ok(Self {
            state: prepared.state,
            keep: None,
            service: tower::util::BoxCloneSyncService::new(service),
        })
    }

    /// Keeps `guard` (a test database, say) until the server is dropped, and drops it after.
    pub fn keeping(mut self, guard: impl std::any::Any + Send + Sync) -> Self {
        self.keep = Some(Box::new(guard));
        self
    }

    /// A fresh, unauthenticated connection from `remote` (not backed by QUIC).
    pub fn connection(&self, remote: SocketAddr) -> qrpc::Peer {
        qrpc::testing::detached_peer(remote, self.state.registry.clone())
    }

    /// Makes one call of `method_id` with `body` on `connection`, through every layer.
    pub async fn call(
        &self,
        connection: &qrpc::Peer,
        method_id: u16,
        body: qrpc::RequestBody,
    ) -> Result<qrpc::ServerResponse<qrpc::ResponseBody>, qrpc::Status> {
        use tower::ServiceExt;
        let method = qpq_proto::descriptors()
            .iter()
            .find_map(|d| d.method(method_id))
            .copied();
        let ctx = qrpc::testing::request_context(connection, method_id, method, 1);
        self.service
            .clone()
            .oneshot(qrpc::ServerRequest::new(ctx, body))
            .await
            .map_err(|e| match e.downcast::<qrpc::Status>() {
                Ok(status) => *status,
                Err(other) => qrpc::Status::internal(other.to_string()),
            })
    }
}

/// Blobs that servers before schema version 7 kept as files under `dir` (`<sha256 hex>`,
/// and `partial/<sha256 hex>` for interrupted uploads) move into the store, once: each
/// complete one is stored again chunk by chunk and checked against its name; an interrupted
/// upload starts again from 0 (its client resumes from what the server reports). The files
/// and directories go once imported.
async fn import_blob_files<S: Store>(store: &S, dir: &std::path::Path) -> Result<(), ServerError> {
    use crate::api::blob::CHUNK_BYTES;
    use tokio::io::AsyncReadExt;
    let sha_of = |name: &std::ffi::OsStr| -> Option<Vec<u8>> {
        let name = name.to_str()?;
        (name.len() == 64)
            .then(|| {
                (0..64)
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&name[i..i + 2], 16).ok())
                    .collect::<Option<Vec<u8>>>()
            })
            .flatten()
    };
    let partial = dir.join("partial");
    if let Ok(entries) = std::fs::read_dir(&partial) {
        for entry in entries.flatten() {
            if let Some(sha) = sha_of(&entry.file_name()) {
                store.reset_blob(sha).await?;
            }
            std::fs::remove_file(entry.path())
                .map_err(ServerError::io("removing", entry.path()))?;
        }
        std::fs::remove_dir(&partial).map_err(ServerError::io("removing", &partial))?;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(sha) = sha_of(&entry.file_name()) else {
            continue;
        };
        let file_len = entry.metadata().map(|m| m.len()).ok();
        let Some(row) = store.blob(sha.clone()).await? else {
            // A file no row names: nothing refers to it.
            std::fs::remove_file(&path).map_err(ServerError::io("removing", &path))?;
            continue;
        };
        // Whatever the row says (complete, or left incomplete by an import a crash
        // interrupted), the file's bytes are stored again from the start, in a new epoch.
        let epoch = store.reset_blob(sha.clone()).await?.unwrap_or(row.epoch);
        if Some(row.size) == file_len {
            let mut file = tokio::fs::File::open(&path)
                .await
                .map_err(ServerError::io("reading", &path))?;
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            let mut offset = 0u64;
            let mut buf = vec![0u8; CHUNK_BYTES];
            loop {
                let n = file
                    .read(&mut buf)
                    .await
                    .map_err(ServerError::io("reading", &path))?;
                if n == 0 {
                    break;
                }
                sha2::Digest::update(&mut hasher, &buf[..n]);
                offset = store
                    .append_blob(sha.clone(), offset, buf[..n].to_vec())
                    .await?;
            }
            let matches = sha2::Digest::finalize(hasher).as_slice() == sha.as_slice();
            store.finish_blob(sha.clone(), epoch, matches).await?;
            if !matches {
                tracing::warn!(blob = %crate::util::hex(&sha), "a stored blob file did not match its hash; its owner uploads it again");
            }
        } else {
            tracing::warn!(blob = %crate::util::hex(&sha), "a stored blob file has the wrong length; its owner uploads it again");
        }
        std::fs::remove_file(&path).map_err(ServerError::io("removing", &path))?;
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

fn create_private_dir(dir: &std::path::Path) -> Result<(), ServerError> {
    qpq_core::files::private_dir(dir).map_err(ServerError::io("creating", dir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::util::{hex, sha256};

    #[tokio::test]
    async fn blob_files_of_older_servers_move_into_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("qpq.db"), 2)
            .await
            .unwrap();
        let blobs = dir.path().join("blobs");
        std::fs::create_dir_all(blobs.join("partial")).unwrap();
        // As an older server left them: complete rows whose bytes are files, and an
        // interrupted upload with its partial file.
        let good: Vec<u8> = (0..=255u8).cycle().take(600_000).collect();
        let bad = b"not what the name says".to_vec();
        let (good_sha, bad_sha, partial_sha) = (
            sha256(&good).to_vec(),
            sha256(b"something else").to_vec(),
            vec![3; 32],
        );
        for (sha, bytes) in [(&good_sha, &good), (&bad_sha, &bad)] {
            store
                .begin_blob(sha.clone(), "ann".into(), bytes.len() as u64, u64::MAX, 0)
                .await
                .unwrap();
            // Complete, its bytes in a file and none in the database, as a schema-6 server
            // left it.
            rusqlite::Connection::open(dir.path().join("qpq.db"))
                .unwrap()
                .execute(
                    "UPDATE blobs SET complete = 1, received = size WHERE sha256 = ?1",
                    [sha],
                )
                .unwrap();
            std::fs::write(blobs.join(hex(sha)), bytes).unwrap();
        }
        store
            .begin_blob(partial_sha.clone(), "ann".into(), 100, u64::MAX, 0)
            .await
            .unwrap();
        store
            .append_blob(partial_sha.clone(), 0, vec![1; 10])
            .await
            .unwrap();
        std::fs::write(blobs.join("partial").join(hex(&partial_sha)), [1; 10]).unwrap();

        import_blob_files(&store, &blobs).await.unwrap();
        let mut read = Vec::new();
        while read.len() < good.len() {
            read.extend(
                store
                    .read_blob(good_sha.clone(), read.len() as u64)
                    .await
                    .unwrap(),
            );
        }
        assert_eq!(read, good);
        assert!(store.blob(good_sha).await.unwrap().unwrap().complete);
        let bad_row = store.blob(bad_sha).await.unwrap().unwrap();
        assert_eq!((bad_row.complete, bad_row.received), (false, 0));
        assert_eq!(store.blob(partial_sha).await.unwrap().unwrap().received, 0);
        assert!(!blobs.exists(), "the files are gone once imported");
        // Nothing left to import: a second start changes nothing.
        import_blob_files(&store, &blobs).await.unwrap();
    }
}
