//! A new client's connection and first call: qrpc with a full handshake, with a resumed session
//! (the call in 0-RTT data, and with 0-RTT off), against tonic 0.14 (TCP + TLS 1.3 + HTTP/2).
//!
//! `connect_and_first_call` runs on plain loopback, where a round trip costs microseconds: the
//! time per iteration is the CPU cost of a handshake, its inverse the handshakes per second of
//! one client. `connect_and_first_call_rtt20ms` runs the same through in-process relays that
//! delay every packet by 10 ms each way (this machine has no netem), where round trips dominate
//! and 0-RTT saves one.
#![allow(missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use qrpc_benches::{
    Payload, QrpcEchoServer, Resume, TonicEchoServer, tcp_delay_relay, tonic_gen, udp_delay_relay,
};

const STACKS: [(&str, Resume); 3] = [
    ("qrpc_full", Resume::Full),
    ("qrpc_resumed_0rtt", Resume::ZeroRtt),
    ("qrpc_resumed_no_0rtt", Resume::ResumedNoEarlyData),
];

fn connect(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let loopback: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let qrpc = rt.block_on(QrpcEchoServer::start(loopback)).unwrap();
    let tonic = rt.block_on(TonicEchoServer::start(loopback)).unwrap();
    let delay = Duration::from_millis(10);
    let qrpc_far = rt.block_on(udp_delay_relay(qrpc.addr, delay)).unwrap();
    let tonic_far = rt.block_on(tcp_delay_relay(tonic.addr, delay)).unwrap();

    for (group_name, qrpc_addr, tonic_addr, seconds) in [
        ("connect_and_first_call", qrpc.addr, tonic.addr, 5),
        ("connect_and_first_call_rtt20ms", qrpc_far, tonic_far, 8),
    ] {
        let mut group = c.benchmark_group(group_name);
        group
            .measurement_time(Duration::from_secs(seconds))
            .warm_up_time(Duration::from_secs(1))
            .sample_size(20);
        for (name, resume) in STACKS {
            let request = Payload::default();
            let early_before = qrpc.early_calls();
            group.bench_function(name, |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (qrpc, request) = (&qrpc, &request);
                    async move {
                        let mut total = Duration::ZERO;
                        for _ in 0..iters {
                            total += qrpc
                                .connect_and_call(qrpc_addr, resume, request)
                                .await
                                .unwrap();
                        }
                        total
                    }
                });
            });
            let early = qrpc.early_calls() - early_before;
            assert_eq!(
                early > 0,
                resume == Resume::ZeroRtt,
                "{name}: {early} first calls in 0-RTT data"
            );
        }
        let request = tonic_gen::Payload::default();
        group.bench_function("tonic_full", |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (tonic, request) = (&tonic, &request);
                async move {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += tonic.connect_and_call(tonic_addr, request).await.unwrap();
                    }
                    total
                }
            });
        });
        group.finish();
    }
}

criterion_group!(benches, connect);
criterion_main!(benches);
