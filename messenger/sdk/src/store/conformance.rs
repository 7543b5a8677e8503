//! The conformance suite every [`Store`] implementation passes: the same calls, the same
//! answers. Each check is a function over a fresh store; [`store_conformance!`] makes one test
//! of each for a backend, given how to make a fresh store of it, and the SQLCipher and memory
//! stores run it below.
#![allow(clippy::unwrap_used)]

use zeroize::Zeroizing;

use super::{Delivery, Effect, MemoryStore, SqlStore, Store, StoreKey, StoredAccount, transact};
use crate::error::SdkError;
use crate::model::{
    AttachmentInfo, Conversation, ConversationId, ConversationKind, Message, MessageId, SendState,
};

fn account() -> StoredAccount {
    StoredAccount {
        user: "alice".into(),
        device: "laptop".into(),
        identity_secret: Zeroizing::new([1; 32]),
        hybrid_seed: Zeroizing::new([2; 32]),
        delivery_token: Zeroizing::new([3; 32]),
        session_token: None,
    }
}

fn conversation(n: u8, members: &[&str]) -> Conversation {
    Conversation {
        id: ConversationId([n; 16]),
        kind: ConversationKind::Group,
        name: format!("group {n}"),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
    }
}

fn message(n: u8, c: &Conversation, sender: &str, body: &str, at: u64) -> Message {
    Message {
        body: body.into(),
        ..Message::new(
            MessageId([n; 16]),
            c.id,
            sender.into(),
            at,
            false,
            SendState::Received,
        )
    }
}

fn outgoing(n: u8, c: &Conversation, body: &str, at: u64) -> Message {
    Message {
        body: body.into(),
        ..Message::new(
            MessageId([n; 16]),
            c.id,
            "alice/laptop".into(),
            at,
            true,
            SendState::Queued,
        )
    }
}

fn delivery(item: &MessageId, user: &str, device: &str) -> Delivery {
    Delivery {
        item: *item,
        user: user.into(),
        device: device.into(),
        message_id: [9; 16],
        transport: vec![1, 2, 3],
    }
}

fn with_conversation(store: &dyn Store, c: &Conversation) {
    assert!(store.apply(&Effect::Conversation(c.clone(), None)).unwrap());
}

fn bodies(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.body.as_str()).collect()
}

pub(crate) fn the_account_its_counters_and_the_cursor(store: &dyn Store) {
    assert!(store.account().unwrap().is_none());
    assert_eq!(store.cursor().unwrap(), 0);
    store.create_account(&account()).unwrap();
    assert!(
        store.create_account(&account()).is_err(),
        "one account per store"
    );
    let a = store.account().unwrap().unwrap();
    assert_eq!((a.user.as_str(), a.device.as_str()), ("alice", "laptop"));
    assert_eq!(*a.identity_secret, [1; 32]);
    assert!(a.session_token.is_none());
    store.set_session_token(Some(b"token")).unwrap();
    assert_eq!(
        store
            .account()
            .unwrap()
            .unwrap()
            .session_token
            .unwrap()
            .as_slice(),
        b"token"
    );
    store.set_session_token(None).unwrap();
    assert!(store.account().unwrap().unwrap().session_token.is_none());

    assert!(!store.keys_published().unwrap());
    store.set_keys_published().unwrap();
    assert!(store.keys_published().unwrap());
    store.set_key_packages(2).unwrap();
    store.key_package_used().unwrap();
    store.key_package_used().unwrap();
    store.key_package_used().unwrap();
    assert_eq!(store.key_packages().unwrap(), 0, "never below zero");

    // The cursor only moves forward.
    store.commit_incoming(5, &Effect::None).unwrap();
    store.commit_incoming(3, &Effect::None).unwrap();
    assert_eq!(store.cursor().unwrap(), 5);
}

