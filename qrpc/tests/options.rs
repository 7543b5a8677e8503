//! Per-call options: deadlines and metadata on the wire (`docs/wire-protocol.md` §9), with
//! peers that speak only the plain framing on either side.
#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use qrpc::tls::{ClientTls, SelfSigned};
use qrpc::{
    CallKind, Client, Code, Handler, Metadata, MethodInfo, Methods, Request, RequestContext,
    ServiceDescriptor, Status,
};
use tokio::sync::Notify;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint64, tag = "2")]
    n: u64,
}

const fn method(id: u16, name: &'static str, kind: CallKind) -> MethodInfo {
    MethodInfo {
        id,
        service: "test.Options",
        name,
        kind,
        idempotent: false,
    }
}

const ECHO: MethodInfo = method(1, "Echo", CallKind::Unary);
const HANG: MethodInfo = method(2, "Hang", CallKind::Unary);
const STREAM: MethodInfo = method(3, "Stream", CallKind::ServerStreaming);
const HANG_STREAM: MethodInfo = method(4, "HangStream", CallKind::ServerStreaming);

static DESCRIPTOR: ServiceDescriptor = ServiceDescriptor {
    name: "test.Options",
    methods: &[ECHO, HANG, STREAM, HANG_STREAM],
};

/// What the tests observe of the server.
#[derive(Default)]
struct Seen {
    /// A hanging handler started (a permit is kept if nobody waits yet).
    started: Notify,
    /// A hanging handler was dropped.
    dropped: Notify,
}

struct DropSignal(Arc<Seen>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.0.dropped.notify_one();
    }
}

/// Echo: answers with the request's text, the metadata keys it saw, and the time left in
/// whole milliseconds (0 without a deadline); sends back every `x-` entry as response
/// metadata, plus `x-server: options`.
fn echo(ctx: &RequestContext, req: Msg) -> Msg {
    ctx.with_response_metadata(|m| {
        for key in ctx.metadata().keys().filter(|k| k.starts_with("x-")) {
            if let Some(value) = ctx.metadata().get(key) {
                m.insert(key, value).unwrap();
            }
            if let Some(value) = ctx.metadata().get_bin(key) {
                m.insert_bin(key, value.clone()).unwrap();
            }
        }
        m.insert("x-server", "options").unwrap();
    });
    let keys: Vec<&str> = ctx.metadata().keys().collect();
    Msg {
        text: format!("{}|{}", req.text, keys.join(",")),
        n: ctx
            .remaining()
            .map_or(0, |r| u64::try_from(r.as_millis()).unwrap()),
    }
}

fn methods(seen: &Arc<Seen>) -> Methods {
    let hang = Arc::clone(seen);
    let hang_stream = Arc::clone(seen);
    Methods::new(&DESCRIPTOR)
        .route(
            ECHO,
            Handler::unary(|ctx: RequestContext, req: Msg| async move {
                Ok::<_, Status>(echo(&ctx, req))
            }),
        )
        .route(
            HANG,
            Handler::unary(move |_ctx, _req: Msg| {
                let seen = Arc::clone(&hang);
                async move {
                    let _guard = DropSignal(Arc::clone(&seen));
                    seen.started.notify_one();
                    std::future::pending::<()>().await;
                    Ok::<Msg, Status>(Msg::default())
                }
            }),
        )
        .route(
            STREAM,
            Handler::server_streaming(|ctx: RequestContext, req: Msg| async move {
                ctx.with_response_metadata(|m| m.insert("x-stream", "yes"))
                    .unwrap();
                let items = (0..3).map(move |n| {
                    Ok(Msg {
                        text: req.text.clone(),
                        n,
                    })
                });
                Ok::<qrpc::ResponseStream<Msg>, Status>(Box::pin(futures::stream::iter(items)))
            }),
        )
        .route(
            HANG_STREAM,
            Handler::server_streaming(move |_ctx, _req: Msg| {
                let seen = Arc::clone(&hang_stream);
                async move {
                    let guard = DropSignal(Arc::clone(&seen));
                    let first = futures::stream::iter([Ok(Msg::default())]);
                    let rest = futures::stream::once(async move {
                        let _guard = guard;
                        seen.started.notify_one();
                        std::future::pending::<Result<Msg, Status>>().await
                    });
                    Ok::<qrpc::ResponseStream<Msg>, Status>(Box::pin(first.chain(rest)))
                }
            }),
        )
}

