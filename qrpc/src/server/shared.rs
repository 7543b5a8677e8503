//! What every connection and call of a server shares.

use std::sync::atomic::AtomicBool;

use tokio_util::task::TaskTracker;

use super::config::ServerConfig;
use crate::push::PushRegistry;
use crate::routes::Router;

/// The server's configuration, routes and shutdown state, shared by its tasks.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) routes: Router,
    pub(crate) registry: PushRegistry,
    pub(crate) calls: TaskTracker,
    pub(crate) shutting_down: AtomicBool,
    /// Cancelled when graceful shutdown begins; handlers see it through their connection.
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    pub(crate) metrics: crate::metrics::CallMetrics,
}
