//! Federation over real network paths: `qpq-server` processes for `a.test`, `b.test` and
//! `c.test` (and `x.test`, which no one federates with), each in its own network namespace on
//! one bridge, finding each other through SRV and address records that a dnsmasq started by
//! the test serves (the servers' resolver is pointed at it, never at the host's). SDK clients
//! in the test's own namespace drive them as users do.
//!
//! Needs root, `ip` and `dnsmasq` (`.ci/services` installs `dnsmasq-base` and sets
//! `QPQ_TEST_NETNS=1`); without the variable each test says it is skipped. The outage lasts
//! `QPQ_TEST_FEDERATION_OUTAGE_SECS` (default 10).
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::next;
use qpq_sdk::{ClientEvent, ClientLimits, InvitationPolicy, QpqClient, SendState};
use tokio::sync::broadcast;

/// The servers of a test network: name, domain, host number on the bridge, UDP port. `b`
/// listens on a port that only its SRV record names; `c` has no SRV record (its A record and
/// the default port find it).
const SERVERS: [(&str, &str, u8, u16); 4] = [
    ("a", "a.test", 2, 7443),
    ("b", "b.test", 3, 7444),
    ("c", "c.test", 4, 7443),
    ("x", "x.test", 5, 7443),
];

/// Which servers each one federates with: `x` is on no one's list, and lists `b`.
fn peers_of(name: &str) -> &'static [&'static str] {
    match name {
        "a" => &["b", "c"],
        "b" => &["a", "c"],
        "c" => &["a", "b"],
        _ => &["b"],
    }
}

static NETWORKS: AtomicU32 = AtomicU32::new(0);

fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {}", args.join(" "));
}

/// A bridge in its own namespace, one namespace per server wired to it by a veth pair, the
/// host's end on it too, and dnsmasq on the host's address. Removed when dropped.
struct Net {
    prefix: String,
    subnet: u8,
    dns: Child,
}

impl Net {
    fn create() -> Option<Self> {
        if std::env::var_os("QPQ_TEST_NETNS").is_none() {
            eprintln!("skipped: QPQ_TEST_NETNS is not set (needs root, ip and dnsmasq)");
            return None;
        }
        let n = NETWORKS.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("q{}{n}", std::process::id() % 10_000);
        let subnet = u8::try_from(200 + (std::process::id() % 20) * 2 + n).unwrap_or(250);
        let mut net = Self {
            prefix,
            subnet,
            dns: Command::new("true").spawn().unwrap(),
        };
        let br = net.ns("br");
        ip(&["netns", "add", &br]);
        ip(&["-n", &br, "link", "set", "lo", "up"]);
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for (name, host) in [("h", 1u8)]
            .into_iter()
            .chain(SERVERS.iter().map(|s| (s.0, s.2)))
        {
            let (near, far) = (
                format!("{}{name}0", net.prefix),
                format!("{}{name}1", net.prefix),
            );
            ip(&["link", "add", &near, "type", "veth", "peer", "name", &far]);
            ip(&["link", "set", &far, "netns", &br]);
            ip(&["-n", &br, "link", "set", &far, "master", "br0", "up"]);
            let addr = format!("{}/24", net.addr(host));
            if name == "h" {
                ip(&["addr", "add", &addr, "dev", &near]);
                ip(&["link", "set", &near, "up"]);
            } else {
                let ns = net.ns(name);
                ip(&["netns", "add", &ns]);
                ip(&["-n", &ns, "link", "set", "lo", "up"]);
                ip(&["link", "set", &near, "netns", &ns]);
                ip(&["-n", &ns, "addr", "add", &addr, "dev", &near]);
                ip(&["-n", &ns, "link", "set", &near, "up"]);
            }
        }
        net.dns = net.start_dns();
        Some(net)
    }

    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, host)
    }

    fn dns_addr(&self) -> SocketAddr {
        SocketAddr::new(self.addr(1).into(), 10053)
    }

    /// dnsmasq with the federation records, answering only what it is told; ready once it
    /// says it started.
    fn start_dns(&self) -> Child {
        let srv = |name: &str, domain: &str, host: u8, port: u16| {
            vec![
                format!("--srv-host=_qpq-fed._udp.{domain},srv-{name}.{domain},{port},10,10"),
                format!("--host-record=srv-{name}.{domain},{}", self.addr(host)),
            ]
        };
        let mut args = vec![
            "--keep-in-foreground".to_owned(),
            "--conf-file=/dev/null".to_owned(),
            "--no-resolv".to_owned(),
            "--no-hosts".to_owned(),
            "--no-poll".to_owned(),
            "--bind-interfaces".to_owned(),
            "--user=root".to_owned(),
            "--pid-file".to_owned(),
            "--log-facility=-".to_owned(),
            format!("--listen-address={}", self.addr(1)),
            format!("--port={}", self.dns_addr().port()),
        ];
        for (name, domain, host, port) in SERVERS {
            if name == "c" {
                args.push(format!("--host-record={domain},{}", self.addr(host)));
            } else {
                args.extend(srv(name, domain, host, port));
            }
        }
        let mut child = Command::new("dnsmasq")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dnsmasq is not installed (.ci/services installs dnsmasq-base)");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("started") {
                break;
            }
            assert!(!line.contains("failed"), "dnsmasq: {line}");
        }
        std::thread::spawn(move || lines.for_each(drop));
        child
    }

    /// Takes `name`'s link to the bridge down (`false`) or up again.
    fn link(&self, name: &str, up: bool) {
        let far = format!("{}{name}1", self.prefix);
        ip(&[
            "-n",
            &self.ns("br"),
            "link",
            "set",
            &far,
            if up { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.dns.kill();
        let _ = self.dns.wait();
        for name in ["br", "a", "b", "c", "x"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(name)])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}h0", self.prefix)])
            .stderr(Stdio::null())
            .status();
    }
}

