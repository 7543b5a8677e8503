//! The store conformance suite: every method of [`Store`], its errors, quotas, idempotence,
//! ordering and concurrent writers, written once. [`store_conformance!`] makes one test per
//! check for a backend, given an async factory of fresh stores; the SQLite and PostgreSQL
//! backends run it.
//!
//! A factory returns `None` when its backend is not reachable here (PostgreSQL without
//! `QPQ_TEST_POSTGRES_URL`): each test then says it is skipped and passes. CI sets the
//! variable, so CI never skips.

#![allow(clippy::unwrap_used)]

use super::*;

/// Generates `mod $name` with one `#[tokio::test]` per check, each on a fresh store from
/// `$factory` (an `async fn() -> Option<(impl Drop, impl Store)>`; the first half is kept
/// alive for the test, e.g. a temporary directory or database).
macro_rules! store_conformance {
    ($name:ident, $factory:path) => {
        mod $name {
            $crate::store::conformance::store_conformance!(@checks $factory;
                users_are_unique_and_keep_their_password_file,
                devices_follow_the_first_device_rule_and_the_cap,
                revoking_a_device_drops_its_rows_and_bars_its_id,
                sessions_are_found_deleted_and_expired,
                queue_is_ordered_idempotent_bounded_and_acked,
                batch_enqueue_answers_per_message,
                queue_bytes_and_per_sender_quotas,
                contacts_and_channels_make_peers_known,
                channels_check_owner_members_and_size,
                key_packages_are_consumed_then_last_resort,
                bundles_extend_one_dense_log_and_identities_are_unique,
                blobs_respect_quota_and_record_progress,
                endpoints_expire,
                secrets_are_created_once,
                signed_heads_are_kept_once_per_size,
                concurrent_enqueues_get_distinct_dense_seqs,
                concurrent_publishes_get_distinct_dense_leaves,
                the_relay_outbox_is_ordered_idempotent_bounded_and_leased,
                relay_failures_reach_their_senders,
                relayed_messages_are_queued_once_beyond_their_ack,
                a_held_sender_waits_and_the_others_go_on,
                a_relayed_sender_refused_for_room_is_not_overtaken,
                witnessed_heads_move_only_from_the_head_last_seen
            );
        }
    };
    (@checks $factory:path; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let Some((_keep, store)) = $factory().await else {
                    eprintln!(
                        "skipped {}: its backend is not configured here",
                        stringify!($check)
                    );
                    return;
                };
                $crate::store::conformance::$check(&store).await;
            }
        )*
    };
}
pub(crate) use store_conformance;

async fn with_device<S: Store>(store: &S, user: &str, device: &str) -> DeviceId {
    let _ = store.create_user(user.into(), vec![1], 0).await;
    let d = DeviceId::new(user, device);
    store
        .register_device(d.clone(), String::new(), 0, false, 10)
        .await
        .unwrap();
    d
}

fn msg(to: &DeviceId, id: u8) -> NewMessage {
    from("", to, id)
}

fn from(sender: &str, to: &DeviceId, id: u8) -> NewMessage {
    NewMessage {
        recipient: to.clone(),
        sender: sender.into(),
        sender_user: sender.split_once('/').map(|(u, _)| u.to_owned()),
        stranger: false,
        message_id: vec![id; 16],
        payload: vec![id; 10],
    }
}

/// At most `n` messages per queue, everything else unbounded.
fn lim(n: u64) -> QueueLimits {
    QueueLimits {
        max_messages: n,
        max_bytes: u64::MAX,
        sender_messages: u64::MAX,
        sender_bytes: u64::MAX,
        stranger_messages: u64::MAX,
        stranger_bytes: u64::MAX,
    }
}

pub(crate) async fn users_are_unique_and_keep_their_password_file<S: Store>(s: &S) {
    assert!(!s.user_exists("alice".into()).await.unwrap());
    assert_eq!(s.password_file("alice".into()).await.unwrap(), None);
    s.create_user("alice".into(), vec![9, 8], 1).await.unwrap();
    assert!(s.user_exists("alice".into()).await.unwrap());
    assert_eq!(
        s.password_file("alice".into()).await.unwrap(),
        Some(vec![9, 8])
    );
    assert!(matches!(
        s.create_user("alice".into(), vec![1], 2).await,
        Err(StoreError::AlreadyExists)
    ));
    // The first record stays.
    assert_eq!(
        s.password_file("alice".into()).await.unwrap(),
        Some(vec![9, 8])
    );
}

pub(crate) async fn devices_follow_the_first_device_rule_and_the_cap<S: Store>(s: &S) {
    assert!(matches!(
        s.register_device(DeviceId::new("ghost", "a"), String::new(), 0, false, 2)
            .await,
        Err(StoreError::NotFound)
    ));
    s.create_user("fay".into(), vec![1], 0).await.unwrap();
    s.register_device(DeviceId::new("fay", "b"), "laptop".into(), 5, true, 2)
        .await
        .unwrap();
    assert!(matches!(
        s.register_device(DeviceId::new("fay", "a"), String::new(), 6, true, 2)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.register_device(DeviceId::new("fay", "b"), String::new(), 6, false, 2)
            .await,
        Err(StoreError::AlreadyExists)
    ));
    s.register_device(DeviceId::new("fay", "a"), String::new(), 6, false, 2)
        .await
        .unwrap();
    assert!(matches!(
        s.register_device(DeviceId::new("fay", "c"), String::new(), 7, false, 2)
            .await,
        Err(StoreError::QuotaExceeded)
    ));
    // Oldest first, then by id.
    let listed = s.list_devices("fay".into()).await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|d| (
                d.device.as_str(),
                d.label.as_str(),
                d.created_at_ms,
                d.has_keys
            ))
            .collect::<Vec<_>>(),
        vec![("b", "laptop", 5, false), ("a", "", 6, false)]
    );
    assert!(s.device_exists(DeviceId::new("fay", "a")).await.unwrap());
    assert!(!s.device_exists(DeviceId::new("fay", "c")).await.unwrap());
    assert!(s.list_devices("nobody".into()).await.unwrap().is_empty());
}

