//! 0-RTT calls on resumed connections and push events in QUIC datagrams.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use qrpc::tls::{ClientTls, SelfSigned};
use qrpc::{
    CallKind, CallRequest, Client, ConnectionState, Handler, MethodInfo, Methods, Server,
    ServiceDescriptor, Status, UnreliableDelivery,
};
use tokio::sync::Notify;
use tower::ServiceExt;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(bool, tag = "1")]
    early: bool,
    #[prost(uint64, tag = "2")]
    runs: u64,
    #[prost(string, tag = "3")]
    text: String,
    #[prost(bytes = "vec", tag = "4")]
    data: Vec<u8>,
}

const fn method(id: u16, name: &'static str, idempotent: bool) -> MethodInfo {
    MethodInfo {
        id,
        service: "test.Early",
        name,
        kind: CallKind::Unary,
        idempotent,
    }
}

/// Idempotent: answers whether it ran from 0-RTT data.
const GET: MethodInfo = method(1, "Get", true);
/// Not idempotent: counts its runs.
const PUT: MethodInfo = method(2, "Put", false);
/// Pushes one unreliable event carrying `data` and says how it went out.
const TYPING: MethodInfo = method(3, "Typing", false);
/// Not idempotent: says it started, then answers when the test releases it.
const HOLD: MethodInfo = method(4, "Hold", false);

static DESCRIPTOR: ServiceDescriptor = ServiceDescriptor {
    name: "test.Early",
    methods: &[GET, PUT, TYPING, HOLD],
};

const TYPING_EVENT: u16 = 40;

#[derive(Clone, Default)]
struct Early {
    gets: Arc<AtomicUsize>,
    puts: Arc<AtomicUsize>,
    hold_started: Arc<Notify>,
    hold_release: Arc<Notify>,
}

impl Early {
    /// The service, ready for `Server::add_service`.
    pub fn into_methods(self) -> Methods {
        let gets = self.gets;
        let puts = self.puts;
        let (started, release) = (self.hold_started, self.hold_release);
        Methods::new(&DESCRIPTOR)
            .route(
                HOLD,
                Handler::unary(move |_ctx, _m: Msg| {
                    let (started, release) = (started.clone(), release.clone());
                    async move {
                        started.notify_one();
                        release.notified().await;
                        Ok::<_, Status>(Msg::default())
                    }
                }),
            )
            .route(GET, counting(gets))
            .route(PUT, counting(puts))
            .route(
                TYPING,
                Handler::unary(|ctx, m: Msg| async move {
                    let how = ctx
                        .peer()
                        .push()
                        .send_unreliable(TYPING_EVENT, m.data.into())
                        .map_err(|e| Status::internal(e.to_string()))?;
                    Ok::<_, Status>(Msg {
                        text: format!("{how:?}"),
                        ..Msg::default()
                    })
                }),
            )
    }
}

/// A handler that counts its runs and answers whether it ran from 0-RTT data.
fn counting(runs: Arc<AtomicUsize>) -> Handler {
    Handler::unary(move |ctx, _m: Msg| {
        let runs = runs.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        async move {
            Ok::<_, Status>(Msg {
                early: ctx.early_data(),
                runs,
                ..Msg::default()
            })
        }
    })
}

struct Running {
    addr: SocketAddr,
    service: Early,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap();
    }
}

fn serve(
    cert: &SelfSigned,
    addr: SocketAddr,
    config: impl FnOnce(&mut qrpc::ServerConfig),
) -> Running {
    let service = Early::default();
    let server = Server::builder()
        .tls(cert.server_tls())
        .configure(|c| {
            c.shutdown_grace(std::time::Duration::from_secs(1));
            config(c);
        })
        .add_service(service.clone().into_methods())
        .bind(addr)
        .unwrap();
    let addr = server.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_with_shutdown(async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        service,
        stop: Some(stop),
        task,
    }
}

async fn client(
    addr: SocketAddr,
    tls: &ClientTls,
    f: impl FnOnce(&mut qrpc::ClientConfig),
) -> Client {
    Client::builder(addr, tls.clone())
        .configure(|c| {
            c.zero_rtt(true);
            f(c);
        })
        .connect()
        .await
        .unwrap()
}