/// One server's identity and files: kept across its restarts.
struct Site {
    name: &'static str,
    domain: &'static str,
    addr: SocketAddr,
    fingerprint: [u8; 32],
    key_pin: [u8; 32],
    dir: tempfile::TempDir,
}

/// A running `qpq-server` in its namespace.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The network, its servers' identities, and the servers running now.
struct Federation {
    net: Net,
    sites: HashMap<&'static str, Site>,
    running: HashMap<&'static str, Server>,
    /// `federation.give_up_secs` of every server.
    give_up_secs: u64,
}

impl Federation {
    /// Every server of [`SERVERS`], started.
    fn start() -> Option<Self> {
        Self::start_giving_up_after(7 * 24 * 3600)
    }

    /// Every server, giving up on unreachable peers after `give_up_secs`.
    fn start_giving_up_after(give_up_secs: u64) -> Option<Self> {
        let net = Net::create()?;
        let mut sites = HashMap::new();
        for (name, domain, host, port) in SERVERS {
            let dir = tempfile::tempdir().unwrap();
            let cert = qrpc::tls::SelfSigned::generate(&[domain]).unwrap();
            std::fs::write(dir.path().join("cert.pem"), cert.cert_pem()).unwrap();
            std::fs::write(dir.path().join("key.pem"), cert.key_pem().as_bytes()).unwrap();
            sites.insert(
                name,
                Site {
                    name,
                    domain,
                    addr: SocketAddr::new(net.addr(host).into(), port),
                    fingerprint: cert.fingerprint(),
                    key_pin: qrpc::tls::key_fingerprint(cert.cert()).unwrap(),
                    dir,
                },
            );
        }
        let mut f = Self {
            net,
            sites,
            running: HashMap::new(),
            give_up_secs,
        };
        for (name, ..) in SERVERS {
            f.run(name);
        }
        Some(f)
    }

    fn config(&self, site: &Site) -> PathBuf {
        let mut toml = format!(
            "listen = \"{}\"\ndomain = \"{}\"\ndata_dir = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n\
             [federation]\nenabled = true\ndns_server = \"{}\"\nretry_initial_ms = 200\n\
             retry_max_secs = 2\nhealth_probe_secs = 1\ngive_up_secs = {}\n",
            site.addr,
            site.domain,
            site.dir.path().join("data").display(),
            site.dir.path().join("cert.pem").display(),
            site.dir.path().join("key.pem").display(),
            self.net.dns_addr(),
            self.give_up_secs,
        );
        for peer in peers_of(site.name) {
            let p = &self.sites[peer];
            toml.push_str(&format!(
                "[[federation.peers]]\ndomain = \"{}\"\nkey_pin = \"{}\"\n",
                p.domain,
                qpq_server::util::hex(&p.key_pin)
            ));
        }
        let path = site.dir.path().join("server.toml");
        std::fs::write(&path, toml).unwrap();
        path
    }

