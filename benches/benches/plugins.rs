//! Plugins on the enqueue path (feature `plugins`; build the example plugins first:
//! `cd examples/plugins && cargo build --release --target wasm32-wasip2`):
//!
//! - `enqueue/{0,1,3}_plugins`: one sender's `Enqueue` calls to one recipient, 16 in flight,
//!   with 0, 1 and 3 plugins subscribed to the enqueue hook (the example `throttle`, its limit
//!   out of reach), same run: messages/s;
//! - `hook_call`: one `Plugins::check` of an enqueue event with one plugin (the host's whole
//!   path: the event into WIT values, the call into the instance and back).
#![allow(missing_docs, clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use qpq_proto::v1::{self, delivery_client::DeliveryClient};
use qpq_server::config::PluginConfig;
use qpq_server::plugins::{Event, Plugins};

fn throttle(name: &str) -> PluginConfig {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/plugins/target/wasm32-wasip2/release/qpq_plugin_throttle.wasm");
    assert!(
        path.exists(),
        "build the example plugins first ({})",
        path.display()
    );
    let mut plugin = PluginConfig::new(name, path);
    plugin.config = toml::from_str("limit = 1000000000").unwrap();
    plugin
}

struct Setup {
    _dir: tempfile::TempDir,
    server: qpq_server::RunningServer,
}

async fn setup(plugins: usize) -> Setup {
    let (server, dir) = qrpc_benches::qpq_server_with(|config| {
        config.plugins = (0..plugins)
            .map(|i| throttle(&format!("throttle{i}")))
            .collect();
    })
    .await
    .unwrap();
    Setup { _dir: dir, server }
}

async fn account(s: &Setup, user: &str) -> qrpc::Client {
    qrpc_benches::qpq_account(&s.server, user).await.unwrap()
}

fn plugins(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("plugins");
    g.measurement_time(Duration::from_secs(5))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(20);
    const IN_FLIGHT: u64 = 16;
    for count in [0usize, 1, 3] {
        let (setup, sender) = rt.block_on(async {
            let setup = setup(count).await;
            let _bob = account(&setup, "bob").await;
            let ada = DeliveryClient::new(account(&setup, "ada").await);
            (setup, ada)
        });
        let to = v1::DeviceRef {
            user: "bob".into(),
            device: "d1".into(),
        };
        let mut n: u64 = 0;
        g.throughput(Throughput::Elements(IN_FLIGHT));
        g.bench_function(
            BenchmarkId::new("enqueue", format!("{count}_plugins")),
            |b| {
                b.to_async(&rt).iter(|| {
                    let start = n;
                    n += IN_FLIGHT;
                    let sender = &sender;
                    let to = &to;
                    async move {
                        let requests: Vec<v1::EnqueueRequest> = (start..start + IN_FLIGHT)
                            .map(|i| v1::EnqueueRequest {
                                recipient: Some(to.clone()),
                                message_id: i.to_be_bytes().repeat(2).into(),
                                payload: vec![0x5a; 256].into(),
                                delivery_token: Default::default(),
                            })
                            .collect();
                        let calls = requests.iter().map(|r| sender.enqueue(r));
                        for result in futures::future::join_all(calls).await {
                            result.unwrap();
                        }
                    }
                });
            },
        );
        drop(setup);
    }
    let hooks = rt.block_on(Plugins::load(&[throttle("throttle")])).unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("hook_call", |b| {
        b.to_async(&rt).iter(|| async {
            hooks
                .check(|| Event::Enqueue {
                    sender: Some("ada".into()),
                    recipient: "bob".into(),
                    first_contact: true,
                    size: 256,
                })
                .await
                .unwrap();
        });
    });
    g.finish();
}

criterion_group!(benches, plugins);
criterion_main!(benches);
