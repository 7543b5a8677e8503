//! Finding the server: a configured pin is trusted as given; a server on this machine is
//! found (or started) without any configuration; a remote one needs a pin.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};

/// The server to talk to, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Its address.
    pub addr: SocketAddr,
    /// The SHA-256 of its certificate, pinned.
    pub pin: [u8; 32],
    /// Whether this call started it.
    pub launched: bool,
}

/// The data directory of the local server qpq starts on demand: the server's own default
/// (the platform's data directory for `quicproquo-server`), so `qpq-server` started by hand
/// and the one `qpq` starts are the same server.
pub fn default_local_dir() -> PathBuf {
    directories::ProjectDirs::from("", "", "quicproquo-server")
        .map_or_else(|| PathBuf::from("qpq-data"), |d| d.data_dir().to_path_buf())
}

/// The program that runs the local server, and the arguments before `--listen`: this
/// executable's `server` command when the server is built in, else `qpq-server` from PATH.
pub fn server_program(exe: &Path) -> anyhow::Result<(PathBuf, Vec<String>)> {
    choose_server_program(
        exe,
        cfg!(feature = "embedded-server"),
        std::env::var_os("PATH"),
    )
}

fn choose_server_program(
    exe: &Path,
    built_in: bool,
    path: Option<std::ffi::OsString>,
) -> anyhow::Result<(PathBuf, Vec<String>)> {
    if built_in {
        return Ok((exe.to_path_buf(), vec!["server".into()]));
    }
    let found = path.and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("qpq-server"))
            .find(|candidate| candidate.is_file())
    });
    match found {
        Some(program) => Ok((program, Vec::new())),
        None => bail!(
            "no server answers and this qpq has no server built in: install qpq-server on \
             PATH, or give a server with --server ADDR --pin SHA256"
        ),
    }
}

/// The certificate fingerprint of the server whose data directory is `dir`, from the
/// certificate it wrote there (`tls/cert.pem`).
pub fn local_fingerprint(dir: &Path) -> anyhow::Result<[u8; 32]> {
    let tls_dir = dir.join("tls");
    let tls =
        qrpc::tls::ServerTls::from_pem_files(&tls_dir.join("cert.pem"), &tls_dir.join("key.pem"))
            .with_context(|| {
            format!(
                "reading the local server's certificate in {}",
                dir.display()
            )
        })?;
    let leaf = tls
        .leaf()
        .context("the local server's certificate file is empty")?;
    Ok(qrpc::tls::fingerprint(leaf))
}

/// Whether a qpq server with this certificate answers at `addr`.
pub async fn answers(addr: SocketAddr, pin: [u8; 32]) -> bool {
    let connect = qrpc::Client::builder(addr, qrpc::tls::ClientTls::pinned(pin))
        .configure(|c| {
            c.alpn(vec![b"qpq/1".to_vec()]);
        })
        .connect();
    matches!(
        tokio::time::timeout(Duration::from_secs(3), connect).await,
        Ok(Ok(_))
    )
}

/// Resolves the server. With `pin`, the address is used as it is. Without, the address must
/// be on this machine: if the local server (data in `local_dir`) answers there it is pinned
/// from its certificate file; otherwise `launch` starts it and this waits until it answers.
pub async fn resolve(
    addr: SocketAddr,
    pin: Option<[u8; 32]>,
    local_dir: &Path,
    launch: impl FnOnce(SocketAddr, &Path) -> anyhow::Result<()>,
) -> anyhow::Result<Target> {
    if let Some(pin) = pin {
        return Ok(Target {
            addr,
            pin,
            launched: false,
        });
    }
    if !addr.ip().is_loopback() {
        bail!(
            "{addr} is not on this machine: give its certificate's SHA-256 with --pin (qpq-server \
             prints it at start) or `pin = \"...\"` in the config; qpq never trusts a remote \
             server blindly"
        );
    }
    if let Ok(pin) = local_fingerprint(local_dir)
        && answers(addr, pin).await
    {
        return Ok(Target {
            addr,
            pin,
            launched: false,
        });
    }
    launch(addr, local_dir)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(pin) = local_fingerprint(local_dir)
            && answers(addr, pin).await
        {
            return Ok(Target {
                addr,
                pin,
                launched: true,
            });
        }
        if tokio::time::Instant::now() >= deadline {
            bail!(
                "started a local server in {} but it does not answer at {addr} (is the port taken \
                 by something else? see {})",
                local_dir.display(),
                local_dir.join("server.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts the local server ([`server_program`]) as a background process in its own process
/// group (so it outlives this one and ignores this terminal's Ctrl-C), logging to `server.log`.
pub fn spawn_detached(
    exe: &Path,
    addr: SocketAddr,
    dir: &Path,
) -> anyhow::Result<std::process::Child> {
    qpq_core::files::private_dir(dir).with_context(|| format!("creating {}", dir.display()))?;
    let log_path = dir.join("server.log");
    qpq_core::files::write_private(&log_path, b"")?;
    let log = std::fs::OpenOptions::new().append(true).open(&log_path)?;
    let (program, first) = server_program(exe)?;
    let mut cmd = std::process::Command::new(&program);
    cmd.args(first)
        .arg("--listen")
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt as _;
        cmd.process_group(0);
    }
    cmd.spawn()
        .with_context(|| format!("starting the local server ({})", program.display()))
}

/// `qpq server`: runs a qpq-server in the foreground until Ctrl-C or SIGTERM.
#[cfg(feature = "embedded-server")]
pub async fn serve(listen: SocketAddr, dir: PathBuf) -> anyhow::Result<()> {
    let server = qpq_server::start(qpq_server::Config {
        listen,
        data_dir: dir.clone(),
        ..Default::default()
    })
    .await?;
    println!("qpq server listening on {}", server.addr);
    println!("data directory: {}", dir.display());
    println!(
        "certificate sha256: {}",
        qrpc::tls::format_fingerprint(&server.fingerprint)
    );
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    server.shutdown().await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::path::Path;

    #[test]
    fn the_server_is_this_program_when_built_in_else_qpq_server_from_path() {
        let exe = Path::new("/opt/qpq/bin/qpq");
        let (program, args) = super::choose_server_program(exe, true, None).unwrap();
        assert_eq!((program.as_path(), args), (exe, vec!["server".to_owned()]));

        let bin = tempfile::tempdir().unwrap();
        let empty = tempfile::tempdir().unwrap();
        let path = std::env::join_paths([empty.path(), bin.path()]).unwrap();
        let missing = super::choose_server_program(exe, false, Some(path.clone())).unwrap_err();
        assert!(
            missing.to_string().contains("--server ADDR --pin"),
            "{missing}"
        );
        std::fs::write(bin.path().join("qpq-server"), b"").unwrap();
        let (program, args) = super::choose_server_program(exe, false, Some(path)).unwrap();
        assert_eq!(program, bin.path().join("qpq-server"));
        assert!(args.is_empty());
    }

    #[cfg(feature = "embedded-server")]
    #[test]
    fn the_local_server_directory_is_the_servers_own_default() {
        assert_eq!(
            super::default_local_dir(),
            qpq_server::config::default_data_dir()
        );
    }
}