    /// Starts (or restarts) server `name` in its namespace; returns once it listens.
    fn run(&mut self, name: &'static str) {
        let site = &self.sites[name];
        let config = self.config(site);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.net.ns(name)])
            .arg(env!("CARGO_BIN_EXE_qpq-server"))
            .arg("--config")
            .arg(&config)
            .env(
                "QPQ_LOG",
                std::env::var("QPQ_TEST_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut listening = false;
        for line in lines.by_ref() {
            if line.unwrap().starts_with("federation key pin") {
                listening = true;
                break;
            }
        }
        assert!(listening, "{name} did not start");
        std::thread::spawn(move || lines.for_each(drop));
        self.running.insert(name, Server { child });
    }

    /// `kill -9` of server `name`.
    fn kill(&mut self, name: &str) {
        drop(self.running.remove(name));
    }

    fn client(&self, name: &str, dir: &Path) -> QpqClient {
        let site = &self.sites[name];
        QpqClient::builder()
            .server(site.addr)
            .pin(site.fingerprint)
            .data_dir(dir)
            .raw_key([5; 32])
            .invitations(InvitationPolicy::FromAnyone)
            .limits({
                let mut l = ClientLimits::default();
                l.initial_backoff = Duration::from_millis(50);
                l.max_backoff = Duration::from_millis(500);
                l.key_packages = 3;
                l
            })
            .build()
            .unwrap()
    }

    /// A registered, logged-in user of server `name`, with its events.
    async fn user(
        &self,
        name: &str,
        user: &str,
        dir: &Path,
    ) -> (QpqClient, broadcast::Receiver<ClientEvent>) {
        let client = self.client(name, dir);
        let events = client.subscribe();
        client.register(user, "pw").await.unwrap();
        client.login(user, "dev", "pw").await.unwrap();
        (client, events)
    }
}

/// Waits for a conversation to reach this client.
async fn joined(events: &mut broadcast::Receiver<ClientEvent>, id: qpq_sdk::ConversationId) {
    next(events, Duration::from_secs(30), |e| match e {
        ClientEvent::ConversationCreated(c) if c.id == id => Some(()),
        _ => None,
    })
    .await;
}

