//! `qpq-server`: the quicproquo messenger server.
//!
//! With no arguments it creates a data directory, a self-signed certificate and a database,
//! prints the certificate's SHA-256 for clients to pin, and serves on 127.0.0.1:7443.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use qpq_server::Config;

/// The quicproquo messenger server.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// TOML configuration file (default: <data-dir>/qpq-server.toml if it exists).
    #[arg(long, env = "QPQ_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on, e.g. 0.0.0.0:7443.
    #[arg(long, env = "QPQ_LISTEN")]
    listen: Option<SocketAddr>,
    /// Data directory (database, TLS files, blobs).
    #[arg(long, env = "QPQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// PEM certificate chain (with --tls-key).
    #[arg(long, env = "QPQ_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key (with --tls-cert).
    #[arg(long, env = "QPQ_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// PostgreSQL URL; with it the node uses PostgreSQL instead of SQLite
    /// (cluster.store = "postgres"). Prefer the environment variable when the URL holds a
    /// password: arguments are visible to every user of the machine.
    #[arg(long, env = "QPQ_POSTGRES_URL", hide_env_values = true)]
    postgres_url: Option<String>,
    /// NATS URL; with it the node joins the cluster bus (cluster.bus = "nats").
    #[arg(long, env = "QPQ_NATS_URL")]
    nats_url: Option<String>,
    /// This node's name in the cluster (cluster.node_id).
    #[arg(long, env = "QPQ_NODE_ID")]
    node_id: Option<String>,
    /// Log lines as `text` (default) or `json` (log_format).
    #[arg(long, env = "QPQ_LOG_FORMAT")]
    log_format: Option<String>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
}

fn load(args: &Args) -> anyhow::Result<Config> {
    let data_dir = args.data_dir.clone();
    let file = args.config.clone().or_else(|| {
        let dir = data_dir
            .clone()
            .unwrap_or_else(qpq_server::config::default_data_dir);
        let candidate = dir.join("qpq-server.toml");
        candidate.exists().then_some(candidate)
    });
    let mut config = match &file {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    if let Some(v) = args.listen {
        config.listen = v;
    }
    if let Some(v) = data_dir {
        config.data_dir = v;
    }
    if args.tls_cert.is_some() || args.tls_key.is_some() {
        config.tls_cert = args.tls_cert.clone();
        config.tls_key = args.tls_key.clone();
    }
    if let Some(url) = &args.postgres_url {
        config.cluster.postgres_url = Some(url.clone());
        config.cluster.store = qpq_server::config::StoreKind::Postgres;
    }
    if let Some(url) = &args.nats_url {
        config.cluster.nats_url = Some(url.clone());
        config.cluster.bus = qpq_server::config::BusKind::Nats;
    }
    if let Some(node) = &args.node_id {
        config.cluster.node_id = Some(node.clone());
    }
    match args.log_format.as_deref() {
        None => {}
        Some("text") => config.log_format = qpq_server::config::LogFormat::Text,
        Some("json") => config.log_format = qpq_server::config::LogFormat::Json,
        Some(other) => anyhow::bail!("--log-format: text or json, not {other:?}"),
    }
    config.validate()?;
    Ok(config)
}

/// Reloads the plugins on each SIGHUP (docs/plugins.md); a failed reload keeps the old ones.
fn reload_plugins_on_hangup(plugins: qpq_server::plugins::Plugins) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hangups) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hangups.recv().await.is_some() {
            match plugins.reload().await {
                Ok(()) => tracing::info!(plugins = ?plugins.names(), "plugins reloaded"),
                Err(err) => tracing::error!(%err, "plugin reload failed; the old plugins stay"),
            }
        }
    });
    #[cfg(not(unix))]
    let _ = plugins;
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}

/// Logs to stderr: text (with colours only when stderr is a terminal, so log files get none)
/// or one JSON object per line.
fn init_logging(format: qpq_server::config::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("QPQ_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        qpq_server::config::LogFormat::Json => builder.json().init(),
        qpq_server::config::LogFormat::Text => {
            builder.with_ansi(std::io::stderr().is_terminal()).init()
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = load(&args)?;
    init_logging(config.log_format);
    if args.print_config {
        let mut shown = config.clone();
        // The URL may carry a password.
        shown.cluster.postgres_url = shown
            .cluster
            .postgres_url
            .as_deref()
            .map(qpq_server::bus::redact);
        shown.cluster.nats_url = shown
            .cluster
            .nats_url
            .as_deref()
            .map(qpq_server::bus::redact);
        print!(
            "{}",
            toml::to_string_pretty(&shown).context("formatting the configuration")?
        );
        return Ok(());
    }
    let server = qpq_server::start(config.clone()).await?;
    println!("qpq-server listening on {}", server.addr);
    println!("data directory: {}", config.data_dir.display());
    println!(
        "certificate sha256: {}",
        qrpc::tls::format_fingerprint(&server.fingerprint)
    );
    println!(
        "key transparency log key: {}",
        server.kt_public.short_fingerprint()
    );
    // What the operators of federated servers list this one by (`federation.peers`).
    println!(
        "federation key pin ({}): {}",
        config.domain,
        qpq_server::util::hex(&server.key_pin)
    );
    if !config.plugins.is_empty() {
        println!("plugins: {}", server.state().plugins().names().join(", "));
    }
    reload_plugins_on_hangup(server.state().plugins().clone());
    shutdown_signal().await;
    tracing::info!("shutting down");
    server.shutdown().await;
    Ok(())
}
