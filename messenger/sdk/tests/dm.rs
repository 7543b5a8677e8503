//! SDK to SDK through a real qpq-server on loopback.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use qpq_sdk::{ClientEvent, ConnectionState, ConversationId, QpqClient, SdkError, SendState};

#[tokio::test]
async fn a_direct_conversation_both_ways() {
    let server = Server::start().await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = account(&server, a_dir.path(), "alice", "laptop").await;
    let bob = account(&server, b_dir.path(), "bob", "phone").await;
    let mut alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();

    let dm = alice.create_dm("bob").await.unwrap();
    assert_eq!(dm.members, vec!["alice".to_string(), "bob".to_string()]);
    let joined = next(&mut bob_events, |e| match e {
        ClientEvent::ConversationCreated(c) => Some(c),
        _ => None,
    })
    .await;
    assert_eq!(joined.id, dm.id);
    assert_eq!(joined.members, dm.members);

    let hello = alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("hello Bob", None)
        .unwrap()
        .id();
    assert_eq!(hello.short().len(), 6);
    sent(&mut alice_events, hello).await;
    assert_eq!(
        text(&mut bob_events).await,
        ("alice/laptop".to_string(), "hello Bob".to_string())
    );
    let reply = bob
        .conversation(&dm.id)
        .unwrap()
        .send_text("hi Alice", Some(hello))
        .unwrap()
        .id();
    sent(&mut bob_events, reply).await;
    assert_eq!(
        text(&mut alice_events).await,
        ("bob/phone".to_string(), "hi Alice".to_string())
    );

    // Both stores hold the conversation in the same order, with delivery states.
    let on_bob = bob.conversation(&dm.id).unwrap().messages(10).unwrap();
    assert_eq!(
        on_bob.iter().map(|m| m.body.as_str()).collect::<Vec<_>>(),
        vec!["hello Bob", "hi Alice"]
    );
    assert_eq!(on_bob[1].reply_to, Some(hello));
    assert_eq!(on_bob[1].state, SendState::Sent);
    assert_eq!(on_bob[0].state, SendState::Received);
    assert_eq!(alice.conversations().unwrap(), vec![dm.clone()]);
}

#[tokio::test]
async fn an_offline_recipient_gets_everything_in_order_after_a_restart() {
    let server = Server::start().await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = account(&server, a_dir.path(), "alice", "laptop").await;
    let bob = account(&server, b_dir.path(), "bob", "phone").await;
    let mut alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();
    let dm = alice.create_dm("bob").await.unwrap();
    next(&mut bob_events, |e| {
        matches!(e, ClientEvent::ConversationCreated(_)).then_some(())
    })
    .await;
    // Bob's process goes away.
    drop(bob_events);
    bob.close().await;

    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            alice
                .conversation(&dm.id)
                .unwrap()
                .send_text(&format!("m{i}"), None)
                .unwrap()
                .id(),
        );
    }
    for id in ids {
        sent(&mut alice_events, id).await;
    }

    // Bob starts again from his store (same passphrase) and catches up.
    let bob = server.client(b_dir.path());
    let mut bob_events = bob.subscribe();
    bob.connect().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(text(&mut bob_events).await.1);
    }
    assert_eq!(got, vec!["m0", "m1", "m2", "m3", "m4"]);
    assert_eq!(
        bob.conversation(&dm.id)
            .unwrap()
            .messages(100)
            .unwrap()
            .len(),
        5
    );
}

#[tokio::test]
async fn messages_sent_while_the_server_is_down_are_delivered_when_it_returns() {
    let mut server = Server::start().await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = account(&server, a_dir.path(), "alice", "laptop").await;
    let bob = account(&server, b_dir.path(), "bob", "phone").await;
    let mut alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();
    let dm = alice.create_dm("bob").await.unwrap();
    next(&mut bob_events, |e| {
        matches!(e, ClientEvent::ConversationCreated(_)).then_some(())
    })
    .await;

    server.stop().await;
    let id = alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("sent while offline", None)
        .unwrap()
        .id();
    // The local echo is there at once, queued.
    let echo = alice.conversation(&dm.id).unwrap().messages(1).unwrap();
    assert_eq!(echo[0].state, SendState::Queued);
    assert_eq!(alice.outbox_len().unwrap(), 1);

    server.restart().await;
    sent(&mut alice_events, id).await;
    assert_eq!(text(&mut bob_events).await.1, "sent while offline");
    assert_eq!(alice.outbox_len().unwrap(), 0);
}

