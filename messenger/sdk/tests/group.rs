//! Groups and message actions, SDK to SDK through a real qpq-server.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use qpq_sdk::{ClientEvent, ConversationKind};

#[tokio::test]
async fn a_group_of_five_with_add_remove_and_rename() {
    let server = Server::start().await;
    let mut alice = member(&server, "alice").await;
    let mut others = Vec::new();
    for user in ["bob", "carol", "dave"] {
        others.push(member(&server, user).await);
    }
    let group = alice
        .client
        .create_group("team", &["bob", "carol", "dave"])
        .await
        .unwrap();
    assert_eq!(group.kind, ConversationKind::Group);
    assert_eq!(group.members, vec!["alice", "bob", "carol", "dave"]);
    for m in &mut others {
        let c = joined(m).await;
        assert_eq!((c.id, c.name.as_str()), (group.id, "team"));
        assert_eq!(c.members, group.members);
    }

    // Erin is invited later: the others learn it, she joins with the current members.
    let mut erin = member(&server, "erin").await;
    alice
        .client
        .conversation(&group.id)
        .unwrap()
        .invite("erin")
        .await
        .unwrap();
    let c = joined(&mut erin).await;
    assert_eq!(c.members, vec!["alice", "bob", "carol", "dave", "erin"]);
    for m in &mut others {
        let user = next(&mut m.events, |e| match e {
            ClientEvent::MemberJoined { user, .. } => Some(user),
            _ => None,
        })
        .await;
        assert_eq!(user, "erin");
    }
    others.push(erin);

    // Everyone reads a message from anyone.
    let id = others[1]
        .client
        .conversation(&group.id)
        .unwrap()
        .send_text("carol here", None)
        .unwrap()
        .id();
    sent(&mut others[1].events, id).await;
    assert_eq!(
        text(&mut alice.events).await,
        ("carol/d1".to_string(), "carol here".to_string())
    );
    for (i, m) in others.iter_mut().enumerate() {
        if i != 1 {
            assert_eq!(text(&mut m.events).await.1, "carol here");
        }
    }

    // Bob is removed: the others see it, and he gets nothing sent afterwards.
    alice
        .client
        .conversation(&group.id)
        .unwrap()
        .remove("bob")
        .await
        .unwrap();
    let left = next(&mut others[0].events, |e| match e {
        ClientEvent::MemberLeft { user, .. } => Some(user),
        _ => None,
    })
    .await;
    assert_eq!(left, "bob", "bob learns he was removed");
    for m in others.iter_mut().skip(1) {
        let left = next(&mut m.events, |e| match e {
            ClientEvent::MemberLeft { user, .. } => Some(user),
            _ => None,
        })
        .await;
        assert_eq!(left, "bob");
    }
    let secret = alice
        .client
        .conversation(&group.id)
        .unwrap()
        .send_text("after bob", None)
        .unwrap()
        .id();
    sent(&mut alice.events, secret).await;
    for m in others.iter_mut().skip(1) {
        assert_eq!(text(&mut m.events).await.1, "after bob");
    }
    let bobs = others[0]
        .client
        .conversation(&group.id)
        .unwrap()
        .messages(100)
        .unwrap();
    assert!(bobs.iter().all(|m| m.body != "after bob"));
    assert_eq!(
        others[0].client.conversations().unwrap()[0].members,
        vec!["alice", "carol", "dave", "erin"]
    );

    // Rename reaches the remaining members.
    others[2]
        .client
        .conversation(&group.id)
        .unwrap()
        .rename("the team")
        .unwrap();
    let renamed = next(&mut alice.events, |e| match e {
        ClientEvent::ConversationUpdated(c) if c.name == "the team" => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(renamed.members, vec!["alice", "carol", "dave", "erin"]);
}

#[tokio::test]
async fn edits_deletes_reactions_and_receipts() {
    let server = Server::start().await;
    let mut alice = member(&server, "alice").await;
    let mut bob = member(&server, "bob").await;
    let dm = alice.client.create_dm("bob").await.unwrap();
    joined(&mut bob).await;
    let id = alice
        .client
        .conversation(&dm.id)
        .unwrap()
        .send_text("helo", None)
        .unwrap()
        .id();
    assert_eq!(text(&mut bob.events).await.1, "helo");

    alice.client.edit(&id, "hello").unwrap();
    let edited = next(&mut bob.events, |e| match e {
        ClientEvent::MessageEdited { id: i, body, .. } if i == id => Some(body),
        _ => None,
    })
    .await;
    assert_eq!(edited, "hello");
    let on_bob = bob.client.message(&id).unwrap().unwrap();
    assert!(on_bob.edited);
    assert_eq!(on_bob.body, "hello");

    // Only the author may edit: Bob's device refuses locally.
    assert!(bob.client.edit(&id, "hijacked").is_err());

    bob.client.react(&id, "👍", false).unwrap();
    let (user, emoji, added) = next(&mut alice.events, |e| match e {
        ClientEvent::ReactionChanged {
            id: i,
            user,
            emoji,
            added,
            ..
        } if i == id => Some((user, emoji, added)),
        _ => None,
    })
    .await;
    assert_eq!((user.as_str(), emoji.as_str(), added), ("bob", "👍", true));

    bob.client
        .conversation(&dm.id)
        .unwrap()
        .mark_read(&[id])
        .unwrap();
    let reader = next(&mut alice.events, |e| match e {
        ClientEvent::ReceiptChanged { ids, user, .. } if ids == vec![id] => Some(user),
        _ => None,
    })
    .await;
    assert_eq!(reader, "bob");
    let on_alice = alice.client.message(&id).unwrap().unwrap();
    assert_eq!(
        on_alice.reactions,
        vec![("bob".to_string(), "👍".to_string())]
    );
    assert_eq!(on_alice.read_by, vec!["bob".to_string()]);

    alice.client.delete(&id).unwrap();
    next(&mut bob.events, |e| match e {
        ClientEvent::MessageDeleted { id: i, .. } if i == id => Some(()),
        _ => None,
    })
    .await;
    let gone = bob.client.message(&id).unwrap().unwrap();
    assert!(gone.deleted);
    assert_eq!(gone.body, "");
    assert!(
        alice.client.edit(&id, "back").is_err(),
        "a deleted message stays deleted"
    );
}

#[tokio::test]
async fn search_finds_decrypted_messages_in_this_store_only() {
    let server = Server::start().await;
    let mut alice = member(&server, "alice").await;
    let mut bob = member(&server, "bob").await;
    let carol = member(&server, "carol").await;
    let dm = alice.client.create_dm("bob").await.unwrap();
    joined(&mut bob).await;
    alice
        .client
        .conversation(&dm.id)
        .unwrap()
        .send_text("The Quick brown fox", None)
        .unwrap()
        .id();
    let id = alice
        .client
        .conversation(&dm.id)
        .unwrap()
        .send_text("a lazy dog \"quoted\" (sic)", None)
        .unwrap()
        .id();
    text(&mut bob.events).await;
    text(&mut bob.events).await;
    let found = bob.client.search("quick FOX").unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].body, "The Quick brown fox");
    // Input with FTS syntax characters is just text.
    assert_eq!(bob.client.search("\"quoted\" (sic)").unwrap()[0].id, id);
    assert!(bob.client.search("fox cat").unwrap().is_empty());
    assert!(bob.client.search("   ").unwrap().is_empty());
    // Another user's store knows nothing of it.
    assert!(carol.client.search("fox").unwrap().is_empty());
    // Edits are re-indexed; deleted messages are not found.
    alice.client.edit(&id, "a sleepy cat").unwrap();
    assert_eq!(alice.client.search("sleepy").unwrap().len(), 1);
    alice.client.delete(&id).unwrap();
    assert!(alice.client.search("sleepy").unwrap().is_empty());
    let _ = &mut alice.events;
}

