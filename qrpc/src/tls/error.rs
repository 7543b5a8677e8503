//! Why a TLS configuration could not be built or loaded.

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
    /// Certificate generation failed (the text says why).
    #[error("cannot generate a self-signed certificate: {0}")]
    Generate(String),
    /// rustls rejected the configuration.
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The rustls configuration cannot drive QUIC.
    #[error("TLS configuration unusable for QUIC")]
    Quic(#[from] quinn::crypto::rustls::NoInitialCipherSuite),
    /// A fingerprint string was not 64 hex digits.
    #[error("a SHA-256 fingerprint is 64 hex digits (colons allowed)")]
    BadFingerprint,
    /// A certificate could not be parsed as X.509.
    #[error("not a valid X.509 certificate")]
    BadCertificate,
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