#[tokio::test]
async fn the_store_is_encrypted_and_a_wrong_passphrase_is_a_clear_error() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = account(&server, dir.path(), "alice", "laptop").await;
    let bob_dir = tempfile::tempdir().unwrap();
    let _bob = account(&server, bob_dir.path(), "bob", "phone").await;
    let dm = alice.create_dm("bob").await.unwrap();
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("a very secret sentence", None)
        .unwrap()
        .id();
    alice.close().await;

    let err = QpqClient::builder()
        .server(server.addr)
        .pin(server.fingerprint)
        .data_dir(dir.path())
        .passphrase("not the passphrase")
        .build()
        .unwrap_err();
    assert!(matches!(err, SdkError::WrongStoreKey), "{err}");
    // Nothing readable on disk: no SQLite header, no message text, no user name.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let find = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        assert!(!find(b"SQLite format 3"));
        assert!(!find(b"a very secret sentence"));
        assert!(!find(b"alice/laptop"));
    }
    // The right passphrase opens it offline (no server call).
    let reopened = server.client(dir.path());
    assert_eq!(reopened.conversations().unwrap().len(), 1);
    assert_eq!(
        reopened.conversation(&dm.id).unwrap().messages(10).unwrap()[0].body,
        "a very secret sentence"
    );
}

#[tokio::test]
async fn bad_arguments_are_clear_errors() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let err = QpqClient::builder()
        .server(server.addr)
        .data_dir(dir.path())
        .passphrase("x")
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("pin"), "{err}");
    let alice = account(&server, dir.path(), "alice", "laptop").await;
    let unknown = ConversationId([9; 16]);
    assert!(matches!(
        alice.conversation(&unknown),
        Err(SdkError::NotFound(_))
    ));
    assert!(matches!(
        alice.create_dm("alice").await,
        Err(SdkError::InvalidArgument(_))
    ));
    // A user without published keys.
    let nobody = server.client(tempfile::tempdir().unwrap().path());
    nobody.register("carol", "pw").await.unwrap();
    assert!(matches!(
        alice.create_dm("carol").await,
        Err(SdkError::NotFound(_))
    ));
    let dm_err = alice.create_dm("nobody-at-all").await.unwrap_err();
    assert!(dm_err.to_string().contains("no such user"), "{dm_err}");
    // Another account on the same store is refused.
    assert!(matches!(
        alice.login("bob", "phone", "pw").await,
        Err(SdkError::OtherAccount(_))
    ));
    let long = "x".repeat(64 * 1024 + 1);
    let bob_dir = tempfile::tempdir().unwrap();
    let _bob = account(&server, bob_dir.path(), "bob", "phone").await;
    let dm = alice.create_dm("bob").await.unwrap();
    assert!(matches!(
        alice.conversation(&dm.id).unwrap().send_text(&long, None),
        Err(SdkError::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn a_sender_restarted_before_its_outbox_drained_delivers_each_message_once() {
    let mut server = Server::start().await;
    let Pair {
        a_dir,
        b_dir: _b_dir,
        alice,
        bob,
        mut bob_events,
        dm,
    } = pair(&server).await;

    // Alice queues three messages with the server down, then her process goes away.
    server.stop().await;
    for i in 0..3 {
        alice
            .conversation(&dm.id)
            .unwrap()
            .send_text(&format!("queued {i}"), None)
            .unwrap()
            .id();
    }
    assert_eq!(alice.outbox_len().unwrap(), 3);
    alice.close().await;

    server.restart().await;
    let alice = server.client(a_dir.path());
    let mut alice_events = alice.subscribe();
    alice.connect().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(text(&mut bob_events).await.1);
    }
    assert_eq!(got, vec!["queued 0", "queued 1", "queued 2"]);
    // Everything is marked sent, and nothing arrives twice.
    next(&mut alice_events, |e| {
        (alice.outbox_len().unwrap() == 0).then_some(e)
    })
    .await;
    let marker = alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("last", None)
        .unwrap()
        .id();
    sent(&mut alice_events, marker).await;
    assert_eq!(text(&mut bob_events).await.1, "last");
    assert_eq!(
        bob.conversation(&dm.id)
            .unwrap()
            .messages(100)
            .unwrap()
            .len(),
        4
    );
    assert!(
        alice
            .conversation(&dm.id)
            .unwrap()
            .messages(100)
            .unwrap()
            .iter()
            .all(|m| m.state == SendState::Sent)
    );
}

#[tokio::test]
async fn events_are_also_a_stream_and_sent_bytes_are_counted() {
    use futures::StreamExt;
    let server = Server::start().await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = account(&server, a_dir.path(), "alice", "laptop").await;
    let _bob = account(&server, b_dir.path(), "bob", "phone").await;
    let mut stream = Box::pin(alice.events());
    let dm = alice.create_dm("bob").await.unwrap();
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), stream.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first, ClientEvent::ConversationCreated(dm.clone()));
    let mut events = alice.subscribe();
    let id = alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("counted", None)
        .unwrap()
        .id();
    sent(&mut events, id).await;
    // An invitation and a message, each sealed with a hybrid KEM ciphertext and padding.
    assert!(
        alice.sealed_bytes_sent() > 2 * 1120,
        "{}",
        alice.sealed_bytes_sent()
    );
}

