//! Conversation handles and send handles: operations hang on the conversation, a sent
//! message is followed through its states, cancelled or edited through its handle.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::time::Duration;

use common::*;
use futures::StreamExt as _;
use qpq_sdk::{ClientEvent, ConversationId, SdkError, SendState};

#[tokio::test]
async fn a_sent_message_is_followed_from_queued_to_sent_and_shown_to_the_other_side() {
    let server = Server::start().await;
    let mut p = pair(&server).await;
    let dm = p.alice.conversation(&p.dm.id).unwrap();
    assert_eq!(dm.info().unwrap().members, p.dm.members);
    let sent = dm.send_text("hello", None).unwrap();
    let id = sent.id();
    assert_eq!(sent.conversation(), p.dm.id);
    let states: Vec<SendState> =
        tokio::time::timeout(Duration::from_secs(20), sent.states().collect())
            .await
            .expect("the states end once the message is sent");
    assert_eq!(states.first(), Some(&SendState::Queued), "{states:?}");
    assert_eq!(states.last(), Some(&SendState::Sent), "{states:?}");
    let (_, text) = text(&mut p.bob_events).await;
    assert_eq!(text, "hello");
    let on_bob = p.bob.conversation(&p.dm.id).unwrap();
    assert_eq!(on_bob.message(&id).unwrap().body, "hello");
}

#[tokio::test]
async fn a_queued_message_is_cancelled_through_its_handle_and_its_states_end() {
    let mut server = Server::start().await;
    let p = pair(&server).await;
    server.stop().await;
    let sent = p
        .alice
        .conversation(&p.dm.id)
        .unwrap()
        .send_text("never mind", None)
        .unwrap();
    assert_eq!(sent.state().unwrap(), SendState::Queued);
    sent.edit("never mind at all").unwrap();
    assert_eq!(
        p.alice.message(&sent.id()).unwrap().unwrap().body,
        "never mind at all"
    );
    sent.cancel().unwrap();
    assert!(matches!(sent.state(), Err(SdkError::NotFound(_))));
    let states: Vec<SendState> =
        tokio::time::timeout(Duration::from_secs(20), sent.states().collect())
            .await
            .expect("a cancelled message's states end");
    assert!(!states.contains(&SendState::Sent), "{states:?}");
}

#[tokio::test]
async fn a_handle_acts_on_its_own_conversation_only() {
    let server = Server::start().await;
    let p = pair(&server).await;
    assert!(matches!(
        p.alice.conversation(&ConversationId([9; 16])),
        Err(SdkError::NotFound(_))
    ));
    let mut alice_events = p.alice.subscribe();
    let group = p.alice.create_group("team", &["bob"]).await.unwrap();
    let in_group = p.alice.conversation(&group.id).unwrap();
    let dm = p.alice.conversation(&p.dm.id).unwrap();
    let sent = dm.send_text("in the dm", None).unwrap();
    next(&mut alice_events, |e| match e {
        ClientEvent::SendStateChanged {
            id,
            state: SendState::Sent,
            ..
        } if id == sent.id() => Some(()),
        _ => None,
    })
    .await;
    // The message is the DM's: the group's handle neither edits, reacts to nor deletes it.
    for refused in [
        in_group.edit(&sent.id(), "changed"),
        in_group.react(&sent.id(), "👍", false),
        in_group.delete(&sent.id()),
    ] {
        assert!(matches!(refused, Err(SdkError::NotFound(_))), "{refused:?}");
    }
    // Nor does it name it in a read receipt to the group's members.
    assert!(matches!(
        in_group.mark_read(&[sent.id()]),
        Err(SdkError::NotFound(_))
    ));
    assert_eq!(dm.message(&sent.id()).unwrap().body, "in the dm");
    dm.edit(&sent.id(), "edited in the dm").unwrap();
    assert_eq!(dm.message(&sent.id()).unwrap().body, "edited in the dm");
}

#[tokio::test]
async fn unread_counts_the_incoming_messages_not_read_and_mark_all_read_clears_them() {
    let server = Server::start().await;
    let mut p = pair(&server).await;
    let mut alice_events = p.alice.subscribe();
    let on_alice = p.alice.conversation(&p.dm.id).unwrap();
    on_alice.send_text("mine, never unread", None).unwrap();
    let on_bob = p.bob.conversation(&p.dm.id).unwrap();
    on_bob.send_text("one", None).unwrap();
    on_bob.send_text("two", None).unwrap();
    // Alice's own message reaches Bob; Bob's two reach Alice.
    assert_eq!(text(&mut p.bob_events).await.1, "mine, never unread");
    assert_eq!(text(&mut alice_events).await.1, "one");
    assert_eq!(text(&mut alice_events).await.1, "two");

    let unread: Vec<String> = on_alice
        .unread()
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(unread, ["one", "two"]);
    assert_eq!(on_bob.unread().unwrap().len(), 1);

    assert_eq!(on_alice.mark_all_read().unwrap(), 2);
    assert!(on_alice.unread().unwrap().is_empty());
    assert_eq!(on_alice.mark_all_read().unwrap(), 0);
    // Bob's count is his own.
    assert_eq!(on_bob.unread().unwrap().len(), 1);
}
