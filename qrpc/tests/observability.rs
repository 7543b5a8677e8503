//! What operators see: the `tracing` output of a server, with its connection and call spans.
//! Its own test binary, with one test: tracing caches per-callsite interest process-wide, so a
//! subscriber installed for one test would race tests on other threads that have none.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use qrpc::middleware::AuditLayer;

/// Everything the `tracing` subscriber writes, for reading back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The default audit sink writes to `tracing`: what it writes is what an operator's log keeps.
/// It names the method, status and peer, inside the call's and the connection's spans, and
/// carries neither payloads nor status messages (which can echo request data).
#[tokio::test(flavor = "current_thread")]
async fn the_audit_log_line_sits_in_the_call_span_and_leaks_no_request_data() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let server = start_layered(TestService::default(), AuditLayer::new());
    let client = server.client().await;
    echo_then_fail_with_secrets(&client).await;
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("qrpc::audit")).collect();
    assert_eq!(audit.len(), 2, "{log}");
    for line in &audit {
        // The call's span (method, request id, connection, peer) inside the connection's.
        assert!(line.contains("connection{peer=127.0.0.1:"), "{line}");
        assert!(line.contains("call{method=test.Svc/"), "{line}");
        assert!(line.contains("request_id="), "{line}");
    }
    assert!(
        audit[0].contains("method=test.Svc/Echo") && audit[0].contains("code=ok"),
        "{}",
        audit[0]
    );
    assert!(
        audit[1].contains("code=not_found") || audit[1].contains("code=not found"),
        "{}",
        audit[1]
    );
    assert!(
        !log.contains("secret"),
        "the log carries request data: {log}"
    );

    // A caller's W3C trace context is a field of the call's span; a value of another shape is
    // not recorded.
    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    for value in [
        PARENT,
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 x=1",
    ] {
        let mut request = qrpc::Request::new(Msg::n(1));
        request.metadata_mut().insert("traceparent", value).unwrap();
        client.unary::<_, Msg>(&ECHO, request).await.unwrap();
    }
    let log = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("qrpc::audit")).collect();
    assert_eq!(audit.len(), 4, "{log}");
    assert!(
        audit[2].contains(&format!("traceparent={PARENT}")),
        "{}",
        audit[2]
    );
    assert!(!audit[3].contains("traceparent"), "{}", audit[3]);
    assert!(!log.contains("x=1"), "{log}");
}
