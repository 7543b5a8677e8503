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
    for dir in ["blobs", "blobs/partial", "tls"] {
        assert_eq!(mode(&data.join(dir)), 0o700, "{dir}");
    }
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
