//! A test service exercising every call kind, and helpers to run it on loopback.
#![allow(dead_code, clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use qrpc::tls::{ClientTls, SelfSigned};
use qrpc::{
    BoundServer, CallKind, Client, Handler, MethodInfo, Methods, PeerIdentity, Server,
    ServiceDescriptor, Status,
};

#[derive(Clone, PartialEq, prost::Message)]
pub struct Msg {
    #[prost(bytes = "vec", tag = "1")]
    pub data: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub n: u64,
    #[prost(string, tag = "3")]
    pub text: String,
}

/// A message carrying `name` as its text (what the Login method binds).
pub fn login(name: &str) -> Msg {
    Msg {
        text: name.into(),
        ..Msg::default()
    }
}

/// One successful call (Echo) and one failing call (Fail, whose status message echoes its
/// request), both carrying "secret" data that audit records and logs must not show.
pub async fn echo_then_fail_with_secrets(client: &Client) {
    client
        .unary::<_, Msg>(&ECHO, &login("secret-payload"))
        .await
        .unwrap();
    let _ = client
        .unary::<_, Msg>(&FAIL, &login("secret-reason"))
        .await
        .unwrap_err();
}

impl Msg {
    pub fn n(n: u64) -> Self {
        Self {
            n,
            ..Self::default()
        }
    }
}

const fn method(id: u16, name: &'static str, kind: CallKind) -> MethodInfo {
    MethodInfo {
        id,
        service: "test.Svc",
        name,
        kind,
        idempotent: false,
    }
}

pub const ECHO: MethodInfo = method(1, "Echo", CallKind::Unary);
pub const SLOW: MethodInfo = method(2, "Slow", CallKind::Unary);
pub const COUNT: MethodInfo = method(3, "Count", CallKind::ServerStreaming);
pub const SUM: MethodInfo = method(4, "Sum", CallKind::ClientStreaming);
pub const CHAT: MethodInfo = method(5, "Chat", CallKind::Bidi);
pub const PANIC: MethodInfo = method(6, "Panic", CallKind::Unary);
pub const LOGIN: MethodInfo = method(7, "Login", CallKind::Unary);
pub const WHOAMI: MethodInfo = method(8, "WhoAmI", CallKind::Unary);
pub const PUSH: MethodInfo = method(9, "Push", CallKind::Unary);
pub const FAIL: MethodInfo = method(10, "Fail", CallKind::Unary);

pub static DESCRIPTOR: ServiceDescriptor = ServiceDescriptor {
    name: "test.Svc",
    methods: &[
        ECHO, SLOW, COUNT, SUM, CHAT, PANIC, LOGIN, WHOAMI, PUSH, FAIL,
    ],
};

/// Counters the tests read to observe the server.
#[derive(Default)]
pub struct Observed {
    pub slow_started: AtomicUsize,
    /// Signalled each time a Slow call starts (a permit is kept if nobody waits yet).
    pub slow_start: tokio::sync::Notify,
    pub slow_dropped: AtomicUsize,
    pub slow_finished: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
    /// Items the Count stream has produced.
    pub count_produced: AtomicUsize,
    /// Count streams dropped before their last item.
    pub count_dropped: AtomicUsize,
    /// The connections of Login calls, kept as an application's session table keeps them.
    pub kept: std::sync::Mutex<Vec<qrpc::Peer>>,
}

/// Counts a Count stream dropped before it finished.
struct CountGuard {
    observed: Arc<Observed>,
    finished: bool,
}