/// Makes one full connection with `tls` and one call, so that `tls` holds a session ticket
/// of the server (the ticket arrives before the call's response).
async fn learn_ticket(addr: SocketAddr, tls: &ClientTls) {
    let first = client(addr, tls, |_| {}).await;
    let reply: Msg = first
        .unary(&GET, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.early, "a first connection has no 0-RTT");
    first.close();
}

#[tokio::test]
async fn a_resumed_client_sends_idempotent_calls_in_0rtt_and_nothing_else() {
    let cert = SelfSigned::generate(&["localhost"]).unwrap();
    let server = serve(&cert, "127.0.0.1:0".parse().unwrap(), |_| {});
    let tls = ClientTls::pinned(cert.fingerprint());
    learn_ticket(server.addr, &tls).await;

    let resumed = client(server.addr, &tls, |_| {}).await;
    let get: Msg = resumed
        .unary(&GET, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert!(get.early, "the idempotent call travelled in 0-RTT data");
    let put: Msg = resumed
        .unary(&PUT, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!put.early, "a non-idempotent call waits for the handshake");
    assert_eq!(put.runs, 1);
    // After the handshake, idempotent calls are ordinary 1-RTT calls.
    let again: Msg = resumed
        .unary(&GET, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!again.early);

    // With 0-RTT off on the client, a resumed connection sends nothing early.
    let careful = client(server.addr, &tls, |c| {
        c.zero_rtt(false);
    })
    .await;
    let get: Msg = careful
        .unary(&GET, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!get.early);
    server.stop().await;
}

#[tokio::test]
async fn the_server_refuses_a_non_idempotent_call_sent_in_0rtt_without_running_it() {
    let cert = SelfSigned::generate(&["localhost"]).unwrap();
    let server = serve(&cert, "127.0.0.1:0".parse().unwrap(), |_| {});
    let tls = ClientTls::pinned(cert.fingerprint());
    learn_ticket(server.addr, &tls).await;

    // A client that lies about PUT being idempotent gets it into 0-RTT data.
    let liar = client(server.addr, &tls, |_| {}).await;
    let call = CallRequest::unary(
        PUT.id,
        prost::Message::encode_to_vec(&Msg::default()).into(),
    )
    .with_idempotent(true);
    let mut responses = liar.call_service().clone().oneshot(call).await.unwrap();
    let refused = futures::StreamExt::next(&mut responses)
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(refused.code(), qrpc::Code::Unavailable, "{refused}");
    assert!(refused.message().contains("0-RTT"), "{refused}");
    assert_eq!(
        server.service.puts.load(Ordering::SeqCst),
        0,
        "PUT never ran"
    );

    // The same call after the handshake runs normally.
    let put: Msg = liar
        .unary(&PUT, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(put.runs, 1);
    server.stop().await;
}

/// A server's certificate and address, and a `ClientTls` holding a ticket of that server,
/// which has stopped since.
async fn ticket_of_a_stopped_server() -> (SelfSigned, SocketAddr, ClientTls) {
    let cert = SelfSigned::generate(&["localhost"]).unwrap();
    let first = serve(&cert, "127.0.0.1:0".parse().unwrap(), |_| {});
    let addr = first.addr;
    let tls = ClientTls::pinned(cert.fingerprint());
    learn_ticket(addr, &tls).await;
    first.stop().await;
    (cert, addr, tls)
}

/// A server that gave a ticket, restarted in place, and a client resuming with that ticket: a
/// restarted server has forgotten the session, so it rejects the client's 0-RTT data. The
/// client is returned before its handshake completes.
async fn resumed_after_a_restart() -> (Running, Client) {
    let (cert, addr, tls) = ticket_of_a_stopped_server().await;
    let restarted = serve(&cert, addr, |_| {});
    let resumed = client(addr, &tls, |_| {}).await;
    (restarted, resumed)
}

#[tokio::test]
async fn rejected_0rtt_is_sent_again_after_the_handshake_exactly_once() {
    let (restarted, resumed) = resumed_after_a_restart().await;
    let get: Msg = resumed
        .unary(&GET, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!get.early, "sent again in 1-RTT data");
    assert_eq!(get.runs, 1, "the rejected 0-RTT copy never ran");
    assert_eq!(restarted.service.gets.load(Ordering::SeqCst), 1);
    restarted.stop().await;
}

/// When the server rejects 0-RTT data, quinn numbers the client's streams from zero again, so
/// the first call after the handshake takes the stream id of the first rejected one. Dropping
/// the rejected call's stream late must not touch the newer call: quinn keys the waker of a
/// blocked read by stream id, and a stale handle's drop used to clear it, leaving the newer
/// call waiting for a response that had arrived.
///
/// Runs on the single-threaded runtime, where each task runs until it waits, so the order
/// below is exact.
#[tokio::test]
async fn a_rejected_0rtt_call_dropped_late_leaves_the_call_reusing_its_stream_id_alone() {
    let (restarted, resumed) = resumed_after_a_restart().await;

    // GET goes out as 0-RTT data on the first stream, then waits for the handshake; it is
    // polled once and then held without being polled, as a caller busy elsewhere would.
    let request = Msg::default();
    let mut early = Box::pin(resumed.unary::<_, Msg>(&GET, &request));
    assert!(futures::poll!(&mut early).is_pending());

    // HOLD waits for the handshake, which rejects the 0-RTT data, and then opens the first
    // stream again. It reaches the server and waits for its response.
    let held = tokio::spawn({
        let resumed = resumed.clone();
        async move { resumed.unary::<_, Msg>(&HOLD, &Msg::default()).await }
    });
    restarted.service.hold_started.notified().await;

    drop(early);
    restarted.service.hold_release.notify_one();
    let answered = tokio::time::timeout(std::time::Duration::from_secs(10), held).await;
    let reply = answered.expect("the held call's response woke it");
    reply.unwrap().unwrap();
    assert_eq!(
        restarted.service.gets.load(Ordering::SeqCst),
        0,
        "the rejected GET never ran and was dropped before it was sent again"
    );
    restarted.stop().await;
}

/// A resumed handshake that fails (here the address answers with an endpoint that refuses
/// connections) is not a rejection of the early data: a call waiting on it must not be sent on
/// the dead connection, but wait for the next one, as it would during a reconnect.
#[tokio::test]
async fn a_call_waiting_on_a_failed_resumed_handshake_goes_to_the_next_connection() {
    let (cert, addr, tls) = ticket_of_a_stopped_server().await;

    let quic = cert
        .server_tls()
        .quinn_server_config(&[qrpc::protocol::DEFAULT_ALPN.to_vec()])
        .unwrap();
    let refuser = qrpc::quinn::Endpoint::server(quic, addr).unwrap();
    let refused = Arc::new(Notify::new());
    let refusing = tokio::spawn({
        let (refuser, refused) = (refuser.clone(), refused.clone());
        async move {
            while let Some(incoming) = refuser.accept().await {
                incoming.refuse();
                refused.notify_one();
            }
        }
    });

    // The client returns before its handshake; PUT is not idempotent and waits for it.
    let resumed = client(addr, &tls, |c| {
        c.reconnect_mut()
            .initial_backoff(std::time::Duration::from_millis(20));
    })
    .await;
    let put = tokio::spawn({
        let resumed = resumed.clone();
        async move { resumed.unary::<_, Msg>(&PUT, &Msg::default()).await }
    });
    refused.notified().await;

    // The server comes back on the address.
    refusing.abort();
    refuser.close(0u32.into(), b"");
    refuser.wait_idle().await;
    drop(refuser);
    let free = async {
        while std::net::UdpSocket::bind(addr).is_err() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), free)
        .await
        .expect("the refusing endpoint released the address");
    let back = serve(&cert, addr, |_| {});

    let reply = put
        .await
        .unwrap()
        .expect("PUT ran on the next connection")
        .into_inner();
    assert_eq!(reply.runs, 1);
    assert!(!reply.early);
    assert_eq!(back.service.puts.load(Ordering::SeqCst), 1);
    back.stop().await;
}

/// A reconnect that resumes with 0-RTT is a reconnect only once the server answers its
/// handshake: against a server that refuses every connection, each resumption is a failed
/// attempt, the client gives up after its attempts, and the disconnect it reports is still
/// the one that ended its connection.
#[tokio::test]
async fn a_refused_resumption_is_a_failed_reconnect_attempt() {
    let cert = SelfSigned::generate(&["localhost"]).unwrap();
    let server = serve(&cert, "127.0.0.1:0".parse().unwrap(), |_| {});
    let addr = server.addr;
    let tls = ClientTls::pinned(cert.fingerprint());
    let resuming = client(addr, &tls, |c| {
        c.reconnect_mut()
            .initial_backoff(std::time::Duration::from_millis(20))
            .max_attempts(Some(3));
    })
    .await;
    // The call's answer comes after the session ticket: the next connection resumes.
    resuming
        .unary::<_, Msg>(&GET, &Msg::default())
        .await
        .unwrap();

    // The server stops, and an endpoint that refuses every connection takes its address.
    let mut lost = resuming.disconnects();
    server.stop().await;
    lost.wait_for(Option::is_some).await.unwrap();
    let quic = cert
        .server_tls()
        .quinn_server_config(&[qrpc::protocol::DEFAULT_ALPN.to_vec()])
        .unwrap();
    let refuser = qrpc::quinn::Endpoint::server(quic, addr).unwrap();
    let refusing = tokio::spawn({
        let refuser = refuser.clone();
        async move {
            while let Some(incoming) = refuser.accept().await {
                incoming.refuse();
            }
        }
    });

    let mut state = resuming.state();
    let gave_up = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        state.wait_for(|s| {
            assert!(
                !matches!(s, ConnectionState::Connected { generation: 2.. }),
                "a refused resumption was announced as a connection: {s:?}"
            );
            matches!(s, ConnectionState::Closed { .. })
        }),
    )
    .await
    .expect("the client gave up after its attempts")
    .unwrap()
    .clone();
    assert_eq!(
        gave_up,
        ConnectionState::Closed {
            reason: "gave up after 3 reconnect attempts".into()
        }
    );
    let disconnect = resuming.disconnects().borrow().clone().unwrap();
    assert_eq!(
        disconnect.application_code,
        Some(qrpc::protocol::close::NO_ERROR.into_inner()),
        "{disconnect:?}"
    );
    refusing.abort();
}

