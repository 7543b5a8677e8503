//! Every call kind over real QUIC, and every way a single call can fail without hurting others.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use futures::StreamExt;
use qrpc::fuzzing::{RequestFrame, ResponseFrame};
use qrpc::{Code, Status};

#[tokio::test]
async fn all_four_call_kinds() {
    let server = start(TestService::default());
    let client = server.client().await;

    let echo: Msg = client
        .unary(
            &ECHO,
            &Msg {
                text: "hi".into(),
                ..Msg::default()
            },
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echo.text, "hi");

    let mut stream = client
        .server_streaming::<_, Msg>(&COUNT, &Msg::n(5))
        .await
        .unwrap();
    let mut got = vec![];
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.n);
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);

    let sum: Msg = client
        .client_streaming(&SUM, futures::stream::iter((1..=10).map(Msg::n)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sum.n, 55);

    let empty_sum: Msg = client
        .client_streaming(&SUM, futures::stream::empty::<Msg>())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(empty_sum.n, 0);

    let replies: Vec<u64> = client
        .bidi::<_, Msg>(&CHAT, futures::stream::iter((1..=4).map(Msg::n)))
        .await
        .unwrap()
        .map(|m| m.unwrap().n)
        .collect()
        .await;
    assert_eq!(replies, vec![2, 4, 6, 8]);

    let empty_stream = client
        .server_streaming::<_, Msg>(&COUNT, &Msg::n(0))
        .await
        .unwrap();
    assert_eq!(empty_stream.count().await, 0);
}

