//! Shared test harness: a real qpq-server on loopback and SDK clients with their own stores.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use qpq_sdk::{ClientEvent, ClientLimits, InvitationPolicy, QpqClient, SendState};
use tokio::sync::broadcast;

pub struct Server {
    pub dir: tempfile::TempDir,
    pub running: Option<qpq_server::RunningServer>,
    pub addr: SocketAddr,
    pub fingerprint: [u8; 32],
}

pub fn server_config(dir: &std::path::Path, listen: SocketAddr) -> qpq_server::Config {
    qpq_server::Config {
        listen,
        data_dir: dir.to_path_buf(),
        ..Default::default()
    }
}

impl Server {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A server whose configuration `f` adjusts first.
    pub async fn start_with(f: impl FnOnce(&mut qpq_server::Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = server_config(dir.path(), "127.0.0.1:0".parse().unwrap());
        f(&mut config);
        let running = qpq_server::start(config).await.unwrap();
        Self {
            addr: running.addr,
            fingerprint: running.fingerprint,
            running: Some(running),
            dir,
        }
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.running.take() {
            s.shutdown().await;
        }
    }

    /// Starts again on the same address and data (same certificate). The old endpoint frees
    /// its socket once its closing connections are gone: poll the bind with a deadline.
    pub async fn restart(&mut self) {
        self.stop().await;
        let start = async {
            loop {
                match qpq_server::start(server_config(self.dir.path(), self.addr)).await {
                    Ok(running) => return running,
                    Err(e) if e.to_string().contains("cannot bind") => {
                        tokio::task::yield_now().await;
                    }
                    Err(e) => panic!("restart failed: {e}"),
                }
            }
        };
        let running = tokio::time::timeout(Duration::from_secs(20), start)
            .await
            .expect("the old server never released its socket");
        assert_eq!(running.fingerprint, self.fingerprint);
        self.running = Some(running);
    }

    /// A client as a user installs it: strangers' invitations become message requests.
    pub fn consenting_client(&self, dir: &std::path::Path) -> QpqClient {
        QpqClient::builder()
            .server(self.addr)
            .pin(self.fingerprint)
            .data_dir(dir)
            .passphrase("store passphrase")
            .build()
            .unwrap()
    }

    pub fn client_with(&self, dir: &std::path::Path, limits: ClientLimits) -> QpqClient {
        QpqClient::builder()
            .server(self.addr)
            .pin(self.fingerprint)
            .data_dir(dir)
            .passphrase("store passphrase")
            .limits(limits)
            .invitations(InvitationPolicy::FromAnyone)
            .build()
            .unwrap()
    }

    /// A client that joins every invitation at once (most tests are not about consent).
    pub fn client(&self, dir: &std::path::Path) -> QpqClient {
        QpqClient::builder()
            .server(self.addr)
            .pin(self.fingerprint)
            .data_dir(dir)
            .passphrase("store passphrase")
            .invitations(InvitationPolicy::FromAnyone)
            .limits({
                let mut l = ClientLimits::default();
                l.initial_backoff = Duration::from_millis(50);
                l.max_backoff = Duration::from_millis(300);
                l.key_packages = 3;
                l.transfer_attempts = 100;
                l
            })
            .build()
            .unwrap()
    }
}

/// Waits up to 20 s for the first event `pick` accepts.
pub async fn next<T>(
    events: &mut broadcast::Receiver<ClientEvent>,
    mut pick: impl FnMut(ClientEvent) -> Option<T>,
) -> T {
    let wait = async {
        loop {
            match events.recv().await {
                Ok(e) => {
                    if let Some(t) = pick(e) {
                        return t;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), wait)
        .await
        .expect("no such event within 20 s")
}

pub async fn text(events: &mut broadcast::Receiver<ClientEvent>) -> (String, String) {
    next(events, |e| match e {
        ClientEvent::MessageReceived(m) if !m.outgoing => Some((m.sender, m.body)),
        _ => None,
    })
    .await
}

pub async fn sent(events: &mut broadcast::Receiver<ClientEvent>, id: qpq_sdk::MessageId) {
    next(events, |e| match e {
        ClientEvent::SendStateChanged { id: i, state, .. } if i == id => match state {
            SendState::Sent => Some(()),
            SendState::Failed { reason, .. } => panic!("send failed: {reason}"),
            _ => None,
        },
        _ => None,
    })
    .await;
}

pub async fn account(
    server: &Server,
    dir: &std::path::Path,
    user: &str,
    device: &str,
) -> QpqClient {
    let client = server.client(dir);
    client.register(user, "pw").await.unwrap();
    client.login(user, device, "pw").await.unwrap();
    client
}

/// A logged-in account on the generated clients alone, outside the SDK (an attacker's view).
pub async fn raw_account(server: &Server, user: &str, device: &str) -> qrpc::Client {
    let client = qrpc::Client::builder(
        server.addr,
        qrpc::tls::ClientTls::pinned(server.fingerprint),
    )
    .configure(|c| {
        c.alpn(vec![b"qpq/1".to_vec()]);
    })
    .connect()
    .await
    .unwrap();
    qpq_proto::auth_flows::register(&client, user, "pw")
        .await
        .unwrap();
    qpq_proto::auth_flows::login(&client, user, device, "pw")
        .await
        .unwrap();
    client
}

/// A user on one device ("d1") with its own store, and its events from the start.
pub struct Member {
    pub client: QpqClient,
    pub events: broadcast::Receiver<ClientEvent>,
    pub dir: tempfile::TempDir,
}

pub async fn member(server: &Server, user: &str) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let client = account(server, dir.path(), user, "d1").await;
    let events = client.subscribe();
    Member {
        client,
        events,
        dir,
    }
}

/// Waits until `m` joins a conversation.
pub async fn joined(m: &mut Member) -> qpq_sdk::Conversation {
    next(&mut m.events, |e| match e {
        ClientEvent::ConversationCreated(c) => Some(c),
        _ => None,
    })
    .await
}

/// Alice (laptop) and Bob (phone), each with a store in its own directory, and a direct
/// conversation between them that Bob has joined.
pub struct Pair {
    pub a_dir: tempfile::TempDir,
    pub b_dir: tempfile::TempDir,
    pub alice: QpqClient,
    pub bob: QpqClient,
    pub bob_events: broadcast::Receiver<ClientEvent>,
    pub dm: qpq_sdk::Conversation,
}

pub async fn pair(server: &Server) -> Pair {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = account(server, a_dir.path(), "alice", "laptop").await;
    let bob = account(server, b_dir.path(), "bob", "phone").await;
    let mut bob_events = bob.subscribe();
    let dm = alice.create_dm("bob").await.unwrap();
    next(&mut bob_events, |e| {
        matches!(e, ClientEvent::ConversationCreated(_)).then_some(())
    })
    .await;
    Pair {
        a_dir,
        b_dir,
        alice,
        bob,
        bob_events,
        dm,
    }
}