#[tokio::test]
async fn a_backlog_larger_than_one_request_frame_is_sent_in_several_batches() {
    let mut server = Server::start().await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = account(&server, a_dir.path(), "alice", "laptop").await;
    let bob = account(&server, b_dir.path(), "bob", "phone").await;
    let mut alice_events = alice.subscribe();
    let mut bob_events = bob.subscribe();
    let dm = alice.create_dm("bob").await.unwrap();
    next(&mut bob_events, |e| {
        matches!(e, ClientEvent::ConversationCreated(_)).then_some(())
    })
    .await;
    // 70 messages of 60 KiB queue up while the server is away: about 4.3 MB of envelopes,
    // more than one 4 MiB request frame can carry.
    server.stop().await;
    let body = "x".repeat(60 * 1024);
    let mut last = None;
    for _ in 0..70 {
        last = Some(
            alice
                .conversation(&dm.id)
                .unwrap()
                .send_text(&body, None)
                .unwrap()
                .id(),
        );
    }
    server.restart().await;
    sent(&mut alice_events, last.unwrap()).await;
    for _ in 0..70 {
        assert_eq!(text(&mut bob_events).await.1.len(), body.len());
    }
}

#[tokio::test]
async fn both_sides_compute_the_same_safety_number() {
    let server = Server::start().await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let alice = account(&server, a_dir.path(), "alice", "laptop").await;
    let bob = account(&server, b_dir.path(), "bob", "phone").await;
    let on_alice = alice.safety_numbers("bob").await.unwrap();
    let on_bob = bob.safety_numbers("alice").await.unwrap();
    assert_eq!(on_alice.len(), 1);
    assert_eq!(on_alice[0].0, "phone");
    assert_eq!(on_bob[0].0, "laptop");
    assert_eq!(on_alice[0].1, on_bob[0].1);
    let groups: Vec<&str> = on_alice[0].1.split(' ').collect();
    assert_eq!(groups.len(), 12);
    assert!(
        groups
            .iter()
            .all(|g| g.len() == 5 && g.bytes().all(|b| b.is_ascii_digit()))
    );
    // Another pair of devices has another number.
    let carol_dir = tempfile::tempdir().unwrap();
    let _carol = account(&server, carol_dir.path(), "carol", "pc").await;
    assert_ne!(
        alice.safety_numbers("carol").await.unwrap()[0].1,
        on_alice[0].1
    );
}

