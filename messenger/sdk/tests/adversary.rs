//! An ordinary account attacks other users with the public crates alone (qpq-core, qpq-proto
//! and qrpc), exactly as it could against a real server, and the victims' clients refuse.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use prost::Message as _;
use qpq_core::bundle::KeyBundle;
use qpq_core::identity::{DeviceName, IdentityKey};
use qpq_core::kem::HybridSecretKey;
use qpq_core::mls::{MlsMember, Suite};
use qpq_proto::v1;
use qpq_sdk::{ClientEvent, ConversationId};

/// Invitation kinds on the wire (`content.proto`).
const DIRECT: u32 = 1;
const GROUP: u32 = 2;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Mallory: an account on the server, driven through the generated clients, with an identity
/// key she published (so her own name checks out) and MLS members she builds herself.
struct Mallory {
    rpc: qrpc::Client,
    identity: IdentityKey,
}

impl Mallory {
    async fn new(server: &Server) -> Self {
        let rpc = raw_account(server, "mallory", "pc").await;
        let identity = IdentityKey::generate();
        let bundle = KeyBundle::new(
            &identity,
            HybridSecretKey::generate().public(),
            "mallory",
            "pc",
        )
        .unwrap();
        v1::keys_client::KeysClient::new(rpc.clone())
            .upload_hybrid_key(&v1::UploadHybridKeyRequest {
                key_bundle: bundle.encode().into(),
                delivery_token: Default::default(),
            })
            .await
            .unwrap();
        Self { rpc, identity }
    }

    /// An MLS member named `user/device` of this server, signing with `key`.
    fn member(user: &str, device: &str, key: &IdentityKey) -> MlsMember {
        MlsMember::create(
            rusqlite::Connection::open_in_memory().unwrap(),
            &DeviceName::new(user, "localhost", device).unwrap().encode(),
            key,
            Suite::XWing,
        )
        .unwrap()
    }

    fn device(user: &str, device: &str) -> v1::DeviceRef {
        v1::DeviceRef {
            user: user.into(),
            device: device.into(),
        }
    }

    /// A new group of `member` with Bob's phone in it, its invitation (of `kind`) sealed to
    /// Bob by Mallory.
    async fn invite_bob(&self, member: &MlsMember, kind: u32) -> ([u8; 16], qpq_core::mls::Group) {
        let id: [u8; 16] = rand::random();
        let mut group = member.create_group(&id).unwrap();
        let bob_kp = self.key_package("bob", "phone").await;
        let (_, welcome) = group.add_members(member, &[&bob_kp]).unwrap();
        self.send("bob", "phone", invitation(&id, kind, welcome))
            .await;
        (id, group)
    }

    async fn key_package(&self, user: &str, device: &str) -> Vec<u8> {
        v1::keys_client::KeysClient::new(self.rpc.clone())
            .fetch_key_package(&v1::FetchKeyPackageRequest {
                device: Some(Self::device(user, device)),
            })
            .await
            .unwrap()
            .key_package
            .to_vec()
    }

    /// Queues `count` envelopes to `user/device` that cost a full opening (a post-quantum
    /// decapsulation to the victim's key) and then fail: sealed properly, one byte of their
    /// ciphertext flipped.
    async fn send_broken(&self, user: &str, device: &str, count: usize) {
        let hybrid = self.hybrid_key(user, device).await;
        for _ in 0..count {
            let mut envelope =
                qpq_core::sealed::seal(&self.identity, &hybrid, now_ms(), b"junk").unwrap();
            let last = envelope.len() - 1;
            envelope[last] ^= 1;
            self.enqueue(user, device, envelope).await;
        }
    }

    /// Seals `transport` to `user/device` with Mallory's identity and queues it there.
    async fn send(&self, user: &str, device: &str, transport: Vec<u8>) {
        let hybrid = self.hybrid_key(user, device).await;
        let envelope =
            qpq_core::sealed::seal(&self.identity, &hybrid, now_ms(), &transport).unwrap();
        self.enqueue(user, device, envelope).await;
    }

    /// The hybrid key `user/device` published.
    async fn hybrid_key(&self, user: &str, device: &str) -> qpq_core::kem::HybridPublicKey {
        let bundle = v1::keys_client::KeysClient::new(self.rpc.clone())
            .fetch_hybrid_key(&v1::FetchHybridKeyRequest {
                device: Some(Self::device(user, device)),
            })
            .await
            .unwrap();
        KeyBundle::decode(&bundle.key_bundle).unwrap().hybrid
    }

