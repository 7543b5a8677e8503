//! Assembling and running the server.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use anyhow::Context;
use qpq_core::identity::{IdentityKey, IdentityPublic};
use qpq_core::kt::MerkleLog;
use qpq_proto::v1;
use qrpc::middleware::{AuditLayer, AuthLayer, AuthPolicy, Quota, RateLimitLayer};
use zeroize::Zeroizing;

use crate::auth::{OpaqueSuite, SessionAuth};
use crate::config::Config;
use crate::state::{Api, AppState};
use crate::store::{SqliteStore, Store};

/// A server running in the background.
#[derive(Debug)]
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// SHA-256 of its TLS certificate, for clients to pin.
    pub fingerprint: [u8; 32],
    /// The key that signs key-transparency tree heads.
    pub kt_public: IdentityPublic,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningServer {
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

fn quota_per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

/// The methods callable without a session: OPAQUE, health, and sealed enqueue.
pub fn public_methods() -> AuthPolicy {
    use v1::{auth_server as a, delivery_server as d, p2p_server as p};
    AuthPolicy::new().public_methods([
        a::REGISTER_START.id,
        a::REGISTER_FINISH.id,
        a::LOGIN_START.id,
        a::LOGIN_FINISH.id,
        a::RESUME_SESSION.id,
        d::ENQUEUE.id,
        p::HEALTH.id,
    ])
}

/// Prepares the data directory, storage, keys and TLS, binds the socket and serves in the
/// background.
pub async fn start(config: Config) -> anyhow::Result<RunningServer> {
    config.validate()?;
    create_private_dir(&config.data_dir)?;
    let blob_dir = config.data_dir.join("blobs");
    std::fs::create_dir_all(blob_dir.join("partial"))
        .with_context(|| format!("creating {}", blob_dir.display()))?;
    let (tls, fingerprint) = crate::tls::load_or_create(&config)?;
    let store = SqliteStore::open(&config.data_dir.join("qpq.db"), config.limits.db_pool_size)
        .await
        .context("opening the database")?;

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
        .map_err(|_| anyhow::anyhow!("stored OPAQUE setup is corrupt"))?;
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
        .context("stored log key is corrupt")?;
    let kt_key = IdentityKey::from_secret_bytes(&seed);
    let kt_public = kt_key.public();
    let mut log = MerkleLog::new();
    for leaf in store.kt_leaves().await? {
        log.append_hash(leaf);
    }

    let limits = config.limits.clone();
    let builder = qrpc::Server::builder().tls(tls).configure(|c| {
        c.max_payload = limits.max_payload_bytes;
        c.max_concurrent_streams = limits.max_concurrent_streams;
        c.alpn = vec![b"qpq/1".to_vec()];
        c.shutdown_grace = std::time::Duration::from_secs(10);
    });
    let state = Arc::new(AppState::new(
        store,
        builder.push_registry(),
        limits.clone(),
        blob_dir,
        opaque,
        log,
        kt_key,
    ));
    let api = Api::new(Arc::clone(&state));
    let server = builder
        .layer(AuditLayer::new())
        .layer(
            RateLimitLayer::builder()
                .per_ip(quota_per_second(limits.calls_per_second_per_ip))
                .per_method(
                    v1::auth_server::REGISTER_START.id,
                    quota_per_minute(limits.logins_per_minute_per_ip),
                )
                .per_method(
                    v1::auth_server::LOGIN_START.id,
                    quota_per_minute(limits.logins_per_minute_per_ip),
                )
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
        .add_service(v1::p2p_server::P2pServer::new(api.clone()))
        .bind(config.listen)?;
    let addr = server.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_with_shutdown(async move {
        let _ = rx.await;
    }));
    Ok(RunningServer {
        addr,
        fingerprint,
        kt_public,
        shutdown: Some(tx),
        task: Some(task),
    })
}

fn create_private_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))
}