struct Running {
    addr: SocketAddr,
    fingerprint: [u8; 32],
    seen: Arc<Seen>,
}

fn start() -> Running {
    let cert = SelfSigned::generate(&["localhost"]).unwrap();
    let seen = Arc::new(Seen::default());
    let server = qrpc::Server::builder()
        .tls(cert.server_tls())
        .add_service(methods(&seen))
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(server.serve());
    Running {
        addr,
        fingerprint: cert.fingerprint(),
        seen,
    }
}

async fn client(server: &Running) -> Client {
    Client::connect(server.addr, ClientTls::pinned(server.fingerprint))
        .await
        .unwrap()
}

fn two_entries() -> Metadata {
    let mut m = Metadata::new();
    m.insert("x-tenant", "blue").unwrap();
    m.insert_bin("x-token-bin", vec![0u8, 159, 255, 10])
        .unwrap();
    m
}

#[tokio::test]
async fn metadata_round_trips_both_ways_binary_values_included() {
    let server = start();
    let client = client(&server).await;
    let mut request = Request::new(Msg {
        text: "hi".into(),
        n: 0,
    });
    *request.metadata_mut() = two_entries();
    let response = client.unary::<_, Msg>(&ECHO, request).await.unwrap();
    assert_eq!(response.get_ref().text, "hi|x-tenant,x-token-bin");
    assert_eq!(response.metadata().get("x-tenant"), Some("blue"));
    assert_eq!(
        response
            .metadata()
            .get_bin("x-token-bin")
            .map(|b| b.to_vec()),
        Some(vec![0u8, 159, 255, 10])
    );
    assert_eq!(response.metadata().get("x-server"), Some("options"));

    // A call without options sends no extension frame (so an idempotent one may still travel
    // as 0-RTT data), and the server answers it no metadata; the generated `*_with_metadata`
    // methods (`codegen::unary_with_metadata`) ask for it and get it.
    let plain = client.unary::<_, Msg>(&ECHO, Msg::default()).await.unwrap();
    assert_eq!(plain.get_ref().text, "|");
    assert!(plain.metadata().is_empty());
    let generated_with: qrpc::Response<Msg> =
        qrpc::codegen::unary_with_metadata(&client, &ECHO, Msg::default())
            .await
            .unwrap();
    assert_eq!(generated_with.metadata().get("x-server"), Some("options"));

    // Server streaming: the metadata is known with the first message.
    let mut request = Request::new(Msg {
        text: "s".into(),
        n: 0,
    });
    request.metadata_mut().insert("x-a", "1").unwrap();
    let mut stream = client
        .server_streaming::<_, Msg>(&STREAM, request)
        .await
        .unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.text, "s");
    assert_eq!(stream.metadata().get("x-stream"), Some("yes"));
    assert_eq!(stream.count().await, 2);
}

#[tokio::test]
async fn a_passed_deadline_ends_the_call_on_both_sides() {
    let server = start();
    let client = client(&server).await;
    let call = client.unary::<_, Msg>(
        &HANG,
        Request::new(Msg::default()).with_timeout(Duration::from_millis(300)),
    );
    let started = server.seen.started.notified();
    let (result, ()) = tokio::join!(call, started);
    assert_eq!(result.unwrap_err().code(), Code::DeadlineExceeded);
    tokio::time::timeout(Duration::from_secs(10), server.seen.dropped.notified())
        .await
        .expect("the server dropped the handler");

    // A streaming call: the deadline also bounds the stream after its first message.
    let mut stream = client
        .server_streaming::<_, Msg>(
            &HANG_STREAM,
            Request::new(Msg::default()).with_timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap();
    assert!(stream.next().await.unwrap().is_ok());
    let err = stream.next().await.unwrap().unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    tokio::time::timeout(Duration::from_secs(10), server.seen.dropped.notified())
        .await
        .expect("the server dropped the stream");
}

#[tokio::test]
async fn a_deadline_far_away_changes_nothing_and_the_handler_sees_it() {
    let server = start();
    let client = client(&server).await;
    let mut request = Request::new(Msg {
        text: "t".into(),
        n: 0,
    });
    request.set_timeout(Duration::from_secs(60));
    let reply = client
        .unary::<_, Msg>(&ECHO, request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.text, "t|");
    assert!(reply.n > 0 && reply.n <= 60_000, "remaining {} ms", reply.n);
    // A timeout too long to represent is no deadline, not a crash.
    let reply = client
        .unary::<_, Msg>(
            &ECHO,
            Request::new(Msg::default()).with_timeout(Duration::MAX),
        )
        .await
        .unwrap();
    assert_eq!(reply.get_ref().text, "|");
}

/// A raw QUIC connection, for frames written byte by byte.
async fn raw_connection(server: &Running) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(
        ClientTls::pinned(server.fingerprint)
            .quinn_client_config(&[b"qrpc/1".to_vec()])
            .unwrap(),
    );
    endpoint
        .connect(server.addr, "localhost")
        .unwrap()
        .await
        .unwrap()
}

