//! Tower middleware shipped with qrpc. Each layer works on raw requests
//! ([`Request<RequestBody>`](crate::Request)), so it applies to every method of a server.
//!
//! tower's own layers compose with these: `tower::timeout::TimeoutLayer` ends a slow call with
//! `DeadlineExceeded`, `tower::limit::ConcurrencyLimitLayer` bounds the calls a server runs at
//! once, and `tower::load_shed::LoadShedLayer` turns an overload into `Unavailable`.

mod audit;
mod auth;
mod rate_limit;

pub use audit::{Audit, AuditLayer, AuditRecord};
pub use auth::{Auth, AuthLayer, AuthPolicy, Authenticator, RequireIdentity};
/// A rate: how many calls per period, with a burst (re-exported from governor).
pub use governor::Quota;
pub use rate_limit::{RateLimit, RateLimitLayer, RateLimitLayerBuilder};
