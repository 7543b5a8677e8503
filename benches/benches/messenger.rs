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
    // The bench measures throughput; the abuse controls would only throttle it.
    let (server, dir) = qrpc_benches::qpq_server_with(|_| {}).await.unwrap();
    Setup { _dir: dir, server }
}

async fn connect(s: &Setup) -> qrpc::Client {
    qrpc_benches::qpq_connect(&s.server).await.unwrap()
}

async fn account(s: &Setup, user: &str) -> qrpc::Client {
    qrpc_benches::qpq_account(&s.server, user).await.unwrap()
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
        let pct = |p: f64| qrpc_benches::percentile(&latencies, p);
        println!(
            "messenger/enqueue_to_push percentiles over {} samples: p50 {:?}, p99 {:?}",
            latencies.len(),
            pct(0.50),
            pct(0.99)
        );
    }
    rt.block_on(s.server.shutdown());
}

/// The physical ceiling: the server's enqueue, fetch and ack statements run directly on rusqlite
/// in this process — no RPC, no sessions, no limits — with 16 enqueues per commit, as group
/// commit does for 16 concurrent senders. The server's throughput is reported against it.
fn store_ceiling(c: &mut Criterion) {
    use rusqlite::{Connection, params};
    const GROUP: u64 = 16;
    const ROUND: u64 = 256;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ceiling.db");
    // The real schema, from the server's migrations.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(qpq_server::store::SqliteStore::open(&path, 1))
        .unwrap();
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         INSERT INTO users (name, password_file, created_at_ms) VALUES ('r', x'00', 0);
         INSERT INTO devices (user, device, created_at_ms) VALUES ('r', 'd1', 0);",
    )
    .unwrap();
    let payload = vec![0x5au8; 256];
    let mut next = 0u64;
    let mut g = c.benchmark_group("store_ceiling");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(ROUND));
    g.bench_function("enqueue_fetch_ack_16_per_commit", |b| {
        b.iter(|| {
            let mut sender_ids = 0u64;
            for _ in 0..ROUND / GROUP {
                let tx = conn.unchecked_transaction().unwrap();
                for _ in 0..GROUP {
                    next += 1;
                    sender_ids += 1;
                    let sender = format!("s{}/d1", sender_ids % 16);
                    let id = next.to_be_bytes().to_vec();
                    // The same statements as the server's enqueue, in the same order.
                    let _dup: Option<i64> = tx
                        .prepare_cached("SELECT seq FROM queue WHERE user = ?1 AND device = ?2 AND sender = ?3 AND message_id = ?4")
                        .unwrap()
                        .query_row(params!["r", "d1", sender, id], |r| r.get(0))
                        .ok();
                    let (seq, _, _): (i64, i64, i64) = tx
                        .prepare_cached("SELECT next_seq, queue_messages, queue_bytes FROM devices WHERE user = ?1 AND device = ?2")
                        .unwrap()
                        .query_row(params!["r", "d1"], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                        .unwrap();
                    let _quota: Option<(i64, i64)> = tx
                        .prepare_cached("SELECT messages, bytes FROM queue_senders WHERE user = ?1 AND device = ?2 AND sender = ?3")
                        .unwrap()
                        .query_row(params!["r", "d1", sender], |r| Ok((r.get(0)?, r.get(1)?)))
                        .ok();
                    tx.prepare_cached("INSERT INTO queue (user, device, seq, sender, message_id, payload, received_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)")
                        .unwrap()
                        .execute(params!["r", "d1", seq, sender, id, payload])
                        .unwrap();
                    tx.prepare_cached("UPDATE devices SET next_seq = ?3, queue_messages = queue_messages + 1, queue_bytes = queue_bytes + ?4 WHERE user = ?1 AND device = ?2")
                        .unwrap()
                        .execute(params!["r", "d1", seq + 1, 256])
                        .unwrap();
                    tx.prepare_cached("INSERT INTO queue_senders (user, device, sender, messages, bytes) VALUES (?1, ?2, ?3, 1, ?4) ON CONFLICT (user, device, sender) DO UPDATE SET messages = messages + 1, bytes = bytes + excluded.bytes")
                        .unwrap()
                        .execute(params!["r", "d1", sender, 256])
                        .unwrap();
                }
                tx.commit().unwrap();
            }
            // Fetch everything in pages of 500, then one ack, as the benchmark's recipient does.
            let mut after = 0i64;
            loop {
                let page: Vec<(i64, Vec<u8>)> = conn
                    .prepare_cached("SELECT seq, payload FROM queue WHERE user = ?1 AND device = ?2 AND seq > ?3 ORDER BY seq LIMIT 500")
                    .unwrap()
                    .query_map(params!["r", "d1", after], |r| Ok((r.get(0)?, r.get(1)?)))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap();
                match page.last() {
                    Some((seq, _)) => after = *seq,
                    None => break,
                }
            }
            let tx = conn.unchecked_transaction().unwrap();
            let per_sender: Vec<(String, i64, i64)> = tx
                .prepare_cached("SELECT sender, COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM queue WHERE user = ?1 AND device = ?2 AND seq <= ?3 GROUP BY sender")
                .unwrap()
                .query_map(params!["r", "d1", after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            tx.prepare_cached("DELETE FROM queue WHERE user = ?1 AND device = ?2 AND seq <= ?3")
                .unwrap()
                .execute(params!["r", "d1", after])
                .unwrap();
            let (mut count, mut bytes) = (0i64, 0i64);
            for (sender, n, b) in &per_sender {
                count += n;
                bytes += b;
                tx.prepare_cached("UPDATE queue_senders SET messages = messages - ?4, bytes = bytes - ?5 WHERE user = ?1 AND device = ?2 AND sender = ?3")
                    .unwrap()
                    .execute(params!["r", "d1", sender, n, b])
                    .unwrap();
            }
            tx.prepare_cached("DELETE FROM queue_senders WHERE user = ?1 AND device = ?2 AND messages <= 0")
                .unwrap()
                .execute(params!["r", "d1"])
                .unwrap();
            tx.prepare_cached("UPDATE devices SET queue_messages = MAX(queue_messages - ?3, 0), queue_bytes = MAX(queue_bytes - ?4, 0) WHERE user = ?1 AND device = ?2")
                .unwrap()
                .execute(params!["r", "d1", count, bytes])
                .unwrap();
            tx.commit().unwrap();
        });
    });
    g.finish();
}

/// The PostgreSQL ceiling: the PostgreSQL store's own enqueue, fetch and ack (the server's
/// statements and transactions, row locks included) called directly — no RPC, no sessions, no
/// limits — by 16 concurrent senders to one recipient, then one fetch-everything and ack.
/// Needs `QPQ_TEST_POSTGRES_URL` (a fresh database is made and dropped); skipped without it.
fn postgres_ceiling(c: &mut Criterion) {
    use qpq_server::store::{DeviceId, NewMessage, PostgresStore, QueueLimits, Store};
    const SENDERS: u64 = 16;
    const ROUND: u64 = 256;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let Some(db) = rt.block_on(qpq_server::store::TestDatabase::create()) else {
        eprintln!("postgres_ceiling skipped: QPQ_TEST_POSTGRES_URL is unset");
        return;
    };
    let store = rt.block_on(PostgresStore::open(&db.url, 32)).unwrap();
    let recipient = DeviceId::new("r", "d1");
    rt.block_on(async {
        store.create_user("r".into(), vec![0], 0).await.unwrap();
        store
            .register_device(recipient.clone(), String::new(), 0, true, 10)
            .await
            .unwrap();
    });
    let limits = QueueLimits {
        max_messages: u64::MAX,
        max_bytes: u64::MAX,
        sender_messages: u64::MAX,
        sender_bytes: u64::MAX,
        stranger_messages: u64::MAX,
        stranger_bytes: u64::MAX,
    };
    let next = std::sync::atomic::AtomicU64::new(0);
    let mut g = c.benchmark_group("store_ceiling");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(ROUND));
    g.bench_function("postgres_enqueue_fetch_ack_16_senders", |b| {
        b.iter(|| {
            rt.block_on(async {
                let sends = (0..SENDERS).map(|s| {
                    let (store, recipient, next) = (&store, &recipient, &next);
                    async move {
                        for _ in 0..ROUND / SENDERS {
                            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            store
                                .enqueue(
                                    NewMessage {
                                        recipient: recipient.clone(),
                                        sender: format!("s{s}/d1"),
                                        sender_user: None,
                                        stranger: false,
                                        message_id: n.to_be_bytes().to_vec(),
                                        payload: vec![0x5a; 256],
                                    },
                                    limits,
                                    0,
                                )
                                .await
                                .unwrap();
                        }
                    }
                });
                futures::future::join_all(sends).await;
                let mut after = 0;
                loop {
                    let page = store.fetch(recipient.clone(), after, 500).await.unwrap();
                    match page.last() {
                        Some(m) => after = m.seq,
                        None => break,
                    }
                }
                store.ack(recipient.clone(), after).await.unwrap();
            })
        });
    });
    g.finish();
    drop(store);
    drop(db);
}

criterion_group!(benches, messenger, store_ceiling, postgres_ceiling);
criterion_main!(benches);