/// Splits a response stream into `(status, request_id, payload)` frames.
fn response_frames(mut bytes: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        let status = bytes[0];
        let request_id = u32::from_be_bytes(bytes[1..5].try_into().unwrap());
        let len = u32::from_be_bytes(bytes[5..9].try_into().unwrap()) as usize;
        frames.push((status, request_id, bytes[9..9 + len].to_vec()));
        bytes = &bytes[9 + len..];
    }
    frames
}

async fn exchange(conn: &quinn::Connection, request: &[u8]) -> Vec<(u8, u32, Vec<u8>)> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(request).await.unwrap();
    send.finish().unwrap();
    let bytes = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20))
        .await
        .expect("the server answered within 10 s")
        .unwrap();
    response_frames(&bytes)
}

#[tokio::test]
async fn a_client_speaking_only_the_plain_framing_still_calls_methods() {
    let server = start();
    let conn = raw_connection(&server).await;
    // Echo (method 1), request 7, payload `Msg { text: "old" }` = 0a 03 6f 6c 64.
    let frames = exchange(
        &conn,
        &[0, 1, 0, 0, 0, 7, 0, 0, 0, 5, 0x0a, 0x03, b'o', b'l', b'd'],
    )
    .await;
    // One OK frame under request 7: `Msg { text: "old|" }`, no extension frame.
    assert_eq!(
        frames,
        vec![(0, 7, vec![0x0a, 0x04, b'o', b'l', b'd', b'|'])]
    );
}

#[tokio::test]
async fn the_extension_on_the_wire_byte_by_byte() {
    let server = start();
    let conn = raw_connection(&server).await;
    // A probe: an extension frame (method 0) alone, version 1 (08 01). The answer is one OK
    // frame whose payload is the server's extension, version 1.
    let frames = exchange(&conn, &[0, 0, 0, 0, 0, 3, 0, 0, 0, 2, 0x08, 0x01]).await;
    assert_eq!(frames, vec![(0, 3, vec![0x08, 0x01])]);

    // A call with an extension frame: version 1, metadata { "x-a": "b" }, then Echo under the
    // same request id. The server answers with its extension frame (status 255: the x-a entry
    // echoed and x-server) before the response.
    let extension = [
        0x08, 0x01, 0x1a, 0x08, 0x0a, 0x03, b'x', b'-', b'a', 0x12, 0x01, b'b',
    ];
    let mut request = vec![0, 0, 0, 0, 0, 9, 0, 0, 0, extension.len() as u8];
    request.extend_from_slice(&extension);
    request.extend_from_slice(&[0, 1, 0, 0, 0, 9, 0, 0, 0, 0]);
    let frames = exchange(&conn, &request).await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!((frames[0].0, frames[0].1), (255, 9));
    let mut expected_metadata = vec![0x08, 0x01];
    for (key, value) in [("x-a", "b"), ("x-server", "options")] {
        let entry_len = 2 + key.len() + 2 + value.len();
        expected_metadata.extend_from_slice(&[0x1a, entry_len as u8, 0x0a, key.len() as u8]);
        expected_metadata.extend_from_slice(key.as_bytes());
        expected_metadata.extend_from_slice(&[0x12, value.len() as u8]);
        expected_metadata.extend_from_slice(value.as_bytes());
    }
    assert_eq!(frames[0].2, expected_metadata);
    assert_eq!(frames[1], (0, 9, vec![0x0a, 0x04, b'|', b'x', b'-', b'a']));

    // A deadline in the extension (timeout_us = 100000: 10 a0 8d 06) is the server's to keep:
    // this client never resets, and the server answers DeadlineExceeded (4) by itself.
    let extension = [0x08, 0x01, 0x10, 0xa0, 0x8d, 0x06];
    let mut request = vec![0, 0, 0, 0, 0, 11, 0, 0, 0, extension.len() as u8];
    request.extend_from_slice(&extension);
    request.extend_from_slice(&[0, 2, 0, 0, 0, 11, 0, 0, 0, 0]);
    let frames = exchange(&conn, &request).await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!((frames[0].0, frames[0].1), (4, 11));
}