pub(crate) async fn revoking_a_device_drops_its_rows_and_bars_its_id<S: Store>(s: &S) {
    let d = with_device(s, "erin", "old").await;
    s.enqueue(msg(&d, 1), lim(10), 0).await.unwrap();
    s.add_key_packages(d.clone(), vec![vec![1]], 10)
        .await
        .unwrap();
    s.set_last_resort_key_package(d.clone(), vec![2])
        .await
        .unwrap();
    s.publish_endpoint(d.clone(), vec!["127.0.0.1:1".into()], 1_000)
        .await
        .unwrap();
    s.create_session(
        vec![7; 32],
        Session {
            device: d.clone(),
            expires_at_ms: 100,
        },
    )
    .await
    .unwrap();
    s.revoke_device(d.clone(), 1).await.unwrap();
    assert!(s.session(vec![7; 32]).await.unwrap().is_none());
    assert_eq!(s.peek(d.clone()).await.unwrap().depth, 0);
    assert!(s.take_key_package(d.clone()).await.unwrap().is_none());
    assert!(s.endpoint(d.clone(), 0).await.unwrap().is_none());
    assert!(!s.device_exists(d.clone()).await.unwrap());
    assert!(matches!(
        s.revoke_device(d.clone(), 2).await,
        Err(StoreError::NotFound)
    ));
    // The id stays revoked: registering it again is refused.
    assert!(matches!(
        s.register_device(d, String::new(), 3, false, 10).await,
        Err(StoreError::Revoked)
    ));
}

pub(crate) async fn sessions_are_found_deleted_and_expired<S: Store>(s: &S) {
    let d = with_device(s, "hal", "pc").await;
    for (token, expires) in [(1u8, 100), (2, 200)] {
        s.create_session(
            vec![token; 32],
            Session {
                device: d.clone(),
                expires_at_ms: expires,
            },
        )
        .await
        .unwrap();
    }
    assert_eq!(
        s.session(vec![2; 32]).await.unwrap(),
        Some(Session {
            device: d.clone(),
            expires_at_ms: 200
        })
    );
    // Sessions and endpoints whose expiry has come go; later ones stay.
    s.publish_endpoint(d.clone(), vec!["127.0.0.1:2".into()], 120)
        .await
        .unwrap();
    assert_eq!(s.delete_expired(150).await.unwrap(), 2);
    assert_eq!(s.delete_expired(150).await.unwrap(), 0);
    assert!(s.session(vec![1; 32]).await.unwrap().is_none());
    assert!(s.session(vec![2; 32]).await.unwrap().is_some());
    s.delete_session(vec![2; 32]).await.unwrap();
    assert!(s.session(vec![2; 32]).await.unwrap().is_none());
    // Deleting twice is not an error (logout is idempotent).
    s.delete_session(vec![2; 32]).await.unwrap();
}

