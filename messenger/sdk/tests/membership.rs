//! Leaving a group, group messages that arrive before the commit they depend on, and
//! invitations from strangers as message requests.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use qpq_proto::v1;
use qpq_sdk::{ClientEvent, ClientLimits, SdkError};

async fn left(m: &mut Member) -> String {
    next(&mut m.events, |e| match e {
        ClientEvent::MemberLeft { user, .. } => Some(user),
        _ => None,
    })
    .await
}

#[tokio::test]
async fn a_member_who_leaves_is_removed_by_the_others_and_reads_nothing_afterwards() {
    let server = Server::start().await;
    let mut alice = member(&server, "alice").await;
    let mut bob = member(&server, "bob").await;
    let mut carol = member(&server, "carol").await;
    let group = alice
        .client
        .create_group("team", &["bob", "carol"])
        .await
        .unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;

    carol
        .client
        .conversation(&group.id)
        .unwrap()
        .leave()
        .await
        .unwrap();
    // Carol's device is out at once; the others learn it from the commit of the first
    // remaining device by name (alice/d1).
    assert_eq!(left(&mut carol).await, "carol");
    assert_eq!(left(&mut alice).await, "carol");
    assert_eq!(left(&mut bob).await, "carol");
    for m in [&alice, &bob] {
        assert_eq!(
            m.client.conversations().unwrap()[0].members,
            vec!["alice", "bob"]
        );
    }
    let err = carol
        .client
        .conversation(&group.id)
        .unwrap()
        .send_text("still here?", None)
        .unwrap_err();
    assert!(matches!(err, SdkError::InvalidArgument(_)), "{err}");

    // What is sent afterwards reaches bob, never carol.
    let id = bob
        .client
        .conversation(&group.id)
        .unwrap()
        .send_text("just us", None)
        .unwrap()
        .id();
    sent(&mut bob.events, id).await;
    assert_eq!(text(&mut alice.events).await.1, "just us");
    let marker = alice.client.create_dm("carol").await.unwrap();
    let dm = joined(&mut carol).await;
    assert_eq!(dm.id, marker.id);
    // Carol has processed everything queued before the DM invitation by now.
    assert!(
        carol
            .client
            .conversation(&group.id)
            .unwrap()
            .messages(100)
            .unwrap()
            .iter()
            .all(|m| m.body != "just us")
    );
    while let Ok(e) = carol.events.try_recv() {
        assert!(
            !matches!(e, ClientEvent::UndecryptableMessage { .. }),
            "messages of a left group are not errors: {e:?}"
        );
    }
    // The history before leaving stays.
    assert_eq!(carol.client.conversations().unwrap().len(), 2);
}

#[tokio::test]
async fn messages_that_overtake_their_commit_wait_for_it_and_the_wait_is_bounded() {
    let server = Server::start().await;
    let alice = member(&server, "alice").await;
    let mut bob = member(&server, "bob").await;
    let mut carol = member(&server, "carol").await;
    let mut dave = member(&server, "dave").await;
    let group = alice
        .client
        .create_group("team", &["bob", "carol"])
        .await
        .unwrap();
    joined(&mut bob).await;
    joined(&mut carol).await;
    let carol_dir = carol.dir;
    carol.client.close().await;

    // While carol is away, alice adds dave (a commit), then bob writes twice in the new epoch.
    alice
        .client
        .conversation(&group.id)
        .unwrap()
        .invite("dave")
        .await
        .unwrap();
    joined(&mut dave).await;
    next(&mut bob.events, |e| {
        matches!(e, ClientEvent::MemberJoined { .. }).then_some(())
    })
    .await;
    for body in ["after 1", "after 2"] {
        let id = bob
            .client
            .conversation(&group.id)
            .unwrap()
            .send_text(body, None)
            .unwrap()
            .id();
        sent(&mut bob.events, id).await;
    }

    // Carol's queue now holds the commit, then bob's two messages. A reordering network (or
    // server) hands them over the other way round.
    let raw = qrpc::Client::builder(
        server.addr,
        qrpc::tls::ClientTls::pinned(server.fingerprint),
    )
    .configure(|c| {
        c.alpn(vec![b"qpq/1".to_vec()]);
    })
    .connect()
    .await
    .unwrap();
    qpq_proto::auth_flows::login(&raw, "carol", "d1", "pw")
        .await
        .unwrap();
    let delivery = v1::delivery_client::DeliveryClient::new(raw.clone());
    let queued = delivery
        .fetch(&v1::FetchRequest {
            after_seq: 0,
            limit: 10,
        })
        .await
        .unwrap()
        .messages;
    // The invitation may still be there too: carol committed it, but her client may have
    // been dropped before its acknowledgement reached the server.
    assert!(matches!(queued.len(), 3 | 4), "{} entries", queued.len());
    let queued = &queued[queued.len() - 3..];
    delivery
        .ack(&v1::AckRequest {
            up_to_seq: queued[2].seq,
        })
        .await
        .unwrap();
    for (i, envelope) in [&queued[1], &queued[2], &queued[0]].into_iter().enumerate() {
        delivery
            .enqueue(&v1::EnqueueRequest {
                recipient: Some(v1::DeviceRef {
                    user: "carol".into(),
                    device: "d1".into(),
                }),
                message_id: vec![0xC0 + i as u8; 16].into(),
                payload: envelope.payload.clone(),
                delivery_token: Default::default(),
            })
            .await
            .unwrap();
    }

    // Carol comes back able to park one message: "after 1" waits for the commit, "after 2"
    // finds the waiting room full and is reported; the commit then releases "after 1".
    let mut limits = ClientLimits::default();
    limits.max_parked = 1;
    let carol = server.client_with(carol_dir.path(), limits);
    let mut carol_events = carol.subscribe();
    carol.connect().await.unwrap();
    let reason = next(&mut carol_events, |e| match e {
        ClientEvent::UndecryptableMessage { reason, .. } => Some(reason),
        ClientEvent::MessageReceived(m) => panic!("{} arrived before the commit", m.body),
        _ => None,
    })
    .await;
    assert!(reason.contains("wait for an earlier commit"), "{reason}");
    let user = next(&mut carol_events, |e| match e {
        ClientEvent::MemberJoined { user, .. } => Some(user),
        _ => None,
    })
    .await;
    assert_eq!(user, "dave");
    assert_eq!(text(&mut carol_events).await.1, "after 1");
    let stored: Vec<String> = carol
        .conversation(&group.id)
        .unwrap()
        .messages(10)
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(stored, vec!["after 1"]);
}