pub(crate) fn conversations_members_channels_and_renames(store: &dyn Store) {
    let c = conversation(1, &["alice", "bob"]);
    with_conversation(store, &c);
    assert_eq!(store.conversation(&c.id).unwrap(), Some(c.clone()));
    // Joining again (an invitation back into a conversation this device left) takes the
    // conversation as the invitation shows it: none of the old members stays behind.
    let mut again = conversation(1, &["bob", "carol"]);
    again.name = "renamed".into();
    store
        .apply(&Effect::Conversation(again, Some(vec![5; 16])))
        .unwrap();
    let got = store.conversation(&c.id).unwrap().unwrap();
    assert_eq!(got.members, vec!["bob", "carol"]);
    assert_eq!(got.name, "renamed");
    assert_eq!(store.channel(&c.id).unwrap(), Some(vec![5; 16]));
    assert_eq!(store.conversation_of_channel(&[5; 16]).unwrap(), Some(c.id));
    assert_eq!(store.conversation_of_channel(&[6; 16]).unwrap(), None);

    // A member change replaces the list.
    store
        .apply(&Effect::Members {
            conversation: c.id,
            members: vec!["bob".into(), "alice".into()],
        })
        .unwrap();
    assert_eq!(
        store.conversation(&c.id).unwrap().unwrap().members,
        vec!["alice", "bob"]
    );
    assert!(
        store
            .apply(&Effect::Rename {
                conversation: c.id,
                name: "team".into()
            })
            .unwrap()
    );
    assert!(
        !store
            .apply(&Effect::Rename {
                conversation: ConversationId([99; 16]),
                name: "nobody".into()
            })
            .unwrap()
    );
    let d = conversation(2, &["alice"]);
    with_conversation(store, &d);
    let mut all: Vec<ConversationId> = store
        .conversations()
        .unwrap()
        .iter()
        .map(|c| c.id)
        .collect();
    all.sort_by_key(|id| id.0);
    assert_eq!(all, vec![c.id, d.id]);
    assert_eq!(store.conversation(&ConversationId([99; 16])).unwrap(), None);
}

pub(crate) fn messages_are_stored_once_in_order_and_paged(store: &dyn Store) {
    let c = conversation(1, &["alice", "bob"]);
    with_conversation(store, &c);
    for (n, at) in [(1, 100), (2, 300), (3, 200), (4, 300)] {
        let m = message(n, &c, "bob/phone", &format!("m{n}"), at);
        assert!(store.apply(&Effect::Message(Box::new(m.clone()))).unwrap());
        assert!(
            !store.apply(&Effect::Message(Box::new(m))).unwrap(),
            "a repeat is ignored"
        );
    }
    // Oldest first, by arrival time, then by insertion.
    assert_eq!(
        bodies(&store.messages(&c.id, None, 10).unwrap()),
        vec!["m1", "m3", "m2", "m4"]
    );
    assert_eq!(
        bodies(&store.messages(&c.id, None, 2).unwrap()),
        vec!["m2", "m4"]
    );
    let before = MessageId([2; 16]);
    assert_eq!(
        bodies(&store.messages(&c.id, Some(&before), 10).unwrap()),
        vec!["m1", "m3"]
    );
    assert_eq!(
        bodies(&store.messages(&c.id, Some(&before), 1).unwrap()),
        vec!["m3"]
    );
    assert!(
        store
            .messages(&c.id, Some(&MessageId([77; 16])), 10)
            .unwrap()
            .is_empty()
    );
    let one = store.message(&MessageId([3; 16])).unwrap().unwrap();
    assert_eq!((one.body.as_str(), one.sent_at_ms), ("m3", 200));
    assert!(store.message(&MessageId([77; 16])).unwrap().is_none());
    // A message needs its conversation.
    let stray = message(9, &conversation(8, &[]), "bob/phone", "stray", 1);
    assert!(store.apply(&Effect::Message(Box::new(stray))).is_err());
}