#[tokio::test]
async fn key_packages_are_replenished_as_invitations_use_them() {
    // The harness publishes 3 one-time key packages per device.
    let server = Server::start().await;
    let mut alice = member(&server, "alice").await;
    let mut bob = member(&server, "bob").await;
    // Mallory checks from outside which kind of package the server hands out for Bob.
    let mallory = raw_account(&server, "mallory", "pc").await;

    // Two invitations use two of Bob's three packages; a message read after them proves
    // Bob's client finished the page where it topped the stock up again.
    for i in 0..2 {
        let c = alice
            .client
            .create_group(&format!("g{i}"), &["bob"])
            .await
            .unwrap();
        joined(&mut bob).await;
        alice
            .client
            .conversation(&c.id)
            .unwrap()
            .send_text("ping", None)
            .unwrap()
            .id();
        text(&mut bob.events).await;
    }
    alice.client.create_group("g2", &["bob"]).await.unwrap();
    joined(&mut bob).await;
    let fetched = qpq_proto::v1::keys_client::KeysClient::new(mallory)
        .fetch_key_package(&qpq_proto::v1::FetchKeyPackageRequest {
            device: Some(qpq_proto::v1::DeviceRef {
                user: "bob".into(),
                device: "d1".into(),
            }),
        })
        .await
        .unwrap();
    assert!(
        !fetched.last_resort,
        "after three invitations Bob still has one-time key packages"
    );
    let _ = &mut alice.events;
}

#[tokio::test]
async fn typing_reaches_the_members_including_one_invited_later() {
    let server = Server::start().await;
    let mut alice = member(&server, "alice").await;
    let mut bob = member(&server, "bob").await;
    let mut carol = member(&server, "carol").await;
    let team = alice.client.create_group("team", &["bob"]).await.unwrap();
    joined(&mut bob).await;
    bob.client
        .conversation(&team.id)
        .unwrap()
        .typing()
        .await
        .unwrap();
    let who = next(&mut alice.events, |e| match e {
        ClientEvent::Typing { conversation, user } if conversation == team.id => Some(user),
        _ => None,
    })
    .await;
    assert_eq!(who, "bob");

    alice
        .client
        .conversation(&team.id)
        .unwrap()
        .invite("carol")
        .await
        .unwrap();
    joined(&mut carol).await;
    carol
        .client
        .conversation(&team.id)
        .unwrap()
        .typing()
        .await
        .unwrap();
    for m in [&mut alice, &mut bob] {
        let who = next(&mut m.events, |e| match e {
            ClientEvent::Typing { user, .. } => Some(user),
            _ => None,
        })
        .await;
        assert_eq!(who, "carol");
    }
}

#[tokio::test]
async fn the_group_size_limit_is_enforced_on_create_and_invite() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut limits = qpq_sdk::ClientLimits::default();
    limits.max_conversation_devices = 2;
    let alice = server.client_with(dir.path(), limits);
    alice.register("alice", "pw").await.unwrap();
    alice.login("alice", "d1", "pw").await.unwrap();
    let mut others = Vec::new();
    for user in ["bob", "carol", "dave"] {
        others.push(member(&server, user).await);
    }
    let err = alice
        .create_group("too big", &["bob", "carol", "dave"])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 2 devices"), "{err}");
    assert!(alice.conversations().unwrap().is_empty());
    let group = alice.create_group("fits", &["bob", "carol"]).await.unwrap();
    let err = alice
        .conversation(&group.id)
        .unwrap()
        .invite("dave")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("at most 2 devices"), "{err}");
    assert_eq!(
        alice.conversations().unwrap()[0].members,
        vec!["alice", "bob", "carol"]
    );
}
