//! The Prometheus endpoint: qrpc's call and connection metrics, as an operator scrapes them.
//! (Its own test binary: the exporter installs the process-wide `metrics` recorder.)
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::*;
use qpq_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test]
async fn the_metrics_endpoint_counts_calls_by_method_and_status_and_open_connections() {
    // A free loopback port for the exporter, which takes an address rather than a listener.
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let h = start(|c| c.metrics_listen = Some(metrics_addr)).await;
    let client = h.connect().await;
    let p2p = v1::p2p_client::P2pClient::new(client.clone());
    for _ in 0..3 {
        p2p.health(&v1::HealthRequest {}).await.unwrap();
    }
    // An authenticated method without a session: UNAUTHENTICATED.
    let devices = v1::device_client::DeviceClient::new(client.clone());
    let err = devices
        .list_devices(&v1::ListDevicesRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), qrpc::Code::Unauthenticated);

    let text = scrape(metrics_addr).await;
    let line = |name: &str, labels: &[&str]| -> Option<String> {
        text.lines()
            .find(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
            .map(str::to_owned)
    };
    let health = line(
        "qrpc_calls_total",
        &["method=\"qpq.v1.P2p/Health\"", "code=\"ok\""],
    )
    .unwrap_or_else(|| panic!("no Health counter in:\n{text}"));
    assert!(health.ends_with(" 3"), "{health}");
    assert!(
        line(
            "qrpc_calls_total",
            &[
                "method=\"qpq.v1.Device/ListDevices\"",
                "code=\"unauthenticated\""
            ]
        )
        .is_some(),
        "{text}"
    );
    assert!(
        line("qrpc_call_duration_seconds", &["Health"]).is_some(),
        "{text}"
    );
    let open = line("qrpc_connections_open", &[]).unwrap_or_else(|| panic!("{text}"));
    assert!(open.ends_with(" 1"), "{open}");
}