pub(crate) fn edits_deletes_reactions_and_receipts_follow_the_rules(store: &dyn Store) {
    let c = conversation(1, &["alice", "bob"]);
    with_conversation(store, &c);
    let other = conversation(2, &["alice"]);
    with_conversation(store, &other);
    let mut m = message(1, &c, "bob/phone", "hello", 10);
    m.attachment = Some(AttachmentInfo::from_wire(qpq_proto::v1::Attachment {
        name: "a.txt".into(),
        size: 3,
        ..Default::default()
    }));
    store.apply(&Effect::Message(Box::new(m))).unwrap();
    let id = MessageId([1; 16]);
    assert!(store.attachment(&id).unwrap().is_some());
    let edit = |by: &str, conversation: ConversationId, body: &str| Effect::Edit {
        conversation,
        target: id,
        author: by.into(),
        body: body.into(),
    };
    assert!(!store.apply(&edit("alice", c.id, "forged")).unwrap());
    assert!(!store.apply(&edit("bob", other.id, "elsewhere")).unwrap());
    assert!(store.apply(&edit("bob", c.id, "hello!")).unwrap());
    let got = store.message(&id).unwrap().unwrap();
    assert_eq!((got.body.as_str(), got.edited), ("hello!", true));

    let react = |user: &str, emoji: &str, remove: bool| Effect::Reaction {
        conversation: c.id,
        target: id,
        user: user.into(),
        emoji: emoji.into(),
        remove,
    };
    assert!(store.apply(&react("carol", "👍", false)).unwrap());
    assert!(!store.apply(&react("carol", "👍", false)).unwrap(), "once");
    assert!(store.apply(&react("alice", "🎉", false)).unwrap());
    assert!(store.apply(&react("alice", "👍", false)).unwrap());
    assert!(store.apply(&react("alice", "🎉", true)).unwrap());
    assert!(!store.apply(&react("alice", "🎉", true)).unwrap());
    assert_eq!(
        store.message(&id).unwrap().unwrap().reactions,
        vec![
            ("alice".to_string(), "👍".to_string()),
            ("carol".to_string(), "👍".to_string())
        ]
    );
    let receipt = |user: &str, conversation: ConversationId| Effect::Receipt {
        conversation,
        targets: vec![id, MessageId([42; 16])],
        user: user.into(),
        at_ms: 5,
    };
    assert!(store.apply(&receipt("carol", c.id)).unwrap());
    assert!(!store.apply(&receipt("carol", c.id)).unwrap());
    assert!(!store.apply(&receipt("dave", other.id)).unwrap());
    assert!(store.apply(&receipt("alice", c.id)).unwrap());
    assert_eq!(
        store.message(&id).unwrap().unwrap().read_by,
        vec!["alice", "carol"]
    );

    let delete = |by: &str| Effect::Delete {
        conversation: c.id,
        target: id,
        author: by.into(),
    };
    assert!(!store.apply(&delete("alice")).unwrap());
    assert!(store.apply(&delete("bob")).unwrap());
    assert!(!store.apply(&delete("bob")).unwrap());
    let gone = store.message(&id).unwrap().unwrap();
    assert!(gone.deleted && gone.body.is_empty() && gone.attachment.is_none());
    assert!(store.attachment(&id).unwrap().is_none());
    assert!(
        !store.apply(&edit("bob", c.id, "back")).unwrap(),
        "deleted stays deleted"
    );
}

