//! Test harness: a server in a temp dir, and logged-in accounts on the generated clients.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use qpq_proto::v1::{self, delivery_client::DeliveryClient, keys_client::KeysClient};
use qpq_server::{Config, RunningServer};
use qrpc::tls::ClientTls;

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub server: RunningServer,
    /// The PostgreSQL database under `QPQ_TEST_SERVER_STORE=postgres`, dropped last.
    pub db: Option<qpq_server::store::TestDatabase>,
}

/// A fresh PostgreSQL database for the server when `QPQ_TEST_SERVER_STORE=postgres`.
async fn postgres_for(config: &mut Config) -> Option<qpq_server::store::TestDatabase> {
    if std::env::var("QPQ_TEST_SERVER_STORE").as_deref() != Ok("postgres") {
        return None;
    }
    let db = qpq_server::store::TestDatabase::create()
        .await
        .expect("QPQ_TEST_SERVER_STORE=postgres needs QPQ_TEST_POSTGRES_URL");
    config.cluster.store = qpq_server::config::StoreKind::Postgres;
    config.cluster.postgres_url = Some(db.url.clone());
    Some(db)
}

pub fn config(dir: &std::path::Path) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Default::default()
    }
}

/// The whole call path without a socket, on SQLite, or on a fresh PostgreSQL database when
/// `QPQ_TEST_SERVER_STORE=postgres` (`.ci/run` runs the authorization and abuse tests both
/// ways).
#[allow(dead_code)]
pub async fn in_process(mut config: Config) -> qpq_server::InProcess {
    let db = postgres_for(&mut config).await;
    let server = qpq_server::InProcess::new(config).await.unwrap();
    match db {
        Some(db) => server.keeping(db),
        None => server,
    }
}

pub async fn start(f: impl FnOnce(&mut Config)) -> Harness {
    start_with_clock(f, qpq_server::Clock::system()).await
}

/// A server whose time moves only when the test advances `clock`.
pub async fn start_with_clock(f: impl FnOnce(&mut Config), clock: qpq_server::Clock) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    f(&mut c);
    let db = postgres_for(&mut c).await;
    let server = qpq_server::start_with_clock(c, clock).await.unwrap();
    Harness { dir, server, db }
}

pub async fn connect_to(addr: std::net::SocketAddr, fingerprint: [u8; 32]) -> qrpc::Client {
    qrpc::Client::builder(addr, ClientTls::pinned(fingerprint))
        .configure(|c| {
            c.alpn(vec![b"qpq/1".to_vec()]);
        })
        .connect()
        .await
        .unwrap()
}

impl Harness {
    pub async fn connect(&self) -> qrpc::Client {
        connect_to(self.server.addr, self.server.fingerprint).await
    }
}

pub use qpq_proto::auth_flows::{login, register};

/// A registered, logged-in device.
pub struct Account {
    pub client: qrpc::Client,
    pub user: String,
    pub device: String,
    pub token: Vec<u8>,
}

impl Account {
    pub async fn create(h: &Harness, user: &str, device: &str) -> Self {
        let client = h.connect().await;
        register(&client, user, "correct horse battery")
            .await
            .unwrap();
        let r = login(&client, user, device, "correct horse battery")
            .await
            .unwrap();
        Self {
            client,
            user: user.into(),
            device: device.into(),
            token: r.session_token.to_vec(),
        }
    }

    pub fn delivery(&self) -> DeliveryClient {
        DeliveryClient::new(self.client.clone())
    }

    pub fn keys(&self) -> KeysClient {
        KeysClient::new(self.client.clone())
    }

    pub fn me(&self) -> v1::DeviceRef {
        v1::DeviceRef {
            user: self.user.clone(),
            device: self.device.clone(),
        }
    }
}

pub fn enqueue_to(to: &v1::DeviceRef, id: u8, payload: &[u8]) -> v1::EnqueueRequest {
    v1::EnqueueRequest {
        recipient: Some(to.clone()),
        message_id: vec![id; 16].into(),
        payload: payload.to_vec().into(),
        delivery_token: Default::default(),
    }
}

