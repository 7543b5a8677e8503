//! Unary round trips through generated qrpc code, tonic 0.14 (both over rustls) and a raw quinn
//! bidi-stream echo (the floor): 64 B and 64 KiB payloads, 1 and 64 calls in flight, one run;
//! and qrpc's 64 B calls again with a deadline and two metadata entries.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qrpc_benches::{Payload, RawQuinn, qrpc_pair, qrpc_pair_with, tonic_gen, tonic_pair};

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

fn unary(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let qrpc = rt.block_on(qrpc_pair()).unwrap();
    // The same client and server on quinn's own transport settings (raw quinn's), to tell what
    // the framework costs from what the default `TransportProfile::Rpc` trades for loss recovery.
    let qrpc_quinn = rt
        .block_on(qrpc_pair_with(qrpc::TransportProfile::QuinnDefaults))
        .unwrap();
    let tonic = rt.block_on(tonic_pair()).unwrap();
    let raw = rt.block_on(RawQuinn::pair()).unwrap();

    let mut group = c.benchmark_group("unary");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    for size in [64usize, 64 * 1024] {
        for in_flight in [1usize, 64] {
            let label = format!("{size}B/x{in_flight}");
            group.throughput(Throughput::Elements(in_flight as u64));
            let data = Bytes::from(vec![0xAB; size]);

            let request = Payload { data: data.clone() };
            group.bench_with_input(BenchmarkId::new("qrpc", &label), &request, |b, request| {
                b.to_async(&rt).iter(|| async {
                    let calls = (0..in_flight).map(|_| qrpc.echo(request));
                    for reply in futures::future::join_all(calls).await {
                        assert_eq!(reply.unwrap().data.len(), size);
                    }
                });
            });

            group.bench_with_input(
                BenchmarkId::new("qrpc_quinn_defaults", &label),
                &request,
                |b, request| {
                    b.to_async(&rt).iter(|| async {
                        let calls = (0..in_flight).map(|_| qrpc_quinn.echo(request));
                        for reply in futures::future::join_all(calls).await {
                            assert_eq!(reply.unwrap().data.len(), size);
                        }
                    });
                },
            );

            if size == 64 {
                // The same call with a deadline and two metadata entries: what the call
                // extension costs (a probe once per connection, then one frame each way).
                group.bench_with_input(
                    BenchmarkId::new("qrpc_deadline_metadata", &label),
                    &request,
                    |b, request| {
                        b.to_async(&rt).iter(|| async {
                            let calls = (0..in_flight).map(|_| {
                                let mut call = qrpc::Request::new(request.clone());
                                call.set_timeout(Duration::from_secs(30));
                                let metadata = call.metadata_mut();
                                metadata.insert("traceparent", TRACEPARENT).unwrap();
                                metadata.insert("x-tenant", "blue").unwrap();
                                qrpc.echo(call)
                            });
                            for reply in futures::future::join_all(calls).await {
                                assert_eq!(reply.unwrap().data.len(), size);
                            }
                        });
                    },
                );
            }

            let request = tonic_gen::Payload { data: data.clone() };
            group.bench_with_input(BenchmarkId::new("tonic", &label), &request, |b, request| {
                b.to_async(&rt).iter(|| async {
                    let calls = (0..in_flight).map(|_| {
                        let mut client = tonic.clone();
                        let request = request.clone();
                        async move { client.echo(request).await }
                    });
                    for reply in futures::future::join_all(calls).await {
                        assert_eq!(reply.unwrap().into_inner().data.len(), size);
                    }
                });
            });

            group.bench_with_input(BenchmarkId::new("raw_quinn", &label), &data, |b, data| {
                b.to_async(&rt).iter(|| async {
                    let calls = (0..in_flight).map(|_| raw.echo(data));
                    for reply in futures::future::join_all(calls).await {
                        assert_eq!(reply.unwrap().len(), size);
                    }
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, unary);
criterion_main!(benches);
