//! Everything the server writes is its owner's alone: the database holds the OPAQUE server
//! secret, the key-transparency signing key and every password file.
#![cfg(unix)]
#![allow(clippy::unwrap_used, missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn the_data_directory_and_every_file_in_it_are_owner_only() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    // Made first, world-readable, by someone else (an older CLI, a careless operator).
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = qpq_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.clone(),
        ..Default::default()
    };
    let running = qpq_server::start(config).await.unwrap();
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("tls")), 0o700);
    for file in ["qpq.db", "tls/key.pem"] {
        assert_eq!(mode(&data.join(file)), 0o600, "{file}");
    }
    for side in ["qpq.db-wal", "qpq.db-shm"] {
        if data.join(side).exists() {
            assert_eq!(mode(&data.join(side)), 0o600, "{side}");
        }
    }
    running.shutdown().await;

    // A database another process left world-readable is tightened at the next start.
    std::fs::set_permissions(data.join("qpq.db"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = qpq_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data.clone(),
        ..Default::default()
    };
    let running = qpq_server::start(config).await.unwrap();
    assert_eq!(mode(&data.join("qpq.db")), 0o600);
    running.shutdown().await;
}

/// Log output captured from this thread's subscriber.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// The audit lines one registration produces, with `log_peer_addresses` as given.
async fn audit_lines(log_peer_addresses: bool) -> String {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let root = tempfile::tempdir().unwrap();
    let running = qpq_server::start(qpq_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: root.path().to_path_buf(),
        log_peer_addresses,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = qrpc::Client::builder(
        running.addr,
        qrpc::tls::ClientTls::pinned(running.fingerprint),
    )
    .configure(|c| {
        c.alpn(vec![b"qpq/1".to_vec()]);
    })
    .connect()
    .await
    .unwrap();
    qpq_proto::auth_flows::register(&client, "alice", "correct horse battery")
        .await
        .unwrap();
    drop(client);
    running.shutdown().await;
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .filter(|l| l.contains("qrpc::audit"))
        .collect::<Vec<_>>()
        .join("\n")
}

// Single-threaded: every task logs through this thread's subscriber.
#[tokio::test(flavor = "current_thread")]
async fn the_audit_log_names_no_ip_address_unless_the_operator_asks() {
    let quiet = audit_lines(false).await;
    assert!(quiet.contains("RegisterStart"), "{quiet}");
    assert!(!quiet.contains("127.0.0.1"), "{quiet}");
    let loud = audit_lines(true).await;
    assert!(loud.contains("peer=127.0.0.1"), "{loud}");
}
