//! Several `qpq-server` processes on one PostgreSQL database and one NATS subject, driven by
//! SDK clients as users drive them. Needs `QPQ_TEST_POSTGRES_URL` and `QPQ_TEST_NATS_URL`
//! (`.ci/run` sets both); without them each test says it is skipped.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::next;
use qpq_sdk::{ClientEvent, ClientLimits, ConnectionState, InvitationPolicy, QpqClient};
use qpq_server::store::TestDatabase;
use tokio::sync::broadcast;

/// One node: a `qpq-server` process of this crate's build.
struct Node {
    child: Child,
    addr: SocketAddr,
    fingerprint: [u8; 32],
    _dir: tempfile::TempDir,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The cluster's shared services: a fresh database and a NATS subject prefix of its own.
struct Services {
    db: TestDatabase,
    nats: String,
    prefix: String,
}

async fn services() -> Option<Services> {
    let Ok(nats) = std::env::var("QPQ_TEST_NATS_URL") else {
        eprintln!("QPQ_TEST_NATS_URL is unset: skipping a cluster test");
        return None;
    };
    let db = TestDatabase::create().await?;
    Some(Services {
        db,
        nats,
        prefix: format!("qpqtest{:08x}", rand::random::<u32>()),
    })
}

fn free_udp_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// Starts node `name` on `addr` and waits for it to listen.
fn start_node(s: &Services, name: &str, addr: SocketAddr) -> Node {
    start_node_with(s, name, addr, "")
}

/// [`start_node`] with more `[limits]` lines.
fn start_node_with(s: &Services, name: &str, addr: SocketAddr, limits: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("qpq-server.toml");
    std::fs::write(
        &config,
        format!(
            "[cluster]\nnats_prefix = \"{}\"\nnodes = 2\n[limits]\njanitor_interval_secs = 3600\nlogins_per_minute_per_ip = 100000\nchannel_invites_per_minute_per_user = 100000\n{limits}",
            s.prefix
        ),
    )
    .unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "--config".into(),
        config.into(),
        "--postgres-url".into(),
        s.db.url.clone().into(),
        "--nats-url".into(),
        s.nats.clone().into(),
        "--node-id".into(),
        name.into(),
    ];
    spawn_node(dir.path().to_path_buf(), addr, &args, dir)
}