#[tokio::test]
async fn bidi_replies_interleave_with_requests() {
    let server = start(TestService::default());
    let client = server.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Msg>(1);
    let mut replies = client
        .bidi::<_, Msg>(&CHAT, tokio_stream_from(rx))
        .await
        .unwrap();
    for i in 1..=3 {
        tx.send(Msg::n(i)).await.unwrap();
        // Each reply arrives before the next request is sent: the call is truly bidirectional.
        assert_eq!(replies.message().await.unwrap().unwrap().n, i * 2);
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<Msg>,
) -> impl futures::Stream<Item = Msg> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn error_status_carries_code_message_and_details() {
    let server = start(TestService::default());
    let client = server.client().await;
    let err = client
        .unary::<_, Msg>(
            &FAIL,
            &Msg {
                text: "no such thing".into(),
                ..Msg::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(err.message(), "no such thing");
    assert_eq!(&err.details()[..], &[1, 2, 3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_unary_calls_on_one_connection() {
    let server = start(TestService::default());
    let client = server.client().await;
    let calls = (0..1000u64).map(|i| {
        let client = client.clone();
        async move {
            let reply: Msg = client
                .unary(
                    &ECHO,
                    &Msg {
                        n: i,
                        data: i.to_be_bytes().to_vec(),
                        ..Msg::default()
                    },
                )
                .await?
                .into_inner();
            Ok::<_, Status>((i, reply))
        }
    });
    let results = futures::future::join_all(calls).await;
    assert_eq!(results.len(), 1000);
    for result in results {
        let (i, reply) = result.unwrap();
        assert_eq!(reply.n, i, "reply went to the wrong caller");
        assert_eq!(reply.data, i.to_be_bytes());
    }
}

#[tokio::test]
async fn unknown_method_is_unimplemented() {
    let server = start(TestService::default());
    let client = server.client().await;
    let err = unary_raw(&client, 999, Bytes::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    // The connection keeps serving.
    assert!(client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.is_ok());
}

#[tokio::test]
async fn oversize_payload_fails_that_call_only() {
    let server = start_with(TestService::default(), |c| {
        c.max_payload(64 * 1024);
        c
    });
    let client = qrpc::Client::builder(server.addr, server.tls())
        .configure(|c| {
            c.max_payload(8 * 1024 * 1024);
        })
        .connect()
        .await
        .unwrap();
    let big = Msg {
        data: vec![7; 1024 * 1024],
        ..Msg::default()
    };
    let err = client.unary::<_, Msg>(&ECHO, &big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("exceeds the limit"), "{err}");

    // Exactly at the limit is fine; one byte over is not.
    // (tag 1 byte + 3-byte length varint + data)
    let at_limit = Msg {
        data: vec![0u8; 64 * 1024 - 4],
        ..Msg::default()
    };
    assert_eq!(prost::Message::encoded_len(&at_limit), 64 * 1024);
    assert!(client.unary::<_, Msg>(&ECHO, &at_limit).await.is_ok());
    let over = Msg {
        data: vec![0u8; 64 * 1024 - 3],
        ..Msg::default()
    };
    assert_eq!(
        client
            .unary::<_, Msg>(&ECHO, &over)
            .await
            .unwrap_err()
            .code(),
        Code::ResourceExhausted
    );

    let ok: Msg = client.unary(&ECHO, &Msg::n(3)).await.unwrap().into_inner();
    assert_eq!(ok.n, 3);
}

#[tokio::test]
async fn a_server_sending_one_datagram_at_a_time_still_moves_megabytes() {
    let server = start_with(TestService::default(), |c| {
        c.segmentation_offload(false);
        c
    });
    let client = qrpc::Client::builder(server.addr, server.tls())
        .connect()
        .await
        .unwrap();
    let big = Msg {
        data: (0..2 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect(),
        ..Msg::default()
    };
    let echoed: Msg = client.unary(&ECHO, &big).await.unwrap().into_inner();
    assert_eq!(echoed.data, big.data);
}

#[tokio::test]
async fn oversize_response_is_refused_by_the_client() {
    let server = start(TestService::default());
    let client = qrpc::Client::builder(server.addr, server.tls())
        .configure(|c| {
            c.max_payload(1024);
        })
        .connect()
        .await
        .unwrap();
    let err = client
        .unary::<_, Msg>(
            &ECHO,
            &Msg {
                data: vec![1; 1000],
                text: "x".repeat(100),
                ..Msg::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.is_ok());
}

/// A raw QUIC connection to the server, for sending bytes no qrpc client would send.
async fn raw_connection(server: &Running) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(pinned_quic_config(server.fingerprint));
    endpoint
        .connect(server.addr, "localhost")
        .unwrap()
        .await
        .unwrap()
}

fn pinned_quic_config(fp: [u8; 32]) -> quinn::ClientConfig {
    qrpc::tls::ClientTls::pinned(fp)
        .quinn_client_config(&[qrpc::protocol::DEFAULT_ALPN.to_vec()])
        .unwrap()
}

async fn read_response(recv: &mut quinn::RecvStream) -> Result<ResponseFrame, String> {
    let bytes = recv.read_to_end(1 << 20).await.map_err(|e| e.to_string())?;
    ResponseFrame::decode_exact(&bytes, 1 << 20).map_err(|e| e.to_string())
}

#[tokio::test]
async fn garbage_on_one_stream_fails_only_that_call() {
    let server = start(TestService::default());
    let conn = raw_connection(&server).await;

    // A header announcing a small payload, then too few bytes: truncated frame.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 1, 0, 0, 0, 9, 0, 0, 0, 50, 1, 2, 3])
        .await
        .unwrap();
    send.finish().unwrap();
    let resp = read_response(&mut recv).await.unwrap();
    assert_eq!(Code::from_u8(resp.status), Code::InvalidArgument);
    assert_eq!(resp.request_id, 9);

    // Random bytes: whatever they decode to, this call fails and nothing else does.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[
        0xde, 0xad, 0xbe, 0xef, 0xff, 0x00, 0x13, 0x37, 0x42, 0x99, 0x01,
    ])
    .await
    .unwrap();
    send.finish().unwrap();
    let resp = read_response(&mut recv).await.unwrap();
    assert_ne!(Code::from_u8(resp.status), Code::Ok);

    // A valid protobuf header with an undecodable payload for ECHO.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let frame = RequestFrame {
        method_id: ECHO.id,
        request_id: 11,
        payload: Bytes::from_static(&[0x0a, 0xff]),
    };
    send.write_all(&frame.to_bytes()).await.unwrap();
    send.finish().unwrap();
    let resp = read_response(&mut recv).await.unwrap();
    assert_eq!(Code::from_u8(resp.status), Code::InvalidArgument);

    // A stream that ends before a full header gets request id 0.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 1, 0]).await.unwrap();
    send.finish().unwrap();
    let resp = read_response(&mut recv).await.unwrap();
    assert_eq!(
        (Code::from_u8(resp.status), resp.request_id),
        (Code::InvalidArgument, 0)
    );

    // The same connection still serves a well-formed call.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut buf = BytesMut::new();
    RequestFrame {
        method_id: ECHO.id,
        request_id: 12,
        payload: prost::Message::encode_to_vec(&Msg::n(5)).into(),
    }
    .encode(&mut buf);
    send.write_all(&buf).await.unwrap();
    send.finish().unwrap();
    let resp = read_response(&mut recv).await.unwrap();
    assert_eq!((resp.status, resp.request_id), (0, 12));
    let msg: Msg = prost::Message::decode(resp.payload).unwrap();
    assert_eq!(msg.n, 5);
}

#[tokio::test]
async fn frames_of_another_call_end_the_stream_with_invalid_argument() {
    let server = start(TestService::default());
    let conn = raw_connection(&server).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut buf = BytesMut::new();
    RequestFrame {
        method_id: SUM.id,
        request_id: 3,
        payload: Bytes::new(),
    }
    .encode(&mut buf);
    RequestFrame {
        method_id: SUM.id,
        request_id: 4,
        payload: Bytes::new(),
    }
    .encode(&mut buf);
    send.write_all(&buf).await.unwrap();
    send.finish().unwrap();
    let resp = read_response(&mut recv).await.unwrap();
    assert_eq!(
        (Code::from_u8(resp.status), resp.request_id),
        (Code::InvalidArgument, 3)
    );
}

#[tokio::test]
async fn stream_without_header_is_reset_after_the_header_timeout() {
    let server = start_with(TestService::default(), |c| {
        c.header_timeout(Duration::from_millis(200));
        c
    });
    let conn = raw_connection(&server).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 1]).await.unwrap(); // part of a header, then silence
    let err = recv.read_to_end(1024).await.unwrap_err();
    assert!(
        matches!(err, quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)) if code == qrpc::protocol::reset::HEADER_TIMEOUT),
        "{err:?}"
    );
}

#[tokio::test]
async fn panicking_handler_gets_internal_and_server_keeps_serving() {
    let server = start(TestService::default());
    let client = server.client().await;
    for _ in 0..3 {
        let err = client
            .unary::<_, Msg>(&PANIC, &Msg::default())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Internal);
    }
    let ok: Msg = client.unary(&ECHO, &Msg::n(9)).await.unwrap().into_inner();
    assert_eq!(ok.n, 9);
    let other = server.client().await;
    assert!(other.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.is_ok());
}