#[tokio::test]
async fn the_outbox_is_bounded_and_says_so() {
    let mut server = Server::start().await;
    let Pair {
        a_dir,
        b_dir: _b_dir,
        alice,
        bob: _bob,
        mut bob_events,
        dm,
    } = pair(&server).await;
    alice.close().await;

    server.stop().await;
    let mut limits = qpq_sdk::ClientLimits::default();
    limits.max_outbox = 2;
    let alice = server.client_with(a_dir.path(), limits);
    alice.connect().await.unwrap();
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("one", None)
        .unwrap()
        .id();
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("two", None)
        .unwrap()
        .id();
    let err = alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("three", None)
        .unwrap_err();
    assert!(matches!(err, SdkError::OutboxFull { limit: 2 }), "{err}");
    assert!(err.to_string().contains("outbox is full"), "{err}");
    // Nothing of the refused message was kept.
    assert_eq!(
        alice
            .conversation(&dm.id)
            .unwrap()
            .messages(10)
            .unwrap()
            .len(),
        2
    );

    // Once the server is back and the outbox drains, sending works again.
    let mut alice_events = alice.subscribe();
    server.restart().await;
    next(&mut alice_events, |e| {
        (alice.outbox_len().unwrap() == 0).then_some(e)
    })
    .await;
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("three", None)
        .unwrap()
        .id();
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(text(&mut bob_events).await.1);
    }
    assert_eq!(got, vec!["one", "two", "three"]);
}

#[tokio::test]
async fn a_queued_message_can_be_cancelled_until_the_outbox_hands_it_over() {
    let mut server = Server::start().await;
    let Pair {
        a_dir,
        b_dir: _b_dir,
        alice,
        bob: _bob,
        mut bob_events,
        dm,
    } = pair(&server).await;
    alice.close().await;

    // Offline: both messages wait in the outbox; one is taken back.
    server.stop().await;
    let alice = server.client(a_dir.path());
    let mut alice_events = alice.subscribe();
    alice.connect().await.unwrap();
    let keep = alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("keep", None)
        .unwrap()
        .id();
    let oops = alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("oops", None)
        .unwrap()
        .id();
    alice.cancel(&oops).unwrap();
    let deleted = next(&mut alice_events, |e| match e {
        ClientEvent::MessageDeleted { id, .. } => Some(id),
        _ => None,
    })
    .await;
    assert_eq!(deleted, oops);
    assert_eq!(alice.outbox_len().unwrap(), 1);
    assert!(matches!(
        alice.cancel(&oops).unwrap_err(),
        SdkError::NotFound(_)
    ));

    // Back online: "keep" goes Sending -> Sent, and can no longer be cancelled.
    server.restart().await;
    let mut states = Vec::new();
    while states.last() != Some(&SendState::Sent) {
        states.push(
            next(&mut alice_events, |e| match e {
                ClientEvent::SendStateChanged { id, state, .. } if id == keep => Some(state),
                _ => None,
            })
            .await,
        );
    }
    assert_eq!(states[0], SendState::Sending, "{states:?}");
    let err = alice.cancel(&keep).unwrap_err();
    assert!(err.to_string().contains("delete it instead"), "{err}");
    assert_eq!(text(&mut bob_events).await.1, "keep");
    let marker = alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("marker", None)
        .unwrap()
        .id();
    sent(&mut alice_events, marker).await;
    assert_eq!(
        text(&mut bob_events).await.1,
        "marker",
        "oops never arrives"
    );
}

