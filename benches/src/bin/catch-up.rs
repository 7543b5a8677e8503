//! How fast a client catches up: `cargo run --release -p qrpc-benches --bin catch-up -- [N]`
//! queues N messages (default 10,000) from Alice to Carol while Carol's client is stopped,
//! then starts Carol's client and times it from start until the last message is shown.
//! Everything runs on loopback through a real qpq-server, on a 2-worker runtime (the
//! `sdk` criterion bench's setup, without its 10 samples of a long run).
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use qpq_sdk::{ClientEvent, QpqClient, SendState};

fn client(server: &qpq_server::RunningServer, dir: &std::path::Path) -> QpqClient {
    qrpc_benches::sdk_client(server, dir).unwrap()
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(10_000, |a| a.parse().expect("N: a number of messages"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (server, _data) = qrpc_benches::sdk_server().await.unwrap();
        let (alice_dir, carol_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let alice = client(&server, alice_dir.path());
        alice.register("alice", "pw").await.unwrap();
        alice.login("alice", "d1", "pw").await.unwrap();
        let carol = client(&server, carol_dir.path());
        let mut carol_events = carol.subscribe();
        carol.register("carol", "pw").await.unwrap();
        carol.login("carol", "d1", "pw").await.unwrap();
        let dm = alice.create_dm("carol").await.unwrap().id;
        qrpc_benches::wait_for_event(&mut carol_events, |e| matches!(e, ClientEvent::ConversationCreated(_))).await;
        carol.close().await;

        let mut alice_events = alice.subscribe();
        let queued = Instant::now();
        let mut last = None;
        let dm = alice.conversation(&dm).unwrap();
        for i in 0..n {
            last = Some(dm.send_text(&format!("m{i}"), None).unwrap().id());
        }
        let last = last.expect("N > 0");
        qrpc_benches::wait_for_event(&mut alice_events, |e| {
            matches!(e, ClientEvent::SendStateChanged { id, state: SendState::Sent, .. } if *id == last)
        })
        .await;
        let queued = queued.elapsed();
        println!(
            "sent {n} messages in {queued:.2?}: {:.0} messages/s",
            n as f64 / queued.as_secs_f64()
        );

        let start = Instant::now();
        let carol = client(&server, carol_dir.path());
        let mut events = carol.subscribe();
        carol.connect().await.unwrap();
        qrpc_benches::wait_for_event(&mut events, |e| matches!(e, ClientEvent::MessageReceived(m) if m.id == last)).await;
        let took = start.elapsed();
        println!(
            "caught up on {n} messages in {took:.2?}: {:.0} messages/s",
            n as f64 / took.as_secs_f64()
        );
    });
}