#[tokio::test]
async fn a_server_without_0rtt_runs_every_call_after_the_handshake() {
    let cert = SelfSigned::generate(&["localhost"]).unwrap();
    let server = serve(&cert, "127.0.0.1:0".parse().unwrap(), |c| {
        c.zero_rtt(false);
    });
    let tls = ClientTls::pinned(cert.fingerprint());
    learn_ticket(server.addr, &tls).await;
    let resumed = client(server.addr, &tls, |_| {}).await;
    let get: Msg = resumed
        .unary(&GET, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert!(!get.early);
    server.stop().await;
}

async fn typing(client: &Client, data: Vec<u8>) -> String {
    let reply: Msg = client
        .unary(
            &TYPING,
            &Msg {
                data,
                ..Msg::default()
            },
        )
        .await
        .unwrap()
        .into_inner();
    reply.text
}

#[tokio::test]
async fn unreliable_events_travel_as_datagrams_and_fall_back_to_the_push_stream() {
    let cert = SelfSigned::generate(&["localhost"]).unwrap();
    let server = serve(&cert, "127.0.0.1:0".parse().unwrap(), |c| {
        c.max_datagram_event(200);
    });
    let tls = ClientTls::pinned(cert.fingerprint());
    let datagram = format!("{:?}", UnreliableDelivery::Datagram);
    let stream = format!("{:?}", UnreliableDelivery::Stream);

    let accepting = client(server.addr, &tls, |_| {}).await;
    let mut events = accepting.push_events().unwrap();
    assert_eq!(typing(&accepting, b"small".to_vec()).await, datagram);
    let event = events.recv().await.unwrap();
    assert_eq!(
        (event.event_type(), &event.payload()[..]),
        (TYPING_EVENT, &b"small"[..])
    );
    // 194 bytes of payload + 6 of header = 200: still one datagram; one more byte is not.
    assert_eq!(typing(&accepting, vec![1; 194]).await, datagram);
    assert_eq!(events.recv().await.unwrap().payload().len(), 194);
    assert_eq!(typing(&accepting, vec![2; 195]).await, stream);
    assert_eq!(events.recv().await.unwrap().payload().len(), 195);

    // A client that does not accept datagrams gets the same events on the push stream.
    let refusing = client(server.addr, &tls, |c| {
        c.datagrams(false);
    })
    .await;
    let mut events = refusing.push_events().unwrap();
    assert_eq!(typing(&refusing, b"small".to_vec()).await, stream);
    let event = events.recv().await.unwrap();
    assert_eq!(
        (event.event_type(), &event.payload()[..]),
        (TYPING_EVENT, &b"small"[..])
    );
    server.stop().await;
}
