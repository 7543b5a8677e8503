//! `qpq-load`: a load generator for qpq-server.
//!
//! Starts an embedded server (abuse limits lifted) or targets a running one, registers senders
//! and recipients, has every sender enqueue its messages (256-byte payloads by default, one in
//! flight per sender) while every recipient fetches and acknowledges, and prints throughput,
//! latency percentiles and a delivery check: every message received exactly once. With
//! `--connections N` it then holds N more logged-in connections and reports memory.
//!
//! ```sh
//! cargo run --release -p qrpc-benches --bin qpq-load -- --senders 16 --messages 2000
//! ```
#![allow(missing_docs)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use qpq_proto::auth_flows::{login, register};
use qpq_proto::v1::{self, auth_client::AuthClient, delivery_client::DeliveryClient};

/// Load generator for qpq-server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Running servers' addresses, comma-separated: the nodes of one cluster (default: start
    /// an embedded server with its limits lifted). Account i connects to node i mod n;
    /// recipients sit on the node after their senders', so with several nodes every message
    /// crosses nodes.
    #[arg(long, requires = "pin", value_delimiter = ',')]
    server: Vec<SocketAddr>,
    /// The embedded server's store: a PostgreSQL URL (default: SQLite in a temporary
    /// directory).
    #[arg(long, conflicts_with = "server")]
    postgres_url: Option<String>,
    /// The running servers' certificate SHA-256 (one certificate for the cluster).
    #[arg(long)]
    pin: Option<String>,
    /// The running server's process id, to report its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Sending accounts, each on its own connection.
    #[arg(long, default_value_t = 16)]
    senders: usize,
    /// Receiving accounts; message n of sender i goes to recipient (i + n) mod recipients.
    #[arg(long, default_value_t = 1)]
    recipients: usize,
    /// Messages per sender.
    #[arg(long, default_value_t = 1000)]
    messages: u64,
    /// Payload bytes per message (at least 16).
    #[arg(long, default_value_t = 256)]
    payload: usize,
    /// Enqueue calls each sender keeps in flight.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// After the run, hold this many more logged-in connections and report memory.
    #[arg(long, default_value_t = 0)]
    connections: usize,
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct Target {
    /// The nodes' addresses.
    addrs: Vec<SocketAddr>,
    fingerprint: [u8; 32],
    _embedded: Option<(tempfile::TempDir, qpq_server::RunningServer)>,
}