#[tokio::test]
async fn client_cancel_drops_the_handler_future() {
    let service = TestService::default();
    let observed = service.observed.clone();
    let server = start(service);
    let client = server.client().await;
    let call = tokio::spawn({
        let client = client.clone();
        async move { client.unary::<_, Msg>(&SLOW, &Msg::n(60_000)).await }
    });
    eventually(|| observed.slow_started.load(Ordering::SeqCst) == 1).await;
    call.abort();
    eventually(|| observed.slow_dropped.load(Ordering::SeqCst) == 1).await;
    assert_eq!(observed.slow_finished.load(Ordering::SeqCst), 0);
    assert!(client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.is_ok());
}

#[tokio::test]
async fn dropping_a_response_stream_cancels_the_server_stream() {
    let service = TestService::default();
    let observed = service.observed.clone();
    let server = start(service);
    let client = server.client().await;
    let mut stream = client
        .server_streaming::<_, Msg>(&COUNT, &Msg::n(1_000_000))
        .await
        .unwrap();
    assert_eq!(stream.message().await.unwrap().unwrap().n, 0);
    drop(stream);
    // The server drops its stream long before the end, and stops producing.
    eventually(|| observed.count_dropped.load(Ordering::SeqCst) == 1).await;
    let produced = observed.count_produced.load(Ordering::SeqCst);
    assert!(produced < 1_000_000, "{produced} items produced");
    // The connection is healthy, and a round trip through it later the dropped stream has
    // produced nothing more.
    assert!(client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.is_ok());
    assert_eq!(
        observed.count_produced.load(Ordering::SeqCst),
        produced,
        "the dropped stream went on producing"
    );
    // A stream read to its end is not counted as dropped.
    let mut all = client
        .server_streaming::<_, Msg>(&COUNT, &Msg::n(3))
        .await
        .unwrap();
    while all.message().await.unwrap().is_some() {}
    assert_eq!(observed.count_dropped.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn duplicate_method_ids_refuse_to_bind() {
    let cert = cert();
    let err = qrpc::Server::builder()
        .tls(cert.server_tls())
        .add_service(TestService::default().into_methods())
        .add_service(TestService::default().into_methods())
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("method id 1") && text.contains("test.Svc/Echo"),
        "{text}"
    );
}

#[tokio::test]
async fn streaming_call_opened_like_unary_is_invalid() {
    let server = start(TestService::default());
    let conn = raw_connection(&server).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut buf = BytesMut::new();
    buf.put_slice(
        &RequestFrame {
            method_id: SUM.id,
            request_id: 1,
            payload: Bytes::from_static(&[0x10, 0x01]),
        }
        .to_bytes(),
    );
    send.write_all(&buf).await.unwrap();
    send.finish().unwrap();
    let resp = read_response(&mut recv).await.unwrap();
    assert_eq!(Code::from_u8(resp.status), Code::InvalidArgument);
}
