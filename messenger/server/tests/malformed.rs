//! Every method refuses malformed input with a clear status, and the server keeps serving.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use bytes::Bytes;
use common::*;
use qrpc::{CallKind, Code};

/// Bytes that are not a valid protobuf message (a field with wire type 7).
const GARBAGE: &[u8] = &[0x0f, 0xff, 0xff, 0xff];

async fn call(
    client: &qrpc::Client,
    kind: CallKind,
    id: u16,
    payload: Bytes,
) -> Result<(), qrpc::Status> {
    use futures::StreamExt;
    let request = match kind {
        CallKind::Unary => qrpc::CallRequest::unary(id, payload),
        CallKind::ServerStreaming => qrpc::CallRequest::server_streaming(id, payload),
        _ => qrpc::CallRequest::client_streaming(id, futures::stream::iter([payload]).boxed()),
    };
    let mut responses = client.call(request).await?;
    match responses.next().await {
        Some(Err(e)) => Err(e),
        Some(Ok(_)) => Ok(()),
        None if kind == CallKind::ServerStreaming => Ok(()),
        None => Err(qrpc::Status::internal("no response")),
    }
}

#[tokio::test]
async fn every_method_refuses_garbage_and_empty_requests() {
    let h = start(|_| {}).await;
    let anonymous = h.connect().await;
    let account = Account::create(&h, "alice", "phone").await;
    let public = qpq_server::server::public_methods();
    let mut checked = 0;
    let mut accepted_empty = Vec::new();
    for descriptor in qpq_proto::descriptors() {
        for method in descriptor.methods {
            // Before login: public methods decode and refuse; protected ones refuse to run.
            let err = call(
                &anonymous,
                method.kind,
                method.id,
                Bytes::from_static(GARBAGE),
            )
            .await
            .unwrap_err();
            if descriptor.name == "qpq.v1.Federation" {
                // Served on the federation protocol only (tests/federation_peers.rs).
                assert_eq!(err.code(), Code::Unimplemented, "{method}: {err}");
            } else if public.is_public(method.id) {
                assert_eq!(err.code(), Code::InvalidArgument, "{method}: {err}");
            } else {
                assert_eq!(err.code(), Code::Unauthenticated, "{method}: {err}");
            }
            // Logged in: garbage is InvalidArgument (federation is not served by this server).
            let err = call(
                &account.client,
                method.kind,
                method.id,
                Bytes::from_static(GARBAGE),
            )
            .await
            .unwrap_err();
            let expected = if descriptor.name == "qpq.v1.Federation" {
                Code::Unimplemented
            } else {
                Code::InvalidArgument
            };
            assert_eq!(err.code(), expected, "{method}: {err}");
            assert!(!err.message().is_empty());

            // An empty (all-defaults) request is refused with a clear client-side code, never
            // Internal; a few methods legitimately accept it.
            let result = call(&account.client, method.kind, method.id, Bytes::new()).await;
            match result {
                Err(err) => {
                    assert!(
                        !matches!(err.code(), Code::Internal | Code::Unknown),
                        "{method} answered an empty request with {err}"
                    );
                    assert!(!err.message().is_empty(), "{method}");
                }
                Ok(()) => accepted_empty.push(method.name),
            }
            if method.id == qpq_proto::v1::auth_server::LOGOUT.id {
                // An empty Logout request is valid and ends the session: log in again.
                login(&account.client, "alice", "phone", "correct horse battery")
                    .await
                    .unwrap();
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 41);
    // Exactly the methods whose every field is optional take an all-defaults request.
    accepted_empty.sort_unstable();
    assert_eq!(
        accepted_empty,
        [
            "Ack",
            "Fetch",
            "FetchWait",
            "Health",
            "KtHead",
            "ListDevices",
            "Logout",
            "Peek",
            "RelayFailures"
        ]
    );
    // Still serving.
    let health = qpq_proto::v1::p2p_client::P2pClient::new(anonymous.clone())
        .health(&qpq_proto::v1::HealthRequest {})
        .await
        .unwrap();
    assert_eq!(health.status, "ok");
}

#[tokio::test]
async fn out_of_range_fields_are_named_in_the_error() {
    use qpq_proto::v1;
    let h = start(|_| {}).await;
    let account = Account::create(&h, "bob", "laptop").await;
    let d = account.delivery();
    let mut bad = enqueue_to(&account.me(), 1, b"x");
    bad.message_id = vec![1, 2, 3].into();
    let err = d.enqueue(&bad).await.unwrap_err();
    assert!(err.message().contains("message_id"), "{err}");
    let mut bad = enqueue_to(&account.me(), 1, b"x");
    bad.recipient = Some(v1::DeviceRef {
        user: "Not Valid".into(),
        device: "d".into(),
    });
    let err = d.enqueue(&bad).await.unwrap_err();
    assert!(err.message().contains("user"), "{err}");
    let err = account
        .keys()
        .upload_hybrid_key(&v1::UploadHybridKeyRequest {
            key_bundle: vec![1; 10].into(),
            delivery_token: Default::default(),
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("key_bundle"), "{err}");
    let err = account
        .keys()
        .upload_key_package(&v1::UploadKeyPackageRequest {
            key_packages: vec![vec![0; 50].into()],
            last_resort: false,
        })
        .await
        .unwrap_err();
    assert!(err.message().contains("key_packages"), "{err}");
    let err = d
        .batch_enqueue(&v1::BatchEnqueueRequest {
            messages: (0..101)
                .map(|i| enqueue_to(&account.me(), i as u8, b"x"))
                .collect(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
