//! Client certificates: which ones a server accepts ([`ClientAuth`]) and the one a client
//! presents ([`ClientTls::with_client_certificate`](super::ClientTls::with_client_certificate)).

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use rustls::DistinguishedName;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::keys::{format_fingerprint, key_fingerprint};

/// Which client certificates a server accepts.
///
/// Every connection is offered a certificate request, and a client may ignore it: a
/// connection without a certificate is accepted as before (applications that need one for a
/// protocol say so with [`ServerConfig::require_client_certificate`](crate::ServerConfig::require_client_certificate)).
/// A client that does present one must hold the private key of a pinned public key, or the
/// handshake fails.
#[derive(Clone)]
pub struct ClientAuth {
    pins: Arc<HashSet<[u8; 32]>>,
}

impl ClientAuth {
    /// Accepts client certificates whose public key has one of these SHA-256 fingerprints
    /// ([`key_fingerprint`](super::key_fingerprint)). Names, issuers and validity dates are not
    /// checked: the pin is the trust, and the handshake signature proves the key.
    pub fn pinned_keys(pins: impl IntoIterator<Item = [u8; 32]>) -> Self {
        Self {
            pins: Arc::new(pins.into_iter().collect()),
        }
    }

    pub(super) fn verifier(&self, provider: Arc<CryptoProvider>) -> Arc<dyn ClientCertVerifier> {
        Arc::new(PinnedClientKeys {
            pins: Arc::clone(&self.pins),
            provider,
        })
    }
}

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut pins: Vec<String> = self.pins.iter().map(format_fingerprint).collect();
        pins.sort();
        f.debug_struct("ClientAuth")
            .field("pinned_keys", &pins)
            .finish()
    }
}

/// Accepts an optional client certificate whose key is pinned.
#[derive(Debug)]
struct PinnedClientKeys {
    pins: Arc<HashSet<[u8; 32]>>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for PinnedClientKeys {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let key = key_fingerprint(end_entity).map_err(|_| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if self.pins.contains(&key) {
            Ok(ClientCertVerified::assertion())
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
