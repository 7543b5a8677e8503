//! TLS for qrpc: server certificates, client trust (roots or a pinned certificate), and
//! the crypto provider.
//!
//! qrpc uses rustls with the aws-lc-rs provider, so every QUIC handshake offers the
//! post-quantum hybrid key exchange `X25519MLKEM768` first (falling back to X25519 for peers
//! without it). TLS 1.3 only, as QUIC requires. There is no verifier that accepts any
//! certificate: a client trusts root certificates or pins the server's certificate by SHA-256.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// Why a TLS configuration could not be built or loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("cannot load {what} from {path}")]
    Pem {
        /// What was being loaded.
        what: &'static str,
        /// The file.
        path: String,
        /// Why it failed.
        #[source]
        source: PemError,
    },
    /// Certificate generation failed.
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls rejected the configuration.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The rustls configuration cannot drive QUIC.
    #[error("TLS configuration unusable for QUIC")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A fingerprint string was not 64 hex digits.
    #[error("a SHA-256 fingerprint is 64 hex digits (colons allowed)")]
    BadFingerprint,
}

/// Why a PEM file did not yield what was asked of it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// The file could not be read or is not valid PEM (the error never contains key material).
    #[error(transparent)]
    Parse(#[from] rustls::pki_types::pem::Error),
    /// The file holds no certificate.
    #[error("no certificate found")]
    NoCertificate,
}

/// The crypto provider qrpc uses: aws-lc-rs, preferring `X25519MLKEM768`.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The SHA-256 fingerprint of a DER certificate, as a client pins it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// Formats a fingerprint as lowercase hex pairs separated by colons.
pub fn format_fingerprint(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses a fingerprint written as 64 hex digits, with or without colons.
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let hex: Vec<u8> = text.bytes().filter(|b| *b != b':').collect();
    if hex.len() != 64 {
        return Err(TlsError::BadFingerprint);
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).map_err(|_| TlsError::BadFingerprint)?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| TlsError::BadFingerprint)?;
    }
    Ok(out)
}

/// A server's certificate chain and private key.
pub struct ServerTls {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ServerTls {
    /// A chain (leaf first) and its key.
    pub fn new(certs: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        Self { certs, key }
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
        Ok(Self { certs, key })
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

    fn quic_config_with(
        &self,
        alpn: &[Vec<u8>],
        early_data: bool,
        provider: Arc<CryptoProvider>,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())?;
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
            .finish_non_exhaustive()
    }
}

/// A freshly generated self-signed certificate, for development and zero-config servers.
pub struct SelfSigned {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl SelfSigned {
    /// Generates a certificate valid for `names` (DNS names or IP addresses).
    pub fn generate(names: &[&str]) -> Result<Self, TlsError> {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )?;
        Ok(Self {
            cert: ck.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
        })
    }

    /// The DER certificate.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The certificate's SHA-256 fingerprint, for clients to pin.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.cert)
    }

    /// The certificate in PEM form.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", self.cert.as_ref())
    }

    /// The private key in PEM form, wiped from memory on drop. Write it to a file only the
    /// server can read.
    pub fn key_pem(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(pem_encode("PRIVATE KEY", self.key.secret_pkcs8_der()))
    }

    /// The certificate and key as a server configuration.
    pub fn server_tls(&self) -> ServerTls {
        ServerTls::new(
            vec![self.cert.clone()],
            PrivateKeyDer::Pkcs8(self.key.clone_key()),
        )
    }
}

impl fmt::Debug for SelfSigned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SelfSigned")
            .field("fingerprint", &format_fingerprint(&self.fingerprint()))
            .finish_non_exhaustive()
    }
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    // Sized up front so the buffer never reallocates and leaves key bytes behind.
    let mut b64 = zeroize::Zeroizing::new(String::with_capacity(der.len().div_ceil(3) * 4));
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 2 * label.len() + 40);
    out.push_str(&format!("-----BEGIN {label}-----\n"));
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// How a client decides to trust the server.
///
/// Clones share one TLS session cache: a client built from a clone of a `ClientTls` that
/// already reached a server resumes the session, and may send idempotent calls as 0-RTT data
/// ([`ClientConfig::zero_rtt`](crate::ClientConfig::zero_rtt)).
#[derive(Clone)]
pub struct ClientTls {
    trust: Trust,
    server_name: String,
    /// Built on first use and shared by clones; holds the session cache.
    base: Arc<std::sync::Mutex<Option<Arc<rustls::ClientConfig>>>>,
}

/// TLS sessions a client remembers per [`ClientTls`] (for resumption and 0-RTT).
const CLIENT_SESSIONS: usize = 64;

