//! qpq-sdk to qpq-sdk on loopback, through a real qpq-server: one direct message end to end
//! (send call to MessageReceived on the other client), a group send to 10 and to 100 members
//! (until every member has it, with the sealed bytes sent), and catching up on 10,000 queued
//! messages. Percentiles of the direct message are printed after its run.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qpq_sdk::{ClientEvent, ConversationId, MessageId, QpqClient};
use tokio::sync::broadcast;

struct World {
    _dir: tempfile::TempDir,
    server: qpq_server::RunningServer,
}

async fn world() -> World {
    let (server, dir) = qrpc_benches::sdk_server().await.unwrap();
    World { server, _dir: dir }
}

struct User {
    client: QpqClient,
    events: broadcast::Receiver<ClientEvent>,
    dir: tempfile::TempDir,
}

fn client(w: &World, dir: &Path) -> QpqClient {
    qrpc_benches::sdk_client(&w.server, dir).unwrap()
}

async fn user(w: &World, name: &str) -> User {
    let dir = tempfile::tempdir().unwrap();
    let client = client(w, dir.path());
    client.register(name, "pw").await.unwrap();
    client.login(name, "d1", "pw").await.unwrap();
    let events = client.subscribe();
    User {
        client,
        events,
        dir,
    }
}

async fn joined(u: &mut User) {
    qrpc_benches::wait_for_event(&mut u.events, |e| {
        matches!(e, ClientEvent::ConversationCreated(_))
    })
    .await;
}

async fn received(u: &mut User, id: MessageId) {
    qrpc_benches::wait_for_event(
        &mut u.events,
        |e| matches!(e, ClientEvent::MessageReceived(m) if m.id == id),
    )
    .await;
}

fn sdk(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let w = rt.block_on(world());
    let mut g = c.benchmark_group("sdk");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    // One direct message, end to end.
    let (mut alice, mut bob, dm) = rt.block_on(async {
        let alice = user(&w, "alice").await;
        let mut bob = user(&w, "bob").await;
        let dm = alice.client.create_dm("bob").await.unwrap();
        joined(&mut bob).await;
        (alice, bob, dm.id)
    });
    let mut samples = Vec::new();
    g.throughput(Throughput::Elements(1));
    g.bench_function("dm_end_to_end", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                let dm = alice.client.conversation(&dm).unwrap();
                for _ in 0..iters {
                    let start = Instant::now();
                    let id = dm.send_text("ping", None).unwrap().id();
                    received(&mut bob, id).await;
                    let took = start.elapsed();
                    samples.push(took);
                    total += took;
                }
                total
            })
        })
    });
    samples.sort();
    println!(
        "sdk/dm_end_to_end percentiles over {} messages: p50 {:?}, p99 {:?}",
        samples.len(),
        qrpc_benches::percentile(&samples, 0.50),
        qrpc_benches::percentile(&samples, 0.99)
    );
    let _ = &mut alice.events;

    // A group send, until every member has it.
    for size in [10usize, 100] {
        let (sender, mut members, group) = rt.block_on(async {
            let sender = user(&w, &format!("g{size}owner")).await;
            let mut members = Vec::new();
            for i in 1..size {
                members.push(user(&w, &format!("g{size}m{i}")).await);
            }
            let names: Vec<String> = (1..size).map(|i| format!("g{size}m{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let group = sender.client.create_group("bench", &refs).await.unwrap();
            for m in &mut members {
                joined(m).await;
            }
            (sender, members, group.id)
        });
        let before = sender.client.sealed_bytes_sent();
        let mut sends = 0u64;
        g.throughput(Throughput::Elements((size - 1) as u64));
        g.bench_function(BenchmarkId::new("group_send", size), |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let group = sender.client.conversation(&group).unwrap();
                    let start = Instant::now();
                    for _ in 0..iters {
                        let id = group.send_text("to all", None).unwrap().id();
                        sends += 1;
                        for m in &mut members {
                            received(m, id).await;
                        }
                    }
                    start.elapsed()
                })
            })
        });
        println!(
            "sdk/group_send/{size}: {} sealed bytes per message ({} sends)",
            (sender.client.sealed_bytes_sent() - before) / sends.max(1),
            sends
        );
    }

    // Catching up on 10,000 messages queued while the recipient was offline.
    let per_round = 10_000u64;
    let (carol_dir, dm2) = rt.block_on(async {
        let mut carol = user(&w, "carol").await;
        let dm2 = alice.client.create_dm("carol").await.unwrap();
        joined(&mut carol).await;
        carol.client.close().await;
        (carol.dir, dm2.id)
    });
    g.throughput(Throughput::Elements(per_round));
    g.bench_function(BenchmarkId::new("catch_up", per_round), |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += catch_up(&w, &alice.client, carol_dir.path(), dm2, per_round).await;
                }
                total
            })
        })
    });
    g.finish();
}

/// Queues `n` messages for Carol while she is offline (untimed), then times her client from
/// start until it has received them all.
async fn catch_up(
    w: &World,
    alice: &QpqClient,
    carol_dir: &Path,
    dm: ConversationId,
    n: u64,
) -> Duration {
    let mut alice_events = alice.subscribe();
    let mut last = None;
    let dm = alice.conversation(&dm).unwrap();
    for i in 0..n {
        last = Some(dm.send_text(&format!("m{i}"), None).unwrap().id());
    }
    let last = last.unwrap();
    qrpc_benches::wait_for_event(&mut alice_events, |e| {
        matches!(e, ClientEvent::SendStateChanged { id, state: qpq_sdk::SendState::Sent, .. } if *id == last)
    })
    .await;
    let start = Instant::now();
    let carol = client(w, carol_dir);
    let mut events = carol.subscribe();
    carol.connect().await.unwrap();
    qrpc_benches::wait_for_event(
        &mut events,
        |e| matches!(e, ClientEvent::MessageReceived(m) if m.id == last),
    )
    .await;
    let took = start.elapsed();
    carol.close().await;
    took
}

criterion_group!(benches, sdk);
criterion_main!(benches);