async fn target(args: &Args) -> anyhow::Result<Target> {
    if let (false, Some(pin)) = (args.server.is_empty(), &args.pin) {
        return Ok(Target {
            addrs: args.server.clone(),
            fingerprint: qrpc::tls::parse_fingerprint(pin).context("--pin")?,
            _embedded: None,
        });
    }
    let dir = tempfile::tempdir()?;
    let mut config = qpq_server::Config {
        listen: "127.0.0.1:0".parse()?,
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    if let Some(url) = &args.postgres_url {
        config.cluster.store = qpq_server::config::StoreKind::Postgres;
        config.cluster.postgres_url = Some(url.clone());
    }
    qrpc_benches::unthrottled(&mut config);
    let server = qpq_server::start(config).await?;
    Ok(Target {
        addrs: vec![server.addr],
        fingerprint: server.fingerprint,
        _embedded: Some((dir, server)),
    })
}

async fn connect(t: &Target, node: usize) -> anyhow::Result<qrpc::Client> {
    let addr = t.addrs[node % t.addrs.len()];
    Ok(
        qrpc::Client::builder(addr, qrpc::tls::ClientTls::pinned(t.fingerprint))
            .configure(|c| {
                c.alpn(vec![b"qpq/1".to_vec()]);
            })
            .connect()
            .await?,
    )
}

/// A registered, logged-in account; returns its connection and session token.
async fn account(t: &Target, user: &str, node: usize) -> anyhow::Result<(qrpc::Client, Vec<u8>)> {
    let client = connect(t, node).await?;
    register(&client, user, "qpq-load password")
        .await
        .with_context(|| format!("registering {user}"))?;
    let session = login(&client, user, "d1", "qpq-load password")
        .await
        .with_context(|| format!("logging {user} in"))?;
    Ok((client, session.session_token.to_vec()))
}

/// Message id: sender index (4 bytes), message number (8), zero padding.
fn message_id(sender: usize, n: u64) -> Vec<u8> {
    let mut id = vec![0u8; 16];
    id[..4].copy_from_slice(&(sender as u32).to_be_bytes());
    id[4..12].copy_from_slice(&n.to_be_bytes());
    id
}

#[derive(Default)]
struct Progress {
    sent: AtomicU64,
    received: AtomicU64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.senders == 0 || args.recipients == 0 || args.messages == 0 {
        bail!("--senders, --recipients and --messages must be at least 1");
    }
    if args.payload < 16 {
        bail!("--payload must be at least 16 bytes (it carries the send time)");
    }
    let t = target(&args).await?;
    let run: u32 = rand_run_id();
    eprintln!(
        "qpq-load: server {:?} · {} senders × {} messages of {} bytes → {} recipient(s), {} in flight per sender",
        t.addrs, args.senders, args.messages, args.payload, args.recipients, args.in_flight
    );

    // Accounts.
    let recipients: Vec<(qrpc::Client, Vec<u8>)> =
        futures::future::try_join_all((0..args.recipients).map(|i| {
            let t = &t;
            // The node after the one its senders use (0, 1, ... for sender i; i + 1 here).
            async move { account(t, &format!("load{run}r{i}"), i + 1).await }
        }))
        .await?;
    let senders: Vec<(qrpc::Client, Vec<u8>)> =
        futures::future::try_join_all((0..args.senders).map(|i| {
            let t = &t;
            async move { account(t, &format!("load{run}s{i}"), i).await }
        }))
        .await?;
    let total = args.senders as u64 * args.messages;
    let progress = Arc::new(Progress::default());
    let start = Instant::now();

    // Recipients: fetch, record, acknowledge, until they have their share.
    let mut receivers = Vec::new();
    for (r, (client, _)) in recipients.iter().enumerate() {
        let expected: u64 = (0..args.senders)
            .map(|i| {
                (0..args.messages)
                    .filter(|n| (i + *n as usize) % args.recipients == r)
                    .count() as u64
            })
            .sum();
        let delivery = DeliveryClient::new(client.clone());
        let progress = Arc::clone(&progress);
        receivers.push(tokio::spawn(async move {
            let mut seen: HashMap<Vec<u8>, u32> = HashMap::new();
            let mut latencies = Vec::new();
            let mut after = 0u64;
            let mut got = 0u64;
            let mut idle_rounds = 0;
            while got < expected && idle_rounds < 30 {
                let page = delivery
                    .fetch_wait(&v1::FetchWaitRequest {
                        after_seq: after,
                        limit: 500,
                        timeout_ms: 2000,
                    })
                    .await?
                    .messages;
                if page.is_empty() {
                    idle_rounds += 1;
                    continue;
                }
                idle_rounds = 0;
                let now = start.elapsed();
                for m in &page {
                    let sent_at = u64::from_be_bytes(m.payload[..8].try_into().unwrap_or([0; 8]));
                    latencies.push(now.saturating_sub(Duration::from_nanos(sent_at)));
                    *seen.entry(m.message_id.to_vec()).or_default() += 1;
                    after = m.seq;
                }
                got += page.len() as u64;
                progress
                    .received
                    .fetch_add(page.len() as u64, Ordering::Relaxed);
                delivery.ack(&v1::AckRequest { up_to_seq: after }).await?;
            }
            anyhow::Ok((r, seen, latencies))
        }));
    }

    // The progress line.
    let ticker = {
        let progress = Arc::clone(&progress);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let (s, r) = (
                    progress.sent.load(Ordering::Relaxed),
                    progress.received.load(Ordering::Relaxed),
                );
                let secs = start.elapsed().as_secs_f64().max(1e-9);
                eprint!(
                    "\r  sent {s}/{total}  received {r}/{total}  {:.0} msg/s   ",
                    r as f64 / secs
                );
                let _ = std::io::stderr().flush();
            }
        })
    };

    // Senders.
    let payload_len = args.payload;
    let sends = senders.iter().enumerate().map(|(i, (client, _))| {
        let delivery = DeliveryClient::new(client.clone());
        let progress = Arc::clone(&progress);
        let (recipients_n, messages, in_flight) =
            (args.recipients, args.messages, args.in_flight.max(1));
        async move {
            let mut latencies = Vec::with_capacity(messages as usize);
            let mut next = 0u64;
            let mut pending = futures::stream::FuturesUnordered::new();
            use futures::StreamExt as _;
            loop {
                while next < messages && pending.len() < in_flight {
                    let n = next;
                    next += 1;
                    let mut payload = vec![0x5au8; payload_len];
                    payload[..8]
                        .copy_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
                    let request = v1::EnqueueRequest {
                        recipient: Some(v1::DeviceRef {
                            user: format!("load{run}r{}", (i + n as usize) % recipients_n),
                            device: "d1".into(),
                        }),
                        message_id: message_id(i, n).into(),
                        payload: payload.into(),
                        delivery_token: Default::default(),
                    };
                    let delivery = delivery.clone();
                    pending.push(async move {
                        let began = Instant::now();
                        let r = delivery.enqueue(&request).await;
                        (r, began.elapsed())
                    });
                }
                match pending.next().await {
                    Some((r, took)) => {
                        r.map_err(|e| anyhow::anyhow!("sender {i}: {e}"))?;
                        latencies.push(took);
                        progress.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    None => break,
                }
            }
            anyhow::Ok(latencies)
        }
    });
    let mut enqueue_latencies: Vec<Duration> = futures::future::try_join_all(sends)
        .await?
        .into_iter()
        .flatten()
        .collect();
    let sent_in = start.elapsed();
    let mut seen_all: HashMap<Vec<u8>, u32> = HashMap::new();
    let mut delivery_latencies = Vec::new();
    for r in receivers {
        let (_, seen, latencies) = r.await??;
        for (id, n) in seen {
            *seen_all.entry(id).or_default() += n;
        }
        delivery_latencies.extend(latencies);
    }
    let elapsed = start.elapsed();
    ticker.abort();
    eprintln!();

    // The delivery check.
    let mut lost = 0u64;
    let mut duplicated = 0u64;
    for i in 0..args.senders {
        for n in 0..args.messages {
            match seen_all.get(&message_id(i, n)).copied().unwrap_or(0) {
                0 => lost += 1,
                1 => {}
                k => duplicated += u64::from(k - 1),
            }
        }
    }
    let unexpected = seen_all.len() as u64 + lost - total;
    enqueue_latencies.sort();
    delivery_latencies.sort();
    println!(
        "messages: {total} sent in {:.2} s; all received in {:.2} s",
        sent_in.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "throughput: {:.0} delivered messages/s (enqueued, fetched and acknowledged)",
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "enqueue call latency: p50 {:?}, p99 {:?}, max {:?}",
        qrpc_benches::percentile(&enqueue_latencies, 0.50),
        qrpc_benches::percentile(&enqueue_latencies, 0.99),
        enqueue_latencies.last().copied().unwrap_or_default()
    );
    println!(
        "send to fetch latency: p50 {:?}, p99 {:?}",
        qrpc_benches::percentile(&delivery_latencies, 0.50),
        qrpc_benches::percentile(&delivery_latencies, 0.99)
    );
    println!("delivery check: {lost} lost, {duplicated} duplicated, {unexpected} unexpected");

    if args.connections > 0 {
        hold_connections(&t, &args, &recipients[0].1, run).await?;
    }
    if lost > 0 || duplicated > 0 || unexpected > 0 {
        bail!("the delivery check failed");
    }
    Ok(())
}