pub(crate) fn search_matches_whole_words_of_live_messages(store: &dyn Store) {
    let c = conversation(1, &["alice", "bob"]);
    with_conversation(store, &c);
    for (n, body) in [
        (1, "Lunch at noon?"),
        (2, "lunch is late today"),
        (3, "the launch is at noon"),
    ] {
        store
            .apply(&Effect::Message(Box::new(message(
                n,
                &c,
                "bob/phone",
                body,
                1,
            ))))
            .unwrap();
    }
    let found = |q: &str| {
        let mut b: Vec<String> = store
            .search(q, 10)
            .unwrap()
            .into_iter()
            .map(|m| m.body)
            .collect();
        b.sort();
        b
    };
    assert_eq!(
        found("LUNCH"),
        vec!["Lunch at noon?", "lunch is late today"]
    );
    assert_eq!(found("lunch noon"), vec!["Lunch at noon?"]);
    assert!(found("lun").is_empty(), "whole words only");
    assert!(found("   ").is_empty());
    assert_eq!(
        found("\"noon\" OR"),
        Vec::<String>::new(),
        "no query syntax"
    );
    assert_eq!(store.search("noon", 1).unwrap().len(), 1);
    store
        .apply(&Effect::Delete {
            conversation: c.id,
            target: MessageId([1; 16]),
            author: "bob".into(),
        })
        .unwrap();
    assert_eq!(found("lunch"), vec!["lunch is late today"]);
}

pub(crate) fn the_outbox_claims_cancels_and_counts(store: &dyn Store) {
    let c = conversation(1, &["alice", "bob"]);
    with_conversation(store, &c);
    let (a, b) = (outgoing(1, &c, "first", 1), outgoing(2, &c, "second", 2));
    let reaction = MessageId([3; 16]);
    transact(store, None, |tx| {
        tx.queue_outgoing(
            Some(&a),
            &[
                delivery(&a.id, "bob", "phone"),
                delivery(&a.id, "bob", "tablet"),
            ],
        )?;
        tx.queue_outgoing(Some(&b), &[delivery(&b.id, "bob", "phone")])?;
        tx.queue_outgoing(None, &[delivery(&reaction, "bob", "phone")])?;
        // A repeat changes nothing.
        tx.queue_outgoing(None, &[delivery(&a.id, "bob", "phone")])
    })
    .unwrap();
    assert_eq!(store.outbox_len().unwrap(), 3);
    let pending = store.pending_deliveries(10, 0).unwrap();
    assert_eq!(
        pending
            .iter()
            .map(|d| (d.item.0[0], d.device.as_str()))
            .collect::<Vec<_>>(),
        vec![(1, "phone"), (1, "tablet"), (2, "phone"), (3, "phone")]
    );
    assert_eq!(pending[0], delivery(&a.id, "bob", "phone"));
    assert_eq!(store.pending_deliveries(1, 0).unwrap().len(), 1);

    // Claimed: Sending, no longer cancellable.
    assert_eq!(store.claim(&a.id).unwrap(), (true, Some(c.id)));
    assert_eq!(store.claim(&a.id).unwrap(), (true, None));
    assert_eq!(
        store.message(&a.id).unwrap().unwrap().state,
        SendState::Sending
    );
    assert!(matches!(
        store.cancel(&a.id).unwrap_err(),
        SdkError::InvalidArgument(_)
    ));
    assert!(!store.delivery_done(&a.id, "bob", "phone", true).unwrap());
    // A failed delivery waits out its delay; the ones behind it come first meanwhile.
    let at = |attempts: u32| u64::from(attempts) * 500;
    assert_eq!(
        store.delivery_failed(&a.id, "bob", "tablet", &at).unwrap(),
        1
    );
    assert_eq!(
        store.delivery_failed(&a.id, "bob", "tablet", &at).unwrap(),
        2
    );
    let due = |now| {
        store
            .pending_deliveries(10, now)
            .unwrap()
            .iter()
            .map(|d| (d.item.0[0], d.device.clone()))
            .collect::<Vec<_>>()
    };
    assert!(!due(999).contains(&(1, "tablet".into())));
    assert_eq!(due(999)[0], (2, "phone".into()));
    assert_eq!(due(1000)[0], (1, "tablet".into()));
    assert!(store.delivery_done(&a.id, "bob", "tablet", true).unwrap());

    // Still queued: cancelled, with its deliveries.
    assert_eq!(store.cancel(&b.id).unwrap(), c.id);
    assert!(store.message(&b.id).unwrap().is_none());
    assert!(matches!(
        store.cancel(&b.id).unwrap_err(),
        SdkError::NotFound(_)
    ));
    assert_eq!(store.claim(&b.id).unwrap(), (false, None));
    assert_eq!(store.outbox_len().unwrap(), 1);
    // An item that is not a message is claimed without a state.
    assert_eq!(store.claim(&reaction).unwrap(), (true, None));
    assert!(
        store
            .delivery_done(&reaction, "bob", "phone", true)
            .unwrap()
    );
    assert_eq!(store.outbox_len().unwrap(), 0);
    // A queued message that a call of unknown outcome carried may be in a queue: it
    // can no longer be cancelled.
    let d = outgoing(5, &c, "maybe stored", 4);
    transact(store, None, |tx| {
        tx.queue_outgoing(Some(&d), &[delivery(&d.id, "bob", "phone")])
    })
    .unwrap();
    store.mark_accepted(&d.id).unwrap();
    assert!(matches!(
        store.cancel(&d.id).unwrap_err(),
        SdkError::InvalidArgument(_)
    ));
    assert!(store.delivery_done(&d.id, "bob", "phone", true).unwrap());
    // Incoming messages cannot be cancelled.
    store
        .apply(&Effect::Message(Box::new(message(
            4,
            &c,
            "bob/phone",
            "hi",
            3,
        ))))
        .unwrap();
    assert!(matches!(
        store.cancel(&MessageId([4; 16])).unwrap_err(),
        SdkError::NotFound(_)
    ));
}

