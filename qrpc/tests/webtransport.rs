//! Browsers' path: WebTransport sessions (ALPN `h3`) served beside native `qrpc/1` connections
//! on one UDP port, with the same services, layers, limits and shutdown. The client here
//! opens the streams a page would (`qrpc::testing::web`), without a browser.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::num::NonZeroU32;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use common::{
    CHAT, COUNT, ECHO, LOGIN, Msg, PUSH, Running, SLOW, SUM, TestService, WHOAMI, cert, login,
};
use prost::Message;
use qrpc::middleware::{AuthLayer, AuthPolicy, Quota, RateLimitLayer, RequireIdentity};
use qrpc::testing::web::WebClient;
use qrpc::tls::{BrowserCertificates, ClientTls, SelfSigned};
use qrpc::webtransport::WebTransport;
use qrpc::{Code, PeerIdentity, Server, Status, UnreliableDelivery};

const ORIGIN: &str = "http://localhost:8080";

struct Web {
    running: Running,
    browser: BrowserCertificates,
}

impl Web {
    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.running.addr.port())
    }

    async fn client(&self) -> WebClient {
        WebClient::connect(&self.url("/qrpc"), &self.browser.hashes(), Some(ORIGIN))
            .await
            .unwrap()
    }
}

fn web_config(browser: &BrowserCertificates) -> WebTransport {
    WebTransport::new("/qrpc")
        .allow_origin(ORIGIN)
        .browser_certificates(browser.clone())
}

/// The test service, served to native clients and to browsers.
fn start(service: TestService) -> Web {
    let cert = cert();
    let browser = BrowserCertificates::generate(&["127.0.0.1", "localhost"]).unwrap();
    let server = Server::builder()
        .tls(cert.server_tls())
        .webtransport(web_config(&browser))
        .add_service(service.into_methods())
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    Web {
        running: common::run(server, cert.fingerprint()),
        browser,
    }
}

fn msg(m: &Msg) -> Bytes {
    m.encode_to_vec().into()
}

fn decode(bytes: &Bytes) -> Msg {
    Msg::decode(bytes.clone()).unwrap()
}

