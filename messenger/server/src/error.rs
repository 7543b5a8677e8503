//! Why the server could not start.

use std::path::PathBuf;

use crate::config::ConfigError;
use crate::store::StoreError;

/// Why preparing or starting the server failed. Every message names what to fix; none holds
/// a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is unreadable or inconsistent.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A configured plugin could not be loaded.
    #[error(transparent)]
    Plugin(#[from] crate::plugins::PluginError),
    /// A file or directory the server needs could not be created, read or written.
    #[error("{action} {}", path.display())]
    Io {
        /// What was attempted ("creating", "writing", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key could not be loaded or made.
    #[error("TLS: {0}")]
    Tls(#[from] qrpc::tls::TlsError),
    /// A service a clustered node needs (PostgreSQL, NATS) did not answer at start.
    #[error("cannot reach {service} at {url}: {reason}")]
    Service {
        /// Which service.
        service: &'static str,
        /// Where it was looked for (its password removed).
        url: String,
        /// Why.
        reason: String,
    },
    /// The certificate file holds no certificate.
    #[error("{} holds no certificate", .0.display())]
    NoCertificate(PathBuf),
    /// The store could not be opened or refused a start-up step.
    #[error("the store: {0}")]
    Store(#[from] StoreError),
    /// A secret or setting kept in the store does not decode.
    #[error("the stored {0} is corrupt")]
    Corrupt(&'static str),
    /// The database was made for another domain than the configuration names.
    #[error("this database belongs to domain {stored:?}; the configuration says {configured:?}")]
    DomainMismatch {
        /// The domain the database holds.
        stored: String,
        /// The configured one.
        configured: String,
    },
    /// The metrics endpoint could not be served.
    #[error("cannot serve metrics on {addr}: {reason}")]
    Metrics {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The exporter's reason.
        reason: String,
    },
    /// The listening socket could not be bound or read back.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The underlying error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Federation could not be set up (its DNS resolver, a peer entry).
    #[error("federation: {0}")]
    Federation(String),
    /// Two services declare the same method id (a build error of the server itself).
    #[error("the services' method ids collide: {0}")]
    Router(String),
}

impl ServerError {
    /// An I/O error while `action` on `path`.
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