pub(crate) fn send_states_move_forward_only_and_failure_is_final(store: &dyn Store) {
    let c = conversation(1, &["alice", "bob"]);
    with_conversation(store, &c);
    let m = outgoing(1, &c, "hi", 1);
    transact(store, None, |tx| {
        tx.queue_outgoing(Some(&m), &[delivery(&m.id, "bob", "phone")])
    })
    .unwrap();
    let set = |s: SendState| store.set_state(&m.id, &s).unwrap();
    let retrying = SendState::Failed {
        recoverable: true,
        reason: "full".into(),
    };
    assert_eq!(set(SendState::Sending), Some(c.id));
    assert_eq!(set(SendState::Sending), None, "no change, no report");
    assert_eq!(set(retrying.clone()), Some(c.id));
    assert_eq!(store.message(&m.id).unwrap().unwrap().state, retrying);
    // A recoverable failure can still be cancelled... unless a device took it.
    assert_eq!(set(SendState::Sent), Some(c.id));
    assert_eq!(set(SendState::Sending), None, "sent does not go back");
    assert_eq!(set(retrying), None);
    let failed = SendState::Failed {
        recoverable: false,
        reason: "gone".into(),
    };
    assert_eq!(set(failed.clone()), Some(c.id));
    assert_eq!(set(SendState::Sent), None, "a failure is final");
    assert_eq!(store.message(&m.id).unwrap().unwrap().state, failed);
    // Incoming messages have no send state to change.
    store
        .apply(&Effect::Message(Box::new(message(
            2,
            &c,
            "bob/phone",
            "yo",
            2,
        ))))
        .unwrap();
    assert_eq!(
        store
            .set_state(&MessageId([2; 16]), &SendState::Sent)
            .unwrap(),
        None
    );

    // Once any device's queue took a message, it cannot be cancelled.
    let n = outgoing(3, &c, "partly", 3);
    transact(store, None, |tx| {
        tx.queue_outgoing(
            Some(&n),
            &[
                delivery(&n.id, "bob", "phone"),
                delivery(&n.id, "bob", "tablet"),
            ],
        )
    })
    .unwrap();
    store.delivery_done(&n.id, "bob", "phone", true).unwrap();
    assert!(matches!(
        store.cancel(&n.id).unwrap_err(),
        SdkError::InvalidArgument(_)
    ));
}