#[tokio::test]
async fn a_strangers_invitation_is_a_request_until_the_user_answers() {
    let server = Server::start().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let alice = account(&server, dirs[0].path(), "alice", "laptop").await;
    let bob = server.consenting_client(dirs[1].path());
    bob.register("bob", "pw").await.unwrap();
    bob.login("bob", "phone", "pw").await.unwrap();
    let mut bob_events = bob.subscribe();

    // Alice has never talked to Bob: her DM is a request, out of his list, and what she says
    // in it is not announced.
    let dm = alice.create_dm("bob").await.unwrap();
    let (requested, inviter) = next(&mut bob_events, |e| match e {
        ClientEvent::MessageRequest {
            conversation,
            inviter,
        } => Some((conversation, inviter)),
        ClientEvent::ConversationCreated(c) => panic!("joined without consent: {c:?}"),
        _ => None,
    })
    .await;
    assert_eq!((requested.id, inviter.as_str()), (dm.id, "alice"));
    assert!(bob.conversations().unwrap().is_empty());
    assert_eq!(bob.requests().unwrap().len(), 1);
    assert_eq!(bob.request_count().unwrap(), 1);
    let mut alice_events = alice.subscribe();
    let first = alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("hi, it's Alice", None)
        .unwrap()
        .id();
    sent(&mut alice_events, first).await;
    // Bob accepts: the conversation joins his list with what was said, and the next message
    // is announced as usual.
    let accepted = bob.conversation(&dm.id).unwrap().accept().await.unwrap();
    assert_eq!(accepted.id, dm.id);
    assert_eq!(bob.conversations().unwrap().len(), 1);
    assert!(bob.requests().unwrap().is_empty());
    assert_eq!(bob.request_count().unwrap(), 0);
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("welcome", None)
        .unwrap()
        .id();
    // What she said before is announced once accepted (or on arrival, if it came later).
    let mut seen = Vec::new();
    while !seen.contains(&"welcome".to_string()) {
        seen.push(text(&mut bob_events).await.1);
    }
    assert!(seen.contains(&"hi, it's Alice".to_string()), "{seen:?}");

    // Now Alice is known: her group invitation is joined at once.
    let group = alice.create_group("team", &["bob"]).await.unwrap();
    let joined = next(&mut bob_events, |e| match e {
        ClientEvent::ConversationCreated(c) => Some(c),
        ClientEvent::MessageRequest { .. } => panic!("a known inviter is not a stranger"),
        _ => None,
    })
    .await;
    assert_eq!(joined.id, group.id);

    // Carol, a stranger to Bob, invites him; he declines, and nothing of it stays.
    let carol = account(&server, dirs[2].path(), "carol", "pc").await;
    let hers = carol.create_dm("bob").await.unwrap();
    next(&mut bob_events, |e| match e {
        ClientEvent::MessageRequest { conversation, .. } if conversation.id == hers.id => Some(()),
        _ => None,
    })
    .await;
    bob.conversation(&hers.id).unwrap().decline().await.unwrap();
    assert!(bob.requests().unwrap().is_empty());
    assert!(bob.conversations().unwrap().iter().all(|c| c.id != hers.id));
    assert!(matches!(
        bob.conversation(&hers.id).unwrap_err(),
        qpq_sdk::SdkError::NotFound(_)
    ));
}

#[tokio::test]
async fn leaving_a_conversation_makes_its_members_strangers_again() {
    let server = Server::start().await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let alice = account(&server, dirs[0].path(), "alice", "laptop").await;
    let bob = server.consenting_client(dirs[1].path());
    bob.register("bob", "pw").await.unwrap();
    bob.login("bob", "phone", "pw").await.unwrap();
    let mut bob_events = bob.subscribe();
    // Bob joins Alice's group (a request he accepts), then leaves it.
    let group = alice.create_group("club", &["bob"]).await.unwrap();
    next(&mut bob_events, |e| {
        matches!(e, ClientEvent::MessageRequest { .. }).then_some(())
    })
    .await;
    bob.conversation(&group.id).unwrap().accept().await.unwrap();
    bob.conversation(&group.id).unwrap().leave().await.unwrap();
    // A direct conversation from Alice is a request again: leaving ended "known".
    let dm = alice.create_dm("bob").await.unwrap();
    let requested = next(&mut bob_events, |e| match e {
        ClientEvent::MessageRequest { conversation, .. } => Some(conversation.id),
        ClientEvent::ConversationCreated(c) if c.id == dm.id => {
            panic!("joined a former group-mate's conversation without consent")
        }
        _ => None,
    })
    .await;
    assert_eq!(requested, dm.id);
}
