//! The crypto provider and certificate fingerprints.

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};

use super::error::TlsError;

/// The crypto provider qrpc uses: aws-lc-rs, preferring `X25519MLKEM768`.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The SHA-256 fingerprint of a DER certificate, as a client pins it.
pub fn fingerprint(cert: &CertificateDer<'_>) -> [u8; 32] {
    Sha256::digest(cert.as_ref()).into()
}

/// The SHA-256 of a DER certificate's public key (its `SubjectPublicKeyInfo`): a pin that
/// survives renewing the certificate with the same key. A server pins clients' keys this way
/// ([`ClientAuth::pinned_keys`](super::ClientAuth::pinned_keys)) and a client a server's
/// ([`ClientTls::pinned_key`](super::ClientTls::pinned_key)).
pub fn key_fingerprint(cert: &CertificateDer<'_>) -> Result<[u8; 32], TlsError> {
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|_| TlsError::BadCertificate)?;
    Ok(Sha256::digest(parsed.subject_public_key_info().as_ref()).into())
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
