//! Federation with other qpq servers: the federation protocol (ALPN `qpq-fed/1`, mutual TLS
//! on the clients' UDP port), who is trusted, where peers are, and the outbound side (the
//! relay outbox's sender and the calls a home server makes for its users).
//!
//! | module | what it does |
//! |---|---|
//! | [`discovery`] | a peer's address: configured, DNS SRV, or A/AAAA and the default port |
//! | [`service`] | the `Federation` service peers call |
//! | [`relay`] | sends the outbox to each destination, in order, with backoff |
//! | [`proxy`] | the client calls answered for users of other servers |
//!
//! Trust is by key: each peer is listed with the SHA-256 of its certificate's public key.
//! A connection on `qpq-fed/1` must present a certificate whose key is one of them (TLS
//! refuses others in the handshake; one with no certificate is closed at once), and every
//! request's `origin` must be the domain that key is listed for.

pub mod discovery;
pub(crate) mod proxy;
pub(crate) mod relay;
pub(crate) mod service;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use governor::clock::DefaultClock;
use governor::{DefaultKeyedRateLimiter, RateLimiter};
use qpq_proto::v1::federation_client::FederationClient;
use qrpc::Status;
use qrpc::tls::{ClientAuth, ClientTls, ServerTls};

use crate::abuse::{per_minute, per_second};
use crate::config;
use crate::util::lock;

pub use discovery::Discovery;

/// The federation protocol's ALPN.
pub const ALPN: &[u8] = b"qpq-fed/1";

/// Addresses of one peer dialed at most.
const MAX_ADDRESSES: usize = 8;

/// How long connecting to a peer may take, over all its addresses.
const CONNECT_BUDGET: Duration = Duration::from_secs(15);

/// Whether a failed call says the connection itself is bad (then it is dropped and made again).
pub(crate) fn connection_failed(code: qrpc::Code) -> bool {
    matches!(
        code,
        qrpc::Code::Unavailable
            | qrpc::Code::DeadlineExceeded
            | qrpc::Code::Cancelled
            | qrpc::Code::Unknown
    )
}

/// A listed peer.
struct PeerEntry {
    pin: [u8; 32],
    tls: ClientTls,
}

