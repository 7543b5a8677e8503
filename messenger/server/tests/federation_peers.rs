//! The federation border on loopback, as peer servers (and servers that are not peers) see
//! it: who may speak the federation protocol, for whom, how much, and what a home server
//! does with a peer's log that shows two views. The servers find each other through static
//! addresses; tests/federation.rs covers DNS and real network paths.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Account, Harness};
use qpq_core::identity::IdentityKey;
use qpq_core::kt::{Cosignature, MerkleLog, SignedTreeHead};
use qpq_proto::v1::{
    self, delivery_client::DeliveryClient, federation_client::FederationClient,
    federation_server::Federation, user_client::UserClient,
};
use qrpc::tls::{ClientTls, SelfSigned, ServerTls};
use qrpc::{Code, RequestContext, Status};

const FED: &[u8] = b"qpq-fed/1";

/// A server's certificate, as PEM files in `dir`, with its TLS identity for presenting it.
struct Identity {
    cert: SelfSigned,
    dir: tempfile::TempDir,
}

impl Identity {
    fn new(domain: &str) -> Self {
        let cert = SelfSigned::generate(&[domain]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.cert_pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.key_pem().as_bytes()).unwrap();
        Self { cert, dir }
    }

    fn pin(&self) -> String {
        qpq_server::util::hex(&qrpc::tls::key_fingerprint(self.cert.cert()).unwrap())
    }

    fn server_tls(&self) -> ServerTls {
        ServerTls::from_pem(
            self.cert.cert_pem().as_bytes(),
            self.cert.key_pem().as_bytes(),
        )
        .unwrap()
    }

    fn configure(&self, c: &mut qpq_server::Config, domain: &str) {
        c.domain = domain.into();
        c.tls_cert = Some(self.dir.path().join("cert.pem"));
        c.tls_key = Some(self.dir.path().join("key.pem"));
        c.federation.enabled = true;
    }
}

fn peer(
    domain: &str,
    id: &Identity,
    address: Option<std::net::SocketAddr>,
) -> qpq_server::config::FederationPeer {
    qpq_server::config::FederationPeer {
        domain: domain.into(),
        key_pin: id.pin(),
        address,
    }
}

/// A connection to `h` on the federation protocol presenting `presented`'s certificate (or
/// none).
async fn federation_client(
    h: &Harness,
    presented: Option<&Identity>,
) -> Result<FederationClient, qrpc::ClientError> {
    let mut tls = ClientTls::pinned(h.server.fingerprint);
    if let Some(id) = presented {
        tls = tls.with_client_certificate_of(&id.server_tls());
    }
    let client = qrpc::Client::builder(h.server.addr, tls)
        .configure(|c| {
            c.alpn(vec![FED.to_vec()]);
            c.reconnect_mut().enabled(false);
        })
        .connect()
        .await?;
    Ok(FederationClient::new(client))
}

fn relayed(recipient: &str, sender: &str, id: u8) -> v1::RelayedMessage {
    v1::RelayedMessage {
        recipient: Some(v1::DeviceRef {
            user: recipient.into(),
            device: "phone".into(),
        }),
        sender_user: sender.into(),
        sender_device: "laptop".into(),
        message_id: vec![id; 16].into(),
        payload: b"sealed".to_vec().into(),
    }
}

/// b.test federating with a.test (whose side the test plays with a.test's certificate).
async fn b_with_peer_a(
    a: &Identity,
    b: &Identity,
    f: impl FnOnce(&mut qpq_server::Config),
) -> Harness {
    common::start(|c| {
        b.configure(c, "b.test");
        c.federation.peers = vec![peer("a.test", a, Some("127.0.0.1:9".parse().unwrap()))];
        f(c);
    })
    .await
}

