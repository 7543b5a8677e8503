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

    /// Two servers on loopback that federate with each other: `a.demo.test` and
    /// `b.demo.test`, each listing the other's key pin and address.
    pub async fn start_federated_pair() -> anyhow::Result<(Self, Self)> {
        let domains = ["a.demo.test", "b.demo.test"];
        let mut sites = Vec::new();
        for domain in domains {
            let dir = tempfile::tempdir()?;
            let cert = qrpc::tls::SelfSigned::generate(&[domain])?;
            let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            std::fs::write(&cert_path, cert.cert_pem())?;
            qpq_core::files::private_file(&key_path)?;
            std::fs::write(&key_path, cert.key_pem().as_bytes())?;
            let pin = qpq_server::util::hex(&qrpc::tls::key_fingerprint(cert.cert())?);
            // A free port now, for the other server to list (the OS hands out another one
            // to the next asker).
            let addr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
            sites.push((domain, dir, cert_path, key_path, pin, addr));
        }
        let mut started = Vec::new();
        for (i, (domain, dir, cert, key, _, addr)) in sites.iter().enumerate() {
            let (peer_domain, _, _, _, peer_pin, peer_addr) = &sites[1 - i];
            let mut config = qpq_server::Config {
                listen: *addr,
                domain: (*domain).to_owned(),
                data_dir: dir.path().join("data"),
                tls_cert: Some(cert.clone()),
                tls_key: Some(key.clone()),
                ..Default::default()
            };
            config.federation.enabled = true;
            config.federation.peers = vec![qpq_server::config::FederationPeer {
                domain: (*peer_domain).to_owned(),
                key_pin: peer_pin.clone(),
                address: Some(*peer_addr),
            }];
            started.push(
                qpq_server::start(config)
                    .await
                    .with_context(|| format!("starting the embedded server {domain}"))?,
            );
        }
        let mut dirs = sites.into_iter().map(|s| s.1);
        let mut servers = started.into_iter();
        match (servers.next(), servers.next(), dirs.next(), dirs.next()) {
            (Some(a), Some(b), Some(a_dir), Some(b_dir)) => Ok((
                Self {
                    server: a,
                    _dir: a_dir,
                },
                Self {
                    server: b,
                    _dir: b_dir,
                },
            )),
            _ => anyhow::bail!("the federated servers did not start"),
        }
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