/// Federation state of one node.
pub struct Federation {
    /// This server's domain.
    pub(crate) domain: String,
    pub(crate) config: config::Federation,
    peers: HashMap<String, PeerEntry>,
    by_pin: HashMap<[u8; 32], String>,
    deny: HashSet<String>,
    discovery: Discovery,
    /// One slot per peer: connecting to one (DNS, handshake) holds up no other.
    clients: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<FederationClient>>>>>,
    /// Destinations the relay sender is sending to now (one task each).
    pub(crate) sending: Mutex<HashSet<String>>,
    /// This node's name in outbox leases.
    pub(crate) node: String,
    /// Wakes the relay sender (a message entered the outbox, or a peer came back).
    pub(crate) wake: tokio::sync::Notify,
    clock: DefaultClock,
    calls_per_peer: DefaultKeyedRateLimiter<String>,
    pub(crate) messages_per_peer: DefaultKeyedRateLimiter<String>,
    pub(crate) key_packages_per_peer_and_user: DefaultKeyedRateLimiter<(String, String)>,
    /// Lookups about users of other servers, per local user.
    lookups_per_user: DefaultKeyedRateLimiter<String>,
    /// Messages from strangers, per (peer, local recipient).
    pub(crate) strangers_per_peer_and_user: DefaultKeyedRateLimiter<(String, String)>,
    /// When each peer last woke its outbox (inbound traffic wakes it at most once a second).
    woken: Mutex<HashMap<String, Instant>>,
    /// Per-destination relay counters, for tests and metrics.
    pub(crate) relayed: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Federation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Federation")
            .field("domain", &self.domain)
            .field("peers", &self.peers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Federation {
    /// Federation for `domain` with `config`, presenting `tls`'s certificate to peers.
    pub fn new(
        domain: String,
        config: config::Federation,
        tls: &ServerTls,
        node: String,
    ) -> Result<Self, String> {
        let mut peers = HashMap::new();
        let mut by_pin = HashMap::new();
        let mut overrides = HashMap::new();
        for peer in &config.peers {
            let pin = qrpc::tls::parse_fingerprint(&peer.key_pin)
                .map_err(|_| format!("federation peer {}: bad key_pin", peer.domain))?;
            by_pin.insert(pin, peer.domain.clone());
            if let Some(addr) = peer.address {
                overrides.insert(peer.domain.clone(), addr);
            }
            let tls = ClientTls::pinned_key(pin).with_client_certificate_of(tls);
            peers.insert(peer.domain.clone(), PeerEntry { pin, tls });
        }
        let discovery = Discovery::new(config.dns_server, overrides, config.default_port)?;
        Ok(Self {
            domain,
            peers,
            by_pin,
            deny: config.deny.iter().cloned().collect(),
            discovery,
            clients: Mutex::new(HashMap::new()),
            sending: Mutex::new(HashSet::new()),
            node,
            wake: tokio::sync::Notify::new(),
            clock: DefaultClock::default(),
            calls_per_peer: RateLimiter::keyed(per_second(config.calls_per_second_per_peer)),
            messages_per_peer: RateLimiter::keyed(per_second(config.messages_per_second_per_peer)),
            key_packages_per_peer_and_user: RateLimiter::keyed(per_minute(
                config.key_package_fetches_per_minute_per_peer_and_user,
            )),
            strangers_per_peer_and_user: RateLimiter::keyed(per_minute(
                config.stranger_messages_per_minute_per_peer_and_user,
            )),
            lookups_per_user: RateLimiter::keyed(per_minute(
                config.remote_lookups_per_minute_per_user,
            )),
            woken: Mutex::new(HashMap::new()),
            relayed: std::sync::atomic::AtomicU64::new(0),
            config,
        })
    }

    /// The client-certificate check for the federation protocol: the listed peers' keys.
    pub fn client_auth(&self) -> ClientAuth {
        ClientAuth::pinned_keys(self.peers.values().map(|p| p.pin))
    }

    /// Whether `domain` is a peer this server federates with now.
    pub fn is_peer(&self, domain: &str) -> bool {
        self.peers.contains_key(domain) && !self.deny.contains(domain)
    }

    /// Messages this node relayed to peers (each delivered message once).
    pub fn relayed(&self) -> u64 {
        self.relayed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes `n` cells of `key`'s bucket in `limiter` (one of this value's), as the
    /// server's other limits do.
    pub(crate) fn check<K: std::hash::Hash + Eq + Clone>(
        &self,
        limiter: &DefaultKeyedRateLimiter<K>,
        key: &K,
        n: u32,
        what: &str,
    ) -> Result<(), Status> {
        crate::abuse::check_with(&self.clock, limiter, key, n, what)
    }

    /// Takes `n` of `user`'s lookups about users of other servers.
    pub fn check_lookup(&self, user: &str, n: u32) -> Result<(), Status> {
        self.check(
            &self.lookups_per_user,
            &user.to_owned(),
            n,
            "lookups of users of other servers",
        )
    }

    /// Forgets the rate-limit state of quiet keys (the janitor calls this).
    pub fn prune(&self) {
        self.calls_per_peer.retain_recent();
        self.messages_per_peer.retain_recent();
        self.key_packages_per_peer_and_user.retain_recent();
        self.lookups_per_user.retain_recent();
        self.strangers_per_peer_and_user.retain_recent();
        lock(&self.woken).retain(|_, at| at.elapsed() < Duration::from_secs(60));
    }

    /// The peer a federation call comes from: the domain its certificate key is listed for,
    /// which must be `claimed` (the request's `origin`). A lookup (`lookup`: not a relay,
    /// which the per-peer message limit meters) takes one of the peer's calls, so lookups
    /// never use up the budget relays need.
    pub fn authenticate(
        &self,
        peer: &qrpc::Peer,
        claimed: &str,
        lookup: bool,
    ) -> Result<String, Status> {
        let key = peer
            .peer_certificates()
            .and_then(|certs| {
                certs
                    .first()
                    .and_then(|c| qrpc::tls::key_fingerprint(c).ok())
            })
            .ok_or_else(|| Status::unauthenticated("federation calls need a peer certificate"))?;
        let domain = self
            .by_pin
            .get(&key)
            .ok_or_else(|| Status::permission_denied("this server does not federate with you"))?;
        if self.deny.contains(domain) {
            return Err(Status::permission_denied(
                "this server does not federate with you",
            ));
        }
        if domain != claimed {
            return Err(Status::permission_denied(format!(
                "origin: the connection is authenticated as {domain}, not {claimed}"
            )));
        }
        if lookup {
            self.check(
                &self.calls_per_peer,
                domain,
                1,
                "federation calls from your server",
            )?;
        }
        Ok(domain.clone())
    }

    /// A connected client for `domain` (made on first use, kept while it works). Finding and
    /// connecting to one peer holds up no call to another.
    pub async fn client(&self, domain: &str) -> Result<FederationClient, Status> {
        let peer = self
            .peers
            .get(domain)
            .filter(|_| !self.deny.contains(domain))
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "{domain} is not a server this one federates with"
                ))
            })?;
        let slot = Arc::clone(lock(&self.clients).entry(domain.to_owned()).or_default());
        let mut slot = slot.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let addrs = tokio::time::timeout(Duration::from_secs(10), self.discovery.locate(domain))
            .await
            .map_err(|_| Status::unavailable(format!("{domain}: DNS did not answer in time")))?
            .map_err(|e| Status::unavailable(format!("{domain}: {e}")))?;
        // A few addresses are plenty: a long answer (a hostile DNS) costs no more dialing.
        let addrs: Vec<SocketAddr> = addrs.into_iter().take(MAX_ADDRESSES).collect();
        let (first, rest) = addrs
            .split_first()
            .ok_or_else(|| Status::unavailable(format!("{domain}: no address")))?;
        let connecting = qrpc::Client::builder(*first, peer.tls.clone())
            .configure(|c| {
                c.alpn(vec![ALPN.to_vec()]);
                c.fallback_addresses(rest.to_vec());
                c.connect_timeout(Duration::from_secs(5));
                c.keep_alive_interval(Some(Duration::from_secs(5)));
                c.idle_timeout(Duration::from_secs(15));
                // The relay sender retries with its own backoff and makes a new connection
                // (with a new DNS answer) each time.
                c.reconnect_mut().enabled(false);
            })
            .connect();
        let client = tokio::time::timeout(CONNECT_BUDGET, connecting)
            .await
            .map_err(|_| Status::unavailable(format!("{domain}: no answer in time")))?
            .map_err(|e| Status::unavailable(format!("{domain}: {e}")))?;
        let client = FederationClient::new(client);
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Drops the connection to `domain` (it failed): the next call connects again.
    pub async fn forget(&self, domain: &str) {
        let slot = lock(&self.clients).get(domain).cloned();
        if let Some(slot) = slot
            && let Some(client) = slot.lock().await.take()
        {
            client.inner().close();
        }
    }

    /// Closes every peer connection (shutdown).
    pub async fn close_all(&self) {
        let slots: Vec<_> = lock(&self.clients).values().cloned().collect();
        for slot in slots {
            if let Some(client) = slot.lock().await.take() {
                client.inner().close();
            }
        }
    }

    /// Whether traffic from `domain` should wake its outbox now (at most once a second).
    pub(crate) fn should_wake(&self, domain: &str) -> bool {
        let mut woken = lock(&self.woken);
        let now = Instant::now();
        match woken.get(domain) {
            Some(at) if now.duration_since(*at) < Duration::from_secs(1) => false,
            _ => {
                woken.insert(domain.to_owned(), now);
                true
            }
        }
    }

    /// Where `domain` is now (for logs and `qpq-server` diagnostics).
    pub async fn locate(&self, domain: &str) -> Result<Vec<SocketAddr>, String> {
        self.discovery.locate(domain).await
    }
}