impl CountGuard {
    fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for CountGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.observed.count_dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[derive(Clone, Default)]
pub struct TestService {
    pub observed: Arc<Observed>,
}

struct DropFlag(Arc<Observed>, bool);
impl Drop for DropFlag {
    fn drop(&mut self) {
        if !self.1 {
            self.0.slow_dropped.fetch_add(1, Ordering::SeqCst);
        }
    }
}

impl TestService {
    /// The service, ready for `Server::add_service`.
    pub fn into_methods(self) -> Methods {
        let observed = self.observed.clone();
        let count_observed = self.observed.clone();
        Methods::new(&DESCRIPTOR)
            .route(
                ECHO,
                Handler::unary(|_ctx, m: Msg| async move { Ok::<_, Status>(m) }),
            )
            .route(
                SLOW,
                Handler::unary(move |_ctx, m: Msg| {
                    let observed = observed.clone();
                    async move {
                        observed.slow_started.fetch_add(1, Ordering::SeqCst);
                        observed.slow_start.notify_one();
                        let now = observed.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        observed.max_in_flight.fetch_max(now, Ordering::SeqCst);
                        let mut flag = DropFlag(observed.clone(), false);
                        tokio::time::sleep(Duration::from_millis(m.n)).await;
                        flag.1 = true;
                        observed.in_flight.fetch_sub(1, Ordering::SeqCst);
                        observed.slow_finished.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, Status>(m)
                    }
                }),
            )
            .route(
                COUNT,
                Handler::server_streaming(move |_ctx, m: Msg| {
                    let observed = Arc::clone(&count_observed);
                    async move {
                        let guard = CountGuard {
                            observed,
                            finished: false,
                        };
                        let items =
                            futures::stream::unfold((0u64, guard), move |(i, mut g)| async move {
                                if i >= m.n {
                                    g.finish();
                                    return None;
                                }
                                g.observed.count_produced.fetch_add(1, Ordering::SeqCst);
                                Some((Ok(Msg::n(i)), (i + 1, g)))
                            });
                        Ok::<_, Status>(items.boxed())
                    }
                }),
            )
            .route(
                SUM,
                Handler::client_streaming(|_ctx, mut s: qrpc::Streaming<Msg>| async move {
                    let mut total = 0;
                    while let Some(m) = s.message().await? {
                        total += m.n;
                    }
                    Ok::<_, Status>(Msg::n(total))
                }),
            )
            .route(
                CHAT,
                Handler::bidi(|_ctx, s: qrpc::Streaming<Msg>| async move {
                    Ok::<_, Status>(s.map(|m| m.map(|m| Msg::n(m.n * 2))).boxed())
                }),
            )
            .route(
                PANIC,
                Handler::unary(|_ctx, _m: Msg| async move {
                    if std::hint::black_box(true) {
                        panic!("handler bug");
                    }
                    Ok::<Msg, Status>(Msg::default())
                }),
            )
            .route(
                LOGIN,
                Handler::unary({
                    let observed = Arc::clone(&self.observed);
                    move |ctx, m: Msg| {
                        let observed = Arc::clone(&observed);
                        async move {
                            ctx.peer().bind_identity(PeerIdentity::new(m.text.clone()));
                            observed.kept.lock().unwrap().push(ctx.peer().clone());
                            Ok::<_, Status>(m)
                        }
                    }
                }),
            )
            .route(
                WHOAMI,
                Handler::unary(|ctx, _m: Msg| async move {
                    let text = ctx
                        .identity()
                        .map(|i| i.as_str().to_owned())
                        .unwrap_or_default();
                    Ok::<_, Status>(Msg {
                        text,
                        ..Msg::default()
                    })
                }),
            )
            .route(
                PUSH,
                Handler::unary(|ctx, m: Msg| async move {
                    let mut queued = 0;
                    for i in 0..m.n {
                        let event = Msg {
                            n: i,
                            data: m.data.clone(),
                            ..Msg::default()
                        };
                        let payload = prost::Message::encode_to_vec(&event);
                        if ctx.peer().push().try_send(7, payload.into()).is_ok() {
                            queued += 1;
                        }
                    }
                    Ok::<_, Status>(Msg::n(queued))
                }),
            )
            .route(
                FAIL,
                Handler::unary(|_ctx, m: Msg| async move {
                    Err::<Msg, _>(Status::with_details(
                        qrpc::Code::NotFound,
                        m.text,
                        vec![1, 2, 3].into(),
                    ))
                }),
            )
    }
}

pub struct Running {
    pub addr: SocketAddr,
    pub fingerprint: [u8; 32],
    pub registry: qrpc::PushRegistry,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    pub task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub fn tls(&self) -> ClientTls {
        ClientTls::pinned(self.fingerprint)
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.addr, self.tls()).await.unwrap()
    }

    /// Signals shutdown and returns the serve task to await.
    pub fn shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap()
    }
}

pub fn cert() -> SelfSigned {
    SelfSigned::generate(&["localhost"]).unwrap()
}

/// Runs a bound server in the background with a shutdown switch.
pub fn run<S>(server: BoundServer<S>, fingerprint: [u8; 32]) -> Running
where
    S: tower::Service<
            qrpc::ServerRequest<qrpc::RequestBody>,
            Response = qrpc::ServerResponse<qrpc::ResponseBody>,
        > + Clone
        + Send
        + 'static,
    S::Error: Into<qrpc::BoxError>,
    S::Future: Send,
{
    let addr = server.local_addr().unwrap();
    let registry = server.push_registry();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.serve_with_shutdown(async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        fingerprint,
        registry,
        shutdown: Some(tx),
        task: Some(task),
    }
}

/// The test service on loopback with default settings.
pub fn start(service: TestService) -> Running {
    start_with(service, |s| s)
}

/// The test service on a given address and certificate (to restart a server in place).
pub fn start_on(addr: SocketAddr, cert: &SelfSigned) -> Running {
    let server = Server::builder()
        .tls(cert.server_tls())
        .add_service(TestService::default().into_methods())
        .bind(addr)
        .unwrap();
    run(server, cert.fingerprint())
}

/// `service` behind `layer` on loopback, with default settings.
pub fn start_layered<L, S>(service: TestService, layer: L) -> Running
where
    L: tower::Layer<qrpc::Router, Service = S>,
    S: tower::Service<
            qrpc::ServerRequest<qrpc::RequestBody>,
            Response = qrpc::ServerResponse<qrpc::ResponseBody>,
        > + Clone
        + Send
        + 'static,
    S::Error: Into<qrpc::BoxError>,
    S::Future: Send,
{
    let cert = cert();
    let server = Server::builder()
        .tls(cert.server_tls())
        .layer(layer)
        .add_service(service.into_methods())
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    run(server, cert.fingerprint())
}

/// The test service with adjusted config.
pub fn start_with(
    service: TestService,
    f: impl FnOnce(&mut qrpc::ServerConfig) -> &mut qrpc::ServerConfig,
) -> Running {
    let cert = cert();
    let server = Server::builder()
        .tls(cert.server_tls())
        .configure(|c| {
            f(c);
        })
        .add_service(service.into_methods())
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    run(server, cert.fingerprint())
}

pub async fn eventually(mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached within 5 s");
}

/// A raw unary call of any method id (including ones no server has).
pub async fn unary_raw(
    client: &qrpc::Client,
    method_id: u16,
    payload: bytes::Bytes,
) -> Result<bytes::Bytes, qrpc::Status> {
    use futures::StreamExt;
    let mut responses = client
        .call(qrpc::CallRequest::unary(method_id, payload))
        .await?;
    responses
        .next()
        .await
        .unwrap_or_else(|| Err(qrpc::Status::internal("no response")))
}
