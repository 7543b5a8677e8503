//! Unary round trips: qrpc against a raw quinn bidi-stream echo (the floor), 64 B and 64 KiB
//! payloads, 1 and 64 calls in flight, in one run.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qrpc_benches::{ECHO, Payload, RawQuinn, qrpc_pair};

fn unary(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = rt.block_on(qrpc_pair()).unwrap();
    let raw = rt.block_on(RawQuinn::pair()).unwrap();

    let mut group = c.benchmark_group("unary");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    for size in [64usize, 64 * 1024] {
        for in_flight in [1usize, 64] {
            let label = format!("{}B/x{in_flight}", size);
            group.throughput(Throughput::Elements(in_flight as u64));
            let request = Payload {
                data: Bytes::from(vec![0xAB; size]),
            };
            group.bench_with_input(BenchmarkId::new("qrpc", &label), &request, |b, request| {
                b.to_async(&rt).iter(|| async {
                    let calls =
                        (0..in_flight).map(|_| client.unary::<_, Payload>(ECHO.id, request));
                    for reply in futures::future::join_all(calls).await {
                        assert_eq!(reply.unwrap().data.len(), size);
                    }
                });
            });
            let raw_request = vec![0xAB; size];
            group.bench_with_input(
                BenchmarkId::new("raw_quinn", &label),
                &raw_request,
                |b, request| {
                    b.to_async(&rt).iter(|| async {
                        let calls = (0..in_flight).map(|_| raw.echo(request));
                        for reply in futures::future::join_all(calls).await {
                            assert_eq!(reply.unwrap().len(), size);
                        }
                    });
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, unary);
criterion_main!(benches);