/// Runs `qpq-server` on `data` and `addr` with `args`, and waits for it to listen; `keep`
/// lives as long as the node.
fn spawn_node(
    data: std::path::PathBuf,
    addr: SocketAddr,
    args: &[std::ffi::OsString],
    keep: tempfile::TempDir,
) -> Node {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qpq-server"))
        .arg("--data-dir")
        .arg(data)
        .arg("--listen")
        .arg(addr.to_string())
        .args(args)
        .env("QPQ_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let (addr, fingerprint) = read_banner(&mut child);
    Node {
        child,
        addr,
        fingerprint,
        _dir: keep,
    }
}

/// The address and certificate fingerprint a starting node prints; the rest of its output
/// is read (and dropped) for as long as it runs.
fn read_banner(child: &mut Child) -> (SocketAddr, [u8; 32]) {
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut listening = None;
    let mut fingerprint = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(a) = line.strip_prefix("qpq-server listening on ") {
            listening = Some(a.parse().unwrap());
        }
        if let Some(f) = line.strip_prefix("certificate sha256: ") {
            fingerprint = Some(qrpc::tls::parse_fingerprint(f).unwrap());
        }
        if listening.is_some() && fingerprint.is_some() {
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    (
        listening.expect("the node did not start"),
        fingerprint.expect("the node printed no fingerprint"),
    )
}

fn client(node: &Node, fallback: &[&Node], dir: &std::path::Path) -> QpqClient {
    QpqClient::builder()
        .server(node.addr)
        .fallback_servers(fallback.iter().map(|n| n.addr))
        .pin(node.fingerprint)
        .data_dir(dir)
        .raw_key([5; 32])
        .invitations(InvitationPolicy::FromAnyone)
        .limits({
            let mut l = ClientLimits::default();
            l.initial_backoff = Duration::from_millis(50);
            l.max_backoff = Duration::from_millis(300);
            l.key_packages = 3;
            l
        })
        .build()
        .unwrap()
}

async fn received(events: &mut broadcast::Receiver<ClientEvent>, body: &str) {
    next(events, Duration::from_secs(20), |e| match e {
        ClientEvent::MessageReceived(m) if m.body == body => Some(()),
        _ => None,
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_serve_one_messenger_and_survive_a_killed_node() {
    let Some(s) = services().await else { return };
    let node1 = start_node(&s, "n1", free_udp_port());
    let node2 = start_node(&s, "n2", free_udp_port());
    // One certificate for the cluster: clients pin one fingerprint whichever node they reach.
    assert_eq!(node1.fingerprint, node2.fingerprint);

    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let alice = client(&node1, &[&node2], dirs[0].path());
    alice.register("alice", "pw").await.unwrap();
    alice.login("alice", "laptop", "pw").await.unwrap();
    let bob = client(&node2, &[&node1], dirs[1].path());
    let mut bob_events = bob.subscribe();
    bob.register("bob", "pw").await.unwrap();
    bob.login("bob", "phone", "pw").await.unwrap();
    let carol = client(&node1, &[&node2], dirs[2].path());
    carol.register("carol", "pw").await.unwrap();
    carol.login("carol", "pc", "pw").await.unwrap();

    // A DM and a group message from node 1 reach Bob on node 2 by push.
    let dm = alice.create_dm("bob").await.unwrap();
    next(&mut bob_events, Duration::from_secs(20), |e| {
        matches!(e, ClientEvent::ConversationCreated(_)).then_some(())
    })
    .await;
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("hello across nodes", None)
        .unwrap();
    received(&mut bob_events, "hello across nodes").await;
    let group = alice.create_group("team", &["bob", "carol"]).await.unwrap();
    next(&mut bob_events, Duration::from_secs(20), |e| match e {
        ClientEvent::ConversationCreated(c) if c.id == group.id => Some(()),
        _ => None,
    })
    .await;
    alice
        .conversation(&group.id)
        .unwrap()
        .send_text("to the team", None)
        .unwrap();
    received(&mut bob_events, "to the team").await;
    // Pushes cross nodes: typing travels by push alone, from Bob on node 2 to Alice on 1.
    let mut alice_events = alice.subscribe();
    bob.conversation(&dm.id).unwrap().typing().await.unwrap();
    next(&mut alice_events, Duration::from_secs(10), |e| match e {
        ClientEvent::Typing { user, .. } if user == "bob" => Some(()),
        _ => None,
    })
    .await;

    // Node 2 is killed during traffic: Bob fails over to node 1, and every message Alice had
    // acknowledged arrives exactly once.
    let dm_alice = alice.conversation(&dm.id).unwrap();
    let before: Vec<String> = (0..5).map(|i| format!("before {i}")).collect();
    for text in &before {
        dm_alice.send_text(text, None).unwrap();
    }
    drop(node2);
    let lost_at = Instant::now();
    next(&mut bob_events, Duration::from_secs(10), |e| {
        matches!(
            e,
            ClientEvent::ConnectionStateChanged(ConnectionState::Offline { .. })
        )
        .then_some(())
    })
    .await;
    let after: Vec<String> = (0..5).map(|i| format!("after {i}")).collect();
    for text in &after {
        dm_alice.send_text(text, None).unwrap();
    }
    let mut seen = Vec::new();
    next(&mut bob_events, Duration::from_secs(30), |e| {
        if let ClientEvent::MessageReceived(m) = e
            && !m.outgoing
        {
            seen.push(m.body);
        }
        seen.iter().any(|b| b == "after 4").then_some(())
    })
    .await;
    let failed_over = lost_at.elapsed();
    assert!(
        failed_over < Duration::from_secs(10),
        "failover took {failed_over:?}"
    );
    let stored: Vec<String> = bob
        .conversation(&dm.id)
        .unwrap()
        .messages(100)
        .unwrap()
        .into_iter()
        .filter(|m| !m.outgoing)
        .map(|m| m.body)
        .collect();
    for text in before.iter().chain(&after) {
        assert_eq!(
            stored.iter().filter(|b| *b == text).count(),
            1,
            "{text} stored once: {stored:?}"
        );
    }
    for c in [alice, bob, carol] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_revoked_through_one_node_is_cut_off_on_the_other() {
    let Some(s) = services().await else { return };
    let node1 = start_node(&s, "n1", free_udp_port());
    let node2 = start_node(&s, "n2", free_udp_port());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let phone = client(&node2, &[], dirs[0].path());
    let mut phone_events = phone.subscribe();
    phone.register("bob", "pw").await.unwrap();
    phone.login("bob", "phone", "pw").await.unwrap();
    phone.link_device("laptop", "laptop").await.unwrap();
    let laptop = client(&node1, &[], dirs[1].path());
    laptop.login("bob", "laptop", "pw").await.unwrap();

    let revoked_at = Instant::now();
    laptop.revoke_device("phone").await.unwrap();
    let reason = next(&mut phone_events, Duration::from_secs(5), |e| match e {
        ClientEvent::ConnectionStateChanged(ConnectionState::SessionEnded { reason }) => {
            Some(reason)
        }
        _ => None,
    })
    .await;
    assert!(
        revoked_at.elapsed() < Duration::from_secs(1),
        "the phone on node 2 learnt of its revocation after {:?}",
        revoked_at.elapsed()
    );
    assert!(reason.contains("device_revoked"), "{reason}");
    laptop.close().await;
    phone.close().await;
}

/// A single node on SQLite (no service needed), started as a process.
fn start_sqlite_node(dir: &std::path::Path, addr: SocketAddr) -> Node {
    spawn_node(dir.to_path_buf(), addr, &[], tempfile::tempdir().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_restarted_on_its_address_is_back_for_its_clients_at_once() {
    let data = tempfile::tempdir().unwrap();
    let addr = free_udp_port();
    let node = start_sqlite_node(data.path(), addr);
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let alice = client(&node, &[], dirs[0].path());
    let mut alice_events = alice.subscribe();
    alice.register("alice", "pw").await.unwrap();
    alice.login("alice", "laptop", "pw").await.unwrap();
    let bob = client(&node, &[], dirs[1].path());
    let mut bob_events = bob.subscribe();
    bob.register("bob", "pw").await.unwrap();
    bob.login("bob", "phone", "pw").await.unwrap();
    let dm = alice.create_dm("bob").await.unwrap();
    received_created(&mut bob_events).await;

    // kill -9: the process says nothing to its clients. Alice writes during the outage (the
    // outbox keeps it), and the server is back on its address at once: its clients' next
    // packets get stateless resets (the secret survives in the database), so they reconnect
    // now, not at their idle timeout.
    drop(node);
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("written during the outage", None)
        .unwrap();
    let node = start_sqlite_node(data.path(), addr);
    let restarted = Instant::now();
    let mut offline = false;
    next(&mut alice_events, Duration::from_secs(10), |e| match e {
        ClientEvent::ConnectionStateChanged(ConnectionState::Offline { .. }) => {
            offline = true;
            None
        }
        ClientEvent::ConnectionStateChanged(ConnectionState::Connected) if offline => Some(()),
        _ => None,
    })
    .await;
    let back = restarted.elapsed();
    assert!(
        back < Duration::from_secs(2),
        "reconnected {back:?} after the restart"
    );
    received(&mut bob_events, "written during the outage").await;
    alice.close().await;
    bob.close().await;
    drop(node);
}

async fn received_created(events: &mut broadcast::Receiver<ClientEvent>) {
    next(events, Duration::from_secs(20), |e| {
        matches!(e, ClientEvent::ConversationCreated(_)).then_some(())
    })
    .await;
}

/// Logs in on `node` with the generated clients alone and asks for the log's head.
async fn head_from(node: &Node, user: &str) -> Vec<u8> {
    let client = qrpc::Client::builder(node.addr, qrpc::tls::ClientTls::pinned(node.fingerprint))
        .configure(|c| {
            c.alpn(vec![b"qpq/1".to_vec()]);
        })
        .connect()
        .await
        .unwrap();
    qpq_proto::auth_flows::register(&client, user, "pw")
        .await
        .unwrap();
    qpq_proto::auth_flows::login(&client, user, "d", "pw")
        .await
        .unwrap();
    qpq_proto::v1::keys_client::KeysClient::new(client)
        .kt_head(&qpq_proto::v1::KtHeadRequest {
            since_size: 0,
            ..Default::default()
        })
        .await
        .unwrap()
        .tree_head
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_publishes_on_both_nodes_make_one_log_with_one_head() {
    let Some(s) = services().await else { return };
    let node1 = start_node(&s, "n1", free_udp_port());
    let node2 = start_node(&s, "n2", free_udp_port());
    const USERS: usize = 100;
    let dirs: Vec<_> = (0..USERS).map(|_| tempfile::tempdir().unwrap()).collect();
    // Every user's first login publishes its keys: half through each node, all at once.
    let clients: Vec<QpqClient> =
        futures::future::join_all(dirs.iter().enumerate().map(|(i, dir)| {
            let node = if i % 2 == 0 { &node1 } else { &node2 };
            let c = client(node, &[], dir.path());
            async move {
                c.register(&format!("u{i}"), "pw").await.unwrap();
                c.login(&format!("u{i}"), "d", "pw").await.unwrap();
                c
            }
        }))
        .await;
    // Both nodes serve the very same signed head (not two heads of one size).
    let (one, two) = (
        head_from(&node1, "observer1").await,
        head_from(&node2, "observer2").await,
    );
    assert_eq!(one, two, "the nodes serve different heads");
    // Every key answer's inclusion proof checks out against that log: the first user builds
    // a group of all the others (half of their keys come from the other node's appends).
    let mut events = clients[0].subscribe();
    let others: Vec<String> = (1..USERS).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = others.iter().map(String::as_str).collect();
    clients[0].create_group("all", &refs).await.unwrap();
    while let Ok(event) = events.try_recv() {
        assert!(
            !matches!(event, ClientEvent::KeyTransparencyAlarm { .. }),
            "{event:?}"
        );
    }
    for c in clients {
        c.close().await;
    }
}

/// A NATS server of the test's own (the machine's `nats-server`), on `port`.
fn start_nats(port: u16) -> Child {
    let child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server is not installed (.ci/services installs it)");
    // Ready once it accepts connections.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::yield_now();
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_keep_delivering_without_nats_and_push_again_when_it_returns() {
    let Some(mut s) = services().await else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut nats = start_nats(port);
    s.nats = format!("nats://127.0.0.1:{port}");
    let node1 = start_node(&s, "n1", free_udp_port());
    let node2 = start_node(&s, "n2", free_udp_port());
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let alice = client(&node1, &[], dirs[0].path());
    alice.register("alice", "pw").await.unwrap();
    alice.login("alice", "laptop", "pw").await.unwrap();
    let bob = client(&node2, &[], dirs[1].path());
    let mut bob_events = bob.subscribe();
    bob.register("bob", "pw").await.unwrap();
    bob.login("bob", "phone", "pw").await.unwrap();
    let dm = alice.create_dm("bob").await.unwrap();
    received_created(&mut bob_events).await;
    let dm = alice.conversation(&dm.id).unwrap();

    // NATS goes away: no pokes, but node 2 still delivers on Bob's next fetch (his 20 s
    // long poll ends, and the database has the message).
    let _ = nats.kill();
    let _ = nats.wait();
    dm.send_text("while the bus is down", None).unwrap();
    next(&mut bob_events, Duration::from_secs(40), |e| match e {
        ClientEvent::MessageReceived(m) if m.body == "while the bus is down" => Some(()),
        _ => None,
    })
    .await;

    // NATS comes back on its address: the nodes reconnect and pushes flow again. Typing
    // notifications travel by push alone (no fetch brings them): one from Alice on node 1
    // reaching Bob on node 2 went over the bus.
    let mut nats = start_nats(port);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "pushes did not resume");
        // Refused now and then by the typing rate limit: the next round tries again.
        let _ = dm.typing().await;
        let pushed = tokio::time::timeout(
            Duration::from_secs(2),
            next(&mut bob_events, Duration::from_secs(60), |e| match e {
                ClientEvent::Typing { user, .. } if user == "alice" => Some(()),
                _ => None,
            }),
        )
        .await;
        if pushed.is_ok() {
            break;
        }
    }
    alice.close().await;
    bob.close().await;
    let _ = nats.kill();
    let _ = nats.wait();
}

/// A logged-in connection to `node` with the generated clients alone.
async fn raw_login(node: &Node, user: &str, device: &str, register: bool) -> qrpc::Client {
    let client = qrpc::Client::builder(node.addr, qrpc::tls::ClientTls::pinned(node.fingerprint))
        .configure(|c| {
            c.alpn(vec![b"qpq/1".to_vec()]);
        })
        .connect()
        .await
        .unwrap();
    if register {
        qpq_proto::auth_flows::register(&client, user, "pw")
            .await
            .unwrap();
    }
    qpq_proto::auth_flows::login(&client, user, device, "pw")
        .await
        .unwrap();
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_spreading_calls_over_nodes_gets_no_more_than_its_limit() {
    let Some(s) = services().await else { return };
    // 10 write calls per second per user for the cluster: 5 on each of the 2 nodes.
    let limits = "writes_per_second_per_user = 10\n";
    let node1 = start_node_with(&s, "n1", free_udp_port(), limits);
    let node2 = start_node_with(&s, "n2", free_udp_port(), limits);
    let on1 = raw_login(&node1, "eve", "a", true).await;
    let on2 = raw_login(&node2, "eve", "a", false).await;
    let clients = [
        qpq_proto::v1::delivery_client::DeliveryClient::new(on1),
        qpq_proto::v1::delivery_client::DeliveryClient::new(on2),
    ];
    let started = Instant::now();
    let mut accepted = 0u32;
    for i in 0..40 {
        let ack = qpq_proto::v1::AckRequest { up_to_seq: 0 };
        match clients[i % 2].ack(&ack).await {
            Ok(_) => accepted += 1,
            Err(status) => assert_eq!(status.code(), qrpc::Code::ResourceExhausted, "{status}"),
        }
    }
    // The burst (10) and what refilled meanwhile (10 a second), at most.
    let allowed = 10 + (started.elapsed().as_secs_f64() * 10.0).ceil() as u32;
    assert!(accepted > 0);
    assert!(
        accepted <= allowed,
        "{accepted} write calls accepted over two nodes; the cluster allows {allowed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clustered_node_refuses_to_start_without_its_services() {
    let Some(s) = services().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let run = |postgres: &str, nats: &str| {
        Command::new(env!("CARGO_BIN_EXE_qpq-server"))
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--postgres-url")
            .arg(postgres)
            .arg("--nats-url")
            .arg(nats)
            .env("QPQ_LOG", "off")
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    // Nothing listens on port 1.
    let no_nats = run(&s.db.url, "nats://127.0.0.1:1");
    assert!(!no_nats.status.success());
    let said = String::from_utf8_lossy(&no_nats.stderr);
    assert!(
        said.contains("cannot reach NATS at nats://127.0.0.1:1"),
        "{said}"
    );
    let no_db = run("postgres://qpq:s3cret@127.0.0.1:1/qpq", &s.nats);
    assert!(!no_db.status.success());
    let said = String::from_utf8_lossy(&no_db.stderr);
    assert!(said.contains("cannot reach PostgreSQL at"), "{said}");
    assert!(
        !said.contains("s3cret"),
        "the password is not shown: {said}"
    );
}

#[test]
fn logs_carry_no_colour_codes_off_a_terminal_and_can_be_json() {
    for json in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_qpq-server"));
        command
            .arg("--data-dir")
            .arg(dir.path())
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env("QPQ_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if json {
            command.args(["--log-format", "json"]);
        }
        let mut child = command.spawn().unwrap();
        // Started: the first start logs the certificate it generated.
        read_banner(&mut child);
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        let logged = String::from_utf8(output.stderr).unwrap();
        assert!(logged.contains("self-signed certificate"), "{logged}");
        assert!(
            !logged.contains('\u{1b}'),
            "colour codes in a pipe: {logged:?}"
        );
        if json {
            for line in logged.lines().filter(|l| !l.is_empty()) {
                assert!(
                    line.starts_with('{') && line.ends_with('}') && line.contains("\"level\""),
                    "not a JSON line: {line}"
                );
            }
        }
    }
}
