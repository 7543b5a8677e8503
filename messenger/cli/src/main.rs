//! `qpq`: the quicproquo terminal messenger. `qpq demo` needs nothing; `qpq` (the REPL) and
//! `qpq tui` find or start a local server unless told about another one.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use qpq_cli::config::{self, Config};
use qpq_cli::{keys, launcher, passphrase, repl, session, tui};

/// The quicproquo terminal messenger.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Configuration file (TOML; default: the platform's config directory, quicproquo/config.toml).
    #[arg(long, env = "QPQ_CLI_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Profile (account) to use; profiles live in the config file.
    #[arg(long, short, env = "QPQ_PROFILE", global = true)]
    profile: Option<String>,
    /// Server address (default 127.0.0.1:7443: a local server, started if none answers).
    #[arg(long, global = true)]
    server: Option<String>,
    /// The server certificate's SHA-256 (required for a server not on this machine).
    #[arg(long, global = true)]
    pin: Option<String>,
    /// Store passphrase. Visible to other local users in the process list: prefer the
    /// QPQ_PASSPHRASE variable, a `passphrase_command` in the profile, or the prompt.
    #[arg(long, global = true)]
    passphrase: Option<String>,
    /// The profile's store directory (overrides the config).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A self-contained scripted conversation on a throwaway local server.
    Demo,
    /// The line-editing client (the default).
    Repl,
    /// The full-screen client.
    Tui,
    /// Run a qpq server in the foreground (what `qpq` starts on demand).
    Server {
        /// Address to listen on.
        #[arg(long, default_value = config::DEFAULT_SERVER)]
        listen: SocketAddr,
        /// Data directory (default: the platform's data directory for quicproquo-server).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QPQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match args.command {
        Some(Cmd::Demo) => {
            let mut out = std::io::stdout();
            qpq_cli::demo::run(&mut out).await?;
            Ok(())
        }
        Some(Cmd::Server { listen, data_dir }) => {
            launcher::serve(listen, data_dir.unwrap_or_else(launcher::default_local_dir)).await
        }
        Some(Cmd::Tui) => interactive(&args, true).await,
        Some(Cmd::Repl) | None => interactive(&args, false).await,
    }
}

async fn interactive(args: &Args, full_screen: bool) -> anyhow::Result<()> {
    let config_path = args
        .config
        .clone()
        .unwrap_or_else(config::default_config_path);
    let config = Config::load(&config_path)?;
    let (profile_name, profile) = config.profile(args.profile.as_deref());
    let (addr, pin) = config.server_for(&profile, args.server.as_deref(), args.pin.as_deref())?;
    let local_dir = config
        .local_server_dir
        .clone()
        .unwrap_or_else(launcher::default_local_dir);
    let exe = std::env::current_exe().context("locating the qpq executable")?;
    let target = launcher::resolve(addr, pin, &local_dir, |addr, dir| {
        eprintln!(
            "no server answers at {addr}: starting a local one (data in {})",
            dir.display()
        );
        launcher::spawn_detached(&exe, addr, dir).map(|_| ())
    })
    .await?;
    if target.launched {
        eprintln!(
            "local server up at {} · certificate sha256 {}",
            target.addr,
            qrpc::tls::format_fingerprint(&target.pin)
        );
    }
    let keymap = keys::KeyMap::new(&config.keys).map_err(anyhow::Error::msg)?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| config::profile_dir(&profile_name, &profile));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let (passphrase, source) = passphrase::resolve(
        args.passphrase.as_deref(),
        &profile,
        |v| std::env::var(v).ok(),
        passphrase::prompt_hidden,
    )?;
    tracing::debug!(?source, "store passphrase source");
    let client = qpq_sdk::QpqClient::builder()
        .server(target.addr)
        .pin(target.pin)
        .data_dir(&dir)
        .passphrase(passphrase.as_str())
        .build()?;
    let device = profile.device.clone().unwrap_or_else(|| "cli".into());
    match client.connect().await {
        Ok(()) => {}
        Err(qpq_sdk::SdkError::NotLoggedIn) => eprintln!(
            "profile {profile_name}: no account yet — /register <user> or /login <user> [device]"
        ),
        Err(e) => return Err(e.into()),
    }
    let session = session::Session::new(client, device);
    if full_screen {
        tui::run(session, keymap).await
    } else {
        repl::run(session, dir.join("history.txt")).await
    }
}
