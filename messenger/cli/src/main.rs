//! `qpq`: the quicproquo terminal messenger. `qpq demo` needs nothing; `qpq` (the REPL) and
//! `qpq tui` find or start a local server unless told about another one.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use qpq_cli::config::{self, Config};
use qpq_cli::{keys, launcher, passphrase, repl, script, session, tui};

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
    /// Print results as JSON, one object per line (send, read, conversations).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// A self-contained scripted conversation on a throwaway local server.
    #[cfg(feature = "embedded-server")]
    Demo {
        /// Two servers that federate instead, a user on each.
        #[arg(long)]
        federated: bool,
    },
    /// The line-editing client (the default).
    Repl,
    /// The full-screen client.
    Tui,
    /// Run a playbook (YAML) of actions and expectations on a throwaway server.
    #[cfg(feature = "embedded-server")]
    Play {
        /// The playbook file.
        file: PathBuf,
    },
    /// Send a text and wait until the server has it.
    Send {
        /// Conversation: its number from `qpq conversations`, its name, or the other user of a DM.
        conversation: String,
        /// The text.
        text: String,
    },
    /// Print unread messages (and mark them read); with --follow, keep printing new ones.
    Read {
        /// Keep printing messages as they arrive, until Ctrl-C.
        #[arg(long)]
        follow: bool,
    },
    /// List conversations with unread counts.
    Conversations,
    /// Accept a message request (its id as `qpq read` shows it).
    Accept {
        /// The request's id.
        request: String,
    },
    /// Decline a message request: it is deleted with what came with it.
    Decline {
        /// The request's id.
        request: String,
    },
    /// Create an account and log this profile in (the password is read from the terminal,
    /// or from standard input's first line when it is not a terminal).
    Register {
        /// The user name.
        user: String,
        /// An invite code, for a server that registers by invitation.
        #[arg(long)]
        invite: Option<String>,
    },
    /// Log this profile in (password as for `register`).
    Login {
        /// The user name.
        user: String,
        /// This device's name (default: the profile's, or "cli").
        #[arg(long)]
        device: Option<String>,
    },
    /// Run a qpq server in the foreground (what `qpq` starts on demand).
    #[cfg(feature = "embedded-server")]
    Server {
        /// Address to listen on.
        #[arg(long, default_value = config::DEFAULT_SERVER)]
        listen: std::net::SocketAddr,
        /// Data directory (default: the platform's data directory for quicproquo-server).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("qpq: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("QPQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match args.command {
        #[cfg(feature = "embedded-server")]
        Some(Cmd::Demo { federated }) => {
            let mut out = std::io::stdout();
            if federated {
                qpq_cli::demo::run_federated(&mut out).await?;
            } else {
                qpq_cli::demo::run(&mut out).await?;
            }
            Ok(())
        }
        #[cfg(feature = "embedded-server")]
        Some(Cmd::Server { listen, data_dir }) => {
            launcher::serve(listen, data_dir.unwrap_or_else(launcher::default_local_dir)).await
        }
        #[cfg(feature = "embedded-server")]
        Some(Cmd::Play { ref file }) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let book = qpq_cli::play::parse(&text)
                .with_context(|| format!("{} is not a valid playbook", file.display()))?;
            let mut out = std::io::stdout();
            qpq_cli::play::run(&book, &mut out)
                .await
                .with_context(|| format!("playbook {} failed", file.display()))
        }
        Some(Cmd::Tui) => {
            let (session, _, keymap) = open(&args).await?;
            tui::run(session, keymap).await
        }
        Some(Cmd::Repl) | None => {
            let (session, dir, _) = open(&args).await?;
            repl::run(session, dir.join("history.txt")).await
        }
        Some(Cmd::Send {
            ref conversation,
            ref text,
        }) => {
            let (session, _, _) = open(&args).await?;
            script::send(
                &session,
                conversation,
                text,
                &mut std::io::stdout(),
                args.json,
            )
            .await
        }
        Some(Cmd::Read { follow }) => {
            let (session, _, _) = open_with(&args, |client| client.subscribe()).await?;
            let (session, events) = session;
            script::read(&session, events, follow, &mut std::io::stdout(), args.json).await
        }
        Some(Cmd::Accept { ref request }) | Some(Cmd::Decline { ref request }) => {
            let accept = matches!(args.command, Some(Cmd::Accept { .. }));
            let (session, _, _) = open_with(&args, |client| client.subscribe()).await?;
            let (session, events) = session;
            script::answer(&session, events, request, accept, &mut std::io::stdout()).await
        }
        Some(Cmd::Conversations) => {
            let (session, _, _) = open(&args).await?;
            script::conversations(&session, &mut std::io::stdout(), args.json)
        }
        Some(Cmd::Register {
            ref user,
            ref invite,
        }) => {
            let (session, _, _) = open(&args).await?;
            let password = passphrase::new_password(user, &mut passphrase::prompt_hidden)?;
            let device = session.device().to_owned();
            session
                .client()
                .register_with_invite(user, &password, invite.as_deref())
                .await?;
            session.client().login(user, &device, &password).await?;
            println!("registered and logged in as {user}/{device}");
            Ok(())
        }
        Some(Cmd::Login {
            ref user,
            ref device,
        }) => {
            let (session, _, _) = open(&args).await?;
            let password = passphrase::prompt_hidden(&format!("password for {user}: "))?;
            let device = device
                .clone()
                .unwrap_or_else(|| session.device().to_owned());
            session.client().login(user, &device, &password).await?;
            println!("logged in as {user}/{device}");
            Ok(())
        }
    }
}

/// The profile's session (connected in the background when it has an account), its store
/// directory and the TUI key map.
async fn open(args: &Args) -> anyhow::Result<(session::Session, PathBuf, keys::KeyMap)> {
    let ((session, ()), dir, keymap) = open_with(args, |_| ()).await?;
    Ok((session, dir, keymap))
}

/// Like [`open`], with `early` run on the client before it connects (to subscribe to events
/// from the start).
async fn open_with<T>(
    args: &Args,
    early: impl FnOnce(&qpq_sdk::QpqClient) -> T,
) -> anyhow::Result<((session::Session, T), PathBuf, keys::KeyMap)> {
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
    qpq_core::files::private_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
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
    let early = early(&client);
    match client.connect().await {
        Ok(()) => {}
        Err(qpq_sdk::SdkError::NotLoggedIn) => eprintln!(
            "profile {profile_name}: no account yet — register or log in (qpq register <user>, or /register in the REPL)"
        ),
        Err(e) => return Err(e.into()),
    }
    Ok(((session::Session::new(client, device), early), dir, keymap))
}
