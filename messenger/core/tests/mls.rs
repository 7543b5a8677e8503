//! MLS flows under both ciphersuites, and persistence across reopening the store.
#![allow(clippy::unwrap_used, missing_docs)]

use qpq_core::identity::IdentityKey;
use qpq_core::mls::{Incoming, MlsError, MlsMember, Suite};
use rusqlite::Connection;

fn member(name: &str, suite: Suite) -> MlsMember {
    MlsMember::create(
        Connection::open_in_memory().unwrap(),
        name.as_bytes(),
        &IdentityKey::generate(),
        suite,
    )
    .unwrap()
}

fn expect_app(incoming: Incoming) -> (Vec<u8>, Vec<u8>) {
    match incoming {
        Incoming::Application { sender, plaintext } => (sender.name, plaintext.to_vec()),
        other => panic!("expected an application message, got {other:?}"),
    }
}

fn three_member_flow(suite: Suite) {
    let alice = member("alice", suite);
    let bob = member("bob", suite);
    let carol = member("carol", suite);

    // Create, add bob and carol with one commit.
    let mut a = alice.create_group(b"group-1").unwrap();
    let kp_b = bob.key_package().unwrap();
    let kp_c = carol.key_package().unwrap();
    let (_commit, welcome) = a.add_members(&alice, &[&kp_b, &kp_c]).unwrap();
    let mut b = bob.join(&welcome).unwrap().0;
    let mut c = carol.join(&welcome).unwrap().0;
    assert_eq!(
        a.members(),
        vec![b"alice".to_vec(), b"bob".to_vec(), b"carol".to_vec()]
    );
    assert_eq!(a.epoch_authenticator(), b.epoch_authenticator());
    assert_eq!(b.epoch_authenticator(), c.epoch_authenticator());

    // Message.
    let ct = a.encrypt(&alice, b"hello group").unwrap();
    assert!(!ct.windows(11).any(|w| w == b"hello group"));
    assert_eq!(
        expect_app(b.process(&bob, &ct).unwrap()),
        (b"alice".to_vec(), b"hello group".to_vec())
    );
    assert_eq!(
        expect_app(c.process(&carol, &ct).unwrap()).1,
        b"hello group"
    );

    // Bob updates his keys; everyone follows.
    let epoch = a.epoch();
    let update = b.self_update(&bob).unwrap();
    assert!(matches!(
        a.process(&alice, &update).unwrap(),
        Incoming::Commit {
            removed_self: false,
            ..
        }
    ));
    assert!(matches!(
        c.process(&carol, &update).unwrap(),
        Incoming::Commit {
            removed_self: false,
            ..
        }
    ));
    assert_eq!(a.epoch(), epoch + 1);
    assert_eq!(a.epoch_authenticator(), c.epoch_authenticator());

    // Alice removes carol.
    let removal = a.remove_members(&alice, &[b"carol"]).unwrap();
    assert!(matches!(
        b.process(&bob, &removal).unwrap(),
        Incoming::Commit {
            removed_self: false,
            ..
        }
    ));
    assert!(matches!(
        c.process(&carol, &removal).unwrap(),
        Incoming::Commit {
            removed_self: true,
            ..
        }
    ));
    assert_eq!(a.members(), vec![b"alice".to_vec(), b"bob".to_vec()]);

    // Messages after the removal reach bob, not carol.
    let ct = b.encrypt(&bob, b"just us").unwrap();
    assert_eq!(expect_app(a.process(&alice, &ct).unwrap()).1, b"just us");
    assert!(
        c.process(&carol, &ct).is_err(),
        "a removed member cannot read new messages"
    );

    // Garbage and replays are refused with errors, not panics.
    assert!(a.process(&alice, &[0xff; 40]).is_err());
    assert!(
        a.process(&alice, &ct).is_err(),
        "replayed application message"
    );
}

#[test]
fn three_members_under_xwing() {
    three_member_flow(Suite::XWing);
}

#[test]
fn three_members_under_x25519() {
    three_member_flow(Suite::X25519);
}

