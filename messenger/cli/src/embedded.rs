//! A throwaway qpq-server in a temporary directory, on loopback, for `qpq demo` and `qpq play`.

use anyhow::Context as _;
use qpq_sdk::QpqClient;

/// A running embedded server; its data goes away with it.
pub struct Embedded {
    /// The server.
    pub server: qpq_server::RunningServer,
    _dir: tempfile::TempDir,
}

impl Embedded {
    /// Starts a server on `127.0.0.1` (any free port) with default settings.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let server = qpq_server::start(qpq_server::Config {
            listen: "127.0.0.1:0".parse()?,
            data_dir: dir.path().to_path_buf(),
            ..Default::default()
        })
        .await
        .context("starting the embedded server")?;
        Ok(Self { server, _dir: dir })
    }

    /// A client of this server with its store in `dir`, encrypted with `key`, joining the
    /// invitations `invitations` allows at once (the others are message requests).
    pub fn client(
        &self,
        dir: &std::path::Path,
        key: [u8; 32],
        invitations: qpq_sdk::InvitationPolicy,
    ) -> anyhow::Result<QpqClient> {
        Ok(QpqClient::builder()
            .server(self.server.addr)
            .pin(self.server.fingerprint)
            .data_dir(dir)
            .raw_key(key)
            .invitations(invitations)
            .build()?)
    }

    /// Stops the server (its directory is deleted afterwards).
    pub async fn shutdown(self) {
        self.server.shutdown().await;
    }
}