/// Collects incoming message bodies until `last` arrives.
async fn read_until(
    events: &mut broadcast::Receiver<ClientEvent>,
    last: &str,
    within: Duration,
) -> Vec<String> {
    let mut seen = Vec::new();
    next(events, within, |e| {
        if let ClientEvent::MessageReceived(m) = e
            && !m.outgoing
        {
            let done = m.body == last;
            seen.push(m.body);
            return done.then_some(());
        }
        None
    })
    .await;
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_of_three_servers_converse_in_a_dm_and_a_group() {
    let Some(fed) = Federation::start() else {
        return;
    };
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (alice, _alice_events) = fed.user("a", "alice", dirs[0].path()).await;
    let (bob, mut bob_events) = fed.user("b", "bob", dirs[1].path()).await;
    let (carol, mut carol_events) = fed.user("c", "carol", dirs[2].path()).await;

    // A DM from alice@a.test to bob@b.test (found through SRV on a port only SRV names).
    let dm = alice.create_dm("bob@b.test").await.unwrap();
    joined(&mut bob_events, dm.id).await;
    let mut alice_events = alice.subscribe();
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("hello bob", None)
        .unwrap();
    assert_eq!(
        read_until(&mut bob_events, "hello bob", Duration::from_secs(30)).await,
        ["hello bob"]
    );
    bob.conversation(&dm.id)
        .unwrap()
        .send_text("hello alice", None)
        .unwrap();
    assert_eq!(
        read_until(&mut alice_events, "hello alice", Duration::from_secs(30)).await,
        ["hello alice"]
    );
    // Bob's client sees alice as a user of a.test.
    let bob_view = bob.conversation(&dm.id).unwrap().messages(10).unwrap();
    assert!(
        bob_view
            .iter()
            .any(|m| m.sender.starts_with("alice@a.test/") && m.body == "hello bob"),
        "{bob_view:?}"
    );

    // A group over three servers (c.test found by its address record and the default port):
    // everyone reads everything, in order.
    let group = alice
        .create_group("trio", &["bob@b.test", "carol@c.test"])
        .await
        .unwrap();
    joined(&mut bob_events, group.id).await;
    joined(&mut carol_events, group.id).await;
    let from_alice: Vec<String> = (0..5).map(|i| format!("alice {i}")).collect();
    for text in &from_alice {
        alice
            .conversation(&group.id)
            .unwrap()
            .send_text(text, None)
            .unwrap();
    }
    assert_eq!(
        read_until(&mut bob_events, "alice 4", Duration::from_secs(30)).await,
        from_alice
    );
    assert_eq!(
        read_until(&mut carol_events, "alice 4", Duration::from_secs(30)).await,
        from_alice
    );
    carol
        .conversation(&group.id)
        .unwrap()
        .send_text("carol here", None)
        .unwrap();
    read_until(&mut alice_events, "carol here", Duration::from_secs(30)).await;
    read_until(&mut bob_events, "carol here", Duration::from_secs(30)).await;

    // carol leaves: exactly one of the others' devices commits her removal (the first by full
    // credential name, the same on every server), and the group goes on without her.
    carol
        .conversation(&group.id)
        .unwrap()
        .leave()
        .await
        .unwrap();
    for events in [&mut alice_events, &mut bob_events] {
        next(events, Duration::from_secs(30), |e| match e {
            ClientEvent::MemberLeft { user, .. } if user == "carol@c.test" => Some(()),
            _ => None,
        })
        .await;
    }
    bob.conversation(&group.id)
        .unwrap()
        .send_text("just us now", None)
        .unwrap();
    read_until(&mut alice_events, "just us now", Duration::from_secs(30)).await;
    for c in [alice, bob, carol] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_and_a_killed_server_lose_and_reorder_nothing() {
    let Some(mut fed) = Federation::start() else {
        return;
    };
    let outage = Duration::from_secs(
        std::env::var("QPQ_TEST_FEDERATION_OUTAGE_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10),
    );
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (alice, mut alice_events) = fed.user("a", "alice", dirs[0].path()).await;
    let (bob, mut bob_events) = fed.user("b", "bob", dirs[1].path()).await;
    let dm = alice.create_dm("bob@b.test").await.unwrap();
    joined(&mut bob_events, dm.id).await;
    // Bob has written to alice: she is no stranger to him (or b.test would hold her 100
    // messages to the stranger rate).
    bob.conversation(&dm.id)
        .unwrap()
        .send_text("hi", None)
        .unwrap();
    read_until(&mut alice_events, "hi", Duration::from_secs(30)).await;

    // b.test drops off the network; alice writes 100 messages, each accepted by a.test.
    fed.net.link("b", false);
    let cut = tokio::time::Instant::now();
    let texts: Vec<String> = (0..100).map(|i| format!("m{i:03}")).collect();
    let conversation = alice.conversation(&dm.id).unwrap();
    let mut ids = std::collections::HashSet::new();
    for text in &texts {
        ids.insert(conversation.send_text(text, None).unwrap().id());
    }
    next(&mut alice_events, Duration::from_secs(60), |e| {
        if let ClientEvent::SendStateChanged {
            id,
            state: SendState::Sent,
            ..
        } = e
        {
            ids.remove(&id);
        }
        ids.is_empty().then_some(())
    })
    .await;
    // a.test is killed with its outbox full, and comes back; the link returns later.
    fed.kill("a");
    fed.run("a");
    tokio::time::sleep_until(cut + outage).await;
    fed.net.link("b", true);

    let seen = read_until(&mut bob_events, "m099", Duration::from_secs(60)).await;
    assert_eq!(seen, texts, "every message once, in order");
    for c in [alice, bob] {
        c.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_an_unreachable_server_fails_visibly_after_the_give_up_time() {
    let Some(fed) = Federation::start_giving_up_after(3) else {
        return;
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (alice, mut alice_events) = fed.user("a", "alice", dirs[0].path()).await;
    let (_bob, mut bob_events) = fed.user("b", "bob", dirs[1].path()).await;
    let dm = alice.create_dm("bob@b.test").await.unwrap();
    joined(&mut bob_events, dm.id).await;

    fed.net.link("b", false);
    let id = alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("into the void", None)
        .unwrap()
        .id();
    // Accepted by a.test (in its outbox), then given up: alice's client says so, naming the
    // recipient device.
    let reason = next(&mut alice_events, Duration::from_secs(60), |e| match e {
        ClientEvent::SendStateChanged {
            id: of,
            state: SendState::Failed { reason, .. },
            ..
        } if of == id => Some(reason),
        _ => None,
    })
    .await;
    assert!(reason.contains("bob@b.test/dev"), "{reason}");
    assert!(reason.contains("could not be reached"), "{reason}");
    let stored = alice.conversation(&dm.id).unwrap().messages(10).unwrap();
    let message = stored.iter().find(|m| m.id == id).unwrap();
    assert!(
        matches!(message.state, SendState::Failed { .. }),
        "{message:?}"
    );
    alice.close().await;
}