/// The keys a test device published.
pub struct PublishedKeys {
    pub identity: qpq_core::identity::IdentityKey,
    pub hybrid: qpq_core::kem::HybridSecretKey,
    pub bundle: qpq_core::bundle::KeyBundle,
}

impl Account {
    /// Publishes a fresh key bundle, with a delivery token if `delivery_token` is not empty.
    pub async fn publish_keys(&self, delivery_token: &[u8]) -> PublishedKeys {
        let identity = qpq_core::identity::IdentityKey::generate();
        let hybrid = qpq_core::kem::HybridSecretKey::generate();
        let bundle =
            qpq_core::bundle::KeyBundle::new(&identity, hybrid.public(), &self.user, &self.device)
                .unwrap();
        self.keys()
            .upload_hybrid_key(&v1::UploadHybridKeyRequest {
                key_bundle: bundle.encode().into(),
                delivery_token: delivery_token.to_vec().into(),
            })
            .await
            .unwrap();
        PublishedKeys {
            identity,
            hybrid,
            bundle,
        }
    }

    /// Publishes a key bundle and returns an MLS member of this device that signs with its
    /// identity key and is named `qpq1:user@localhost/device`, as a real client's is.
    pub async fn mls_member(&self) -> (PublishedKeys, qpq_core::mls::MlsMember) {
        let keys = self.publish_keys(&[]).await;
        let member = qpq_core::mls::MlsMember::create(
            rusqlite::Connection::open_in_memory().unwrap(),
            &self.device_name(),
            &keys.identity,
            qpq_core::mls::Suite::XWing,
        )
        .unwrap();
        (keys, member)
    }

    /// This device's credential name under the test server's domain.
    pub fn device_name(&self) -> Vec<u8> {
        qpq_core::identity::DeviceName::new(&self.user, "localhost", &self.device)
            .unwrap()
            .encode()
    }

    /// Messages in this device's queue.
    pub async fn depth(&self) -> u64 {
        self.delivery()
            .peek(&v1::PeekRequest {})
            .await
            .unwrap()
            .depth
    }
}

/// The next push event, failing the test after 5 s.
pub async fn next_event(
    events: &mut v1::server_event_push::Events,
) -> v1::server_event_push::Event {
    tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
        .await
        .expect("no push event within 5 s")
        .expect("push stream closed")
        .expect("undecodable push event")
}

/// The next raw push frame (of any channel), failing the test after 5 s.
pub async fn next_frame(events: &mut qrpc::PushEvents) -> qrpc::RawPush {
    tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
        .await
        .expect("no push event within 5 s")
        .expect("push stream closed")
}

/// Waits (up to 10 s) for the server to close `client`'s connection, and returns how.
pub async fn disconnected(client: &qrpc::Client) -> qrpc::Disconnect {
    let mut rx = client.disconnects();
    let wait = rx.wait_for(Option::is_some);
    let d = tokio::time::timeout(std::time::Duration::from_secs(10), wait)
        .await
        .expect("the connection was not closed within 10 s")
        .expect("client dropped");
    d.clone().expect("checked by wait_for")
}

/// A client that does not reconnect, so calls after a server-side close fail `Unavailable`.
pub async fn connect_once(h: &Harness) -> qrpc::Client {
    qrpc::Client::builder(h.server.addr, ClientTls::pinned(h.server.fingerprint))
        .configure(|c| {
            c.alpn(vec![b"qpq/1".to_vec()]);
            c.reconnect_mut().enabled(false);
        })
        .connect()
        .await
        .unwrap()
}

/// The first of an SDK client's events that `pick` accepts, within `within` (a test that
/// waits longer fails).
pub async fn next<T>(
    events: &mut tokio::sync::broadcast::Receiver<qpq_sdk::ClientEvent>,
    within: std::time::Duration,
    mut pick: impl FnMut(qpq_sdk::ClientEvent) -> Option<T>,
) -> T {
    use tokio::sync::broadcast::error::RecvError;
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(e) {
                        return t;
                    }
                }
                Err(RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .expect("no such event in time")
}