#[tokio::test]
async fn only_a_listed_key_speaks_federation_and_only_for_its_own_domain() {
    let (a, b, x) = (
        Identity::new("a.test"),
        Identity::new("b.test"),
        Identity::new("x.test"),
    );
    let h = b_with_peer_a(&a, &b, |_| {}).await;
    let bob = Account::create(&h, "bob", "phone").await;
    let health = |origin: &str| v1::FederationHealthRequest {
        origin: origin.into(),
    };

    // The listed peer, as itself.
    let from_a = federation_client(&h, Some(&a)).await.unwrap();
    let answer = from_a.federation_health(&health("a.test")).await.unwrap();
    assert_eq!(
        (answer.status.as_str(), answer.domain.as_str()),
        ("ok", "b.test")
    );

    // A valid certificate that is not on the allowlist: TLS refuses it.
    let refused = match federation_client(&h, Some(&x)).await {
        Err(_) => true,
        Ok(c) => c.federation_health(&health("x.test")).await.is_err(),
    };
    assert!(refused, "an unlisted server was let in");
    // No certificate at all: the connection is closed before any call.
    let refused = match federation_client(&h, None).await {
        Err(_) => true,
        Ok(c) => c.federation_health(&health("a.test")).await.is_err(),
    };
    assert!(
        refused,
        "a federation connection without a certificate was let in"
    );

    // The listed peer claiming to be another server.
    let err = from_a
        .federation_health(&health("c.test"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    let err = from_a
        .relay_enqueue(&v1::RelayEnqueueRequest {
            origin: "c.test".into(),
            message: Some(relayed("bob", "mallory", 1)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // It cannot act for a third server's user, nor reach a user that is not local.
    for (recipient, sender) in [
        ("bob", "carol@c.test"),
        ("bob@c.test", "alice"),
        ("bob", "bob@b.test"),
    ] {
        let err = from_a
            .relay_enqueue(&v1::RelayEnqueueRequest {
                origin: "a.test".into(),
                message: Some(relayed(recipient, sender, 2)),
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{recipient} from {sender}"
        );
    }
    assert_eq!(bob.depth().await, 0);

    // A batch above 50 is refused whole.
    let err = from_a
        .relay_batch_enqueue(&v1::RelayBatchEnqueueRequest {
            origin: "a.test".into(),
            messages: (0..51).map(|i| relayed("bob", "alice", i)).collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bob.depth().await, 0);

    // The peer protocol reaches no client service: not those that need a session (no
    // session exists there), and not those callable without one (a sealed send).
    let err = DeliveryClient::new(from_a.inner().clone())
        .peek(&v1::PeekRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = UserClient::new(from_a.inner().clone())
        .resolve_user(&v1::ResolveUserRequest { user: "bob".into() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = DeliveryClient::new(from_a.inner().clone())
        .enqueue(&common::enqueue_to(&bob.me(), 9, b"sealed"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(bob.depth().await, 0);
    // And a logged-in user reaches no federation method.
    let err = FederationClient::new(bob.client.clone())
        .relay_enqueue(&v1::RelayEnqueueRequest {
            origin: "a.test".into(),
            message: Some(relayed("bob", "alice", 3)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn a_relayed_message_is_queued_once_even_after_it_was_acknowledged() {
    let (a, b) = (Identity::new("a.test"), Identity::new("b.test"));
    let h = b_with_peer_a(&a, &b, |_| {}).await;
    let bob = Account::create(&h, "bob", "phone").await;
    let from_a = federation_client(&h, Some(&a)).await.unwrap();
    let relay = || v1::RelayBatchEnqueueRequest {
        origin: "a.test".into(),
        messages: vec![relayed("bob", "alice", 7), relayed("nobody", "alice", 8)],
    };
    let first = from_a.relay_batch_enqueue(&relay()).await.unwrap();
    assert_eq!(first.results[0].code, 0);
    assert!(!first.results[0].duplicate);
    // A message for no such user is refused alone.
    assert_eq!(first.results[1].code, Code::NotFound as u32);
    let fetched = bob
        .delivery()
        .fetch(&v1::FetchRequest::default())
        .await
        .unwrap();
    assert_eq!(fetched.messages.len(), 1);
    bob.delivery()
        .ack(&v1::AckRequest {
            up_to_seq: fetched.messages[0].seq,
        })
        .await
        .unwrap();
    // The origin sends the batch again (its answer was lost): nothing is queued twice.
    let again = from_a.relay_batch_enqueue(&relay()).await.unwrap();
    assert!(again.results[0].duplicate);
    assert_eq!(bob.depth().await, 0);
}

#[tokio::test]
async fn a_peer_draining_key_packages_stops_at_its_limit_however_it_spreads_requesters() {
    let (a, b) = (Identity::new("a.test"), Identity::new("b.test"));
    let h = b_with_peer_a(&a, &b, |c| {
        c.federation
            .key_package_fetches_per_minute_per_peer_and_user = 3;
    })
    .await;
    let _bob = Account::create(&h, "bob", "phone").await;
    let from_a = federation_client(&h, Some(&a)).await.unwrap();
    let mut codes = Vec::new();
    for i in 0..5 {
        let code = match from_a
            .proxy_fetch_key_package(&v1::ProxyFetchKeyPackageRequest {
                origin: "a.test".into(),
                device: Some(v1::DeviceRef {
                    user: "bob".into(),
                    device: "phone".into(),
                }),
                requester: format!("sybil{i}"),
            })
            .await
        {
            Ok(_) => Code::Ok,
            Err(e) => e.code(),
        };
        codes.push(code);
    }
    // Bob published no packages: the first three find none; then the peer is cut off.
    assert_eq!(
        codes,
        [
            Code::NotFound,
            Code::NotFound,
            Code::NotFound,
            Code::ResourceExhausted,
            Code::ResourceExhausted
        ]
    );
}

/// A peer whose log shows one head, then (once `split_after` heads were asked for) another of
/// the same size: a split view. It serves bob/phone's keys, bound in the first view.
#[derive(Clone)]
struct SplitLog {
    key: Arc<IdentityKey>,
    calls: Arc<AtomicUsize>,
    split_after: Arc<AtomicUsize>,
    bob: Arc<(IdentityKey, qpq_core::bundle::KeyBundle)>,
}

impl SplitLog {
    fn new(split_after: usize) -> Self {
        let identity = IdentityKey::generate();
        let hybrid = qpq_core::kem::HybridSecretKey::generate();
        let bundle =
            qpq_core::bundle::KeyBundle::new(&identity, hybrid.public(), "bob", "phone").unwrap();
        Self {
            key: Arc::new(IdentityKey::generate()),
            calls: Arc::new(AtomicUsize::new(0)),
            split_after: Arc::new(AtomicUsize::new(split_after)),
            bob: Arc::new((identity, bundle)),
        }
    }

    /// bob/phone's binding in this log.
    fn binding(&self) -> qpq_core::kt::KeyBinding {
        qpq_core::kt::KeyBinding {
            user: "bob".into(),
            domain: "b.test".into(),
            device: "phone".into(),
            identity_key: self.bob.0.public().to_bytes(),
            hybrid_key_hash: self.bob.1.hybrid.hash(),
            key_package_hash: [0; 32],
        }
    }

    /// The log as shown now: bob's binding and one more leaf, or in the split view another
    /// second leaf.
    fn log(&self, split: bool) -> MerkleLog {
        let mut log = MerkleLog::new();
        log.append_hash(self.binding().leaf_hash());
        log.append(if split { b"forged" } else { b"two" });
        log
    }

    fn head(&self, split: bool) -> SignedTreeHead {
        self.log(split).sign_head(&self.key, 1)
    }

    fn split_now(&self) -> bool {
        self.calls.fetch_add(1, Ordering::SeqCst) >= self.split_after.load(Ordering::SeqCst)
    }
}

fn not_here() -> Status {
    Status::unimplemented("not part of this test")
}

impl Federation for SplitLog {
    async fn relay_enqueue(
        &self,
        _: RequestContext,
        _: v1::RelayEnqueueRequest,
    ) -> Result<v1::EnqueueResponse, Status> {
        Err(not_here())
    }
    async fn relay_batch_enqueue(
        &self,
        _: RequestContext,
        _: v1::RelayBatchEnqueueRequest,
    ) -> Result<v1::BatchEnqueueResponse, Status> {
        Err(not_here())
    }
    async fn proxy_fetch_key_package(
        &self,
        _: RequestContext,
        _: v1::ProxyFetchKeyPackageRequest,
    ) -> Result<v1::FetchKeyPackageResponse, Status> {
        Err(not_here())
    }
    async fn proxy_fetch_hybrid_key(
        &self,
        _: RequestContext,
        _: v1::ProxyFetchHybridKeyRequest,
    ) -> Result<v1::FetchHybridKeyResponse, Status> {
        let log = self.log(false);
        Ok(v1::FetchHybridKeyResponse {
            key_bundle: self.bob.1.encode().into(),
            proof: Some(v1::KtProof {
                leaf_index: 0,
                inclusion_proof: log.inclusion_proof(0, 2).unwrap().encode().into(),
                tree_head: log.sign_head(&self.key, 1).encode().into(),
                key_package_hash: vec![0; 32].into(),
            }),
        })
    }
    async fn proxy_resolve_user(
        &self,
        _: RequestContext,
        _: v1::ProxyResolveUserRequest,
    ) -> Result<v1::ResolveUserResponse, Status> {
        Ok(v1::ResolveUserResponse {
            devices: vec![v1::DeviceIdentity {
                device: "phone".into(),
                identity_key: self.bob.0.public().to_bytes().to_vec().into(),
            }],
        })
    }
    async fn federation_health(
        &self,
        _: RequestContext,
        _: v1::FederationHealthRequest,
    ) -> Result<v1::FederationHealthResponse, Status> {
        Err(not_here())
    }
    async fn federation_kt_head(
        &self,
        _: RequestContext,
        _: v1::FederationKtHeadRequest,
    ) -> Result<v1::KtHeadResponse, Status> {
        let head = self.head(self.split_now());
        Ok(v1::KtHeadResponse {
            log_key: self.key.public().to_bytes().to_vec().into(),
            tree_head: head.encode().into(),
            consistency_proof: Default::default(),
            domain: "b.test".into(),
            cosignature: Default::default(),
        })
    }
    async fn federation_cosignature(
        &self,
        _: RequestContext,
        _: v1::FederationCosignatureRequest,
    ) -> Result<v1::FederationCosignatureResponse, Status> {
        Err(not_here())
    }
}

#[tokio::test]
async fn a_split_view_log_is_caught_by_the_home_servers_witness() {
    let (a, b) = (Identity::new("a.test"), Identity::new("b.test"));
    // Every answer before the third shows one log; from then on, another of the same size.
    let split = SplitLog::new(2);
    let fake_b = qrpc::Server::builder()
        .tls(b.server_tls())
        .add_service_on(
            FED,
            v1::federation_server::FederationServer::new(split.clone()),
        )
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let fake_b_addr = fake_b.local_addr().unwrap();
    tokio::spawn(fake_b.serve());
    let h = common::start(|c| {
        a.configure(c, "a.test");
        c.federation.peers = vec![peer("b.test", &b, Some(fake_b_addr))];
    })
    .await;
    let alice = Account::create(&h, "alice", "laptop").await;
    let head_of_b = || v1::KtHeadRequest {
        since_size: 0,
        domain: "b.test".into(),
    };

    // The first view is witnessed: a.test cosigns it with its log key.
    let answer = alice.keys().kt_head(&head_of_b()).await.unwrap();
    assert_eq!(answer.domain, "b.test");
    let head = SignedTreeHead::decode(&answer.tree_head).unwrap();
    Cosignature::decode(&answer.cosignature)
        .unwrap()
        .verify(&h.server.kt_public, "a.test", "b.test", &head)
        .unwrap();
    // A cosignature does not carry over to another log or witness.
    assert!(
        Cosignature::decode(&answer.cosignature)
            .unwrap()
            .verify(&h.server.kt_public, "a.test", "c.test", &head)
            .is_err()
    );

    // The peer now shows another log of the same size: the witness refuses to cosign it,
    // and says why.
    let err = alice.keys().kt_head(&head_of_b()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("b.test"), "{}", err.message());
    assert!(err.message().contains("split view"), "{}", err.message());
    // And keeps refusing: what it witnessed first stands.
    let err = alice.keys().kt_head(&head_of_b()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn a_remote_sender_over_its_limits_is_held_back_alone_and_in_order() {
    let (a, b) = (Identity::new("a.test"), Identity::new("b.test"));
    let h = b_with_peer_a(&a, &b, |c| {
        c.limits.stranger_messages_per_minute_per_user = 2;
    })
    .await;
    let bob = Account::create(&h, "bob", "phone").await;
    let from_a = federation_client(&h, Some(&a)).await.unwrap();
    let mut bad = relayed("bob", "alice", 9);
    bad.message_id = vec![1; 3].into();
    let answer = from_a
        .relay_batch_enqueue(&v1::RelayBatchEnqueueRequest {
            origin: "a.test".into(),
            messages: vec![
                relayed("bob", "mallory", 1),
                relayed("bob", "mallory", 2),
                relayed("bob", "mallory", 3),
                bad,
                relayed("bob", "alice", 4),
                relayed("bob", "mallory", 5),
            ],
        })
        .await
        .unwrap();
    let codes: Vec<u32> = answer.results.iter().map(|r| r.code).collect();
    let (ok, held, invalid) = (
        0,
        Code::ResourceExhausted as u32,
        Code::InvalidArgument as u32,
    );
    // Mallory, a stranger to bob, gets two through; the rest of hers wait (none overtakes);
    // the malformed one is refused alone; alice is not held back by mallory.
    assert_eq!(codes, [ok, ok, held, invalid, ok, held]);
    assert_eq!(bob.depth().await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_raises_an_alarm_naming_the_domain_when_its_server_will_not_witness() {
    use qpq_sdk::{ClientEvent, QpqClient, SdkError};
    let (a, b) = (Identity::new("a.test"), Identity::new("b.test"));
    let split = SplitLog::new(usize::MAX);
    let fake_b = qrpc::Server::builder()
        .tls(b.server_tls())
        .add_service_on(
            FED,
            v1::federation_server::FederationServer::new(split.clone()),
        )
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let fake_b_addr = fake_b.local_addr().unwrap();
    tokio::spawn(fake_b.serve());
    let h = common::start(|c| {
        a.configure(c, "a.test");
        c.federation.peers = vec![peer("b.test", &b, Some(fake_b_addr))];
    })
    .await;
    let user = |name: &'static str, dir: &std::path::Path| {
        let client = QpqClient::builder()
            .server(h.server.addr)
            .pin(h.server.fingerprint)
            .data_dir(dir)
            .raw_key([5; 32])
            .build()
            .unwrap();
        async move {
            client.register(name, "pw").await.unwrap();
            client.login(name, "laptop", "pw").await.unwrap();
            client
        }
    };
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();

    // alice checks bob@b.test's keys in b.test's log, as a.test witnessed it: they check out
    // (the conversation then needs a key package, which this peer does not serve).
    let alice = user("alice", dirs[0].path()).await;
    let mut alice_events = alice.subscribe();
    let err = alice.create_dm("bob@b.test").await.unwrap_err();
    assert!(!matches!(err, SdkError::KeyTransparency(_)), "{err:?}");
    assert!(
        alice_events
            .try_recv()
            .into_iter()
            .all(|e| !matches!(e, ClientEvent::KeyTransparencyAlarm { .. })),
        "no alarm for a log that checks out"
    );

    // b.test now shows another log of the same size. carol's check of bob's keys goes through
    // a.test, which refuses to cosign: carol's client raises the alarm, naming b.test.
    split.split_after.store(0, Ordering::SeqCst);
    let carol = user("carol", dirs[1].path()).await;
    let mut carol_events = carol.subscribe();
    let err = carol.create_dm("bob@b.test").await.unwrap_err();
    assert!(matches!(err, SdkError::KeyTransparency(_)), "{err:?}");
    let reason = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            if let Ok(ClientEvent::KeyTransparencyAlarm { device, reason }) =
                carol_events.recv().await
            {
                assert_eq!(device, "bob@b.test/phone");
                return reason;
            }
        }
    })
    .await
    .unwrap();
    assert!(reason.starts_with("b.test's log"), "{reason}");
    assert!(reason.contains("split view"), "{reason}");
    alice.close().await;
    carol.close().await;
}

#[tokio::test]
async fn a_denied_peer_is_refused_and_an_oversized_message_alone() {
    let (a, b) = (Identity::new("a.test"), Identity::new("b.test"));
    let denied = b_with_peer_a(&a, &b, |c| c.federation.deny = vec!["a.test".into()]).await;
    let from_a = federation_client(&denied, Some(&a)).await.unwrap();
    let err = from_a
        .federation_health(&v1::FederationHealthRequest {
            origin: "a.test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let h = b_with_peer_a(&a, &b, |c| c.limits.max_message_bytes = 100).await;
    let bob = Account::create(&h, "bob", "phone").await;
    let from_a = federation_client(&h, Some(&a)).await.unwrap();
    let mut big = relayed("bob", "alice", 2);
    big.payload = vec![0; 101].into();
    let answer = from_a
        .relay_batch_enqueue(&v1::RelayBatchEnqueueRequest {
            origin: "a.test".into(),
            messages: vec![relayed("bob", "alice", 1), big, relayed("bob", "alice", 3)],
        })
        .await
        .unwrap();
    let codes: Vec<u32> = answer.results.iter().map(|r| r.code).collect();
    assert_eq!(codes, [0, Code::InvalidArgument as u32, 0]);
    assert_eq!(bob.depth().await, 2);
}

#[tokio::test]
async fn a_peer_inventing_senders_gets_no_more_strangers_through_than_its_share() {
    let (a, b) = (Identity::new("a.test"), Identity::new("b.test"));
    let h = b_with_peer_a(&a, &b, |c| {
        c.federation.stranger_messages_per_minute_per_peer_and_user = 2;
    })
    .await;
    let bob = Account::create(&h, "bob", "phone").await;
    let from_a = federation_client(&h, Some(&a)).await.unwrap();
    let answer = from_a
        .relay_batch_enqueue(&v1::RelayBatchEnqueueRequest {
            origin: "a.test".into(),
            messages: (0..4)
                .map(|i| relayed("bob", &format!("sybil{i}"), i))
                .collect(),
        })
        .await
        .unwrap();
    let codes: Vec<u32> = answer.results.iter().map(|r| r.code).collect();
    let held = Code::ResourceExhausted as u32;
    assert_eq!(codes, [0, 0, held, held]);
    assert_eq!(bob.depth().await, 2);
}

#[tokio::test]
async fn every_federation_method_refuses_garbage_and_the_server_keeps_serving() {
    let (a, b) = (Identity::new("a.test"), Identity::new("b.test"));
    let h = b_with_peer_a(&a, &b, |_| {}).await;
    let from_a = federation_client(&h, Some(&a)).await.unwrap();
    // A field with wire type 7: not a protobuf message.
    let garbage = bytes::Bytes::from_static(&[0x0f, 0xff, 0xff, 0xff]);
    for method in v1::federation_server::DESCRIPTOR.methods {
        use futures::StreamExt;
        let mut answer = from_a
            .inner()
            .call(qrpc::CallRequest::unary(method.id, garbage.clone()))
            .await
            .unwrap();
        let err = answer.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{method}: {err}");
        // An empty request names no origin: refused, never an internal error.
        let mut answer = from_a
            .inner()
            .call(qrpc::CallRequest::unary(method.id, bytes::Bytes::new()))
            .await
            .unwrap();
        let err = answer.next().await.unwrap().unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{method}: {err}");
    }
    let health = from_a
        .federation_health(&v1::FederationHealthRequest {
            origin: "a.test".into(),
        })
        .await
        .unwrap();
    assert_eq!(health.status, "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_of_one_cluster_relay_each_message_once_from_one_node() {
    let Ok(nats) = std::env::var("QPQ_TEST_NATS_URL") else {
        eprintln!("skipped: QPQ_TEST_NATS_URL is unset");
        return;
    };
    let Some(db) = qpq_server::store::TestDatabase::create().await else {
        eprintln!("skipped: QPQ_TEST_POSTGRES_URL is unset");
        return;
    };
    let (a, b) = (Identity::new("a.test"), Identity::new("b.test"));
    let h_b = common::start(|c| {
        b.configure(c, "b.test");
        c.federation.peers = vec![peer("a.test", &a, Some("127.0.0.1:9".parse().unwrap()))];
        // alice and carol are strangers to bob: the stranger rules would hold them back (as
        // tested above); this test is about the cluster.
        c.limits.stranger_messages_per_minute_per_user = 10_000;
        c.limits.max_pending_per_stranger = 1000;
        c.federation.stranger_messages_per_minute_per_peer_and_user = 10_000;
    })
    .await;
    let bob = Account::create(&h_b, "bob", "phone").await;
    // Two nodes of a.test on one PostgreSQL database and one NATS prefix, with one
    // certificate (the key b.test lists).
    let prefix = format!("qpqfed{:08x}", rand::random::<u32>());
    let mut nodes = Vec::new();
    for name in ["a1", "a2"] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = common::config(dir.path());
        a.configure(&mut c, "a.test");
        c.federation.peers = vec![peer("b.test", &b, Some(h_b.server.addr))];
        c.cluster.store = qpq_server::config::StoreKind::Postgres;
        c.cluster.postgres_url = Some(db.url.clone());
        c.cluster.bus = qpq_server::config::BusKind::Nats;
        c.cluster.nats_url = Some(nats.clone());
        c.cluster.nats_prefix = prefix.clone();
        c.cluster.node_id = Some(name.into());
        c.cluster.nodes = 2;
        let server = qpq_server::start(c).await.unwrap();
        nodes.push((dir, server));
    }
    let account_on = |i: usize, user: &'static str| {
        let server = &nodes[i].1;
        async move {
            let client = common::connect_to(server.addr, server.fingerprint).await;
            common::register(&client, user, "correct horse battery")
                .await
                .unwrap();
            common::login(&client, user, "laptop", "correct horse battery")
                .await
                .unwrap();
            DeliveryClient::new(client)
        }
    };
    let alice = account_on(0, "alice").await;
    let carol = account_on(1, "carol").await;
    let to_bob = v1::DeviceRef {
        user: "bob@b.test".into(),
        device: "phone".into(),
    };
    // Both users' messages, interleaved, through both nodes.
    for round in 0..5u8 {
        for (sender, base) in [(&alice, 0u8), (&carol, 100u8)] {
            let messages = (0..10u8)
                .map(|i| common::enqueue_to(&to_bob, base + round * 10 + i, b"sealed"))
                .collect();
            let answer = sender
                .batch_enqueue(&v1::BatchEnqueueRequest { messages })
                .await
                .unwrap();
            assert!(answer.results.iter().all(|r| r.relayed && r.code == 0));
        }
    }
    // bob gets all 100, each once, each sender's in order.
    let mut got = Vec::new();
    let mut after_seq = 0;
    while got.len() < 100 {
        let page = bob
            .delivery()
            .fetch_wait(&v1::FetchWaitRequest {
                after_seq,
                limit: 200,
                timeout_ms: 10_000,
            })
            .await
            .unwrap();
        after_seq = page.messages.last().map_or(after_seq, |m| m.seq);
        got.extend(page.messages.iter().map(|m| m.message_id[0]));
    }
    assert_eq!(got.len(), 100);
    let (from_alice, from_carol): (Vec<u8>, Vec<u8>) = got.iter().partition(|id| **id < 100);
    assert_eq!(from_alice, (0..50).collect::<Vec<u8>>());
    assert_eq!(from_carol, (100..150).collect::<Vec<u8>>());
    // One node sent everything (it held the destination's lease); the other sent nothing.
    // (A sender counts a batch once b has answered it, which may come just after bob has it.)
    let counts = || -> Vec<u64> {
        nodes
            .iter()
            .map(|(_, s)| s.state().federation().unwrap().relayed())
            .collect()
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while counts().iter().sum::<u64>() < 100 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("relay counts {:?}", counts()));
    let relayed = counts();
    relayed
        .iter()
        .for_each(|n| assert!(*n == 0 || *n == 100, "{relayed:?}"));
    assert_eq!(relayed.iter().sum::<u64>(), 100, "{relayed:?}");
    for (_, server) in nodes {
        server.shutdown().await;
    }
    drop(db);
}
