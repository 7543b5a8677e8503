//! Concurrent writes are committed in groups: every acknowledged enqueue is there, once, in
//! per-device sequence order with no gap.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use qpq_proto::v1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_senders_are_all_acknowledged_and_fetched_in_order_without_gaps() {
    const SENDERS: usize = 16;
    const EACH: u8 = 40;
    let h = start(|c| {
        // Strangers' quotas and rates would throttle this on purpose; the semantics under test
        // are ordering and completeness.
        c.limits.max_pending_per_stranger = 10_000;
        c.limits.max_pending_bytes_per_stranger = 1 << 30;
        c.limits.stranger_messages_per_minute_per_user = 10_000;
        c.limits.messages_per_second_per_user = 10_000;
        c.limits.calls_per_second_per_ip = 100_000;
        c.limits.logins_per_minute_per_ip = 10_000;
    })
    .await;
    let recipient = Account::create(&h, "recipient", "d1").await;
    let to = recipient.me();
    let names: Vec<String> = (0..SENDERS).map(|i| format!("sender{i}")).collect();
    let senders: Vec<Account> =
        futures::future::join_all(names.iter().map(|n| Account::create(&h, n, "d1"))).await;
    let sends = senders.iter().enumerate().map(|(i, s)| {
        let delivery = s.delivery();
        let to = to.clone();
        async move {
            let mut seqs = Vec::new();
            for n in 0..EACH {
                let mut id = vec![i as u8; 15];
                id.push(n);
                let r = delivery
                    .enqueue(&v1::EnqueueRequest {
                        recipient: Some(to.clone()),
                        message_id: id.into(),
                        payload: vec![n; 256].into(),
                        delivery_token: Default::default(),
                    })
                    .await
                    .unwrap();
                assert!(!r.duplicate);
                seqs.push(r.seq);
            }
            seqs
        }
    });
    let acknowledged: Vec<Vec<u64>> = futures::future::join_all(sends).await;

    // Everything acknowledged is fetched, once, with consecutive sequence numbers.
    let mut fetched = Vec::new();
    let mut after = 0;
    loop {
        let page = recipient
            .delivery()
            .fetch(&v1::FetchRequest {
                after_seq: after,
                limit: 100,
            })
            .await
            .unwrap()
            .messages;
        let Some(last) = page.last() else { break };
        after = last.seq;
        fetched.extend(page);
    }
    let total = SENDERS * usize::from(EACH);
    assert_eq!(fetched.len(), total);
    let first = fetched[0].seq;
    for (k, m) in fetched.iter().enumerate() {
        assert_eq!(m.seq, first + k as u64, "no gap, no repeat");
    }
    // Each sender's messages are in the order it sent them, at the seq it was told.
    for (i, seqs) in acknowledged.iter().enumerate() {
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "sender {i}: {seqs:?}");
        for (n, seq) in seqs.iter().enumerate() {
            let m = fetched.iter().find(|m| m.seq == *seq).unwrap();
            assert_eq!(m.message_id[..15], [i as u8; 15]);
            assert_eq!(m.message_id[15], n as u8);
            assert_eq!(m.payload[0], n as u8);
        }
    }
    // And acknowledging removes exactly them.
    let removed = recipient
        .delivery()
        .ack(&v1::AckRequest { up_to_seq: after })
        .await
        .unwrap()
        .removed;
    assert_eq!(removed, total as u64);
    h.server.shutdown().await;
}