/// TLS 1.3 sessions a server remembers for resumption. The cache is stateful, so each session
/// ticket is accepted once: replayed 0-RTT data on a second connection is rejected by TLS.
const SERVER_SESSIONS: usize = 4096;

#[derive(Clone)]
enum Trust {
    Roots(Arc<RootCertStore>),
    Pinned([u8; 32]),
}

impl ClientTls {
    /// Trusts servers whose certificate chains to one of `roots` and names `server_name`.
    pub fn with_roots(roots: RootCertStore, server_name: impl Into<String>) -> Self {
        Self {
            trust: Trust::Roots(Arc::new(roots)),
            server_name: server_name.into(),
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
            trust: Trust::Pinned(sha256),
            server_name: "qrpc.invalid".into(),
            base: Arc::default(),
        }
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

    fn build_base(&self, provider: Arc<CryptoProvider>) -> Result<rustls::ClientConfig, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let mut tls = match &self.trust {
            Trust::Roots(roots) => builder
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
            Trust::Pinned(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier {
                    pin: *pin,
                    provider,
                }))
                .with_no_client_auth(),
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
            Trust::Pinned(p) => format!("pinned({})", format_fingerprint(p)),
        };
        f.debug_struct("ClientTls")
            .field("trust", &trust)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// Accepts exactly the pinned leaf certificate, and checks handshake signatures against it.
#[derive(Debug)]
struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fingerprint_text_round_trip() {
        let fp: [u8; 32] = core::array::from_fn(|i| i as u8 * 7);
        let text = format_fingerprint(&fp);
        assert_eq!(parse_fingerprint(&text).unwrap(), fp);
        assert_eq!(parse_fingerprint(&text.replace(':', "")).unwrap(), fp);
        assert!(parse_fingerprint("abc").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn generated_pem_parses_back() {
        let ss = SelfSigned::generate(&["localhost"]).unwrap();
        let cert = CertificateDer::from_pem_slice(ss.cert_pem().as_bytes()).unwrap();
        assert_eq!(cert, *ss.cert());
        let key = PrivateKeyDer::from_pem_slice(ss.key_pem().as_bytes()).unwrap();
        assert!(matches!(key, PrivateKeyDer::Pkcs8(_)));
        assert!(!format!("{ss:?}").contains("PRIVATE"));
    }

    #[test]
    fn pem_files_load_and_missing_files_say_which() {
        let dir = std::env::temp_dir().join(format!("qrpc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ss = SelfSigned::generate(&["localhost"]).unwrap();
        std::fs::write(dir.join("cert.pem"), ss.cert_pem()).unwrap();
        std::fs::write(dir.join("key.pem"), ss.key_pem()).unwrap();
        let tls = ServerTls::from_pem_files(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
        assert_eq!(tls.leaf(), Some(ss.cert()));
        let err =
            ServerTls::from_pem_files(&dir.join("nope.pem"), &dir.join("key.pem")).unwrap_err();
        assert!(err.to_string().contains("nope.pem"));
        // The cause is kept as the error's source, not flattened into the message.
        let source = std::error::Error::source(&err).expect("a source");
        assert!(matches!(
            source.downcast_ref::<PemError>(),
            Some(PemError::Parse(rustls::pki_types::pem::Error::Io(_)))
        ));
        assert!(!err.to_string().contains(&source.to_string()));
        // A file with no certificate says so.
        std::fs::write(dir.join("empty.pem"), "").unwrap();
        let err =
            ServerTls::from_pem_files(&dir.join("empty.pem"), &dir.join("key.pem")).unwrap_err();
        assert!(matches!(
            std::error::Error::source(&err).and_then(|s| s.downcast_ref::<PemError>()),
            Some(PemError::NoCertificate)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Key exchanges that wrap the provider's and record which group completed on each side.
    mod observed {
        use std::sync::{Arc, Mutex};

        use rustls::crypto::{
            ActiveKeyExchange, CompletedKeyExchange, CryptoProvider, SharedSecret, SupportedKxGroup,
        };
        use rustls::{NamedGroup, ProtocolVersion};

        pub(super) type Log = Arc<Mutex<Vec<NamedGroup>>>;

        #[derive(Debug)]
        struct Group {
            inner: &'static dyn SupportedKxGroup,
            log: Log,
        }

        impl SupportedKxGroup for Group {
            fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, rustls::Error> {
                Ok(Box::new(Active {
                    inner: self.inner.start()?,
                    log: Arc::clone(&self.log),
                }))
            }

            fn start_and_complete(
                &self,
                peer_pub_key: &[u8],
            ) -> Result<CompletedKeyExchange, rustls::Error> {
                let done = self.inner.start_and_complete(peer_pub_key)?;
                self.log.lock().unwrap().push(done.group);
                Ok(done)
            }

            fn name(&self) -> NamedGroup {
                self.inner.name()
            }

            fn usable_for_version(&self, version: ProtocolVersion) -> bool {
                self.inner.usable_for_version(version)
            }
        }

        struct Active {
            inner: Box<dyn ActiveKeyExchange>,
            log: Log,
        }

        impl ActiveKeyExchange for Active {
            fn complete(
                self: Box<Self>,
                peer_pub_key: &[u8],
            ) -> Result<SharedSecret, rustls::Error> {
                let group = self.inner.group();
                let secret = self.inner.complete(peer_pub_key)?;
                self.log.lock().unwrap().push(group);
                Ok(secret)
            }

            fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
                self.inner.hybrid_component()
            }

            fn complete_hybrid_component(
                self: Box<Self>,
                peer_pub_key: &[u8],
            ) -> Result<SharedSecret, rustls::Error> {
                let group = self.inner.hybrid_component().map(|(g, _)| g);
                let secret = self.inner.complete_hybrid_component(peer_pub_key)?;
                if let Some(group) = group {
                    self.log.lock().unwrap().push(group);
                }
                Ok(secret)
            }

            fn pub_key(&self) -> &[u8] {
                self.inner.pub_key()
            }

            fn group(&self) -> NamedGroup {
                self.inner.group()
            }
        }

        /// qrpc's provider with every group recorded; `only` keeps just these groups.
        pub(super) fn provider(only: Option<&[NamedGroup]>) -> (Arc<CryptoProvider>, Log) {
            let log = Log::default();
            let mut provider = (*super::crypto_provider()).clone();
            provider.kx_groups = provider
                .kx_groups
                .iter()
                .filter(|g| only.is_none_or(|only| only.contains(&g.name())))
                .map(|g| {
                    let group: &'static dyn SupportedKxGroup = Box::leak(Box::new(Group {
                        inner: *g,
                        log: Arc::clone(&log),
                    }));
                    group
                })
                .collect();
            (Arc::new(provider), log)
        }
    }

    /// Runs one QUIC handshake between qrpc's server and client TLS configurations built with
    /// the given providers, and returns the groups each side completed.
    async fn handshake(
        server_only: Option<&[rustls::NamedGroup]>,
        client_only: Option<&[rustls::NamedGroup]>,
    ) -> (Vec<rustls::NamedGroup>, Vec<rustls::NamedGroup>) {
        let cert = SelfSigned::generate(&["localhost"]).unwrap();
        let alpn = [crate::protocol::DEFAULT_ALPN.to_vec()];
        let (server_provider, server_log) = observed::provider(server_only);
        let (client_provider, client_log) = observed::provider(client_only);
        let server_crypto = cert
            .server_tls()
            .quic_config_with(&alpn, false, server_provider)
            .unwrap();
        let server = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(server_crypto)),
            "127.0.0.1:0".parse().unwrap(),
        )
        .unwrap();
        let addr = server.local_addr().unwrap();
        let accept = tokio::spawn(async move {
            let conn = server.accept().await.unwrap().await.unwrap();
            conn.closed().await;
        });
        let mut client_tls = ClientTls::pinned(cert.fingerprint())
            .build_base(client_provider)
            .unwrap();
        client_tls.alpn_protocols = alpn.to_vec();
        let client_crypto = quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).unwrap();
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let conn = client
            .connect_with(
                quinn::ClientConfig::new(Arc::new(client_crypto)),
                addr,
                "localhost",
            )
            .unwrap()
            .await
            .unwrap();
        conn.close(0u32.into(), b"done");
        accept.await.unwrap();
        let server_groups = server_log.lock().unwrap().clone();
        let client_groups = client_log.lock().unwrap().clone();
        (server_groups, client_groups)
    }

    #[tokio::test]
    async fn handshakes_negotiate_the_post_quantum_hybrid_on_both_sides() {
        let (server, client) = handshake(None, None).await;
        assert_eq!(server, vec![rustls::NamedGroup::X25519MLKEM768]);
        assert_eq!(client, vec![rustls::NamedGroup::X25519MLKEM768]);
    }

    #[tokio::test]
    async fn a_peer_without_the_hybrid_falls_back_to_x25519() {
        let classical: &[rustls::NamedGroup] = &[rustls::NamedGroup::X25519];
        let (server, client) = handshake(None, Some(classical)).await;
        assert_eq!(server, vec![rustls::NamedGroup::X25519]);
        assert_eq!(client, vec![rustls::NamedGroup::X25519]);
        // And a server without it, against qrpc's client.
        let (server, client) = handshake(Some(classical), None).await;
        assert_eq!(server, vec![rustls::NamedGroup::X25519]);
        assert_eq!(client, vec![rustls::NamedGroup::X25519]);
    }
}
