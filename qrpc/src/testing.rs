//! Building blocks for testing layers, handlers and whole services without a network: a
//! connection not backed by QUIC and a call context on it. Drive a service with
//! `tower::ServiceExt::oneshot(ServerRequest::new(ctx, RequestBody::unary(bytes)))`, or a whole server
//! with [`Server::into_service`](crate::Server::into_service).
//!
//! ```
//! # use qrpc::{PushRegistry, testing};
//! let connection = testing::detached_peer("10.0.0.1:5000".parse().unwrap(), PushRegistry::new());
//! let ctx = testing::request_context(&connection, 1, None, 7);
//! assert_eq!((ctx.method_id(), ctx.request_id()), (1, 7));
//! ```

use std::net::SocketAddr;

use crate::context::{Peer, RequestContext};
use crate::method::MethodInfo;
use crate::push::PushRegistry;

/// A connection from `remote` that is not backed by QUIC. Its push sender reports
/// [`PushError::Closed`](crate::PushError::Closed); binding an identity registers it in
/// `registry` like a real connection; it never closes and never sees a server shutdown.
pub fn detached_peer(remote: SocketAddr, registry: PushRegistry) -> Peer {
    Peer::detached(remote, registry)
}

/// The context of a call of `method_id` (described by `method` when the server has it) with
/// `request_id`, on `connection`.
pub fn request_context(
    connection: &Peer,
    method_id: u16,
    method: Option<MethodInfo>,
    request_id: u32,
) -> RequestContext {
    RequestContext::new(connection.clone(), method_id, method, request_id)
}
