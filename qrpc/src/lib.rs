//! # qrpc — RPC over QUIC, built on tower
//!
//! qrpc runs one call per QUIC bidirectional stream, pushes events from server to client on a
//! unidirectional stream, and lets tower middleware wrap every call.
//!
//! ```text
//!   client                                              server
//!  ┌────────────────────┐    one bidi stream per call    ┌──────────────────────────────┐
//!  │ Client (clone-able)│ ─────────────────────────────▶ │ accept loop ─▶ call task     │
//!  │  └ client layers   │  [method][req_id][len][proto]  │   layers (auth, rate, audit) │
//!  │    └ CallService   │ ◀───────────────────────────── │     └ Router ─▶ handler      │
//!  │ PushEvents         │  [status][req_id][len][proto]  │ PushSender / PushRegistry    │
//!  │                    │ ◀══ one uni stream: push ═════ │                              │
//!  └────────────────────┘                                └──────────────────────────────┘
//! ```
//!
//! * [`Server`] — builder with `.layer()`, `.add_service()`, `.serve()` and
//!   `.serve_with_shutdown()`; limits in [`ServerConfig`].
//! * [`Client`] — shared connection, all four call kinds, push events, reconnect with backoff.
//! * [`middleware`] — auth, rate limiting (feature `rate-limit`) and audit layers.
//! * [`tls`] — rustls with aws-lc-rs (post-quantum `X25519MLKEM768` key exchange preferred),
//!   self-signed certificates for development, PEM loading and certificate pinning.
//!
//! Services are usually generated from `.proto` files by `qrpc-build`; [`Methods`] and
//! [`Handler`] build them by hand. Every service is a [`tower::Service`] that names its methods
//! ([`NamedService`]), so tower layers wrap a whole server ([`Server::layer`]) or one service
//! ([`LayerExt::named_layer`]).
//!
//! ## Example: a hand-written unary service
//!
//! ```
//! use qrpc::{CallKind, Handler, MethodInfo, Methods, ServiceDescriptor, Status};
//!
//! #[derive(Clone, PartialEq, prost::Message)]
//! struct Ping { #[prost(uint64, tag = "1")] n: u64 }
//!
//! const PING: MethodInfo = MethodInfo {
//!     id: 1, service: "demo.Ping", name: "Ping", kind: CallKind::Unary, idempotent: true,
//! };
//! static DESCRIPTOR: ServiceDescriptor = ServiceDescriptor { name: "demo.Ping", methods: &[PING] };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let ping = Methods::new(&DESCRIPTOR).route(PING, Handler::unary(|_ctx, req: Ping| async move {
//!     Ok::<_, Status>(Ping { n: req.n + 1 })
//! }));
//!
//! let cert = qrpc::tls::SelfSigned::generate(&["localhost"])?;
//! let server = qrpc::Server::builder()
//!     .tls(cert.server_tls())
//!     .add_service(ping)
//!     .bind("127.0.0.1:0".parse()?)?;
//! let addr = server.local_addr()?;
//! tokio::spawn(server.serve());
//!
//! let client = qrpc::Client::connect(addr, qrpc::tls::ClientTls::pinned(cert.fingerprint())).await?;
//! let pong: qrpc::Response<Ping> = client.unary(&PING, Ping { n: 41 }).await?;
//! assert_eq!(pong.get_ref().n, 42);
//!
//! // Per-call options travel with the call: a deadline the server also keeps, and metadata.
//! let mut request = qrpc::Request::new(Ping { n: 1 });
//! request.set_timeout(std::time::Duration::from_secs(2));
//! request.metadata_mut().insert("x-tenant", "blue")?;
//! let pong: qrpc::Response<Ping> = client.unary(&PING, request).await?;
//! assert_eq!(pong.into_inner().n, 2);
//! # Ok(()) }
//! ```
//!
//! A handler reads them from its [`RequestContext`]: [`metadata`](RequestContext::metadata),
//! [`remaining`](RequestContext::remaining) time, and answers metadata with
//! [`with_response_metadata`](RequestContext::with_response_metadata). On the wire they are an
//! extension of the framing negotiated per connection (`docs/wire-protocol.md` §11), so peers
//! that predate it still interoperate.

#![warn(unreachable_pub, unnameable_types)]

mod body;
mod call_state;
mod client;
#[doc(hidden)]
pub mod codegen;
mod context;
mod event;
mod extension;
mod extensions;
mod frame;
mod identity;
mod io;
mod metadata;
mod method;
mod metrics;
pub mod middleware;
pub mod protocol;
mod push;
mod request;
mod routes;
mod server;
mod status;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;
mod transport;
#[cfg(feature = "webtransport")]
pub mod webtransport;

pub use body::{
    MessageStream, RequestBody, ResponseBody, ResponseStream, ServerRequest, ServerResponse,
    Streaming,
};
pub use client::TypedPushEvents;
pub use client::{
    CallRequest, CallService, Client, ClientBuilder, ClientConfig, ClientError, ConnectionState,
    Disconnect, OutgoingBody, PushEvents, RawPush, ReconnectPolicy,
};
pub use context::{Extensions, Peer, PeerIdentity, RequestContext};
pub use event::PushEvent;
pub use metadata::{InvalidMetadata, Metadata};
pub use method::{CallKind, MethodInfo, MethodRef, ServiceDescriptor};
pub use push::{
    PushDelivery, PushError, PushRegistry, PushSender, TypedPushSender, UnreliableDelivery,
};
pub use request::{IntoRequest, IntoStreamingRequest, Request, Response};
pub use routes::{
    DuplicateMethodId, Handler, HostedService, LayerExt, Methods, Named, NamedService, Router,
};
pub use server::{BoundServer, Server, ServerConfig, ServerError};
pub use status::{Code, Status};
pub use transport::{RPC_MAX_ACK_DELAY, TransportProfile};

/// The QUIC implementation beneath, re-exported because its types appear in qrpc's API
/// (`protocol::VarInt` codes, `ClientError`'s causes, `ServerTls::quinn_server_config`): use
/// this path so that your quinn and qrpc's always agree.
pub use quinn;

/// Includes the code qrpc-build generated for every package, nested in modules that mirror the
/// package names (so cross-package references resolve). Use at the crate root or in a module.
///
/// ```ignore
/// qrpc::include_protos!();
/// use echo::v1::echo_server::Echo;
/// ```
#[macro_export]
macro_rules! include_protos {
    () => {
        include!(concat!(env!("OUT_DIR"), "/_qrpc_include.rs"));
    };
}

/// The wire codecs and call state machines, public for fuzz targets and wire-level tests
/// only (feature `fuzzing`): not a stable API.
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    pub use crate::call_state::*;
    pub use crate::extension::*;
    pub use crate::frame::*;
}

/// A boxed error, as tower middleware reports it.
pub type BoxError = tower::BoxError;