    /// Queues `envelope` (any bytes) for `user/device`.
    async fn enqueue(&self, user: &str, device: &str, envelope: Vec<u8>) {
        v1::delivery_client::DeliveryClient::new(self.rpc.clone())
            .enqueue(&v1::EnqueueRequest {
                recipient: Some(Self::device(user, device)),
                message_id: rand::random::<[u8; 16]>().to_vec().into(),
                payload: envelope.into(),
                delivery_token: Default::default(),
            })
            .await
            .unwrap();
    }
}

/// Bob's conversation `id` as his store has it.
fn stored(bob: &qpq_sdk::QpqClient, id: [u8; 16]) -> qpq_sdk::Conversation {
    bob.conversations()
        .unwrap()
        .into_iter()
        .find(|c| c.id == ConversationId(id))
        .unwrap()
}

fn invitation(id: &[u8; 16], kind: u32, welcome: Vec<u8>) -> Vec<u8> {
    v1::Transport {
        kind: Some(v1::transport::Kind::Invitation(v1::Invitation {
            welcome: welcome.into(),
            conversation_id: id.to_vec().into(),
            kind,
            name: "chat".into(),
            channel_id: Default::default(),
        })),
    }
    .encode_to_vec()
}

fn group_message(id: &[u8; 16], mls: Vec<u8>) -> Vec<u8> {
    v1::Transport {
        kind: Some(v1::transport::Kind::Group(v1::GroupMessage {
            conversation_id: id.to_vec().into(),
            mls: mls.into(),
        })),
    }
    .encode_to_vec()
}

