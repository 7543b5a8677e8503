//! Tower middleware shipped with qrpc. Each layer works on raw requests
//! ([`ServerRequest<RequestBody>`](crate::ServerRequest)), so it applies to every method of a server.
//!
//! tower's own layers compose with these: `tower::timeout::TimeoutLayer` ends a slow call with
//! `DeadlineExceeded`, `tower::limit::ConcurrencyLimitLayer` bounds the calls a server runs at
//! once, and `tower::load_shed::LoadShedLayer` turns an overload into `Unavailable`.

mod audit;
mod auth;
#[cfg(feature = "rate-limit")]
mod rate_limit;

pub use audit::{Audit, AuditLayer, AuditRecord};
pub use auth::{Auth, AuthLayer, AuthPolicy, Authenticator, RequireIdentity};
#[cfg(feature = "rate-limit")]
pub use rate_limit::{Quota, RateLimit, RateLimitLayer, RateLimitLayerBuilder};
