//! Finding or starting the server with no configuration, and refusing to trust a remote one
//! blindly.
#![allow(clippy::unwrap_used, missing_docs)]

use std::path::Path;

use qpq_cli::launcher;

#[tokio::test]
async fn a_remote_server_needs_a_pin() {
    let dir = tempfile::tempdir().unwrap();
    let err = launcher::resolve(
        "192.0.2.7:7443".parse().unwrap(),
        None,
        dir.path(),
        |_, _| panic!("never launches for a remote address"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("--pin"), "{err}");
    // With a pin, the address is taken as given (nothing is contacted here).
    let target = launcher::resolve(
        "192.0.2.7:7443".parse().unwrap(),
        Some([1; 32]),
        dir.path(),
        |_, _| panic!("never launches with a pin"),
    )
    .await
    .unwrap();
    assert_eq!((target.pin, target.launched), ([1; 32], false));
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

#[tokio::test]
async fn a_local_server_is_started_once_and_pinned_from_its_certificate_file() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_udp_port();
    let mut child = None;
    let exe = Path::new(env!("CARGO_BIN_EXE_qpq"));
    let first = launcher::resolve(addr, None, dir.path(), |a, d| {
        child = Some(Kill(launcher::spawn_detached(exe, a, d)?));
        Ok(())
    })
    .await
    .unwrap();
    let _server = child.expect("nothing answered, so it was launched");
    assert!(first.launched);
    assert_eq!(first.pin, launcher::local_fingerprint(dir.path()).unwrap());
    assert!(dir.path().join("server.log").exists());

    // The next client finds it running and pins the same certificate.
    let second = launcher::resolve(addr, None, dir.path(), |_, _| panic!("already running"))
        .await
        .unwrap();
    assert_eq!((second.pin, second.launched), (first.pin, false));
    assert!(launcher::answers(addr, second.pin).await);
    assert!(
        !launcher::answers(addr, [0; 32]).await,
        "a wrong pin is refused"
    );
}
