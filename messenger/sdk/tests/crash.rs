//! A receiving process killed at the worst moments loses nothing and shows nothing twice.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use qpq_sdk::{ClientEvent, ConnectionState, ConversationId, CrashPoint, QpqClient};
use tokio::sync::broadcast;

/// A new process for the store in `dir`, armed to fail at `point`.
fn armed(server: &Server, dir: &std::path::Path, point: CrashPoint) -> QpqClient {
    QpqClient::builder()
        .server(server.addr)
        .pin(server.fingerprint)
        .data_dir(dir)
        .passphrase("store passphrase")
        .crash_at(point)
        .build()
        .unwrap()
}

/// Alice and Bob share a DM; Bob's process is then replaced by one armed to crash at `point`.
async fn crash_scenario(point: CrashPoint) {
    let server = Server::start().await;
    let Pair {
        a_dir: _a_dir,
        b_dir,
        alice,
        bob,
        bob_events: _bob_events,
        dm,
    } = pair(&server).await;
    bob.close().await;

    // Bob's next process dies while it handles the first message.
    let doomed = armed(&server, b_dir.path(), point);
    let mut doomed_events = doomed.subscribe();
    doomed.connect().await.unwrap();
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("first", None)
        .unwrap()
        .id();
    let reason = next(&mut doomed_events, |e| match e {
        ClientEvent::ConnectionStateChanged(ConnectionState::Offline { reason })
            if reason.contains("simulated crash") =>
        {
            Some(reason)
        }
        _ => None,
    })
    .await;
    let stored = doomed
        .conversation(&dm.id)
        .unwrap()
        .messages(10)
        .unwrap()
        .len();
    match point {
        CrashPoint::AfterDecrypt => assert_eq!(stored, 0, "died before committing: {reason}"),
        CrashPoint::BeforeAck => assert_eq!(stored, 1, "died after committing: {reason}"),
        CrashPoint::StoreFailure | CrashPoint::StoreFailureAfter(_) => unreachable!("not a crash"),
    }
    doomed.close().await;

    // The restarted process shows "first" exactly once, then what follows.
    let bob = server.client(b_dir.path());
    let mut bob_events = bob.subscribe();
    bob.connect().await.unwrap();
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("second", None)
        .unwrap()
        .id();
    let seen = received_until(&mut bob_events, "second").await;
    match point {
        CrashPoint::AfterDecrypt => assert_eq!(seen, vec!["first", "second"]),
        CrashPoint::BeforeAck => assert_eq!(seen, vec!["second"], "first is not shown again"),
        CrashPoint::StoreFailure | CrashPoint::StoreFailureAfter(_) => unreachable!("not a crash"),
    }
    assert_texts(&bob, &dm.id, &["first", "second"]);
}

/// Incoming texts up to and including `last`; fails on an undecryptable entry.
async fn received_until(events: &mut broadcast::Receiver<ClientEvent>, last: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let body = next(events, |e| match e {
            ClientEvent::MessageReceived(m) if !m.outgoing => Some(m.body),
            ClientEvent::UndecryptableMessage { reason, .. } => {
                panic!("an entry was lost: {reason}")
            }
            _ => None,
        })
        .await;
        let done = body == last;
        seen.push(body);
        if done {
            return seen;
        }
    }
}

fn assert_texts(client: &QpqClient, dm: &ConversationId, want: &[&str]) {
    let stored: Vec<String> = client
        .conversation(dm)
        .unwrap()
        .messages(100)
        .unwrap()
        .into_iter()
        .map(|m| m.body)
        .collect();
    assert_eq!(stored, want);
}

#[tokio::test]
async fn a_receiver_killed_after_decrypting_but_before_committing_loses_nothing() {
    crash_scenario(CrashPoint::AfterDecrypt).await;
}

#[tokio::test]
async fn a_receiver_killed_after_committing_but_before_acknowledging_shows_nothing_twice() {
    crash_scenario(CrashPoint::BeforeAck).await;
}

#[tokio::test]
async fn a_store_failure_while_receiving_loses_nothing_in_the_same_process() {
    // Bob's store fails once (busy, full, I/O) while it commits the first message; the same
    // process fetches the entry again and must apply it, not take it for a replay.
    let server = Server::start().await;
    let Pair {
        a_dir: _a_dir,
        b_dir,
        alice,
        bob,
        bob_events: _bob_events,
        dm,
    } = pair(&server).await;
    bob.close().await;
    let bob = armed(&server, b_dir.path(), CrashPoint::StoreFailure);
    let mut bob_events = bob.subscribe();
    bob.connect().await.unwrap();
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("first", None)
        .unwrap()
        .id();
    let reason = next(&mut bob_events, |e| match e {
        ClientEvent::ConnectionStateChanged(ConnectionState::Offline { reason }) => Some(reason),
        ClientEvent::UndecryptableMessage { reason, .. } => panic!("an entry was lost: {reason}"),
        _ => None,
    })
    .await;
    assert!(reason.contains("injected store failure"), "{reason}");
    assert_eq!(
        received_until(&mut bob_events, "first").await,
        vec!["first"]
    );
    alice
        .conversation(&dm.id)
        .unwrap()
        .send_text("second", None)
        .unwrap()
        .id();
    assert_eq!(
        received_until(&mut bob_events, "second").await,
        vec!["second"]
    );
    assert_texts(&bob, &dm.id, &["first", "second"]);
}

#[tokio::test]
async fn a_store_failure_in_the_middle_of_a_run_loses_nothing_and_repeats_nothing() {
    // Five messages wait while Bob is away, so his client takes them as one run committed
    // together. The store fails after the first two were decrypted (their MLS steps done in
    // memory): the run rolls back, and the next fetch must decrypt all five again, which it
    // can only if nothing of the rolled-back steps stayed in memory.
    let server = Server::start().await;
    let Pair {
        a_dir: _a_dir,
        b_dir,
        alice,
        bob,
        bob_events: _bob_events,
        dm,
    } = pair(&server).await;
    bob.close().await;
    let mut alice_events = alice.subscribe();
    let sent: Vec<_> = (1..=5)
        .map(|i| {
            alice
                .conversation(&dm.id)
                .unwrap()
                .send_text(&format!("m{i}"), None)
                .unwrap()
                .id()
        })
        .collect();
    for id in &sent {
        next(&mut alice_events, |e| match e {
            ClientEvent::SendStateChanged {
                id: done,
                state: qpq_sdk::SendState::Sent,
                ..
            } if done == *id => Some(()),
            _ => None,
        })
        .await;
    }
    let bob = armed(&server, b_dir.path(), CrashPoint::StoreFailureAfter(2));
    let mut bob_events = bob.subscribe();
    bob.connect().await.unwrap();
    let reason = next(&mut bob_events, |e| match e {
        ClientEvent::ConnectionStateChanged(ConnectionState::Offline { reason }) => Some(reason),
        ClientEvent::UndecryptableMessage { reason, .. } => panic!("an entry was lost: {reason}"),
        ClientEvent::MessageReceived(m) if !m.outgoing => {
            panic!("{} was shown before the run committed", m.body)
        }
        _ => None,
    })
    .await;
    assert!(reason.contains("injected store failure"), "{reason}");
    assert_eq!(
        received_until(&mut bob_events, "m5").await,
        vec!["m1", "m2", "m3", "m4", "m5"]
    );
    assert_texts(&bob, &dm.id, &["m1", "m2", "m3", "m4", "m5"]);
}
