//! How a client trusts the server: root certificates, or one pinned certificate.

use std::fmt;
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::error::TlsError;
use super::keys::{crypto_provider, format_fingerprint};
use super::pinned::{Pin, PinnedVerifier};

/// How a client decides to trust the server.
///
/// Clones share one TLS session cache: a client built from a clone of a `ClientTls` that
/// already reached a server resumes the session, and may send idempotent calls as 0-RTT data
/// ([`ClientConfig::zero_rtt`](crate::ClientConfig::zero_rtt)).
#[derive(Clone)]
pub struct ClientTls {
    trust: Trust,
    server_name: String,
    /// The certificate this client presents when the server asks for one.
    identity: Option<Arc<ClientIdentity>>,
    /// Built on first use and shared by clones; holds the session cache.
    base: Arc<std::sync::Mutex<Option<Arc<rustls::ClientConfig>>>>,
}

/// TLS sessions a client remembers per [`ClientTls`] (for resumption and 0-RTT).
const CLIENT_SESSIONS: usize = 64;

#[derive(Clone)]
enum Trust {
    Roots(Arc<RootCertStore>),
    Pinned(Pin),
}

/// A client's certificate chain and key; the key is never printed.
struct ClientIdentity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientTls {
    /// Trusts servers whose certificate chains to one of `roots` and names `server_name`.
    pub fn with_roots(roots: RootCertStore, server_name: impl Into<String>) -> Self {
        Self {
            trust: Trust::Roots(Arc::new(roots)),
            server_name: server_name.into(),
            identity: None,
            base: Arc::default(),
        }
    }

    /// Trusts exactly one certificate, as a root, for `server_name`.
    pub fn trust_certificate(
        cert: CertificateDer<'static>,
        server_name: impl Into<String>,
    ) -> Result<Self, TlsError> {
        let mut roots = RootCertStore::empty();
        roots.add(cert)?;
        Ok(Self::with_roots(roots, server_name))
    }

    /// Trusts only a server whose leaf certificate has this SHA-256 fingerprint.
    ///
    /// The handshake signature is still verified against that certificate, so a peer without the
    /// private key cannot pass. Names and validity dates are not checked: the pin is the trust.
    pub fn pinned(sha256: [u8; 32]) -> Self {
        Self {
            trust: Trust::Pinned(Pin::Certificate(sha256)),
            server_name: "qrpc.invalid".into(),
            identity: None,
            base: Arc::default(),
        }
    }

    /// Trusts only a server whose leaf certificate's public key has this SHA-256 fingerprint
    /// ([`key_fingerprint`](super::key_fingerprint)): unlike [`pinned`](Self::pinned), the
    /// pin survives the server renewing its certificate with the same key. The handshake
    /// signature is verified against that key; names and dates are not checked.
    pub fn pinned_key(sha256: [u8; 32]) -> Self {
        Self {
            trust: Trust::Pinned(Pin::Key(sha256)),
            server_name: "qrpc.invalid".into(),
            identity: None,
            base: Arc::default(),
        }
    }

    /// Presents this certificate chain (leaf first) and key when the server asks for a client
    /// certificate (a server with [`ClientAuth`](super::ClientAuth)). The session cache starts
    /// afresh.
    pub fn with_client_certificate(
        mut self,
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.identity = Some(Arc::new(ClientIdentity { certs, key }));
        self.base = Arc::default();
        self
    }

    /// Presents the certificate chain and key `server` serves with: a server that calls its
    /// peers as itself (federation) proves the identity they already pin.
    pub fn with_client_certificate_of(self, server: &super::ServerTls) -> Self {
        let (certs, key) = server.identity();
        self.with_client_certificate(certs, key)
    }

    /// The name sent in SNI and, with root trust, checked against the certificate.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Overrides the server name.
    pub fn with_server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = name.into();
        self
    }

    /// A quinn client configuration with this trust and `alpn`, for talking to a qrpc server
    /// with plain quinn (no 0-RTT).
    pub fn quinn_client_config(&self, alpn: &[Vec<u8>]) -> Result<quinn::ClientConfig, TlsError> {
        Ok(quinn::ClientConfig::new(Arc::new(
            self.quic_config(alpn, false)?,
        )))
    }

    pub(crate) fn quic_config(
        &self,
        alpn: &[Vec<u8>],
        early_data: bool,
    ) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
        let mut tls = (*self.base()?).clone();
        tls.alpn_protocols = alpn.to_vec();
        tls.enable_early_data = early_data;
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(TlsError::Quic)
    }

    /// The rustls configuration every connection of this `ClientTls` (and its clones) starts
    /// from. It is built once because rustls resumes a session only under the very verifier
    /// (the same `Arc`) that accepted it.
    fn base(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut base = self.base.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(config) = base.as_ref() {
            return Ok(Arc::clone(config));
        }
        let config = Arc::new(self.build_base(crypto_provider())?);
        *base = Some(Arc::clone(&config));
        Ok(config)
    }

    pub(super) fn build_base(
        &self,
        provider: Arc<CryptoProvider>,
    ) -> Result<rustls::ClientConfig, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match &self.trust {
            Trust::Roots(roots) => builder.with_root_certificates(roots.clone()),
            Trust::Pinned(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pin: *pin,
                    provider,
                })),
        };
        let mut tls = match &self.identity {
            None => builder.with_no_client_auth(),
            Some(identity) => {
                builder.with_client_auth_cert(identity.certs.clone(), identity.key.clone_key())?
            }
        };
        tls.resumption = rustls::client::Resumption::store(Arc::new(
            rustls::client::ClientSessionMemoryCache::new(CLIENT_SESSIONS),
        ));
        Ok(tls)
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trust = match &self.trust {
            Trust::Roots(r) => format!("roots({})", r.len()),
            Trust::Pinned(Pin::Certificate(p)) => format!("pinned({})", format_fingerprint(p)),
            Trust::Pinned(Pin::Key(p)) => format!("pinned key({})", format_fingerprint(p)),
        };
        f.debug_struct("ClientTls")
            .field("trust", &trust)
            .field("server_name", &self.server_name)
            .field("client_certificate", &self.identity.is_some())
            .finish()
    }
}