pub(crate) fn a_failed_transaction_leaves_nothing_behind(store: &dyn Store) {
    store.create_account(&account()).unwrap();
    let c = conversation(1, &["alice", "bob"]);
    let m = message(1, &c, "bob/phone", "hello", 1);
    let result: Result<(), SdkError> = transact(store, None, |tx| {
        tx.commit_incoming(7, &Effect::Conversation(c.clone(), None))?;
        tx.commit_incoming(8, &Effect::Message(Box::new(m.clone())))?;
        assert!(tx.conversation(&c.id)?.is_some(), "seen inside");
        Err(SdkError::InvalidArgument("changed my mind".into()))
    });
    assert!(matches!(result, Err(SdkError::InvalidArgument(_))));
    assert_eq!(store.cursor().unwrap(), 0);
    assert!(store.conversation(&c.id).unwrap().is_none());
    assert!(store.message(&m.id).unwrap().is_none());
    transact(store, None, |tx| {
        tx.commit_incoming(7, &Effect::Conversation(c.clone(), None))?;
        tx.commit_incoming(8, &Effect::Message(Box::new(m.clone())))
    })
    .unwrap();
    assert_eq!(store.cursor().unwrap(), 8);
    assert!(store.message(&m.id).unwrap().is_some());
}

pub(crate) fn parked_messages_wait_in_epoch_order(store: &dyn Store) {
    let c = conversation(1, &["alice"]);
    let d = conversation(2, &["alice"]);
    let park = |seq: u64, conversation: ConversationId, epoch: u64| Effect::Park {
        seq,
        conversation,
        epoch,
        sender: vec![7; 32],
        mls: vec![u8::try_from(seq).unwrap()],
    };
    store.create_account(&account()).unwrap();
    for (seq, conv, epoch) in [(10, c.id, 3), (11, c.id, 2), (12, d.id, 1), (13, c.id, 2)] {
        assert!(!store.commit_incoming(seq, &park(seq, conv, epoch)).unwrap());
    }
    assert_eq!(
        store.cursor().unwrap(),
        13,
        "a parked entry is consumed from the queue"
    );
    let order: Vec<u64> = store.parked(&c.id).unwrap().iter().map(|p| p.seq).collect();
    assert_eq!(order, vec![11, 13, 10]);
    assert_eq!(store.parked(&c.id).unwrap()[0].mls, vec![11]);
    assert_eq!(
        transact(store, None, |tx| tx.parked_count(&c.id)).unwrap(),
        3
    );
    assert_eq!(
        transact(store, None, |tx| tx.parked_from(&[7; 32])).unwrap(),
        4,
        "the parking budget counts per sender, across conversations"
    );
    assert_eq!(
        transact(store, None, |tx| tx.parked_from(&[8; 32])).unwrap(),
        0
    );
    assert_eq!(store.parked(&c.id).unwrap()[0].sender, vec![7; 32]);
    store.unpark(11).unwrap();
    transact(store, None, |tx| tx.unpark(13)).unwrap();
    let left: Vec<u64> = store.parked(&c.id).unwrap().iter().map(|p| p.seq).collect();
    assert_eq!(left, vec![10]);
    assert_eq!(store.parked(&d.id).unwrap().len(), 1);
}

pub(crate) fn identity_changes_and_new_devices_change_safety_numbers(store: &dyn Store) {
    assert!(
        !store.note_identity("bob", "phone", b"k1").unwrap(),
        "first sight"
    );
    assert!(!store.note_identity("bob", "phone", b"k1").unwrap());
    assert!(
        store.note_identity("bob", "tablet", b"k2").unwrap(),
        "new device"
    );
    assert!(
        store.note_identity("bob", "phone", b"k3").unwrap(),
        "new key"
    );
    assert!(!store.note_identity("bob", "phone", b"k3").unwrap());
    assert!(!store.note_identity("carol", "pc", b"k4").unwrap());
}

