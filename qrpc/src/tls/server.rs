//! The server's certificate chain and key.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::client_auth::ClientAuth;
use super::error::{PemError, TlsError};
use super::keys::crypto_provider;

/// TLS 1.3 sessions a server remembers for resumption. The cache is stateful, so each session
/// ticket is accepted once: replayed 0-RTT data on a second connection is rejected by TLS.
const SERVER_SESSIONS: usize = 4096;

/// A server's certificate chain and private key.
pub struct ServerTls {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_auth: Option<ClientAuth>,
}

impl ServerTls {
    /// A chain (leaf first) and its key.
    pub fn new(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self {
            certs,
            key,
            client_auth: None,
        }
    }

    /// Loads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let pem_err = |what, path: &Path, source: PemError| TlsError::Pem {
            what,
            path: path.display().to_string(),
            source,
        };
        let certs = CertificateDer::pem_file_iter(cert_path)
            .map_err(|e| pem_err("certificates", cert_path, e.into()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err("certificates", cert_path, e.into()))?;
        if certs.is_empty() {
            return Err(pem_err("certificates", cert_path, PemError::NoCertificate));
        }
        // The key's error text never includes key material.
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|e| pem_err("private key", key_path, e.into()))?;
        Ok(Self::new(certs, key))
    }

    /// A PEM certificate chain and a PEM private key held in memory (kept in a database, for
    /// example, so that every node of a deployment presents the same certificate).
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Self, TlsError> {
        let pem_err = |what, source: PemError| TlsError::Pem {
            what,
            path: "(memory)".into(),
            source,
        };
        let certs = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err("certificates", e.into()))?;
        if certs.is_empty() {
            return Err(pem_err("certificates", PemError::NoCertificate));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| pem_err("private key", e.into()))?;
        Ok(Self::new(certs, key))
    }

    /// Offers every connection an optional client-certificate request, accepting the
    /// certificates `auth` pins (see [`ClientAuth`]).
    pub fn with_client_auth(mut self, auth: ClientAuth) -> Self {
        self.client_auth = Some(auth);
        self
    }

    /// A copy of the chain and key, for presenting them as a client certificate.
    pub(super) fn identity(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.certs.clone(), self.key.clone_key())
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.certs.first()
    }

    /// A quinn server configuration with this certificate and `alpn` (no 0-RTT).
    pub fn quinn_server_config(&self, alpn: &[Vec<u8>]) -> Result<quinn::ServerConfig, TlsError> {
        Ok(quinn::ServerConfig::with_crypto(Arc::new(
            self.quic_config(alpn, false)?,
        )))
    }

    pub(crate) fn quic_config(
        &self,
        alpn: &[Vec<u8>],
        early_data: bool,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        self.quic_config_with(alpn, early_data, crypto_provider())
    }

    /// As [`quic_config`](Self::quic_config), serving `browser`'s certificate to connections
    /// that offer HTTP/3.
    #[cfg(feature = "webtransport")]
    pub(crate) fn quic_config_for_browsers(
        &self,
        alpn: &[Vec<u8>],
        early_data: bool,
        browser: super::BrowserCertificates,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let provider = crypto_provider();
        let default = rustls::sign::CertifiedKey::from_der(
            self.certs.clone(),
            self.key.clone_key(),
            &provider,
        )?;
        let resolver = Arc::new(super::AlpnCertResolver {
            default: Arc::new(default),
            browser,
            server_alpn: alpn.to_vec(),
        });
        self.finish_config(alpn, early_data, provider, |builder| {
            Ok(builder.with_cert_resolver(resolver))
        })
    }

    pub(super) fn quic_config_with(
        &self,
        alpn: &[Vec<u8>],
        early_data: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        self.finish_config(alpn, early_data, provider, |builder| {
            Ok(builder.with_single_cert(self.certs.clone(), self.key.clone_key())?)
        })
    }

    fn finish_config(
        &self,
        alpn: &[Vec<u8>],
        early_data: bool,
        provider: Arc<CryptoProvider>,
        certificate: impl FnOnce(
            rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>,
        ) -> Result<rustls::ServerConfig, TlsError>,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let builder = match &self.client_auth {
            None => builder.with_no_client_auth(),
            Some(auth) => builder.with_client_cert_verifier(auth.verifier(provider)),
        };
        let mut tls = certificate(builder)?;
        tls.alpn_protocols = alpn.to_vec();
        tls.session_storage = rustls::server::ServerSessionMemoryCache::new(SERVER_SESSIONS);
        // QUIC allows no other early data limit: 0 (off) or u32::MAX (on).
        tls.max_early_data_size = if early_data { u32::MAX } else { 0 };
        quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(TlsError::Quic)
    }
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("chain_len", &self.certs.len())
            .field("client_auth", &self.client_auth)
            .finish_non_exhaustive()
    }
}