#[tokio::test]
async fn a_bad_extension_fails_its_call_only() {
    let server = start();
    let conn = raw_connection(&server).await;
    // Metadata with a key that is not lowercase ASCII.
    let extension = [0x08, 0x01, 0x1a, 0x06, 0x0a, 0x01, b'K', 0x12, 0x01, b'v'];
    let mut request = vec![0, 0, 0, 0, 0, 5, 0, 0, 0, extension.len() as u8];
    request.extend_from_slice(&extension);
    request.extend_from_slice(&[0, 1, 0, 0, 0, 5, 0, 0, 0, 0]);
    let frames = exchange(&conn, &request).await;
    assert_eq!((frames[0].0, frames[0].1), (Code::InvalidArgument as u8, 5));

    // An opening frame under another request id than its extension frame.
    let mut request = vec![0, 0, 0, 0, 0, 6, 0, 0, 0, 2, 0x08, 0x01];
    request.extend_from_slice(&[0, 1, 0, 0, 0, 8, 0, 0, 0, 0]);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&request).await.unwrap();
    send.finish().unwrap();
    let bytes = recv.read_to_end(1 << 20).await.unwrap();
    assert_eq!(response_frames(&bytes)[0].0, Code::InvalidArgument as u8);

    // Not protobuf at all.
    let mut request = vec![0, 0, 0, 0, 0, 7, 0, 0, 0, 3, 0xff, 0xff, 0xff];
    request.extend_from_slice(&[0, 1, 0, 0, 0, 7, 0, 0, 0, 0]);
    let frames = exchange(&conn, &request).await;
    assert_eq!(frames[0].0, Code::InvalidArgument as u8);

    // An extension frame announcing more than 16 KiB is refused on its header: the server
    // answers RESOURCE_EXHAUSTED without waiting for (or buffering) the payload.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&[0, 0, 0, 0, 0, 12, 0, 0, 0x40, 0x01])
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), recv.read_to_end(1 << 20))
        .await
        .expect("refused before any payload arrived")
        .unwrap();
    let answer = response_frames(&answer);
    assert_eq!(
        (answer[0].0, answer[0].1),
        (Code::ResourceExhausted as u8, 12)
    );

    // A timeout of u64::MAX microseconds (varint ff..ff 01) is no deadline: the handler sees
    // none (Echo answers n = 0), and nothing overflows.
    let extension = [
        0x08, 0x01, 0x10, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
    ];
    let mut request = vec![0, 0, 0, 0, 0, 13, 0, 0, 0, extension.len() as u8];
    request.extend_from_slice(&extension);
    request.extend_from_slice(&[0, 1, 0, 0, 0, 13, 0, 0, 0, 0]);
    let frames = exchange(&conn, &request).await;
    assert_eq!(frames.last().unwrap(), &(0, 13, vec![0x0a, 0x01, b'|']));

    // The connection and the server serve on.
    let frames = exchange(&conn, &[0, 1, 0, 0, 0, 8, 0, 0, 0, 0]).await;
    assert_eq!(frames, vec![(0, 8, vec![0x0a, 0x01, b'|'])]);
}

/// A server that speaks only the plain framing: it answers method 0 `Unimplemented` and
/// echoes every other call's payload, and records each request stream it read.
async fn plain_server() -> (
    SocketAddr,
    [u8; 32],
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    plain_server_answering_probes(true).await
}