pub(crate) async fn queue_is_ordered_idempotent_bounded_and_acked<S: Store>(s: &S) {
    let bob = with_device(s, "bob", "phone").await;
    let a = s.enqueue(msg(&bob, 1), lim(3), 10).await.unwrap();
    let b = s.enqueue(msg(&bob, 2), lim(3), 11).await.unwrap();
    assert_eq!((a.seq, b.seq), (1, 2));
    let dup = s.enqueue(msg(&bob, 1), lim(3), 12).await.unwrap();
    assert_eq!(
        dup,
        Enqueued {
            seq: 1,
            duplicate: true
        }
    );
    s.enqueue(msg(&bob, 3), lim(3), 13).await.unwrap();
    assert!(matches!(
        s.enqueue(msg(&bob, 4), lim(3), 14).await,
        Err(StoreError::QueueFull)
    ));
    let all = s.fetch(bob.clone(), 0, 10).await.unwrap();
    assert_eq!(all.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(
        (
            all[1].message_id.as_slice(),
            all[1].payload.as_slice(),
            all[1].received_at_ms
        ),
        (&[2u8; 16][..], &[2u8; 10][..], 11)
    );
    assert_eq!(s.fetch(bob.clone(), 2, 10).await.unwrap().len(), 1);
    assert_eq!(
        s.fetch(bob.clone(), 0, 2)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        s.peek(bob.clone()).await.unwrap(),
        QueueDepth {
            depth: 3,
            first_seq: 1,
            last_seq: 3
        }
    );
    assert_eq!(s.ack(bob.clone(), 2).await.unwrap(), 2);
    assert_eq!(
        s.ack(bob.clone(), 2).await.unwrap(),
        0,
        "acks are idempotent"
    );
    // Sequence numbers keep increasing after acks.
    assert_eq!(s.enqueue(msg(&bob, 5), lim(3), 15).await.unwrap().seq, 4);
    assert_eq!(s.ack(bob.clone(), 100).await.unwrap(), 2);
    assert_eq!(s.peek(bob.clone()).await.unwrap(), QueueDepth::default());
    let unknown = DeviceId::new("nobody", "x");
    assert!(matches!(
        s.enqueue(msg(&unknown, 1), lim(3), 1).await,
        Err(StoreError::NotFound)
    ));
    assert!(s.fetch(unknown.clone(), 0, 10).await.unwrap().is_empty());
    assert_eq!(s.ack(unknown, 10).await.unwrap(), 0);
}

pub(crate) async fn batch_enqueue_answers_per_message<S: Store>(s: &S) {
    let bob = with_device(s, "bob", "phone").await;
    let carol = with_device(s, "carol", "laptop").await;
    s.enqueue(msg(&carol, 8), lim(2), 0).await.unwrap();
    s.enqueue(msg(&carol, 9), lim(2), 0).await.unwrap(); // carol's queue is now full
    let nobody = DeviceId::new("nobody", "x");
    let results = s
        .batch_enqueue(
            vec![msg(&bob, 1), msg(&carol, 2), msg(&nobody, 1), msg(&bob, 3)],
            lim(2),
            0,
        )
        .await
        .unwrap();
    assert!(matches!(results[0], Ok(Enqueued { seq: 1, .. })));
    assert!(matches!(results[1], Err(StoreError::QueueFull)));
    assert!(matches!(results[2], Err(StoreError::NotFound)));
    assert!(matches!(results[3], Ok(Enqueued { seq: 2, .. })));
    assert_eq!(
        s.peek(bob.clone()).await.unwrap().depth,
        2,
        "carol's full queue does not hold back bob's messages"
    );
    assert_eq!(s.peek(carol.clone()).await.unwrap().depth, 2);
    // The refused message left no trace: once there is room it is accepted as new.
    s.ack(carol.clone(), 1).await.unwrap();
    let again = s
        .batch_enqueue(vec![msg(&carol, 2)], lim(2), 0)
        .await
        .unwrap();
    assert!(matches!(
        again[0],
        Ok(Enqueued {
            duplicate: false,
            ..
        })
    ));
    // A repeated batch is answered from the queue.
    let repeated = s
        .batch_enqueue(vec![msg(&bob, 1), msg(&bob, 3)], lim(2), 0)
        .await
        .unwrap();
    assert!(repeated.iter().all(|r| matches!(
        r,
        Ok(Enqueued {
            duplicate: true,
            ..
        })
    )));
    assert!(s.batch_enqueue(vec![], lim(2), 0).await.unwrap().is_empty());
}

pub(crate) async fn queue_bytes_and_per_sender_quotas<S: Store>(s: &S) {
    let bob = with_device(s, "bob", "phone").await;
    for (user, device) in [("eve", "x"), ("ann", "y"), ("zed", "z")] {
        with_device(s, user, device).await;
    }
    let limits = QueueLimits {
        max_messages: 100,
        max_bytes: 55,
        sender_messages: 2,
        sender_bytes: 1000,
        stranger_messages: 1,
        stranger_bytes: 1000,
    };
    // Each test message carries 10 bytes.
    s.enqueue(from("eve/x", &bob, 1), limits, 0).await.unwrap();
    s.enqueue(from("eve/x", &bob, 2), limits, 0).await.unwrap();
    assert!(matches!(
        s.enqueue(from("eve/x", &bob, 3), limits, 0).await,
        Err(StoreError::SenderQuota { stranger: false })
    ));
    // The quota counts the user: another device of eve's shares it.
    assert!(matches!(
        s.enqueue(from("eve/other", &bob, 3), limits, 0).await,
        Err(StoreError::SenderQuota { stranger: false })
    ));
    // Another sender still gets in; deduplication is per sender, so the same id is new.
    let other = s.enqueue(from("ann/y", &bob, 1), limits, 0).await.unwrap();
    assert!(!other.duplicate);
    let mut stranger = from("zed/z", &bob, 1);
    stranger.stranger = true;
    s.enqueue(stranger.clone(), limits, 0).await.unwrap();
    stranger.message_id = vec![2; 16];
    assert!(matches!(
        s.enqueue(stranger, limits, 0).await,
        Err(StoreError::SenderQuota { stranger: true })
    ));
    // 50 bytes queued after this one: the next 10-byte message passes the 55-byte bound.
    s.enqueue(from("ann/y", &bob, 2), limits, 0).await.unwrap();
    assert!(matches!(
        s.enqueue(from("ann/y", &bob, 3), limits, 0).await,
        Err(StoreError::QueueFull)
    ));
    // Acks release quota.
    s.ack(bob.clone(), 2).await.unwrap();
    s.enqueue(from("eve/x", &bob, 3), limits, 0).await.unwrap();
    // Sealed sends share one bucket per queue.
    let carol = with_device(s, "carol", "pc").await;
    let sealed = QueueLimits {
        sender_messages: 1,
        ..limits
    };
    s.enqueue(msg(&carol, 1), sealed, 0).await.unwrap();
    assert!(matches!(
        s.enqueue(msg(&carol, 2), sealed, 0).await,
        Err(StoreError::SenderQuota { stranger: false })
    ));
}

pub(crate) async fn contacts_and_channels_make_peers_known<S: Store>(s: &S) {
    let bob = with_device(s, "bob", "phone").await;
    let ann = with_device(s, "ann", "pc").await;
    with_device(s, "cat", "pc").await;
    // Ann is not known to Bob; Bob is known to himself.
    assert_eq!(
        s.known_to("ann".into(), vec!["bob".into()]).await.unwrap(),
        vec![false]
    );
    assert_eq!(
        s.known_to("bob".into(), vec!["bob".into()]).await.unwrap(),
        vec![true]
    );
    // Ann writing to Bob does not make Ann known to Bob; Bob writing to Ann does.
    s.enqueue(from("ann/pc", &bob, 1), lim(10), 0)
        .await
        .unwrap();
    assert_eq!(
        s.known_to("ann".into(), vec!["bob".into()]).await.unwrap(),
        vec![false]
    );
    s.enqueue(from("bob/phone", &ann, 1), lim(10), 0)
        .await
        .unwrap();
    assert_eq!(
        s.known_to("ann".into(), vec!["bob".into(), "cat".into(), "ann".into()])
            .await
            .unwrap(),
        vec![true, false, true]
    );
    assert!(!s.share_channel("bob".into(), "cat".into()).await.unwrap());
    assert!(s.share_channel("cat".into(), "cat".into()).await.unwrap());
    s.create_channel(
        vec![1; 16],
        "c".into(),
        "bob".into(),
        vec!["cat".into()],
        vec![],
        0,
    )
    .await
    .unwrap();
    // An invitation is not membership: Bob is not known to Cat until she accepts.
    assert!(!s.share_channel("cat".into(), "bob".into()).await.unwrap());
    assert_eq!(
        s.known_to("bob".into(), vec!["cat".into()]).await.unwrap(),
        vec![false]
    );
    assert!(
        s.channel_members(vec![1; 16], "cat".into())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        s.answer_channel(vec![1; 16], "cat".into(), vec![], true)
            .await
            .unwrap(),
        vec!["bob", "cat"]
    );
    assert!(s.share_channel("cat".into(), "bob".into()).await.unwrap());
    assert_eq!(
        s.known_to("cat".into(), vec!["bob".into()]).await.unwrap(),
        vec![true]
    );
    // Answered once: there is no invitation left to answer.
    assert!(matches!(
        s.answer_channel(vec![1; 16], "cat".into(), vec![], false)
            .await,
        Err(StoreError::NotFound)
    ));
}

pub(crate) async fn channels_check_owner_members_and_size<S: Store>(s: &S) {
    for user in ["bob", "cat", "dan", "eve"] {
        with_device(s, user, "pc").await;
    }
    let id = vec![1; 16];
    s.create_channel(
        id.clone(),
        "c".into(),
        "bob".into(),
        vec!["cat".into()],
        vec![5; 8],
        0,
    )
    .await
    .unwrap();
    assert!(matches!(
        s.create_channel(id.clone(), "c".into(), "cat".into(), vec![], vec![], 0)
            .await,
        Err(StoreError::AlreadyExists)
    ));
    // A channel naming a user who does not exist is not made.
    assert!(matches!(
        s.create_channel(
            vec![2; 16],
            "d".into(),
            "bob".into(),
            vec!["ghost".into()],
            vec![],
            0
        )
        .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.channels_owned("bob".into()).await.unwrap(), 1);
    // The answer must name the channel's MLS group.
    assert!(matches!(
        s.answer_channel(id.clone(), "cat".into(), vec![6; 8], true)
            .await,
        Err(StoreError::NotFound)
    ));
    s.answer_channel(id.clone(), "cat".into(), vec![5; 8], true)
        .await
        .unwrap();
    // Only the owner invites; a non-member changes nothing.
    assert!(matches!(
        s.update_channel(id.clone(), "cat".into(), vec!["dan".into()], vec![], 10)
            .await,
        Err(StoreError::Forbidden)
    ));
    assert!(matches!(
        s.update_channel(id.clone(), "eve".into(), vec![], vec!["eve".into()], 10)
            .await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        s.update_channel(id.clone(), "bob".into(), vec!["ghost".into()], vec![], 10)
            .await,
        Err(StoreError::NotFound)
    ));
    // The size bound counts invitations, and a refused change leaves nothing.
    assert!(matches!(
        s.update_channel(
            id.clone(),
            "bob".into(),
            vec!["dan".into(), "eve".into()],
            vec![],
            3
        )
        .await,
        Err(StoreError::QuotaExceeded)
    ));
    assert!(matches!(
        s.answer_channel(id.clone(), "dan".into(), vec![5; 8], true)
            .await,
        Err(StoreError::NotFound)
    ));
    s.update_channel(id.clone(), "bob".into(), vec!["dan".into()], vec![], 10)
        .await
        .unwrap();
    // A declined invitation is gone.
    assert_eq!(
        s.answer_channel(id.clone(), "dan".into(), vec![5; 8], false)
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    s.update_channel(id.clone(), "bob".into(), vec!["dan".into()], vec![], 10)
        .await
        .unwrap();
    s.answer_channel(id.clone(), "dan".into(), vec![5; 8], true)
        .await
        .unwrap();
    // Only the owner removes others; a member removes itself.
    assert!(matches!(
        s.update_channel(id.clone(), "cat".into(), vec![], vec!["dan".into()], 10)
            .await,
        Err(StoreError::Forbidden)
    ));
    assert_eq!(
        s.update_channel(id.clone(), "cat".into(), vec![], vec!["cat".into()], 10)
            .await
            .unwrap(),
        vec!["bob", "dan"]
    );
    assert_eq!(
        s.channel_members(id.clone(), "dan".into()).await.unwrap(),
        Some(vec!["bob".to_owned(), "dan".to_owned()])
    );
    assert_eq!(
        s.update_channel(id.clone(), "bob".into(), vec![], vec!["dan".into()], 10)
            .await
            .unwrap(),
        vec!["bob"]
    );
    assert_eq!(s.channel_members(id, "dan".into()).await.unwrap(), None);
}

pub(crate) async fn key_packages_are_consumed_then_last_resort<S: Store>(s: &S) {
    let d = with_device(s, "dave", "pc").await;
    assert_eq!(s.take_key_package(d.clone()).await.unwrap(), None);
    assert_eq!(
        s.add_key_packages(d.clone(), vec![vec![1], vec![2]], 3)
            .await
            .unwrap(),
        2
    );
    assert!(matches!(
        s.add_key_packages(d.clone(), vec![vec![3], vec![4]], 3)
            .await,
        Err(StoreError::QuotaExceeded)
    ));
    assert_eq!(s.key_package_count(d.clone()).await.unwrap(), 2);
    assert!(matches!(
        s.add_key_packages(DeviceId::new("ghost", "x"), vec![vec![1]], 3)
            .await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(s.last_resort_key_package(d.clone()).await.unwrap(), None);
    s.set_last_resort_key_package(d.clone(), vec![98])
        .await
        .unwrap();
    s.set_last_resort_key_package(d.clone(), vec![99])
        .await
        .unwrap();
    assert_eq!(
        s.last_resort_key_package(d.clone()).await.unwrap(),
        Some(vec![99])
    );
    // The last-resort package does not count against the one-time quota.
    assert_eq!(s.key_package_count(d.clone()).await.unwrap(), 2);
    assert_eq!(
        s.take_key_package(d.clone()).await.unwrap(),
        Some((vec![1], false))
    );
    assert_eq!(
        s.take_key_package(d.clone()).await.unwrap(),
        Some((vec![2], false))
    );
    assert_eq!(
        s.take_key_package(d.clone()).await.unwrap(),
        Some((vec![99], true))
    );
    assert_eq!(
        s.take_key_package(d.clone()).await.unwrap(),
        Some((vec![99], true))
    );
    assert_eq!(s.key_package_count(d).await.unwrap(), 0);
}

pub(crate) async fn bundles_extend_one_dense_log_and_identities_are_unique<S: Store>(s: &S) {
    let a = with_device(s, "ann", "a").await;
    let b = with_device(s, "ann", "b").await;
    let c = with_device(s, "cat", "c").await;
    assert!(s.kt_leaves().await.unwrap().is_empty());
    assert_eq!(
        s.publish_bundle(a.clone(), vec![1], vec![11; 32], None, [1; 32], [0; 32])
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.publish_bundle(
            b.clone(),
            vec![2],
            vec![22; 32],
            Some(vec![3; 32]),
            [2; 32],
            [7; 32]
        )
        .await
        .unwrap(),
        1
    );
    // Republishing replaces the bundle and appends a leaf.
    assert_eq!(
        s.publish_bundle(a.clone(), vec![4], vec![11; 32], None, [3; 32], [0; 32])
            .await
            .unwrap(),
        2
    );
    // Another device cannot take an identity key.
    assert!(matches!(
        s.publish_bundle(c.clone(), vec![5], vec![22; 32], None, [4; 32], [0; 32])
            .await,
        Err(StoreError::AlreadyExists)
    ));
    assert!(matches!(
        s.publish_bundle(
            DeviceId::new("ghost", "x"),
            vec![5],
            vec![33; 32],
            None,
            [4; 32],
            [0; 32]
        )
        .await,
        Err(StoreError::NotFound)
    ));
    // A refused publish leaves no leaf.
    assert_eq!(
        s.kt_leaves().await.unwrap(),
        vec![[1; 32], [2; 32], [3; 32]]
    );
    assert_eq!(
        s.bundle(b.clone()).await.unwrap(),
        Some(BundleRow {
            bundle: vec![2],
            identity_key: vec![22; 32],
            delivery_token_hash: Some(vec![3; 32]),
            kt_index: 1,
            kt_key_package_hash: Some(vec![7; 32]),
        })
    );
    assert_eq!(s.bundle(a.clone()).await.unwrap().unwrap().kt_index, 2);
    assert_eq!(s.bundle(c).await.unwrap(), None);
    assert_eq!(
        s.user_identities("ann".into()).await.unwrap(),
        vec![
            ("a".to_owned(), vec![11; 32]),
            ("b".to_owned(), vec![22; 32])
        ]
    );
    assert_eq!(
        s.resolve_identity(vec![22; 32]).await.unwrap(),
        Some(b.clone())
    );
    assert_eq!(s.resolve_identity(vec![99; 32]).await.unwrap(), None);
    assert!(
        s.list_devices("ann".into())
            .await
            .unwrap()
            .iter()
            .all(|d| d.has_keys)
    );
}

pub(crate) async fn blobs_respect_quota_and_record_progress<S: Store>(s: &S) {
    assert_eq!(s.blob(vec![1; 32]).await.unwrap(), None);
    assert!(matches!(
        s.append_blob(vec![1; 32], 0, vec![1]).await,
        Err(StoreError::NotFound)
    ));
    s.begin_blob(vec![1; 32], "gil".into(), 60, 100, 0)
        .await
        .unwrap();
    assert!(matches!(
        s.begin_blob(vec![2; 32], "gil".into(), 50, 100, 0).await,
        Err(StoreError::QuotaExceeded)
    ));
    assert!(matches!(
        s.begin_blob(vec![1; 32], "hal".into(), 10, 100, 0).await,
        Err(StoreError::AlreadyExists)
    ));
    // Another owner has a quota of its own.
    s.begin_blob(vec![2; 32], "hal".into(), 50, 100, 0)
        .await
        .unwrap();
    let bytes: Vec<u8> = (0..60u8).collect();
    assert_eq!(
        s.append_blob(vec![1; 32], 0, bytes[..25].to_vec())
            .await
            .unwrap(),
        25
    );
    // Only at the end: a second writer that fell behind (or skipped ahead) is refused.
    for wrong in [0, 24, 26] {
        assert!(matches!(
            s.append_blob(vec![1; 32], wrong, vec![9]).await,
            Err(StoreError::OutOfOrder { expected: 25 })
        ));
    }
    assert_eq!(
        s.append_blob(vec![1; 32], 25, bytes[25..40].to_vec())
            .await
            .unwrap(),
        40
    );
    assert_eq!(
        s.blob(vec![1; 32]).await.unwrap(),
        Some(BlobRow {
            owner: "gil".into(),
            size: 60,
            received: 40,
            complete: false,
            epoch: 0,
        })
    );
    // Not complete before every byte is stored.
    assert!(!s.finish_blob(vec![1; 32], 0, true).await.unwrap());
    s.append_blob(vec![1; 32], 40, bytes[40..].to_vec())
        .await
        .unwrap();
    // An outcome about another epoch changes nothing.
    assert!(!s.finish_blob(vec![1; 32], 1, true).await.unwrap());
    assert!(s.finish_blob(vec![1; 32], 0, true).await.unwrap());
    // A stale failed check cannot drop a complete blob's bytes.
    assert!(!s.finish_blob(vec![1; 32], 0, false).await.unwrap());
    assert!(s.blob(vec![1; 32]).await.unwrap().unwrap().complete);
    assert!(matches!(
        s.append_blob(vec![1; 32], 60, vec![1]).await,
        Err(StoreError::AlreadyExists)
    ));
    // Reads return the rest of the chunk holding the offset; reading on gives the whole blob.
    assert_eq!(s.read_blob(vec![1; 32], 30).await.unwrap(), bytes[30..40]);
    let mut read = Vec::new();
    while read.len() < bytes.len() {
        let chunk = s.read_blob(vec![1; 32], read.len() as u64).await.unwrap();
        assert!(!chunk.is_empty());
        read.extend(chunk);
    }
    assert_eq!(read, bytes);
    assert!(s.read_blob(vec![1; 32], 60).await.unwrap().is_empty());
    assert!(s.read_blob(vec![1; 32], 1_000).await.unwrap().is_empty());
    assert!(s.read_blob(vec![7; 32], 0).await.unwrap().is_empty());
    // A failed hash check (only ever made of a whole blob) drops the bytes: the upload
    // starts again from 0, in the next epoch.
    s.append_blob(vec![2; 32], 0, vec![5; 20]).await.unwrap();
    assert!(
        !s.finish_blob(vec![2; 32], 0, false).await.unwrap(),
        "a partial upload is not dropped"
    );
    s.append_blob(vec![2; 32], 20, vec![5; 30]).await.unwrap();
    assert!(s.finish_blob(vec![2; 32], 0, false).await.unwrap());
    let row = s.blob(vec![2; 32]).await.unwrap().unwrap();
    assert_eq!((row.received, row.epoch), (0, 1));
    assert!(s.read_blob(vec![2; 32], 0).await.unwrap().is_empty());
    // A second failed check about the old epoch (a concurrent upload) changes nothing more.
    s.append_blob(vec![2; 32], 0, vec![6; 50]).await.unwrap();
    assert!(!s.finish_blob(vec![2; 32], 0, false).await.unwrap());
    assert_eq!(s.blob(vec![2; 32]).await.unwrap().unwrap().received, 50);
    assert!(s.finish_blob(vec![2; 32], 1, true).await.unwrap());
    // Reset (an import), a complete blob takes its bytes again in its next epoch.
    assert_eq!(s.reset_blob(vec![1; 32]).await.unwrap(), Some(1));
    let row = s.blob(vec![1; 32]).await.unwrap().unwrap();
    assert_eq!((row.complete, row.received, row.epoch), (false, 0, 1));
    assert!(s.read_blob(vec![1; 32], 0).await.unwrap().is_empty());
    assert_eq!(s.reset_blob(vec![7; 32]).await.unwrap(), None);
}

pub(crate) async fn endpoints_expire<S: Store>(s: &S) {
    let d = with_device(s, "ivy", "pc").await;
    assert!(matches!(
        s.publish_endpoint(DeviceId::new("ghost", "x"), vec![], 100)
            .await,
        Err(StoreError::NotFound)
    ));
    s.publish_endpoint(d.clone(), vec!["127.0.0.1:1".into()], 100)
        .await
        .unwrap();
    s.publish_endpoint(d.clone(), vec!["127.0.0.1:2".into(), "[::1]:3".into()], 200)
        .await
        .unwrap();
    assert_eq!(
        s.endpoint(d.clone(), 150).await.unwrap(),
        Some((vec!["127.0.0.1:2".to_owned(), "[::1]:3".to_owned()], 200))
    );
    assert_eq!(s.endpoint(d, 200).await.unwrap(), None);
}

pub(crate) async fn secrets_are_created_once<S: Store>(s: &S) {
    assert_eq!(s.secret("k".into()).await.unwrap(), None);
    assert_eq!(
        s.init_secret("k".into(), vec![1, 2]).await.unwrap(),
        vec![1, 2]
    );
    // A second start (or another node) gets the first value.
    assert_eq!(
        s.init_secret("k".into(), vec![3]).await.unwrap(),
        vec![1, 2]
    );
    assert_eq!(s.secret("k".into()).await.unwrap(), Some(vec![1, 2]));
}

pub(crate) async fn signed_heads_are_kept_once_per_size<S: Store>(s: &S) {
    assert_eq!(s.kt_head(3).await.unwrap(), None);
    assert_eq!(s.init_kt_head(3, vec![1; 120]).await.unwrap(), vec![1; 120]);
    // Another node (or a restart) signing the same size gets the head kept first.
    assert_eq!(s.init_kt_head(3, vec![2; 120]).await.unwrap(), vec![1; 120]);
    assert_eq!(s.kt_head(3).await.unwrap(), Some(vec![1; 120]));
    assert_eq!(s.kt_head(4).await.unwrap(), None);
    // Leaves from an index on.
    for (n, user) in ["a", "b", "c"].iter().enumerate() {
        let d = with_device(s, user, "d").await;
        let n = u8::try_from(n).unwrap();
        s.publish_bundle(d, vec![n], vec![n + 1; 32], None, [n; 32], [0; 32])
            .await
            .unwrap();
    }
    assert_eq!(s.kt_leaves_from(1).await.unwrap(), vec![[1; 32], [2; 32]]);
    assert!(s.kt_leaves_from(3).await.unwrap().is_empty());
}

pub(crate) async fn concurrent_enqueues_get_distinct_dense_seqs<S: Store + Clone>(s: &S) {
    let bob = with_device(s, "bob", "phone").await;
    let senders: Vec<_> = (0..40u8)
        .map(|i| {
            let s = s.clone();
            let mut m = from(&format!("u{}/d", i % 4), &bob, i);
            m.sender_user = None;
            tokio::spawn(async move { s.enqueue(m, lim(1_000), 0).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in senders {
        seqs.push(task.await.unwrap().unwrap().seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    assert_eq!(s.peek(bob).await.unwrap().depth, 40);
}

pub(crate) async fn concurrent_publishes_get_distinct_dense_leaves<S: Store + Clone>(s: &S) {
    let mut devices = Vec::new();
    for i in 0..20u8 {
        devices.push(with_device(s, &format!("u{i}"), "d").await);
    }
    let tasks: Vec<_> = devices
        .into_iter()
        .enumerate()
        .map(|(i, d)| {
            let s = s.clone();
            let i = u8::try_from(i).unwrap();
            tokio::spawn(async move {
                s.publish_bundle(d, vec![i], vec![i; 32], None, [i; 32], [0; 32])
                    .await
            })
        })
        .collect();
    let mut indexes = Vec::new();
    for task in tasks {
        indexes.push(task.await.unwrap().unwrap());
    }
    indexes.sort_unstable();
    assert_eq!(indexes, (0..20).collect::<Vec<_>>());
    let leaves = s.kt_leaves().await.unwrap();
    assert_eq!(leaves.len(), 20);
    for i in 0..20u8 {
        let row = s
            .bundle(DeviceId::new(format!("u{i}"), "d"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(leaves[usize::try_from(row.kt_index).unwrap()], [i; 32]);
    }
}

fn outbound(sender: &DeviceId, destination: &str, to: &str, id: u8) -> OutboxMessage {
    OutboxMessage {
        destination: destination.into(),
        sender: sender.clone(),
        recipient: DeviceId::new(to, "phone"),
        message_id: vec![id; 16],
        payload: vec![id; 8],
    }
}

pub(crate) async fn the_relay_outbox_is_ordered_idempotent_bounded_and_leased<S: Store>(s: &S) {
    let alice = with_device(s, "alice", "laptop").await;
    let pushed = s
        .outbox_push(
            vec![
                outbound(&alice, "b.test", "bob", 1),
                outbound(&alice, "c.test", "carol", 2),
                outbound(&alice, "b.test", "bob", 3),
                outbound(&alice, "b.test", "bob", 1),
            ],
            lim(3),
            10,
        )
        .await
        .unwrap();
    let flags: Vec<bool> = pushed
        .iter()
        .map(|r| r.as_ref().unwrap().duplicate)
        .collect();
    assert_eq!(flags, [false, false, false, true]);
    // A destination holding its maximum refuses more (a repeat is still a duplicate).
    let more = s
        .outbox_push(
            vec![
                outbound(&alice, "b.test", "bob", 4),
                outbound(&alice, "b.test", "bob", 5),
                outbound(&alice, "b.test", "bob", 3),
            ],
            lim(3),
            11,
        )
        .await
        .unwrap();
    assert!(more[0].is_ok());
    assert!(matches!(more[1], Err(StoreError::QueueFull)));
    assert!(more[2].as_ref().unwrap().duplicate);
    // The sender now knows its recipients (as `user@domain`).
    assert_eq!(
        s.known_to("bob@b.test".into(), vec!["alice".into()])
            .await
            .unwrap(),
        [true]
    );
    // An unknown sender is refused.
    let ghost = DeviceId::new("ghost", "x");
    assert!(matches!(
        s.outbox_push(vec![outbound(&ghost, "b.test", "bob", 9)], lim(3), 12)
            .await
            .unwrap()[0],
        Err(StoreError::NotFound)
    ));

    assert_eq!(
        s.outbox_due("n1".into(), 100).await.unwrap(),
        ["b.test", "c.test"]
    );
    // n1 claims b.test: its messages in order; n2 gets nothing while the lease lasts.
    let (rows, state) = s
        .outbox_claim("b.test".into(), "n1".into(), 100, 1000, 2)
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<u8> = rows.iter().map(|r| r.message.message_id[0]).collect();
    assert_eq!(ids, [1, 3]);
    assert_eq!(rows[0].message.recipient, DeviceId::new("bob", "phone"));
    assert_eq!(rows[0].message.sender, alice);
    assert_eq!(rows[0].created_at_ms, 10);
    assert_eq!(state, DestinationState::default());
    assert!(
        s.outbox_claim("b.test".into(), "n2".into(), 200, 1000, 2)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.outbox_due("n2".into(), 200).await.unwrap(), ["c.test"]);
    // A failure backs it off and frees the lease; the failing time is the first failure's.
    s.outbox_retry_later("b.test".into(), 5000, 300)
        .await
        .unwrap();
    s.outbox_retry_later("b.test".into(), 6000, 400)
        .await
        .unwrap();
    assert!(
        s.outbox_claim("b.test".into(), "n2".into(), 1000, 1000, 2)
            .await
            .unwrap()
            .is_none(),
        "not due yet"
    );
    // Traffic from the peer makes it due at once; the retry state is kept until a success.
    s.outbox_wake("b.test".into()).await.unwrap();
    let (rows, state) = s
        .outbox_claim("b.test".into(), "n2".into(), 1000, 1000, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows.len(), 3);
    assert_eq!(
        state,
        DestinationState {
            attempts: 2,
            failing_since_ms: 300
        }
    );
    // Delivered rows go, and the retry state is cleared.
    s.outbox_sent("b.test".into(), vec![rows[0].id, rows[1].id])
        .await
        .unwrap();
    let (rows, state) = s
        .outbox_claim("b.test".into(), "n2".into(), 1100, 1000, 10)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].message.message_id, vec![4; 16]);
    assert_eq!(state, DestinationState::default());
    // The lease expires: another node may take over.
    assert!(
        s.outbox_claim("b.test".into(), "n1".into(), 2200, 1000, 10)
            .await
            .unwrap()
            .is_some()
    );
}

pub(crate) async fn relay_failures_reach_their_senders<S: Store>(s: &S) {
    let alice = with_device(s, "alice", "laptop").await;
    let carol = with_device(s, "carol", "pc").await;
    s.outbox_push(
        vec![
            outbound(&alice, "b.test", "bob", 1),
            outbound(&carol, "b.test", "bob", 2),
            outbound(&alice, "b.test", "bob", 3),
        ],
        lim(100),
        1,
    )
    .await
    .unwrap();
    let (rows, _) = s
        .outbox_claim("b.test".into(), "n".into(), 1, 100, 10)
        .await
        .unwrap()
        .unwrap();
    let failed = s
        .outbox_fail(
            vec![rows[0].id, rows[1].id],
            "b.test refused: no such device".into(),
            false,
            50,
        )
        .await
        .unwrap();
    let senders: Vec<&str> = failed.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(senders, ["alice", "carol"]);
    let mine = s.relay_failures("alice".into(), 0, 10).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].recipient, DeviceId::new("bob@b.test", "phone"));
    assert_eq!(mine[0].message_id, vec![1; 16]);
    assert_eq!(mine[0].reason, "b.test refused: no such device");
    assert!(!mine[0].retryable);
    assert_eq!(mine[0].failed_at_ms, 50);
    assert!(
        s.relay_failures("alice".into(), mine[0].id, 10)
            .await
            .unwrap()
            .is_empty()
    );
    // A failed message left the outbox; the other one waits.
    let (rows, _) = s
        .outbox_claim("b.test".into(), "n".into(), 2, 100, 10)
        .await
        .unwrap()
        .unwrap();
    let ids: Vec<u8> = rows.iter().map(|r| r.message.message_id[0]).collect();
    assert_eq!(ids, [3]);
}

pub(crate) async fn relayed_messages_are_queued_once_beyond_their_ack<S: Store>(s: &S) {
    let bob = with_device(s, "bob", "phone").await;
    let remote = |id: u8| {
        let mut m = from("alice@a.test/laptop", &bob, id);
        m.sender_user = None;
        m
    };
    let ghost = DeviceId::new("bob", "gone");
    let first = s
        .relay_accept(
            vec![remote(1), msg(&ghost, 2), remote(3)],
            lim(100),
            5,
            1000,
        )
        .await
        .unwrap();
    assert!(!first[0].as_ref().unwrap().duplicate);
    assert!(matches!(first[1], Err(StoreError::NotFound)));
    assert!(!first[2].as_ref().unwrap().duplicate);
    let queued = s.fetch(bob.clone(), 0, 10).await.unwrap();
    assert_eq!(queued.len(), 2);
    s.ack(bob.clone(), queued[1].seq).await.unwrap();
    // Relayed again after the ack: recognised, not queued.
    let again = s
        .relay_accept(vec![remote(1), remote(3)], lim(100), 6, 1000)
        .await
        .unwrap();
    assert!(again.iter().all(|r| r.as_ref().unwrap().duplicate));
    assert_eq!(s.peek(bob.clone()).await.unwrap().depth, 0);
    // A refused message is not remembered: it may come again once there is room.
    let full = s
        .relay_accept(vec![remote(4)], lim(0), 7, 1000)
        .await
        .unwrap();
    assert!(matches!(full[0], Err(StoreError::QueueFull)));
    let later = s
        .relay_accept(vec![remote(4)], lim(10), 8, 1000)
        .await
        .unwrap();
    assert!(!later[0].as_ref().unwrap().duplicate);
    // The memory ends when it expires.
    s.delete_expired(1000).await.unwrap();
    let after = s
        .relay_accept(vec![remote(1)], lim(10), 1001, 2000)
        .await
        .unwrap();
    assert!(!after[0].as_ref().unwrap().duplicate);
}

pub(crate) async fn witnessed_heads_move_only_from_the_head_last_seen<S: Store>(s: &S) {
    let head = |size: u64, byte: u8| WitnessedHead {
        log_key: vec![7; 32],
        tree_size: size,
        head: vec![byte; 4],
    };
    assert_eq!(s.witnessed_head("b.test".into()).await.unwrap(), None);
    assert!(
        s.witness_head("b.test".into(), None, head(2, 1))
            .await
            .unwrap()
    );
    // A second first sighting loses to the first.
    assert!(
        !s.witness_head("b.test".into(), None, head(3, 9))
            .await
            .unwrap()
    );
    // Moving on needs the size last seen.
    assert!(
        !s.witness_head("b.test".into(), Some(1), head(4, 2))
            .await
            .unwrap()
    );
    assert!(
        s.witness_head("b.test".into(), Some(2), head(4, 2))
            .await
            .unwrap()
    );
    // The pinned log key never changes.
    let mut other_key = head(5, 3);
    other_key.log_key = vec![8; 32];
    assert!(
        !s.witness_head("b.test".into(), Some(4), other_key)
            .await
            .unwrap()
    );
    assert_eq!(
        s.witnessed_head("b.test".into()).await.unwrap(),
        Some(head(4, 2))
    );
    assert_eq!(s.witnessed_head("c.test".into()).await.unwrap(), None);
}

pub(crate) async fn a_held_sender_waits_and_the_others_go_on<S: Store>(s: &S) {
    let alice = with_device(s, "alice", "laptop").await;
    let carol = with_device(s, "carol", "pc").await;
    let mut quota = lim(100);
    quota.sender_messages = 3;
    let pushed = s
        .outbox_push(
            vec![
                outbound(&alice, "b.test", "bob", 1),
                outbound(&carol, "b.test", "bob", 2),
                outbound(&alice, "b.test", "bob", 3),
                outbound(&carol, "b.test", "bob", 4),
                outbound(&alice, "b.test", "dave", 5),
                outbound(&alice, "b.test", "bob", 6),
            ],
            quota,
            1,
        )
        .await
        .unwrap();
    // One user's share of a destination's outbox is bounded.
    assert!(matches!(
        pushed[5],
        Err(StoreError::SenderQuota { stranger: false })
    ));
    let claim = |now| s.outbox_claim("b.test".into(), "n".into(), now, 10, 10);
    let (rows, _) = claim(10).await.unwrap().unwrap();
    let first_of_alice = rows[0].id;
    // Alice's first message to bob is held: none of hers to bob goes before it; carol's
    // and alice's to dave go on.
    s.outbox_hold(vec![first_of_alice], 100).await.unwrap();
    let (rows, _) = claim(20).await.unwrap().unwrap();
    let ids: Vec<u8> = rows.iter().map(|r| r.message.message_id[0]).collect();
    assert_eq!(ids, [2, 4, 5]);
    // Once the hold is over, alice's come back first, in order.
    let (rows, _) = claim(100).await.unwrap().unwrap();
    let ids: Vec<u8> = rows.iter().map(|r| r.message.message_id[0]).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);
}

pub(crate) async fn a_relayed_sender_refused_for_room_is_not_overtaken<S: Store>(s: &S) {
    let bob = with_device(s, "bob", "phone").await;
    let tablet = with_device(s, "bob", "tablet").await;
    let remote_to = |to: &DeviceId, sender: &str, id: u8, size: usize| {
        let mut m = from(sender, to, id);
        m.sender_user = None;
        m.payload = vec![id; size];
        m
    };
    let remote = |sender: &str, id: u8, size: usize| remote_to(&bob, sender, id, size);
    let mut limits = lim(100);
    limits.sender_bytes = 100;
    let results = s
        .relay_accept(
            vec![
                remote("alice@a.test/laptop", 1, 60),
                remote("alice@a.test/laptop", 2, 60),
                remote("carol@a.test/pc", 3, 10),
                remote("alice@a.test/laptop", 4, 10),
                remote_to(&tablet, "alice@a.test/laptop", 5, 10),
            ],
            limits,
            1,
            1000,
        )
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(StoreError::SenderQuota { .. })));
    assert!(results[2].is_ok());
    // Small enough to fit, but behind alice's refused one: refused too.
    assert!(matches!(results[3], Err(StoreError::SenderQuota { .. })));
    // Her message to another queue is not held back by the full one.
    assert!(results[4].is_ok());
    let queued: Vec<u8> = s
        .fetch(bob, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|m| m.message_id[0])
        .collect();
    assert_eq!(queued, [1, 3]);
}
