//! An audit trail: one record per call with method, peer, identity, duration and status.
//!
//! Records never carry payloads, messages of statuses, or anything from the request body.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::BoxFuture;
use tower::{BoxError, Layer, Service};

use crate::body::ServerRequest;
use crate::context::PeerIdentity;
use crate::method::MethodInfo;
use crate::status::{Code, Status};

/// What the audit layer records of one call.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuditRecord {
    /// The method id from the request frame.
    pub method_id: u16,
    /// The registered method, if the id is served.
    pub method: Option<MethodInfo>,
    /// The peer's address.
    pub peer: SocketAddr,
    /// The connection id.
    pub connection_id: u64,
    /// The identity bound to the connection when the call started.
    pub identity: Option<PeerIdentity>,
    /// Time until the response started (for streaming responses, until the stream began).
    pub duration: Duration,
    /// The status the call started its response with.
    pub code: Code,
}

type Sink = Arc<dyn Fn(&AuditRecord) + Send + Sync>;

/// Records every call. By default records go to `tracing` at target `qrpc::audit`, level INFO.
#[derive(Clone)]
pub struct AuditLayer {
    sink: Sink,
}

impl fmt::Debug for AuditLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuditLayer")
    }
}

impl Default for AuditLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditLayer {
    /// Records to `tracing`, with the peer's address.
    pub fn new() -> Self {
        Self::tracing(true)
    }

    /// Records to `tracing`; the peer's address (personal data a service may not need to
    /// keep) only if `peer_addresses`.
    pub fn tracing(peer_addresses: bool) -> Self {
        Self::with_sink(move |r: &AuditRecord| {
            tracing::info!(
                target: "qrpc::audit",
                method_id = r.method_id,
                method = %r.method.map_or_else(|| "<unknown>".to_owned(), |m| m.to_string()),
                peer = peer_addresses.then(|| tracing::field::display(r.peer)),
                connection = r.connection_id,
                identity = r.identity.as_ref().map(PeerIdentity::as_str),
                duration_us = r.duration.as_micros() as u64,
                code = %r.code,
                "call"
            );
        })
    }

    /// Records to `sink` (for example an audit database or a test).
    pub fn with_sink(sink: impl Fn(&AuditRecord) + Send + Sync + 'static) -> Self {
        Self {
            sink: Arc::new(sink),
        }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Audit<S> {
        Audit {
            inner,
            sink: Arc::clone(&self.sink),
        }
    }
}

/// The service [`AuditLayer`] produces.
#[derive(Clone)]
pub struct Audit<S> {
    inner: S,
    sink: Sink,
}

impl<S: fmt::Debug> fmt::Debug for Audit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> Audit<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B> Service<ServerRequest<B>> for Audit<S>
where
    S: Service<ServerRequest<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: ServerRequest<B>) -> Self::Future {
        let ctx = req.context();
        let mut record = AuditRecord {
            method_id: ctx.method_id(),
            method: ctx.method().copied(),
            peer: ctx.remote_address(),
            connection_id: ctx.connection_id(),
            identity: ctx.identity(),
            duration: Duration::ZERO,
            code: Code::Ok,
        };
        let sink = Arc::clone(&self.sink);
        let start = Instant::now();
        self.inner
            .call(req)
            .map(move |result| {
                let result = result.map_err(Into::into);
                record.duration = start.elapsed();
                record.code = match &result {
                    Ok(_) => Code::Ok,
                    Err(err) => Status::code_of(err.as_ref()),
                };
                sink(&record);
                result
            })
            .boxed()
    }
}