pub(crate) fn the_transparency_log_key_is_pinned_on_first_use(store: &dyn Store) {
    assert!(store.kt().unwrap().is_none());
    store.set_kt(b"log key", b"head 1").unwrap();
    store.set_kt(b"other key", b"head 2").unwrap();
    assert_eq!(
        store.kt().unwrap(),
        Some((b"log key".to_vec(), b"head 2".to_vec()))
    );
    // Other servers' logs are pinned one per domain, apart from the home log.
    assert!(store.peer_kt("b.example").unwrap().is_none());
    store
        .set_peer_kt("b.example", b"b key", b"b head 1")
        .unwrap();
    store
        .set_peer_kt("b.example", b"forged key", b"b head 2")
        .unwrap();
    store.set_peer_kt("c.example", b"c key", b"c head").unwrap();
    assert_eq!(
        store.peer_kt("b.example").unwrap(),
        Some((b"b key".to_vec(), b"b head 2".to_vec()))
    );
    assert_eq!(
        store.peer_kt("c.example").unwrap(),
        Some((b"c key".to_vec(), b"c head".to_vec()))
    );
    assert_eq!(
        store.kt().unwrap(),
        Some((b"log key".to_vec(), b"head 2".to_vec()))
    );
}

pub(crate) fn relayed_deliveries_are_found_by_wire_id_and_forgotten_after_30_days(
    store: &dyn Store,
) {
    let (a, b) = (MessageId([1; 16]), MessageId([2; 16]));
    let day = 24 * 3600 * 1000u64;
    store.note_relayed(&[10; 16], &a, day).unwrap();
    store.note_relayed(&[11; 16], &b, 20 * day).unwrap();
    assert_eq!(store.relayed_item(&[10; 16]).unwrap(), Some(a));
    assert_eq!(store.relayed_item(&[11; 16]).unwrap(), Some(b));
    assert_eq!(store.relayed_item(&[12; 16]).unwrap(), None);
    // 31 days after the first: it is forgotten, the second is kept.
    store.note_relayed(&[12; 16], &a, 32 * day).unwrap();
    assert_eq!(store.relayed_item(&[10; 16]).unwrap(), None);
    assert_eq!(store.relayed_item(&[11; 16]).unwrap(), Some(b));
    // The failure cursor only moves forward.
    assert_eq!(store.relay_failures_seen().unwrap(), 0);
    store.set_relay_failures_seen(5).unwrap();
    store.set_relay_failures_seen(3).unwrap();
    assert_eq!(store.relay_failures_seen().unwrap(), 5);
}

/// Makes the whole conformance suite a module of tests for one [`Store`] backend:
/// `store_conformance!(name, || fresh_store())`, where the closure returns a new, empty store
/// (anything that derefs to one, kept alive for the test) each time it is called. A new check
/// is added here once and every backend runs it.
macro_rules! store_conformance {
    ($name:ident, $fresh:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            store_conformance!(@tests $fresh; the_account_its_counters_and_the_cursor, conversations_members_channels_and_renames, messages_are_stored_once_in_order_and_paged, edits_deletes_reactions_and_receipts_follow_the_rules, search_matches_whole_words_of_live_messages, the_outbox_claims_cancels_and_counts, send_states_move_forward_only_and_failure_is_final, a_failed_transaction_leaves_nothing_behind, parked_messages_wait_in_epoch_order, identity_changes_and_new_devices_change_safety_numbers, the_transparency_log_key_is_pinned_on_first_use, relayed_deliveries_are_found_by_wire_id_and_forgotten_after_30_days);
        }
    };
    (@tests $fresh:expr; $($check:ident),* $(,)?) => {
        $(
            #[test]
            fn $check() {
                let (_keep, store) = ($fresh)();
                super::$check(&*store);
            }
        )*
    };
}

store_conformance!(sqlcipher, || {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlStore::open(dir.path(), &StoreKey::Raw(Zeroizing::new([7; 32]))).unwrap();
    (dir, Box::new(store) as Box<dyn Store>)
});

store_conformance!(memory, || {
    ((), Box::new(MemoryStore::new().unwrap()) as Box<dyn Store>)
});
