//! `rpc-loss`: call latency of one RPC stack under whatever the network does — run it inside a
//! network namespace that drops packets (`benches/loss.sh`). One process, client and server on
//! loopback; `--in-flight` workers each make calls back to back for `--seconds`.
#![allow(missing_docs)]

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Parser;
use qrpc_benches::{Payload, RawQuinn, qrpc_pair_with, tonic_gen, tonic_pair};

/// Call latency of one stack: prints calls/s and p50/p99/p99.9.
#[derive(Debug, Parser)]
struct Args {
    /// qrpc (tuned RPC transport profile), qrpc-quinn-defaults, tonic, or quinn (raw, defaults).
    #[arg(long)]
    stack: String,
    /// Calls in flight (workers, each calling back to back).
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// How long to call.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Payload bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let data = vec![0x5au8; args.payload];
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let err = |e: qrpc_benches::Error| anyhow::anyhow!("{e}");
    let latencies: Vec<Duration> = match args.stack.as_str() {
        "qrpc" | "qrpc-quinn-defaults" => {
            let profile = if args.stack == "qrpc" {
                qrpc::TransportProfile::Rpc
            } else {
                qrpc::TransportProfile::QuinnDefaults
            };
            let client = qrpc_pair_with(profile).await.map_err(err)?;
            run(args.in_flight, deadline, |()| {
                let client = client.clone();
                let data = data.clone();
                async move { client.echo(&Payload { data: data.into() }).await.is_ok() }
            })
            .await
        }
        "tonic" => {
            let client = tonic_pair().await.map_err(err)?;
            run(args.in_flight, deadline, |()| {
                let mut client = client.clone();
                let data = data.clone();
                async move {
                    client
                        .echo(tonic_gen::Payload { data: data.into() })
                        .await
                        .is_ok()
                }
            })
            .await
        }
        "quinn" => {
            let raw = std::sync::Arc::new(RawQuinn::pair().await.map_err(err)?);
            run(args.in_flight, deadline, |()| {
                let raw = std::sync::Arc::clone(&raw);
                let data = data.clone();
                async move { raw.echo(&data).await.is_ok() }
            })
            .await
        }
        other => bail!("unknown stack {other:?}: qrpc, qrpc-quinn-defaults, tonic or quinn"),
    };
    let mut sorted = latencies;
    sorted.sort();
    println!(
        "{:<20} in-flight {:>3}  {:>8.0} calls/s  p50 {} ms  p99 {} ms  p99.9 {} ms",
        args.stack,
        args.in_flight,
        sorted.len() as f64 / args.seconds as f64,
        ms(qrpc_benches::percentile(&sorted, 0.50)),
        ms(qrpc_benches::percentile(&sorted, 0.99)),
        ms(qrpc_benches::percentile(&sorted, 0.999)),
    );
    Ok(())
}

/// Runs `workers` loops of `call` until `deadline`; returns the latency of every successful call.
async fn run<F, Fut>(workers: usize, deadline: Instant, call: F) -> Vec<Duration>
where
    F: Fn(()) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let tasks: Vec<_> = (0..workers.max(1))
        .map(|_| {
            let call = &call;
            let mut times = Vec::new();
            async move {
                while Instant::now() < deadline {
                    let began = Instant::now();
                    if call(()).await {
                        times.push(began.elapsed());
                    }
                }
                times
            }
        })
        .collect();
    futures::future::join_all(tasks)
        .await
        .into_iter()
        .flatten()
        .collect()
}