#[tokio::test]
async fn clients_on_in_memory_stores_talk_like_any_other() {
    let server = Server::start().await;
    let memory = || {
        QpqClient::builder()
            .server(server.addr)
            .pin(server.fingerprint)
            .in_memory()
            .invitations(qpq_sdk::InvitationPolicy::FromAnyone)
            .build()
            .unwrap()
    };
    let (alice, bob) = (memory(), memory());
    for (client, user) in [(&alice, "alice"), (&bob, "bob")] {
        client.register(user, "pw").await.unwrap();
        client.login(user, "d1", "pw").await.unwrap();
    }
    let mut bob_events = bob.subscribe();
    let mut alice_events = alice.subscribe();
    let dm = alice.create_dm("bob").await.unwrap();
    next(&mut bob_events, |e| {
        matches!(e, ClientEvent::ConversationCreated(_)).then_some(())
    })
    .await;
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("from memory", None)
        .unwrap()
        .id();
    assert_eq!(text(&mut bob_events).await.1, "from memory");
    let reply = bob
        .conversation(&dm.id)
        .unwrap()
        .send_text("to memory", None)
        .unwrap()
        .id();
    sent(&mut bob_events, reply).await;
    assert_eq!(text(&mut alice_events).await.1, "to memory");
    assert_eq!(bob.message(&reply).unwrap().unwrap().state, SendState::Sent);
    assert_eq!(bob.search("memory").unwrap().len(), 2);
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_the_event_buffer_is_told_and_the_store_has_everything() {
    let server = Server::start().await;
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let _bob = account(&server, b_dir.path(), "bob", "phone").await;
    let mut limits = qpq_sdk::ClientLimits::default();
    limits.event_buffer = 2;
    let alice = server.client_with(a_dir.path(), limits);
    alice.register("alice", "pw").await.unwrap();
    alice.login("alice", "laptop", "pw").await.unwrap();
    let dm = alice.create_dm("bob").await.unwrap();
    let mut slow = alice.subscribe();
    for i in 0..3 {
        alice
            .conversation(&dm.id)
            .unwrap()
            .send_text(&format!("m{i}"), None)
            .unwrap()
            .id();
    }
    // Three local echoes are six events: the oldest ones are gone for this subscriber.
    match slow.recv().await {
        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => assert!(n >= 4, "{n}"),
        other => panic!("expected a lag, got {other:?}"),
    }
    assert_eq!(
        alice
            .conversation(&dm.id)
            .unwrap()
            .messages(10)
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn logout_on_a_connection_without_the_session_still_ends_it_on_the_server() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bob = account(&server, dir.path(), "bob", "phone").await;
    let mut events = bob.subscribe();
    // A copy of the store (a restored backup; one directory is open in one client at a
    // time) makes a new connection, which carries no session until it is resumed (as after a
    // reconnect): logging out from it must still end the session on the server, and forget
    // the token.
    let copy = tempfile::tempdir().unwrap();
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), copy.path().join(file.file_name())).unwrap();
    }
    let again = server.client(copy.path());
    again.logout().await.unwrap();
    // The server ended every connection of that session: Bob's first client loses its own.
    next(&mut events, |e| match e {
        ClientEvent::ConnectionStateChanged(
            qpq_sdk::ConnectionState::Offline { .. }
            | qpq_sdk::ConnectionState::SessionEnded { .. },
        ) => Some(()),
        _ => None,
    })
    .await;
    bob.close().await;
    again.close().await;
    let third = server.client(copy.path());
    assert!(matches!(
        third.connect().await.unwrap_err(),
        qpq_sdk::SdkError::NotLoggedIn
    ));
}

#[tokio::test]
async fn the_connection_state_is_known_without_having_watched_its_events() {
    let mut server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = account(&server, dir.path(), "alice", "laptop").await;
    alice.close().await;
    let alice = server.client(dir.path());
    assert!(
        matches!(alice.connection_state(), ConnectionState::Offline { .. }),
        "{:?}",
        alice.connection_state()
    );
    let mut events = alice.subscribe();
    alice.connect().await.unwrap();
    next(&mut events, |e| {
        matches!(
            e,
            ClientEvent::ConnectionStateChanged(ConnectionState::Connected)
        )
        .then_some(())
    })
    .await;
    // A view that subscribes only now (the TUI starts after connecting) asks for the state.
    assert_eq!(alice.connection_state(), ConnectionState::Connected);
    server.stop().await;
    let reason = next(&mut events, |e| match e {
        ClientEvent::ConnectionStateChanged(ConnectionState::Offline { reason }) => Some(reason),
        _ => None,
    })
    .await;
    assert_eq!(
        alice.connection_state(),
        ConnectionState::Offline { reason }
    );
}

#[tokio::test]
async fn a_data_directory_serves_one_client_until_it_is_closed() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = account(&server, dir.path(), "alice", "laptop").await;
    // A second client on the same directory would receive and acknowledge part of the
    // messages: refused while the first is open, with a message that says why.
    let second = QpqClient::builder()
        .server(server.addr)
        .pin(server.fingerprint)
        .data_dir(dir.path())
        .passphrase("store passphrase")
        .build()
        .unwrap_err();
    assert!(
        matches!(&second, qpq_sdk::SdkError::DataDirInUse(p) if p == dir.path()),
        "{second:?}"
    );
    assert!(second.to_string().contains("in use by another qpq client"));
    // Closed, the directory is free at once, and the account is all there.
    alice.close().await;
    let again = server.client(dir.path());
    again.connect().await.unwrap();
    assert_eq!(again.whoami().as_deref(), Some("alice/laptop"));
}
