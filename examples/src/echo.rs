//! Every call kind of the `Echo` service through generated code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use futures::StreamExt;
use qrpc::tls::{ClientTls, SelfSigned};
use qrpc::{RequestContext, ResponseStream, Status, Streaming};

use crate::proto::echo::v1::echo_client::EchoClient;
use crate::proto::echo::v1::echo_server::{Echo, EchoServer};
use crate::proto::echo::v1::{Number, RepeatRequest, SayReply, SayRequest, WaitCounts, say_reply};

/// The service implementation.
#[derive(Debug, Default)]
pub struct EchoService {
    waits: Arc<WaitCounters>,
}

/// What the server saw of Wait calls.
#[derive(Debug, Default)]
struct WaitCounters {
    waiting: AtomicI64,
    cancelled: AtomicI64,
}

/// Counts a Wait call while it waits, and as cancelled if it is dropped before its time.
struct WaitGuard {
    counters: Arc<WaitCounters>,
    finished: bool,
}

impl WaitGuard {
    fn new(counters: &Arc<WaitCounters>) -> Self {
        counters.waiting.fetch_add(1, Ordering::SeqCst);
        Self {
            counters: Arc::clone(counters),
            finished: false,
        }
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if !self.finished {
            self.counters.cancelled.fetch_add(1, Ordering::SeqCst);
        }
        self.counters.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Echo for EchoService {
    async fn say(&self, ctx: RequestContext, request: SayRequest) -> Result<SayReply, Status> {
        // A caller's trace context comes back as response metadata, with the time it gave the
        // call (the server drops this handler, with `DeadlineExceeded`, when that runs out).
        ctx.with_response_metadata(|m| -> Result<(), qrpc::InvalidMetadata> {
            if let Some(parent) = ctx.metadata().get("traceparent") {
                m.insert("traceparent", parent)?;
            }
            if let Some(left) = ctx.remaining() {
                m.insert("x-time-left-ms", left.as_millis().to_string())?;
            }
            Ok(())
        })
        .map_err(|e| Status::internal(e.to_string()))?;
        Ok(SayReply {
            text: request.text,
            index: 0,
            meta: Some(say_reply::Meta {
                connection_id: ctx.connection_id(),
            }),
        })
    }

    async fn repeat(
        &self,
        _ctx: RequestContext,
        request: RepeatRequest,
    ) -> Result<ResponseStream<SayReply>, Status> {
        if request.count > 10_000 {
            return Err(Status::invalid_argument("count must be at most 10000"));
        }
        let text = request.text;
        let replies = (0..request.count).map(move |index| {
            Ok(SayReply {
                text: text.clone(),
                index,
                meta: None,
            })
        });
        Ok(futures::stream::iter(replies).boxed())
    }

    async fn sum(
        &self,
        _ctx: RequestContext,
        mut numbers: Streaming<Number>,
    ) -> Result<Number, Status> {
        let mut total: i64 = 0;
        while let Some(n) = numbers.message().await? {
            total = total
                .checked_add(n.value)
                .ok_or_else(|| Status::out_of_range("sum overflows i64"))?;
        }
        Ok(Number { value: total })
    }

    async fn double(
        &self,
        _ctx: RequestContext,
        numbers: Streaming<Number>,
    ) -> Result<ResponseStream<Number>, Status> {
        Ok(numbers
            .map(|n| {
                let n = n?;
                n.value
                    .checked_mul(2)
                    .map(|value| Number { value })
                    .ok_or_else(|| Status::out_of_range("double overflows i64"))
            })
            .boxed())
    }

    async fn ping(&self, _ctx: RequestContext, _request: ()) -> Result<(), Status> {
        Ok(())
    }

    async fn wait(&self, _ctx: RequestContext, request: Number) -> Result<Number, Status> {
        let millis = u64::try_from(request.value)
            .ok()
            .filter(|ms| *ms <= 60_000)
            .ok_or_else(|| Status::invalid_argument("wait 0 to 60000 milliseconds"))?;
        // Dropped with the handler when the caller cancels: the guard counts it.
        let mut guard = WaitGuard::new(&self.waits);
        tokio::time::sleep(std::time::Duration::from_millis(millis)).await;
        guard.finished = true;
        Ok(request)
    }

    async fn wait_stats(&self, _ctx: RequestContext, _request: ()) -> Result<WaitCounts, Status> {
        Ok(WaitCounts {
            waiting: self.waits.waiting.load(Ordering::SeqCst),
            cancelled: self.waits.cancelled.load(Ordering::SeqCst),
        })
    }
}

/// What one run of the example observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// The unary reply's text.
    pub said: String,
    /// Indexes of the streamed replies.
    pub repeated: Vec<u32>,
    /// The client-streaming sum.
    pub sum: i64,
    /// The bidi replies.
    pub doubled: Vec<i64>,
}

/// Starts the echo server on `addr`; returns its address, certificate fingerprint and task.
pub fn serve(
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, [u8; 32], tokio::task::JoinHandle<()>)> {
    let cert = SelfSigned::generate(&["localhost"])?;
    let server = qrpc::Server::builder()
        .tls(cert.server_tls())
        .add_service(EchoServer::new(EchoService::default()))
        .bind(addr)?;
    let local = server.local_addr()?;
    Ok((local, cert.fingerprint(), tokio::spawn(server.serve())))
}

/// Runs a client through every call kind.
pub async fn call_all(addr: SocketAddr, fingerprint: [u8; 32]) -> anyhow::Result<Report> {
    let client =
        EchoClient::new(qrpc::Client::connect(addr, ClientTls::pinned(fingerprint)).await?);
    let said = client
        .say(&SayRequest {
            text: "hello over QUIC".into(),
            stamp: None,
        })
        .await?
        .text;
    let mut repeated = Vec::new();
    let mut stream = client
        .repeat(&RepeatRequest {
            text: "again".into(),
            count: 3,
        })
        .await?;
    while let Some(reply) = stream.message().await? {
        repeated.push(reply.index);
    }
    let sum = client
        .sum(futures::stream::iter((1..=4).map(|value| Number { value })))
        .await?
        .value;
    let mut doubled = Vec::new();
    let mut replies = client
        .double(futures::stream::iter([
            Number { value: 21 },
            Number { value: -5 },
        ]))
        .await?;
    while let Some(n) = replies.message().await? {
        doubled.push(n.value);
    }
    client.ping(&()).await?;
    Ok(Report {
        said,
        repeated,
        sum,
        doubled,
    })
}

/// Starts a server on loopback and runs the client against it.
pub async fn run() -> anyhow::Result<Report> {
    let (addr, fingerprint, server) = serve(crate::loopback())?;
    let report = call_all(addr, fingerprint).await;
    server.abort();
    report
}