async fn refusal(events: &mut tokio::sync::broadcast::Receiver<ClientEvent>) -> String {
    next(events, |e| match e {
        ClientEvent::UndecryptableMessage { reason, .. } => Some(reason),
        ClientEvent::ConversationCreated(c) => panic!("a forged conversation was joined: {c:?}"),
        ClientEvent::MessageReceived(m) => panic!("a forged message was shown: {m:?}"),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_forged_direct_conversation_as_another_user_is_refused() {
    let server = Server::start().await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = account(&server, a_dir.path(), "alice", "laptop").await;
    let bob = account(&server, b_dir.path(), "bob", "phone").await;
    let mut bob_events = bob.subscribe();
    let mallory = Mallory::new(&server).await;

    // Mallory builds a member that claims to be Alice's laptop, with a key of her own (she
    // cannot have Alice's), invites Bob into a "direct conversation" with it and talks.
    let fake_alice = Mallory::member("alice", "laptop", &mallory.identity);
    let (id, mut group) = mallory.invite_bob(&fake_alice, DIRECT).await;
    let reason = refusal(&mut bob_events).await;
    assert!(reason.contains("alice/laptop is forged"), "{reason}");
    let text = group
        .encrypt(&fake_alice, &text_content("hi Bob, it's Alice"))
        .unwrap();
    // Bob never joined that group: the message waits (parked, within Mallory's budget) for
    // an invitation that will never be accepted, and is never shown (`refusal` below fails
    // on any message shown or conversation joined).
    mallory.send("bob", "phone", group_message(&id, text)).await;

    // The same forgery sealed with Alice's name on a leaf that signs with the sealing key
    // but under an unknown device is refused too: no such device in the log.
    let ghost = Mallory::member("alice", "ghost", &mallory.identity);
    mallory.invite_bob(&ghost, DIRECT).await;
    let reason = refusal(&mut bob_events).await;
    assert!(
        reason.contains("alice/ghost cannot be verified"),
        "{reason}"
    );
    assert!(bob.conversations().unwrap().is_empty());

    // Bob's real conversation with Alice is a new one, and Alice reads it.
    let mut alice_events = alice.subscribe();
    let dm = bob.create_dm("alice").await.unwrap();
    assert_ne!(dm.id.0, id);
    bob.conversation(&dm.id)
        .unwrap()
        .send_text("hello, real Alice", None)
        .unwrap()
        .id();
    assert_eq!(
        text_of(&mut alice_events).await,
        ("bob/phone".to_string(), "hello, real Alice".to_string())
    );
}

async fn text_of(events: &mut tokio::sync::broadcast::Receiver<ClientEvent>) -> (String, String) {
    common::text(events).await
}

/// A text message's content, as a client encodes it.
fn text_content(body: &str) -> Vec<u8> {
    v1::Content {
        id: rand::random::<[u8; 16]>().to_vec().into(),
        sent_at_ms: now_ms(),
        body: Some(v1::content::Body::Text(v1::Text {
            body: body.into(),
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

/// Mallory, under her own name and published key, in a real group with Bob, which Bob has
/// joined: what a member of Bob's conversations can do.
struct Shared {
    mallory: Mallory,
    me: MlsMember,
    group: qpq_core::mls::Group,
    id: [u8; 16],
}

impl Shared {
    async fn new(
        server: &Server,
        bob_events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    ) -> Self {
        let mallory = Mallory::new(server).await;
        let me = Mallory::member("mallory", "pc", &mallory.identity);
        let (id, group) = mallory.invite_bob(&me, GROUP).await;
        let joined = next(bob_events, |e| match e {
            ClientEvent::ConversationCreated(c) => Some(c),
            _ => None,
        })
        .await;
        assert_eq!(joined.members, vec!["bob", "mallory"]);
        Self {
            mallory,
            me,
            group,
            id,
        }
    }

    /// Sends `content` to Bob in the group, sealed by Mallory.
    async fn say(&mut self, content: &[u8]) {
        let ct = self.group.encrypt(&self.me, content).unwrap();
        self.mallory
            .send("bob", "phone", group_message(&self.id, ct))
            .await;
    }
}

#[tokio::test]
async fn a_member_cannot_add_a_forged_leaf_or_speak_for_another() {
    let server = Server::start().await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _alice = account(&server, a_dir.path(), "alice", "laptop").await;
    let bob = account(&server, b_dir.path(), "bob", "phone").await;
    let mut bob_events = bob.subscribe();
    let Shared {
        mallory,
        me,
        mut group,
        id,
    } = Shared::new(&server, &mut bob_events).await;

    // A message sealed by Mallory but signed in MLS by her member is hers; one sealed with
    // another identity is refused (the sealed sender must be the MLS sender).
    let content = text_content;
    let honest = group.encrypt(&me, &content("from mallory")).unwrap();
    mallory
        .send("bob", "phone", group_message(&id, honest))
        .await;
    assert_eq!(
        text_of(&mut bob_events).await,
        ("mallory/pc".to_string(), "from mallory".to_string())
    );
    let other = Mallory {
        rpc: mallory.rpc.clone(),
        identity: IdentityKey::generate(),
    };
    let mismatched = group
        .encrypt(&me, &content("sealed by someone else"))
        .unwrap();
    other
        .send("bob", "phone", group_message(&id, mismatched))
        .await;
    let reason = refusal(&mut bob_events).await;
    assert!(reason.contains("not the message's author"), "{reason}");

    // She commits the Add of a leaf she made herself under Alice's name: Bob refuses the
    // commit, and Alice never appears among the conversation's members.
    let fake_alice = Mallory::member("alice", "laptop", &IdentityKey::generate());
    let (commit, _) = group
        .add_members(&me, &[&fake_alice.key_package().unwrap()])
        .unwrap();
    mallory
        .send("bob", "phone", group_message(&id, commit))
        .await;
    let reason = refusal(&mut bob_events).await;
    assert!(reason.contains("alice/laptop is forged"), "{reason}");
    assert_eq!(stored(&bob, id).members, vec!["bob", "mallory"]);
}

#[tokio::test]
async fn a_full_queue_never_holds_up_the_rest_of_the_outbox() {
    // Bob is offline with a queue that holds five messages: everything beyond waits and
    // retries, and must not hold up Alice's messages to Carol behind it.
    let server = Server::start_with(|c| c.limits.max_queue_depth = 5).await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut limits = qpq_sdk::ClientLimits::default();
    limits.initial_backoff = std::time::Duration::from_millis(50);
    limits.max_backoff = std::time::Duration::from_secs(5);
    let alice = server.client_with(dirs[0].path(), limits);
    alice.register("alice", "pw").await.unwrap();
    alice.login("alice", "laptop", "pw").await.unwrap();
    let bob = account(&server, dirs[1].path(), "bob", "phone").await;
    let mut bob_events = bob.subscribe();
    let dm = alice.create_dm("bob").await.unwrap();
    next(&mut bob_events, |e| {
        matches!(e, ClientEvent::ConversationCreated(_)).then_some(())
    })
    .await;
    // Bob has written to Alice, so her messages are not a stranger's (whose rate is lower).
    let hello = bob
        .conversation(&dm.id)
        .unwrap()
        .send_text("hi alice", None)
        .unwrap()
        .id();
    sent(&mut bob_events, hello).await;
    bob.logout().await.unwrap();
    bob.close().await;

    let mut alice_events = alice.subscribe();
    for i in 0..120 {
        alice
            .conversation(&dm.id)
            .unwrap()
            .send_text(&format!("to bob {i}"), None)
            .unwrap();
    }
    // Those beyond Bob's full queue are refused and say they are retrying.
    let reason = next(&mut alice_events, |e| match e {
        ClientEvent::SendStateChanged {
            state:
                qpq_sdk::SendState::Failed {
                    recoverable: true,
                    reason,
                },
            ..
        } => Some(reason),
        _ => None,
    })
    .await;
    assert!(reason.contains("retrying"), "{reason}");

    let carol = account(&server, dirs[2].path(), "carol", "pc").await;
    let mut carol_events = carol.subscribe();
    let to_carol = alice.create_dm("carol").await.unwrap();
    alice
        .conversation(&to_carol.id)
        .unwrap()
        .send_text("hello carol", None)
        .unwrap()
        .id();
    assert_eq!(
        text_of(&mut carol_events).await,
        ("alice/laptop".to_string(), "hello carol".to_string())
    );
}

#[cfg(unix)]
#[tokio::test]
async fn the_local_store_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let server = Server::start().await;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("profile");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _alice = account(&server, &dir, "alice", "laptop").await;
    assert_eq!(mode(&dir), 0o700);
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            assert_eq!(mode(&path), 0o600, "{}", path.display());
        }
    }
}

#[tokio::test]
async fn an_attachment_announcing_a_huge_size_is_refused_on_receipt() {
    let server = Server::start().await;
    let b_dir = tempfile::tempdir().unwrap();
    let bob = account(&server, b_dir.path(), "bob", "phone").await;
    let mut bob_events = bob.subscribe();
    let mut shared = Shared::new(&server, &mut bob_events).await;
    for size in [u64::MAX, u64::MAX - 15, 100 * 1024 * 1024 + 1] {
        let content = v1::Content {
            id: rand::random::<[u8; 16]>().to_vec().into(),
            sent_at_ms: now_ms(),
            body: Some(v1::content::Body::Attachment(v1::Attachment {
                blob_sha256: vec![0; 32].into(),
                key: vec![0; 32].into(),
                name: "huge.bin".into(),
                size,
                mime: "application/octet-stream".into(),
                caption: String::new(),
            })),
        };
        shared.say(&content.encode_to_vec()).await;
        let reason = refusal(&mut bob_events).await;
        assert!(reason.contains("above this client's limit"), "{reason}");
    }
    // The conversation goes on.
    shared.say(&text_content("still here")).await;
    assert_eq!(
        text_of(&mut bob_events).await,
        ("mallory/pc".to_string(), "still here".to_string())
    );
}

#[tokio::test]
async fn nobody_new_is_brought_into_a_direct_conversation() {
    let server = Server::start().await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _alice = account(&server, a_dir.path(), "alice", "laptop").await;
    let bob = account(&server, b_dir.path(), "bob", "phone").await;
    let mut bob_events = bob.subscribe();
    let mallory = Mallory::new(&server).await;
    // A real direct conversation between Mallory and Bob...
    let me = Mallory::member("mallory", "pc", &mallory.identity);
    let (id, mut group) = mallory.invite_bob(&me, DIRECT).await;
    next(&mut bob_events, |e| {
        matches!(e, ClientEvent::ConversationCreated(_)).then_some(())
    })
    .await;
    // ...into which she commits Alice's real device: refused.
    let alice_kp = mallory.key_package("alice", "laptop").await;
    let (commit, _) = group.add_members(&me, &[&alice_kp]).unwrap();
    mallory
        .send("bob", "phone", group_message(&id, commit))
        .await;
    let reason = refusal(&mut bob_events).await;
    assert!(reason.contains("direct conversation"), "{reason}");
    assert_eq!(stored(&bob, id).members, vec!["bob", "mallory"]);
}

#[tokio::test]
async fn an_invitation_back_into_a_conversation_shows_who_is_in_it_now() {
    let server = Server::start().await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = account(&server, a_dir.path(), "alice", "laptop").await;
    let mut alice_events = alice.subscribe();
    let bob = account(&server, b_dir.path(), "bob", "phone").await;
    let mut bob_events = bob.subscribe();
    let Shared {
        mallory,
        me,
        group,
        id: raw_id,
    } = Shared::new(&server, &mut bob_events).await;
    let id = ConversationId(raw_id);
    bob.conversation(&id)
        .unwrap()
        .invite("alice")
        .await
        .unwrap();
    next(&mut alice_events, |e| {
        matches!(e, ClientEvent::ConversationCreated(_)).then_some(())
    })
    .await;
    bob.conversation(&id).unwrap().leave().await.unwrap();
    // Mallory builds a new group under the same id with only herself and Bob, and invites
    // him "back": Bob sees that Alice is not in it.
    group.delete(&me).unwrap();
    let mut group = me.create_group(&raw_id).unwrap();
    let bob_kp = mallory.key_package("bob", "phone").await;
    let (_, welcome) = group.add_members(&me, &[&bob_kp]).unwrap();
    mallory
        .send("bob", "phone", invitation(&raw_id, GROUP, welcome))
        .await;
    let back = next(&mut bob_events, |e| match e {
        ClientEvent::ConversationCreated(c) if c.id == id => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(back.members, vec!["bob", "mallory"]);
    assert_eq!(stored(&bob, raw_id).members, vec!["bob", "mallory"]);
}

#[tokio::test]
async fn messages_for_conversations_never_joined_cannot_fill_the_parking() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut limits = qpq_sdk::ClientLimits::default();
    limits.max_parked_per_sender = 3;
    limits.max_parked_total = 5;
    let bob = server.client_with(dir.path(), limits);
    bob.register("bob", "pw").await.unwrap();
    bob.login("bob", "phone", "pw").await.unwrap();
    let mut bob_events = bob.subscribe();
    let mallory = Mallory::new(&server).await;
    let me = Mallory::member("mallory", "pc", &mallory.identity);
    let mut group = me.create_group(b"mallory's own").unwrap();
    // Anyone who knows (or invents) a conversation id can send there: Bob parks such a
    // message until its invitation comes, within the budgets.
    let mut flood = |n: usize| {
        (0..n)
            .map(|_| {
                let id: [u8; 16] = rand::random();
                group_message(&id, group.encrypt(&me, b"parked").unwrap())
            })
            .collect::<Vec<_>>()
    };
    for transport in flood(4) {
        mallory.send("bob", "phone", transport).await;
    }
    let reason = refusal(&mut bob_events).await;
    assert!(
        reason.contains("messages of this sender already wait"),
        "{reason}"
    );
    // Another sealing identity (any key will do) meets the budget for all senders.
    let other = Mallory {
        rpc: mallory.rpc.clone(),
        identity: IdentityKey::generate(),
    };
    for transport in flood(3) {
        other.send("bob", "phone", transport).await;
    }
    let reason = refusal(&mut bob_events).await;
    assert!(
        reason.contains("already wait for earlier commits"),
        "{reason}"
    );
}

#[tokio::test]
async fn broken_envelopes_cost_the_receiver_a_bounded_number_of_openings() {
    // Each broken envelope ends a run of entries committed together; the page they are in
    // must still be opened once (plus one opening of each on its own), not once per run.
    let server = Server::start().await;
    let bob_dir = tempfile::tempdir().unwrap();
    let bob = account(&server, bob_dir.path(), "bob", "phone").await;
    bob.logout().await.unwrap();
    bob.close().await;
    let mallory = Mallory::new(&server).await;
    // A stranger may have 20 messages waiting for Bob (the server's limit); a contact more.
    const BROKEN: usize = 20;
    mallory.send_broken("bob", "phone", BROKEN).await;
    let bob = server.client(bob_dir.path());
    let mut events = bob.subscribe();
    bob.login("bob", "phone", "pw").await.unwrap();
    for _ in 0..BROKEN {
        next(&mut events, |e| {
            matches!(e, ClientEvent::UndecryptableMessage { .. }).then_some(())
        })
        .await;
    }
    let opened = bob.envelopes_opened();
    assert!(
        opened <= 2 * BROKEN as u64 + 4,
        "{opened} openings for {BROKEN} broken envelopes"
    );
}