#[test]
fn group_survives_closing_and_reopening_the_store() {
    let dir = std::env::temp_dir().join(format!("qpq-mls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("alice.db");
    let _ = std::fs::remove_file(&path);
    let bob = member("bob", Suite::XWing);
    let group_id = b"persistent".to_vec();
    let mut b;
    let alice_key = IdentityKey::generate();
    {
        let alice = MlsMember::create_at(&path, b"alice", &alice_key, Suite::XWing).unwrap();
        let mut a = alice.create_group(&group_id).unwrap();
        let (_, welcome) = a
            .add_members(&alice, &[&bob.key_package().unwrap()])
            .unwrap();
        b = bob.join(&welcome).unwrap().0;
        let ct = a.encrypt(&alice, b"before").unwrap();
        expect_app(b.process(&bob, &ct).unwrap());
    } // alice's store is closed here

    assert!(matches!(
        MlsMember::load_at(&path, &IdentityKey::generate()),
        Err(MlsError::IdentityMismatch)
    ));
    let alice = MlsMember::load_at(&path, &alice_key).unwrap();
    assert_eq!(alice.name(), b"alice");
    assert_eq!(alice.suite(), Suite::XWing);
    let mut a = alice.group(&group_id).unwrap().expect("group persisted");
    assert_eq!(a.members().len(), 2);
    let ct = a.encrypt(&alice, b"after reopening").unwrap();
    assert_eq!(
        expect_app(b.process(&bob, &ct).unwrap()).1,
        b"after reopening"
    );
    let reply = b.encrypt(&bob, b"welcome back").unwrap();
    assert_eq!(
        expect_app(a.process(&alice, &reply).unwrap()).1,
        b"welcome back"
    );
    assert!(alice.group(b"no such group").unwrap().is_none());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn last_resort_key_package_can_be_used_more_than_once() {
    let alice = member("alice", Suite::XWing);
    let bob = member("bob", Suite::XWing);
    let last_resort = bob.last_resort_key_package().unwrap();
    for id in [b"g1".as_slice(), b"g2".as_slice()] {
        let mut g = alice.create_group(id).unwrap();
        let (_, welcome) = g.add_members(&alice, &[&last_resort]).unwrap();
        let joined = bob.join(&welcome).unwrap().0;
        assert_eq!(joined.id(), id);
    }
}

#[test]
fn a_store_without_member_says_so() {
    let err = MlsMember::load(
        Connection::open_in_memory().unwrap(),
        &IdentityKey::generate(),
    )
    .unwrap_err();
    assert!(matches!(err, qpq_core::mls::MlsError::NoMember));
}

#[test]
fn malformed_key_packages_and_welcomes_are_errors() {
    let alice = member("alice", Suite::X25519);
    let mut g = alice.create_group(b"g").unwrap();
    assert!(g.add_members(&alice, &[&[1, 2, 3]]).is_err());
    assert!(alice.join(&[0u8; 64]).is_err());
    // A key package of the other suite is refused.
    let xwing = member("x", Suite::XWing);
    assert!(
        g.add_members(&alice, &[&xwing.key_package().unwrap()])
            .is_err()
    );
}

#[test]
fn group_state_can_live_in_an_encrypted_sqlcipher_database() {
    let dir = std::env::temp_dir().join(format!("qpq-mls-cipher-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret.db");
    let _ = std::fs::remove_file(&path);
    let key = IdentityKey::generate();
    let open = |key: &str| {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "key", key).unwrap();
        // As the client store does: a wrong key's failed page check is an error returned,
        // not a line SQLCipher prints on stderr.
        let _ = conn.query_row("PRAGMA cipher_log_level = NONE", [], |_| Ok(()));
        conn
    };
    {
        let alice = MlsMember::create(open("correct horse"), b"alice", &key, Suite::XWing).unwrap();
        alice.create_group(b"private").unwrap();
    }
    let raw = std::fs::read(&path).unwrap();
    assert!(
        !raw.starts_with(b"SQLite format 3"),
        "the file must be encrypted"
    );
    assert!(!raw.windows(5).any(|w| w == b"alice"));
    assert!(MlsMember::load(open("wrong key"), &key).is_err());
    let alice = MlsMember::load(open("correct horse"), &key).unwrap();
    assert!(alice.group(b"private").unwrap().is_some());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// alice, bob and carol in one group (X25519: fast), each with a handle on it.
fn trio() -> ([MlsMember; 3], [qpq_core::mls::Group; 3]) {
    let members = [
        member("alice", Suite::X25519),
        member("bob", Suite::X25519),
        member("carol", Suite::X25519),
    ];
    let mut a = members[0].create_group(b"group-t").unwrap();
    let kp_b = members[1].key_package().unwrap();
    let kp_c = members[2].key_package().unwrap();
    let (_, welcome) = a.add_members(&members[0], &[&kp_b, &kp_c]).unwrap();
    let b = members[1].join(&welcome).unwrap().0;
    let c = members[2].join(&welcome).unwrap().0;
    (members, [a, b, c])
}

#[test]
fn a_message_from_a_later_epoch_is_reported_as_such_and_processes_after_the_commit() {
    let ([alice, bob, carol], [mut a, mut b, mut c]) = trio();
    let dave = member("dave", Suite::X25519);
    let (commit, _) = a
        .add_members(&alice, &[&dave.key_package().unwrap()])
        .unwrap();
    b.process(&bob, &commit).unwrap();
    let ahead = b.encrypt(&bob, b"after the commit").unwrap();
    // Carol gets bob's message before alice's commit.
    let err = c.process(&carol, &ahead).unwrap_err();
    assert!(
        matches!(err, qpq_core::mls::MlsError::FutureEpoch { epoch } if epoch == c.epoch() + 1),
        "{err}"
    );
    c.process(&carol, &commit).unwrap();
    assert_eq!(
        expect_app(c.process(&carol, &ahead).unwrap()).1,
        b"after the commit"
    );
}

#[test]
fn a_message_from_a_recent_past_epoch_still_decrypts() {
    let ([alice, bob, carol], [mut a, mut b, mut c]) = trio();
    let before = b.encrypt(&bob, b"sent before the commit").unwrap();
    let commit = a.self_update(&alice).unwrap();
    c.process(&carol, &commit).unwrap();
    b.process(&bob, &commit).unwrap();
    // The commit overtook bob's message on the way to carol.
    assert_eq!(
        expect_app(c.process(&carol, &before).unwrap()).1,
        b"sent before the commit"
    );
}

#[test]
fn work_done_atomically_is_undone_when_it_fails() {
    let ([alice, bob, _carol], [mut a, _b, _c]) = trio();
    let ct = a.encrypt(&alice, b"once").unwrap();
    let group_id = a.id();
    // Processing succeeds, then something after it fails: nothing of it stays.
    let failed: Result<(), qpq_core::mls::MlsError> = bob.atomically(|conn| {
        let mut g = bob.group(&group_id)?.unwrap();
        expect_app(g.process(&bob, &ct)?);
        conn.execute_batch("CREATE TABLE side_effect (x INTEGER)")
            .unwrap();
        Err(qpq_core::mls::MlsError::NotAMember)
    });
    assert!(failed.is_err());
    let mut g = bob.group(&group_id).unwrap().unwrap();
    assert_eq!(expect_app(g.process(&bob, &ct).unwrap()).1, b"once");
    // The same work that succeeds is kept: processing twice is then a replay.
    let ct = a.encrypt(&alice, b"twice").unwrap();
    bob.atomically(|_| {
        let mut g = bob.group(&group_id)?.unwrap();
        g.process(&bob, &ct).map(|_| ())
    })
    .unwrap();
    assert!(
        bob.group(&group_id)
            .unwrap()
            .unwrap()
            .process(&bob, &ct)
            .is_err()
    );
}

#[test]
fn a_rollback_after_a_cached_update_leaves_the_cache_as_the_store() {
    let ([alice, bob, _carol], [mut a, b, _c]) = trio();
    let group_id = a.id();
    bob.keep(b);
    let first = a.encrypt(&alice, b"first").unwrap();
    let second = a.encrypt(&alice, b"second").unwrap();
    // A committed update goes back to the cache.
    bob.atomically(|_| {
        let mut g = bob.group(&group_id)?.unwrap();
        expect_app(g.process(&bob, &first)?);
        bob.keep(g);
        Ok::<_, MlsError>(())
    })
    .unwrap();
    assert_eq!(bob.cached_groups(), 1);
    // An update given back to the cache inside a transaction that then fails: the store
    // never had it, and neither may the cache (the second message would count as used).
    let failed: Result<(), MlsError> = bob.atomically(|_| {
        let mut g = bob.group(&group_id)?.unwrap();
        expect_app(g.process(&bob, &second)?);
        bob.keep(g);
        Err(MlsError::NotAMember)
    });
    assert!(failed.is_err());
    assert_eq!(bob.cached_groups(), 0, "the rollback emptied the cache");
    let mut g = bob.group(&group_id).unwrap().unwrap();
    assert_eq!(expect_app(g.process(&bob, &second).unwrap()).1, b"second");
}

#[test]
fn a_copy_handed_out_before_a_rollback_is_not_cached_after_it() {
    let ([alice, bob, _carol], [mut a, b, _c]) = trio();
    let group_id = a.id();
    drop(b);
    let message = a.encrypt(&alice, b"once").unwrap();
    // Held across a transaction that changes it and fails: its memory is ahead of the store.
    let mut held = bob.group(&group_id).unwrap().unwrap();
    let failed: Result<(), MlsError> = bob.atomically(|_| {
        expect_app(held.process(&bob, &message)?);
        Err(MlsError::NotAMember)
    });
    assert!(failed.is_err());
    bob.keep(held);
    assert_eq!(bob.cached_groups(), 0);
    let mut g = bob.group(&group_id).unwrap().unwrap();
    assert_eq!(expect_app(g.process(&bob, &message).unwrap()).1, b"once");
}

#[test]
fn only_the_latest_copy_of_a_group_goes_back_to_the_cache() {
    let ([alice, bob, _carol], [mut a, b, _c]) = trio();
    let group_id = a.id();
    drop(b);
    let message = a.encrypt(&alice, b"once").unwrap();
    let older = bob.group(&group_id).unwrap().unwrap();
    let mut newer = bob.group(&group_id).unwrap().unwrap();
    expect_app(newer.process(&bob, &message).unwrap());
    bob.keep(newer);
    // The older copy has not seen the message: given back, it would undo it.
    bob.keep(older);
    let mut g = bob.group(&group_id).unwrap().unwrap();
    assert!(
        g.process(&bob, &message).is_err(),
        "the message was used once"
    );
}

#[test]
fn a_copy_behind_one_that_changed_later_is_not_cached() {
    let ([alice, bob, _carol], [mut a, b, _c]) = trio();
    let group_id = a.id();
    drop(b);
    let message = a.encrypt(&alice, b"once").unwrap();
    let mut older = bob.group(&group_id).unwrap().unwrap();
    let newer = bob.group(&group_id).unwrap().unwrap();
    // The older copy changes the group after the newer one was handed out: the newer one no
    // longer has the store's state, and must not become the cache's.
    expect_app(older.process(&bob, &message).unwrap());
    bob.keep(newer);
    bob.keep(older);
    assert_eq!(bob.cached_groups(), 0);
    let mut g = bob.group(&group_id).unwrap().unwrap();
    assert!(
        g.process(&bob, &message).is_err(),
        "the message was used once"
    );
}

#[test]
fn a_deleted_group_is_not_cached_again() {
    let ([alice, ..], [a, ..]) = trio();
    let id = a.id();
    alice.keep(a);
    let stale = alice.group(&id).unwrap().unwrap();
    let doomed = alice.group(&id).unwrap().unwrap();
    doomed.delete(&alice).unwrap();
    alice.keep(stale);
    assert_eq!(alice.cached_groups(), 0);
    assert!(alice.group(&id).unwrap().is_none());
}

#[test]
fn a_deleted_group_is_gone() {
    let ([alice, ..], [a, ..]) = trio();
    let id = a.id();
    a.delete(&alice).unwrap();
    assert!(alice.group(&id).unwrap().is_none());
}

#[test]
fn leaves_sign_with_the_identity_key_and_senders_are_reported_with_their_keys() {
    let (alice_key, bob_key) = (IdentityKey::generate(), IdentityKey::generate());
    let open = || Connection::open_in_memory().unwrap();
    let alice = MlsMember::create(open(), b"alice", &alice_key, Suite::X25519).unwrap();
    let bob = MlsMember::create(open(), b"bob", &bob_key, Suite::X25519).unwrap();
    assert_eq!(alice.signature_key(), alice_key.public().to_bytes());
    let kp = bob.key_package().unwrap();
    let info = qpq_core::mls::inspect_key_package(&kp).unwrap();
    assert_eq!(info.signature_key, bob_key.public().to_bytes());

    let mut a = alice.create_group(b"keys").unwrap();
    let (_, welcome) = a.add_members(&alice, &[&kp]).unwrap();
    let (mut b, sender) = bob.join(&welcome).unwrap();
    assert_eq!(sender.name, b"alice");
    assert!(sender.signs_with(&alice_key.public()));
    assert!(!sender.signs_with(&bob_key.public()));
    let leaves = b.leaves();
    assert_eq!(leaves.len(), 2);
    assert!(
        leaves
            .iter()
            .any(|l| l.name == b"bob" && l.signs_with(&bob_key.public()))
    );

    let ct = a.encrypt(&alice, b"signed").unwrap();
    match b.process(&bob, &ct).unwrap() {
        Incoming::Application { sender, .. } => assert!(sender.signs_with(&alice_key.public())),
        other => panic!("expected an application message, got {other:?}"),
    }
    let update = a.self_update(&alice).unwrap();
    match b.process(&bob, &update).unwrap() {
        Incoming::Commit { committer, .. } => {
            assert!(committer.unwrap().signs_with(&alice_key.public()))
        }
        other => panic!("expected a commit, got {other:?}"),
    }
}
