//! Federation on one machine: two servers on loopback that federate (`a.bench.test`,
//! `b.bench.test`), measured in the same run as delivery on one server.
//!
//! - `relay_throughput`: messages from a user of a to a user of b, in batches of 100
//!   `BatchEnqueue`s, until the recipient's queue on b holds them all (messages/s).
//! - `latency/local` and `latency/federated`: one `Enqueue` until the recipient's `FetchWait`
//!   returns it, to a user of the same server and to a user of the other one: the difference
//!   is what federation adds (the outbox, one relay call, the remote queue).
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qpq_proto::v1::{self, delivery_client::DeliveryClient};

struct Pair {
    a: qpq_server::RunningServer,
    b: qpq_server::RunningServer,
    _dirs: Vec<tempfile::TempDir>,
}

/// Two federating servers with their abuse controls lifted (they would only throttle the
/// measurement).
async fn pair() -> Pair {
    let domains = ["a.bench.test", "b.bench.test"];
    let mut sites = Vec::new();
    for domain in domains {
        let dir = tempfile::tempdir().unwrap();
        let cert = qrpc::tls::SelfSigned::generate(&[domain]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.cert_pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.key_pem().as_bytes()).unwrap();
        let pin = qpq_server::util::hex(&qrpc::tls::key_fingerprint(cert.cert()).unwrap());
        let addr = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        sites.push((domain, dir, pin, addr));
    }
    let mut servers = Vec::new();
    for (i, (domain, dir, _, addr)) in sites.iter().enumerate() {
        let (peer, _, peer_pin, peer_addr) = &sites[1 - i];
        let mut config = qpq_server::Config {
            listen: *addr,
            domain: (*domain).to_owned(),
            data_dir: dir.path().join("data"),
            tls_cert: Some(dir.path().join("cert.pem")),
            tls_key: Some(dir.path().join("key.pem")),
            ..Default::default()
        };
        qrpc_benches::unthrottled(&mut config);
        let f = &mut config.federation;
        f.enabled = true;
        f.peers = vec![qpq_server::config::FederationPeer {
            domain: (*peer).to_owned(),
            key_pin: peer_pin.clone(),
            address: Some(*peer_addr),
        }];
        f.messages_per_second_per_peer = 10_000_000;
        f.calls_per_second_per_peer = 10_000_000;
        f.max_outbox_per_sender = 10_000_000;
        f.max_outbox_bytes_per_sender = 1 << 40;
        servers.push(qpq_server::start(config).await.unwrap());
    }
    let b = servers.pop().unwrap();
    let a = servers.pop().unwrap();
    Pair {
        a,
        b,
        _dirs: sites.into_iter().map(|s| s.1).collect(),
    }
}

async fn account(server: &qpq_server::RunningServer, user: &str) -> qrpc::Client {
    qrpc_benches::qpq_account(server, user).await.unwrap()
}

fn message(to: &v1::DeviceRef, n: u64) -> v1::EnqueueRequest {
    let mut id = vec![7u8; 8];
    id.extend_from_slice(&n.to_be_bytes());
    v1::EnqueueRequest {
        recipient: Some(to.clone()),
        message_id: id.into(),
        payload: vec![0x5a; 256].into(),
        delivery_token: Default::default(),
    }
}

/// Waits until `inbox` holds messages past `after`, acknowledges them, and returns the last
/// seq and how many there were.
async fn drain(inbox: &DeliveryClient, after: u64) -> (u64, u64) {
    let page = inbox
        .fetch_wait(&v1::FetchWaitRequest {
            after_seq: after,
            limit: 1000,
            timeout_ms: 10_000,
        })
        .await
        .unwrap();
    let last = page.messages.last().map_or(after, |m| m.seq);
    if last > after {
        inbox
            .ack(&v1::AckRequest { up_to_seq: last })
            .await
            .unwrap();
    }
    (last, page.messages.len() as u64)
}

fn federation(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let p = rt.block_on(pair());
    let alice = DeliveryClient::new(rt.block_on(account(&p.a, "alice")));
    let carol = DeliveryClient::new(rt.block_on(account(&p.a, "carol")));
    let bob = DeliveryClient::new(rt.block_on(account(&p.b, "bob")));
    let to_bob = v1::DeviceRef {
        user: "bob@b.bench.test".into(),
        device: "d1".into(),
    };
    let to_carol = v1::DeviceRef {
        user: "carol".into(),
        device: "d1".into(),
    };
    let mut n = 0u64;
    let mut bob_seq = 0u64;
    let mut carol_seq = 0u64;

    let mut g = c.benchmark_group("federation");
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));

    const BATCH: u64 = 100;
    g.throughput(Throughput::Elements(BATCH));
    g.bench_function("relay_throughput", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let messages = (0..BATCH)
                        .map(|_| {
                            n += 1;
                            message(&to_bob, n)
                        })
                        .collect();
                    let answer = alice
                        .batch_enqueue(&v1::BatchEnqueueRequest { messages })
                        .await
                        .unwrap();
                    assert!(answer.results.iter().all(|r| r.relayed));
                    let mut got = 0;
                    while got < BATCH {
                        let (last, count) = drain(&bob, bob_seq).await;
                        bob_seq = last;
                        got += count;
                    }
                }
                start.elapsed()
            })
        });
    });

    g.throughput(Throughput::Elements(1));
    for (name, to, inbox, seq) in [
        ("latency/local", &to_carol, &carol, &mut carol_seq),
        ("latency/federated", &to_bob, &bob, &mut bob_seq),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        n += 1;
                        let start = Instant::now();
                        alice.enqueue(&message(to, n)).await.unwrap();
                        let mut got = 0;
                        while got == 0 {
                            let (last, count) = drain(inbox, *seq).await;
                            *seq = last;
                            got = count;
                        }
                        total += start.elapsed();
                    }
                    total
                })
            });
        });
    }
    g.finish();
    rt.block_on(async {
        p.a.shutdown().await;
        p.b.shutdown().await;
    });
}

criterion_group!(benches, federation);
criterion_main!(benches);
