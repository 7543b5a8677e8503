//! The messenger end to end on one machine: N senders -> 1 recipient through enqueue, fetch
//! and ack on SQLite; OPAQUE login; enqueue-to-push latency (with p50/p99 printed).
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qpq_proto::auth_flows::{login, register};
use qpq_proto::v1::{self, delivery_client::DeliveryClient, server_event_push::Events};

struct Setup {
    _dir: tempfile::TempDir,
    server: qpq_server::RunningServer,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let mut config = qpq_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    config.limits.calls_per_second_per_ip = 1_000_000;
    config.limits.logins_per_minute_per_ip = 1_000_000;
    config.limits.max_queue_depth = 1_000_000;
    // The bench measures throughput; the abuse controls (per-user rates, per-sender and
    // stranger quotas, login limits per account and connection) would only throttle it.
    config.limits.messages_per_second_per_user = 1_000_000;
    config.limits.stranger_messages_per_minute_per_user = 1_000_000;
    config.limits.max_pending_per_sender = 1_000_000;
    config.limits.max_pending_per_stranger = 1_000_000;
    config.limits.max_pending_bytes_per_stranger = 1 << 40;
    config.limits.max_pending_bytes_per_sender = 1 << 40;
    config.limits.max_queue_bytes = 1 << 40;
    config.limits.writes_per_second_per_user = 1_000_000;
    config.limits.logins_per_minute_per_account = 1_000_000;
    config.limits.auth_attempts_per_connection = 1_000_000;
    let server = qpq_server::start(config).await.unwrap();
    Setup { _dir: dir, server }
}

async fn connect(s: &Setup) -> qrpc::Client {
    qrpc::Client::builder(
        s.server.addr,
        qrpc::tls::ClientTls::pinned(s.server.fingerprint),
    )
    .configure(|c| c.alpn = vec![b"qpq/1".to_vec()])
    .connect()
    .await
    .unwrap()
}

async fn account(s: &Setup, user: &str) -> qrpc::Client {
    let client = connect(s).await;
    register(&client, user, "benchmark password").await.unwrap();
    login(&client, user, "d1", "benchmark password")
        .await
        .unwrap();
    client
}

fn message(to: &v1::DeviceRef, sender: usize, n: u64) -> v1::EnqueueRequest {
    let mut id = vec![sender as u8; 8];
    id.extend_from_slice(&n.to_be_bytes());
    v1::EnqueueRequest {
        recipient: Some(to.clone()),
        message_id: id.into(),
        payload: vec![0x5a; 256].into(),
        delivery_token: Default::default(),
    }
}

fn messenger(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(setup());
    let recipient = rt.block_on(account(&s, "recipient"));
    let inbox = DeliveryClient::new(recipient.clone());
    let to = v1::DeviceRef {
        user: "recipient".into(),
        device: "d1".into(),
    };

    let mut g = c.benchmark_group("messenger");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    for senders in [1usize, 4, 16] {
        let clients: Vec<DeliveryClient> = rt.block_on(async {
            let mut v = Vec::new();
            for i in 0..senders {
                v.push(DeliveryClient::new(
                    account(&s, &format!("s{senders}x{i}")).await,
                ));
            }
            v
        });
        let per_sender = 16u64;
        let mut round = 0u64;
        g.throughput(Throughput::Elements(senders as u64 * per_sender));
        g.bench_function(
            BenchmarkId::new("enqueue_fetch_ack", format!("{senders}_senders")),
            |b| {
                b.to_async(&rt).iter(|| {
                    round += 1;
                    let base = round * per_sender;
                    let clients = clients.clone();
                    let inbox = inbox.clone();
                    let to = to.clone();
                    async move {
                        let sends = clients.iter().enumerate().map(|(i, c)| {
                            let to = to.clone();
                            async move {
                                for n in base..base + per_sender {
                                    c.enqueue(&message(&to, i, n)).await.unwrap();
                                }
                            }
                        });
                        futures::future::join_all(sends).await;
                        let mut received = 0;
                        let mut after = 0;
                        while received < senders as u64 * per_sender {
                            let page = inbox
                                .fetch(&v1::FetchRequest {
                                    after_seq: after,
                                    limit: 500,
                                })
                                .await
                                .unwrap();
                            let last = page.messages.last().unwrap().seq;
                            received += page.messages.len() as u64;
                            after = last;
                        }
                        inbox
                            .ack(&v1::AckRequest { up_to_seq: after })
                            .await
                            .unwrap();
                    }
                })
            },
        );
    }

    let login_client = rt.block_on(connect(&s));
    rt.block_on(register(&login_client, "login-bench", "benchmark password"))
        .unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("opaque_login", |b| {
        b.to_async(&rt)
            .iter(|| login(&login_client, "login-bench", "d1", "benchmark password"))
    });

    // Enqueue-to-push latency: one sender, the recipient listening on its push stream.
    let listener = rt.block_on(account(&s, "listener"));
    let mut events = Events::new(listener.push_events().unwrap());
    let sender = DeliveryClient::new(rt.block_on(account(&s, "pusher")));
    let to_listener = v1::DeviceRef {
        user: "listener".into(),
        device: "d1".into(),
    };
    let mut latencies = Vec::new();
    let mut n = 0u64;
    g.bench_function("enqueue_to_push", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    n += 1;
                    let started = Instant::now();
                    sender.enqueue(&message(&to_listener, 0, n)).await.unwrap();
                    events.recv().await.unwrap().unwrap();
                    let elapsed = started.elapsed();
                    total += elapsed;
                    latencies.push(elapsed);
                }
                total
            })
        })
    });
    g.finish();
    latencies.sort();
    if !latencies.is_empty() {
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        println!(
            "messenger/enqueue_to_push percentiles over {} samples: p50 {:?}, p99 {:?}",
            latencies.len(),
            pct(0.50),
            pct(0.99)
        );
    }
    rt.block_on(s.server.shutdown());
}

criterion_group!(benches, messenger);
criterion_main!(benches);
