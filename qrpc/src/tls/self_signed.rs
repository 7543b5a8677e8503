//! Self-signed certificates for development and zero-configuration servers (feature
//! `self-signed`).

use std::fmt;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use zeroize::Zeroizing;

use super::error::TlsError;
use super::keys::{fingerprint, format_fingerprint};
use super::server::ServerTls;

/// A freshly generated self-signed certificate, for development and zero-config servers.
pub struct SelfSigned {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    cert_pem: String,
    key_pem: Zeroizing<String>,
}

impl SelfSigned {
    /// Generates a certificate valid for `names` (DNS names or IP addresses).
    pub fn generate(names: &[&str]) -> Result<Self, TlsError> {
        let ck = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok(Self {
            cert: ck.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()),
            cert_pem: ck.cert.pem(),
            key_pem: Zeroizing::new(ck.signing_key.serialize_pem()),
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
        self.cert_pem.clone()
    }

    /// The private key in PEM form, wiped from memory on drop. Write it to a file only the
    /// server can read.
    pub fn key_pem(&self) -> Zeroizing<String> {
        self.key_pem.clone()
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
