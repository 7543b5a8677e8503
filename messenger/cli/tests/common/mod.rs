//! A qpq-server on loopback for the CLI's tests.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

pub struct Server {
    _dir: tempfile::TempDir,
    pub running: qpq_server::RunningServer,
}

pub async fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let running = qpq_server::start(qpq_server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().to_path_buf(),
        ..Default::default()
    })
    .await
    .unwrap();
    Server { _dir: dir, running }
}

/// A terminal session of a new in-memory client of `s` (device "cli").
pub fn session(s: &Server) -> qpq_cli::session::Session {
    let client = qpq_sdk::QpqClient::builder()
        .server(s.running.addr)
        .pin(s.running.fingerprint)
        .in_memory()
        .build()
        .unwrap();
    qpq_cli::session::Session::new(client, "cli")
}