/// Opens `--connections` more connections, each resuming a logged-in session, and reports
/// the memory they cost.
async fn hold_connections(t: &Target, args: &Args, token: &[u8], _run: u32) -> anyhow::Result<()> {
    let before = rss_kib(args.server_pid);
    let began = Instant::now();
    let mut held = Vec::with_capacity(args.connections);
    let mut failures = 0usize;
    let mut next = 0usize;
    while next < args.connections {
        let batch = (args.connections - next).min(64);
        let opened = futures::future::join_all((0..batch).map(|_| async {
            let client = connect(t, 0).await?;
            AuthClient::new(client.clone())
                .resume_session(&v1::ResumeSessionRequest {
                    session_token: token.to_vec().into(),
                })
                .await?;
            anyhow::Ok(client)
        }))
        .await;
        for c in opened {
            match c {
                Ok(c) => held.push(c),
                Err(e) => {
                    failures += 1;
                    if failures <= 3 {
                        eprintln!("\n  connection failed: {e}");
                    }
                }
            }
        }
        next += batch;
        eprint!("\r  connections: {}/{}   ", held.len(), args.connections);
        let _ = std::io::stderr().flush();
    }
    eprintln!();
    // Let the server settle, then read its memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(args.server_pid);
    println!(
        "connections: {} logged-in connections held ({failures} failed), opened at {:.0}/s",
        held.len(),
        held.len() as f64 / began.elapsed().as_secs_f64()
    );
    let whose = if args.server_pid.is_some() {
        "server RSS"
    } else {
        "RSS of this process (embedded server and all clients together; use --server-pid for the server alone)"
    };
    if let (Some(b), Some(a)) = (before, after) {
        println!(
            "{whose}: {} MiB before, {} MiB after: {:.1} KiB per connection",
            b / 1024,
            a / 1024,
            (a.saturating_sub(b)) as f64 / held.len().max(1) as f64
        );
    }
    drop(held);
    Ok(())
}

fn rand_run_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos ^ std::process::id()
}
