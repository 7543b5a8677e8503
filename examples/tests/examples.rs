//! Each example runs on loopback and does what it says.
#![allow(clippy::unwrap_used, missing_docs)]

use qrpc::Code;
use qrpc_examples::proto::chat::v1::room_event_push::Event;
use qrpc_examples::proto::chat::v1::{Joined, Posted};

#[tokio::test]
async fn echo_runs_every_call_kind() {
    let report = qrpc_examples::echo::run().await.unwrap();
    assert_eq!(report.said, "hello over QUIC");
    assert_eq!(report.repeated, vec![0, 1, 2]);
    assert_eq!(report.sum, 10);
    assert_eq!(report.doubled, vec![42, -10]);
}

#[tokio::test]
async fn chat_pushes_events_in_order() {
    let (events, members) = qrpc_examples::chat::run().await.unwrap();
    assert_eq!(
        events,
        vec![
            Event::Joined(Joined { name: "bob".into() }),
            Event::Joined(Joined {
                name: "alice".into()
            }),
            Event::Posted(Posted {
                from: "alice".into(),
                text: "hello, bob".into()
            }),
        ]
    );
    assert_eq!(members, vec!["alice".to_owned(), "bob".to_owned()]);
}

#[tokio::test]
async fn middleware_guards_and_limits() {
    let report = qrpc_examples::middleware::run().await.unwrap();
    assert_eq!(
        report.echoed, "open to all",
        "the guard covers the room only"
    );
    assert_eq!(
        report.posts,
        vec![
            Code::Unauthenticated,
            Code::Ok,
            Code::Ok,
            Code::Ok,
            Code::ResourceExhausted
        ]
    );
}

#[tokio::test]
async fn echo_generated_client_surfaces_server_errors() {
    use qrpc_examples::proto::echo::v1::{RepeatRequest, echo_client::EchoClient};
    let (addr, fp, server) = qrpc_examples::echo::serve(qrpc_examples::loopback()).unwrap();
    let client = EchoClient::new(
        qrpc::Client::connect(addr, qrpc::tls::ClientTls::pinned(fp))
            .await
            .unwrap(),
    );
    let err = client
        .repeat(&RepeatRequest {
            text: "x".into(),
            count: 1_000_000,
        })
        .await;
    // A server-streaming error can arrive with the stream or as its first item.
    let code = match err {
        Err(status) => status.code(),
        Ok(mut stream) => stream.message().await.unwrap_err().code(),
    };
    assert_eq!(code, Code::InvalidArgument);
    let descriptor = &qrpc_examples::proto::echo::v1::echo_server::DESCRIPTOR;
    assert_eq!(descriptor.name, "echo.v1.Echo");
    assert_eq!(descriptor.methods.len(), 7);
    assert_eq!(
        descriptor.method_by_name("Double").unwrap().kind,
        qrpc::CallKind::Bidi
    );
    server.abort();
}