/// [`plain_server`], or (with `false`) one that never answers a method-0 stream at all.
async fn plain_server_answering_probes(
    answer_probes: bool,
) -> (
    SocketAddr,
    [u8; 32],
    tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let cert = SelfSigned::generate(&["localhost"]).unwrap();
    let config = cert
        .server_tls()
        .quinn_server_config(&[b"qrpc/1".to_vec()])
        .unwrap();
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let seen_tx = seen_tx.clone();
            tokio::spawn(async move {
                let conn = incoming.await.unwrap();
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let bytes = recv.read_to_end(1 << 20).await.unwrap();
                    let _ = seen_tx.send(bytes.clone());
                    let method = u16::from_be_bytes([bytes[0], bytes[1]]);
                    let request_id = &bytes[2..6];
                    let mut answer = Vec::new();
                    if method == 0 && !answer_probes {
                        // Silent: keeps the stream open and says nothing.
                        tokio::spawn(async move {
                            let _keep = (send, recv);
                            std::future::pending::<()>().await;
                        });
                        continue;
                    }
                    if method == 0 {
                        // Code 12 with an empty ErrorStatus.
                        answer.push(12);
                        answer.extend_from_slice(request_id);
                        answer.extend_from_slice(&[0, 0, 0, 0]);
                    } else {
                        answer.push(0);
                        answer.extend_from_slice(request_id);
                        answer.extend_from_slice(&bytes[6..]);
                    }
                    send.write_all(&answer).await.unwrap();
                    send.finish().unwrap();
                }
            });
        }
    });
    (addr, cert.fingerprint(), seen_rx)
}

#[tokio::test]
async fn a_server_speaking_only_the_plain_framing_still_answers() {
    let (addr, fingerprint, mut seen) = plain_server().await;
    let client = Client::connect(addr, ClientTls::pinned(fingerprint))
        .await
        .unwrap();
    let mut request = Request::new(Msg {
        text: "to an old server".into(),
        n: 0,
    });
    *request.metadata_mut() = two_entries();
    request.set_timeout(Duration::from_secs(30));
    let response = client.unary::<_, Msg>(&ECHO, request).await.unwrap();
    assert_eq!(response.get_ref().text, "to an old server");
    assert!(response.metadata().is_empty());
    // The client asked once (the probe), then sent the call as plain frames: no extension.
    let probe = seen.recv().await.unwrap();
    assert_eq!(&probe[..2], &[0, 0]);
    let call = seen.recv().await.unwrap();
    assert_eq!(&call[..2], &[0, 1], "the call opens with its method");
    let len = u32::from_be_bytes(call[6..10].try_into().unwrap()) as usize;
    assert_eq!(call.len(), 10 + len, "one frame, nothing else");
    // The next call with options does not ask again.
    let again = client
        .unary::<_, Msg>(
            &ECHO,
            Request::new(Msg::default()).with_timeout(Duration::from_secs(30)),
        )
        .await
        .unwrap();
    assert_eq!(again.get_ref(), &Msg::default());
    assert_eq!(&seen.recv().await.unwrap()[..2], &[0, 1]);
}

#[tokio::test]
async fn a_server_that_never_answers_the_probe_costs_one_connect_timeout_once() {
    let (addr, fingerprint, mut seen) = plain_server_answering_probes(false).await;
    let client = Client::builder(addr, ClientTls::pinned(fingerprint))
        .configure(|c| {
            c.connect_timeout(Duration::from_millis(300));
        })
        .connect()
        .await
        .unwrap();
    let mut request = Request::new(Msg {
        text: "x".into(),
        n: 0,
    });
    *request.metadata_mut() = two_entries();
    // The probe goes unanswered; after the connect timeout the call goes as plain frames.
    let reply = tokio::time::timeout(
        Duration::from_secs(10),
        client.unary::<_, Msg>(&ECHO, request),
    )
    .await
    .expect("the call did not wait on the silent probe for good")
    .unwrap();
    assert_eq!(reply.get_ref().text, "x");
    assert_eq!(&seen.recv().await.unwrap()[..2], &[0, 0], "the probe");
    assert_eq!(&seen.recv().await.unwrap()[..2], &[0, 1], "the call, plain");
    // The answer is remembered: the next call with metadata neither probes nor waits.
    let mut request = Request::new(Msg::default());
    *request.metadata_mut() = two_entries();
    client.unary::<_, Msg>(&ECHO, request).await.unwrap();
    assert_eq!(&seen.recv().await.unwrap()[..2], &[0, 1]);
}
