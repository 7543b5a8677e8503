//! Crash safety: SIGKILL the server binary mid-traffic, restart it on the same data directory,
//! and find every acknowledged message and every session still there.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use common::*;
use qpq_proto::v1;

struct ServerProcess {
    child: Child,
    addr: std::net::SocketAddr,
    fingerprint: [u8; 32],
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_server(dir: &std::path::Path) -> ServerProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qpq-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env("QPQ_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut addr = None;
    let mut fingerprint = None;
    while addr.is_none() || fingerprint.is_none() {
        let line = lines
            .next()
            .expect("server exited before announcing itself")
            .unwrap();
        if let Some(a) = line.strip_prefix("qpq-server listening on ") {
            addr = Some(a.trim().parse().unwrap());
        } else if let Some(f) = line.strip_prefix("certificate sha256: ") {
            fingerprint = Some(qrpc::tls::parse_fingerprint(f.trim()).unwrap());
        }
    }
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    ServerProcess {
        child,
        addr: addr.unwrap(),
        fingerprint: fingerprint.unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_traffic_loses_no_acknowledged_message_or_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = spawn_server(dir.path());

    // A short idle timeout: after the SIGKILL nobody closes the connection, so the senders
    // notice the dead server through the timeout.
    let alice = qrpc::Client::builder(
        server.addr,
        qrpc::tls::ClientTls::pinned(server.fingerprint),
    )
    .configure(|c| {
        c.alpn(vec![b"qpq/1".to_vec()]);
        c.idle_timeout(std::time::Duration::from_secs(2));
        c.keep_alive_interval(Some(std::time::Duration::from_millis(500)));
        c.reconnect_mut().enabled(false);
    })
    .connect()
    .await
    .unwrap();
    register(&alice, "alice", "pw-alice").await.unwrap();
    login(&alice, "alice", "phone", "pw-alice").await.unwrap();
    let bob = connect_to(server.addr, server.fingerprint).await;
    register(&bob, "bob", "pw-bob").await.unwrap();
    let token = login(&bob, "bob", "laptop", "pw-bob")
        .await
        .unwrap()
        .session_token;

    let bob_ref = v1::DeviceRef {
        user: "bob".into(),
        device: "laptop".into(),
    };
    // Bob writes first, so Alice is not a stranger to him (strangers get a tiny quota).
    v1::delivery_client::DeliveryClient::new(bob.clone())
        .enqueue(&v1::EnqueueRequest {
            recipient: Some(v1::DeviceRef {
                user: "alice".into(),
                device: "phone".into(),
            }),
            message_id: vec![0xb0; 16].into(),
            payload: b"hi".to_vec().into(),
            delivery_token: Default::default(),
        })
        .await
        .unwrap();
    let acknowledged: Arc<Mutex<HashSet<Vec<u8>>>> = Arc::default();
    let senders: Vec<_> = (0..4u8)
        .map(|sender| {
            let delivery = v1::delivery_client::DeliveryClient::new(alice.clone());
            let acknowledged = acknowledged.clone();
            let to = bob_ref.clone();
            tokio::spawn(async move {
                for i in 0..10_000u32 {
                    let mut id = vec![sender; 12];
                    id.extend_from_slice(&i.to_be_bytes());
                    let request = v1::EnqueueRequest {
                        recipient: Some(to.clone()),
                        message_id: id.clone().into(),
                        payload: vec![sender; 100].into(),
                        delivery_token: Default::default(),
                    };
                    match delivery.enqueue(&request).await {
                        Ok(_) => {
                            acknowledged.lock().unwrap().insert(id);
                        }
                        // Over the rate limit: slow down and try the next message.
                        Err(e) if e.code() == qrpc::Code::ResourceExhausted => {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    // Let traffic flow, then kill the process without warning.
    while acknowledged.lock().unwrap().len() < 200 {
        assert!(
            !senders.iter().all(|s| s.is_finished()),
            "every sender stopped before 200 messages"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    server.child.kill().unwrap(); // SIGKILL
    server.child.wait().unwrap();
    for s in senders {
        let _ = s.await;
    }
    let acked = acknowledged.lock().unwrap().clone();
    assert!(acked.len() >= 200);

    let restarted = spawn_server(dir.path());
    let client = connect_to(restarted.addr, restarted.fingerprint).await;
    let resumed = v1::auth_client::AuthClient::new(client.clone())
        .resume_session(&v1::ResumeSessionRequest {
            session_token: token,
        })
        .await
        .expect("the session survives the crash");
    assert_eq!(resumed.user, "bob");
    let delivery = v1::delivery_client::DeliveryClient::new(client.clone());
    let mut stored = HashSet::new();
    let mut after = 0;
    loop {
        let page = delivery
            .fetch(&v1::FetchRequest {
                after_seq: after,
                limit: 500,
            })
            .await
            .unwrap();
        let Some(last) = page.messages.last() else {
            break;
        };
        after = last.seq;
        stored.extend(page.messages.into_iter().map(|m| m.message_id.to_vec()));
    }
    let missing = acked.difference(&stored).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} acknowledged messages were lost",
        acked.len()
    );
}
