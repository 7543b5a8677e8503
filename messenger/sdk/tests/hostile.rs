//! What a hostile sender or server can inject into a device queue surfaces as events, and the
//! conversation goes on.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use prost::Message as _;
use qpq_proto::v1;
use qpq_sdk::{ClientEvent, SdkError};

async fn undecryptable(events: &mut tokio::sync::broadcast::Receiver<ClientEvent>) -> String {
    next(events, |e| match e {
        ClientEvent::UndecryptableMessage { reason, .. } => Some(reason),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn tampered_garbled_and_replayed_envelopes_are_events_not_failures() {
    let server = Server::start().await;
    let Pair {
        a_dir: _a_dir,
        b_dir: _b_dir,
        alice,
        bob: _bob,
        mut bob_events,
        dm,
    } = pair(&server).await;

    // Mallory talks to the server directly with the generated clients.
    let mallory = raw_account(&server, "mallory", "pc").await;
    let bob_ref = v1::DeviceRef {
        user: "bob".into(),
        device: "phone".into(),
    };
    let bundle = v1::keys_client::KeysClient::new(mallory.clone())
        .fetch_hybrid_key(&v1::FetchHybridKeyRequest {
            device: Some(bob_ref.clone()),
        })
        .await
        .unwrap();
    let bob_key = qpq_core::bundle::KeyBundle::decode(&bundle.key_bundle)
        .unwrap()
        .hybrid;
    let garbage = v1::Transport {
        kind: Some(v1::transport::Kind::Group(v1::GroupMessage {
            conversation_id: dm.id.0.to_vec().into(),
            mls: vec![0x00, 0x01, 0x02, 0x03].into(),
        })),
    }
    .encode_to_vec();
    let envelope = qpq_core::sealed::seal(
        &qpq_core::identity::IdentityKey::generate(),
        &bob_key,
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        &garbage,
    )
    .unwrap();
    let delivery = v1::delivery_client::DeliveryClient::new(mallory.clone());
    let send = |id: u8, payload: Vec<u8>| {
        let delivery = delivery.clone();
        let to = bob_ref.clone();
        async move {
            delivery
                .enqueue(&v1::EnqueueRequest {
                    recipient: Some(to),
                    message_id: vec![id; 16].into(),
                    payload: payload.into(),
                    delivery_token: Default::default(),
                })
                .await
                .unwrap();
        }
    };

    let mut tampered = envelope.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x55;
    send(1, tampered).await;
    assert!(
        undecryptable(&mut bob_events)
            .await
            .contains("sealed envelope")
    );
    send(2, envelope.clone()).await;
    let garbled = undecryptable(&mut bob_events).await;
    assert!(!garbled.contains("sealed envelope"), "{garbled}");
    send(3, envelope).await; // the same envelope again
    assert!(undecryptable(&mut bob_events).await.contains("replay"));

    // The conversation goes on.
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("still here", None)
        .unwrap()
        .id();
    assert_eq!(text(&mut bob_events).await.1, "still here");
}

#[tokio::test]
async fn a_server_that_rewrites_its_key_log_raises_an_alarm_and_the_key_is_not_used() {
    let mut server = Server::start().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let alice = account(&server, dirs[0].path(), "alice", "laptop").await;
    let _bob = account(&server, dirs[1].path(), "bob", "phone").await;
    let mut alice_events = alice.subscribe();
    // Alice's client pins the log and verifies Bob's keys in it.
    alice.create_dm("bob").await.unwrap();

    // The operator rewrites history: Bob's leaf is replaced (say, to slip in another key).
    server.stop().await;
    {
        let db = rusqlite::Connection::open(server.dir.path().join("qpq.db")).unwrap();
        db.execute(
            "UPDATE kt_leaves SET leaf_hash = zeroblob(32) WHERE idx = 1",
            [],
        )
        .unwrap();
    }
    server.restart().await;
    let _carol = account(&server, dirs[2].path(), "carol", "pc").await;

    let err = alice.create_dm("carol").await.unwrap_err();
    assert!(matches!(err, SdkError::KeyTransparency(_)), "{err}");
    let (device, reason) = next(&mut alice_events, |e| match e {
        ClientEvent::KeyTransparencyAlarm { device, reason } => Some((device, reason)),
        _ => None,
    })
    .await;
    assert_eq!(device, "carol/pc");
    assert!(reason.contains("extend"), "{reason}");
    // A front end that was not listening then still finds the alarm.
    assert_eq!(
        alice.security_warnings(),
        vec![ClientEvent::KeyTransparencyAlarm { device, reason }]
    );
}