#[tokio::test]
async fn every_call_kind_over_webtransport() {
    let web = start(TestService::default());
    let client = web.client().await;

    let echoed = client.unary(ECHO.id, msg(&login("over h3"))).await.unwrap();
    assert_eq!(decode(&echoed).text, "over h3");

    let counted = client
        .server_streaming(COUNT.id, msg(&Msg::n(5)))
        .await
        .unwrap();
    let counted: Vec<u64> = counted.iter().map(|m| decode(m).n).collect();
    assert_eq!(counted, vec![0, 1, 2, 3, 4]);

    let summed = client
        .client_streaming(SUM.id, (1..=4).map(|n| msg(&Msg::n(n))))
        .await
        .unwrap();
    assert_eq!(decode(&summed).n, 10);

    // Bidi: each answer arrives before the next request is sent.
    let mut chat = client.open_streaming(CHAT.id).await.unwrap();
    for n in [3, 7, 11] {
        chat.send(msg(&Msg::n(n))).await.unwrap();
        let answer = chat.next().await.unwrap().unwrap();
        assert_eq!(decode(&answer).n, n * 2);
    }
    chat.finish();
    assert!(chat.next().await.is_none());

    // An unknown method gets the same answer a native client gets.
    let err = client.unary(999, Bytes::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
}

#[tokio::test]
async fn push_events_and_datagrams_reach_a_session() {
    let web = start(TestService::default());
    let client = web.client().await;
    // Push: the Push method queues three events on the caller's connection.
    let queued = client.unary(PUSH.id, msg(&Msg::n(3))).await.unwrap();
    assert_eq!(decode(&queued).n, 3);
    let mut pushes = client.pushes().await.unwrap();
    for i in 0..3 {
        let frame = pushes.next().await.unwrap().unwrap();
        assert_eq!(frame.event_type, 7);
        assert_eq!(Msg::decode(frame.payload).unwrap().n, i);
    }
    // A datagram: the session is reached by its bound identity, as a native one is.
    client.unary(LOGIN.id, msg(&login("ada"))).await.unwrap();
    let senders = web.running.registry.connections(&PeerIdentity::new("ada"));
    assert_eq!(senders.len(), 1);
    let delivery = senders[0]
        .send_unreliable(9, Bytes::from_static(b"typing"))
        .unwrap();
    assert_eq!(delivery, UnreliableDelivery::Datagram);
    let datagram = client.datagram().await.unwrap();
    assert_eq!(datagram.event_type, 9);
    assert_eq!(&datagram.payload[..], b"typing");
    // An event too large for a datagram goes on the push stream.
    let large = Bytes::from(vec![7u8; 4000]);
    let delivery = senders[0].send_unreliable(9, large.clone()).unwrap();
    assert_eq!(delivery, UnreliableDelivery::Stream);
    let frame = pushes.next().await.unwrap().unwrap();
    assert_eq!(frame.payload, large);
}

#[tokio::test]
async fn a_cancelled_call_drops_its_handler() {
    let service = TestService::default();
    let observed = service.observed.clone();
    let web = start(service);
    let client = web.client().await;
    let mut call = client.open(SLOW.id).await.unwrap();
    call.send(msg(&Msg::n(600_000))).await.unwrap();
    call.finish();
    observed.slow_start.notified().await;
    assert_eq!(observed.slow_started.load(Ordering::SeqCst), 1);
    call.cancel();
    common::eventually(|| observed.slow_dropped.load(Ordering::SeqCst) == 1).await;
    assert_eq!(observed.slow_finished.load(Ordering::SeqCst), 0);
    // The session goes on.
    let echoed = client.unary(ECHO.id, msg(&login("after"))).await.unwrap();
    assert_eq!(decode(&echoed).text, "after");
}

#[tokio::test]
async fn layers_refuse_a_session_as_they_refuse_a_native_connection() {
    let cert = cert();
    let browser = BrowserCertificates::generate(&["127.0.0.1"]).unwrap();
    let limit = RateLimitLayer::builder()
        .per_method(ECHO, Quota::per_minute(NonZeroU32::new(3).unwrap()))
        .build();
    let auth = AuthLayer::new(
        RequireIdentity,
        AuthPolicy::new().public(ECHO).public(LOGIN),
    );
    let server = Server::builder()
        .tls(cert.server_tls())
        .webtransport(web_config(&browser))
        .layer(limit)
        .layer(auth)
        .add_service(TestService::default().into_methods())
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let web = Web {
        running: common::run(server, cert.fingerprint()),
        browser,
    };
    let page = web.client().await;
    let native = web.running.client().await;

    // Unauthenticated: the same status and message.
    let from_page = page
        .unary(WHOAMI.id, msg(&Msg::default()))
        .await
        .unwrap_err();
    let from_native = native
        .unary::<_, Msg>(&WHOAMI, &Msg::default())
        .await
        .unwrap_err();
    assert_eq!(from_page.code(), Code::Unauthenticated);
    assert_eq!(
        (from_page.code(), from_page.message()),
        (from_native.code(), from_native.message())
    );
    // Rate limited: before either logs in, both connections count as 127.0.0.1 and share its
    // bucket (3 a minute).
    let results = [
        page.unary(ECHO.id, msg(&Msg::n(1))).await.map(|_| ()),
        native.unary::<_, Msg>(&ECHO, &Msg::n(2)).await.map(|_| ()),
        page.unary(ECHO.id, msg(&Msg::n(3))).await.map(|_| ()),
    ];
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let from_page = page.unary(ECHO.id, msg(&Msg::n(4))).await.unwrap_err();
    let from_native = native.unary::<_, Msg>(&ECHO, &Msg::n(5)).await.unwrap_err();
    assert_eq!(from_page.code(), Code::ResourceExhausted);
    assert_eq!(from_native.code(), Code::ResourceExhausted);
    // Logged in on the session, it passes.
    page.unary(LOGIN.id, msg(&login("ada"))).await.unwrap();
    let me = page.unary(WHOAMI.id, msg(&Msg::default())).await.unwrap();
    assert_eq!(decode(&me).text, "ada");
}

#[tokio::test]
async fn native_and_webtransport_clients_are_served_at_once() {
    let web = start(TestService::default());
    let native = web.running.client().await;
    let page = web.client().await;
    native
        .unary::<_, Msg>(&LOGIN, &login("native"))
        .await
        .unwrap();
    page.unary(LOGIN.id, msg(&login("page"))).await.unwrap();
    // Interleaved calls on both, concurrently.
    let native_calls = async {
        for n in 0..20u64 {
            let reply: Msg = native.unary(&ECHO, &Msg::n(n)).await.unwrap().into_inner();
            assert_eq!(reply.n, n);
        }
    };
    let page_calls = async {
        for n in 0..20u64 {
            let reply = page.unary(ECHO.id, msg(&Msg::n(n))).await.unwrap();
            assert_eq!(decode(&reply).n, n);
        }
    };
    tokio::join!(native_calls, page_calls);
    // Each is its own session with its own identity.
    let me: Msg = native
        .unary(&WHOAMI, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(me.text, "native");
    let me = page.unary(WHOAMI.id, msg(&Msg::default())).await.unwrap();
    assert_eq!(decode(&me).text, "page");
    assert!(web.running.registry.is_online(&PeerIdentity::new("native")));
    assert!(web.running.registry.is_online(&PeerIdentity::new("page")));
}

#[tokio::test]
async fn sessions_for_other_paths_or_origins_are_refused() {
    let web = start(TestService::default());
    let hashes = web.browser.hashes();
    // The client reports the HTTP status of the CONNECT answer in its error.
    let refused_with = |err: web_transport_quinn::ClientError, status: u16| {
        let text = err.to_string();
        assert!(
            text.contains(&format!("Some({status})"))
                || text.contains(&format!("status: {status}")),
            "{text}"
        );
    };
    let err = WebClient::connect(&web.url("/elsewhere"), &hashes, Some(ORIGIN))
        .await
        .unwrap_err();
    refused_with(err, 404);
    let err = WebClient::connect(&web.url("/qrpc"), &hashes, Some("https://evil.example"))
        .await
        .unwrap_err();
    refused_with(err, 403);
    // A program (no origin) is served.
    let program = WebClient::connect(&web.url("/qrpc"), &hashes, None)
        .await
        .unwrap();
    program.unary(ECHO.id, msg(&Msg::n(1))).await.unwrap();
}

#[tokio::test]
async fn browsers_get_the_short_lived_certificate_and_native_clients_the_server_s() {
    let web = start(TestService::default());
    // A native client pins the server's own certificate, as before.
    let native = web.running.client().await;
    native.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.unwrap();
    // A session trusting only the server's own certificate fails: browsers get another one.
    let own = WebClient::connect(&web.url("/qrpc"), &[web.running.fingerprint], Some(ORIGIN)).await;
    assert!(own.is_err(), "h3 was served the native certificate");
    // The current hash alone suffices; after a rotation, the announced one does.
    let [current, next] = <[[u8; 32]; 2]>::try_from(web.browser.hashes()).unwrap();
    let page = WebClient::connect(&web.url("/qrpc"), &[current], Some(ORIGIN))
        .await
        .unwrap();
    page.unary(ECHO.id, msg(&Msg::n(2))).await.unwrap();
    web.browser.rotate_now().unwrap();
    let page = WebClient::connect(&web.url("/qrpc"), &[next], Some(ORIGIN))
        .await
        .unwrap();
    page.unary(ECHO.id, msg(&Msg::n(3))).await.unwrap();
    assert!(
        WebClient::connect(&web.url("/qrpc"), &[current], Some(ORIGIN))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_server_without_webtransport_does_not_speak_h3() {
    let running = common::start(TestService::default());
    let hash = running.fingerprint;
    let err = WebClient::connect(
        &format!("https://127.0.0.1:{}/qrpc", running.addr.port()),
        &[hash],
        None,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, web_transport_quinn::ClientError::Connection(_)),
        "{err}"
    );
    running.client().await;
}

#[tokio::test]
async fn shutdown_lets_a_session_s_call_finish_then_closes_it() {
    let service = TestService::default();
    let observed = service.observed.clone();
    let mut web = start(service);
    let client = web.client().await;
    let mut call = client.open(SLOW.id).await.unwrap();
    call.send(msg(&Msg::n(300))).await.unwrap();
    call.finish();
    observed.slow_start.notified().await;
    let serving = web.running.shutdown();
    let reply = call.next().await.unwrap().unwrap();
    assert_eq!(decode(&reply).n, 300);
    serving.await.unwrap();
    // The session was closed with the server.
    let err: Status = client.unary(ECHO.id, Bytes::new()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
}

#[tokio::test]
async fn the_same_port_serves_a_ca_certificate_to_both_when_no_browser_certificates_are_set() {
    // An operator's certificate (here self-signed, standing for a CA-issued one) serves both.
    let cert = SelfSigned::generate(&["127.0.0.1"]).unwrap();
    let server = Server::builder()
        .tls(cert.server_tls())
        .webtransport(WebTransport::new("/qrpc").allow_any_origin())
        .add_service(TestService::default().into_methods())
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let running = common::run(server, cert.fingerprint());
    let url = format!("https://127.0.0.1:{}/qrpc", running.addr.port());
    let page = WebClient::connect(&url, &[cert.fingerprint()], Some("https://any.example"))
        .await
        .unwrap();
    page.unary(ECHO.id, msg(&Msg::n(1))).await.unwrap();
    let native = qrpc::Client::connect(running.addr, ClientTls::pinned(cert.fingerprint()))
        .await
        .unwrap();
    native.unary::<_, Msg>(&ECHO, &Msg::n(2)).await.unwrap();
}

/// A raw QUIC connection with `alpn`, trusting `hash`.
async fn raw(addr: std::net::SocketAddr, hash: [u8; 32], alpn: &[u8]) -> quinn::Connection {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(
        ClientTls::pinned(hash)
            .quinn_client_config(&[alpn.to_vec()])
            .unwrap(),
    );
    endpoint.connect(addr, "localhost").unwrap().await.unwrap()
}

#[tokio::test]
async fn a_native_client_s_unidirectional_streams_are_stopped_unread() {
    // Serving browsers grants every connection three unidirectional streams at the
    // handshake; a native connection's are stopped, so nothing it sends on them is kept.
    let web = start(TestService::default());
    let conn = raw(web.running.addr, web.running.fingerprint, b"qrpc/1").await;
    let mut send = conn.open_uni().await.unwrap();
    let _ = send.write_all(&[0u8; 64]).await;
    let code = send.stopped().await.unwrap();
    assert_eq!(code, Some(qrpc::protocol::reset::PROTOCOL_ERROR));
    // The connection itself is fine.
    let client = web.running.client().await;
    client.unary::<_, Msg>(&ECHO, &Msg::n(1)).await.unwrap();
}

#[tokio::test]
async fn an_h3_connection_that_never_opens_a_session_is_closed_at_the_handshake_timeout() {
    let cert = cert();
    let browser = BrowserCertificates::generate(&["127.0.0.1"]).unwrap();
    let server = Server::builder()
        .tls(cert.server_tls())
        .configure(|c| {
            c.handshake_timeout(std::time::Duration::from_millis(300));
        })
        .webtransport(web_config(&browser))
        .add_service(TestService::default().into_methods())
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let running = common::run(server, cert.fingerprint());
    // HTTP/3 negotiated, then silence: no SETTINGS, no CONNECT.
    let conn = raw(running.addr, browser.current_hash(), b"h3").await;
    let reason = conn.closed().await;
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(close)
            if close.reason.as_ref() == b"WebTransport handshake timed out"),
        "{reason}"
    );
}
