//! The cost of the HTTP/3 session layer: unary calls to one server on one port, in one run,
//! from
//!
//! - `native`: qrpc's generated client over `qrpc/1`;
//! - `native_raw`: raw request frames on a bare `qrpc/1` QUIC connection (write, finish, read
//!   the response frame), the way the WebTransport test client writes them;
//! - `webtransport`: raw request frames in a WebTransport session (what a page's client does).
//!
//! `native_raw` against `webtransport` is the HTTP/3 layer's cost; calls/s at 1 and 64 in
//! flight (criterion), then p50/p99 of 2,000 sequential calls each.
#![allow(missing_docs, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;
use qrpc_benches::{Payload, web_pair};

/// The bench service's Echo method.
const ECHO: u16 = 1;

/// One call as raw frames on a bare QUIC connection.
async fn raw_call(conn: &quinn::Connection, request_id: u32, payload: &Bytes) -> Bytes {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let frame = qrpc::fuzzing::RequestFrame {
        method_id: ECHO,
        request_id,
        payload: payload.clone(),
    };
    let mut chunks = [
        Bytes::copy_from_slice(&frame.header().encode()),
        frame.payload,
    ];
    send.write_all_chunks(&mut chunks).await.unwrap();
    send.finish().unwrap();
    let bytes = recv.read_to_end(1 << 20).await.unwrap();
    let response = qrpc::fuzzing::ResponseFrame::decode_exact(&bytes, 1 << 20).unwrap();
    assert_eq!(response.status, 0);
    response.payload
}

fn webtransport(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pair = rt.block_on(web_pair()).unwrap();
    let request = Payload {
        data: Bytes::from(vec![0xAB; 64]),
    };
    let encoded = Bytes::from(request.encode_to_vec());

    let mut group = c.benchmark_group("webtransport");
    group
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30);
    for in_flight in [1usize, 64] {
        let label = format!("64B/x{in_flight}");
        group.throughput(Throughput::Elements(in_flight as u64));
        group.bench_function(BenchmarkId::new("native", &label), |b| {
            b.to_async(&rt).iter(|| async {
                let calls = (0..in_flight).map(|_| pair.native.echo(&request));
                for reply in futures::future::join_all(calls).await {
                    assert_eq!(reply.unwrap().data.len(), 64);
                }
            });
        });
        group.bench_function(BenchmarkId::new("native_raw", &label), |b| {
            b.to_async(&rt).iter(|| async {
                let calls = (0..in_flight).map(|i| raw_call(&pair.raw, i as u32 + 1, &encoded));
                for reply in futures::future::join_all(calls).await {
                    assert_eq!(Payload::decode(reply).unwrap().data.len(), 64);
                }
            });
        });
        group.bench_function(BenchmarkId::new("webtransport", &label), |b| {
            b.to_async(&rt).iter(|| async {
                let calls = (0..in_flight).map(|_| pair.web.unary(ECHO, encoded.clone()));
                for reply in futures::future::join_all(calls).await {
                    assert_eq!(Payload::decode(reply.unwrap()).unwrap().data.len(), 64);
                }
            });
        });
    }
    group.finish();

    // Latency percentiles, same server, same run.
    let percentiles = |mut samples: Vec<Duration>| {
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
        (at(0.50), at(0.99))
    };
    const N: usize = 2_000;
    let (native, raw, web) = rt.block_on(async {
        let mut native = Vec::with_capacity(N);
        let mut raw = Vec::with_capacity(N);
        let mut web = Vec::with_capacity(N);
        for _ in 0..N {
            let start = Instant::now();
            pair.native.echo(&request).await.unwrap();
            native.push(start.elapsed());
            let start = Instant::now();
            raw_call(&pair.raw, 1, &encoded).await;
            raw.push(start.elapsed());
            let start = Instant::now();
            pair.web.unary(ECHO, encoded.clone()).await.unwrap();
            web.push(start.elapsed());
        }
        (percentiles(native), percentiles(raw), percentiles(web))
    });
    println!(
        "webtransport/latency ({N} sequential 64 B calls each, interleaved): native p50 {:?} p99 {:?}; native_raw p50 {:?} p99 {:?}; webtransport p50 {:?} p99 {:?}",
        native.0, native.1, raw.0, raw.1, web.0, web.1
    );
}

criterion_group!(benches, webtransport);
criterion_main!(benches);
