//! The server's TLS identity: operator-supplied PEM files, or a self-signed certificate
//! generated on first start and kept in the data directory.

use std::path::Path;

use qrpc::tls::{SelfSigned, ServerTls};

use crate::config::Config;
use crate::error::ServerError;

/// Loads or creates the server's certificate; returns it with the leaf's SHA-256.
pub fn load_or_create(config: &Config) -> Result<(ServerTls, [u8; 32]), ServerError> {
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let tls = ServerTls::from_pem_files(cert, key)?;
        let fp = tls
            .leaf()
            .map(qrpc::tls::fingerprint)
            .ok_or_else(|| ServerError::NoCertificate(cert.clone()))?;
        return Ok((tls, fp));
    }
    let dir = config.data_dir.join("tls");
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    if !cert_path.exists() || !key_path.exists() {
        qpq_core::files::private_dir(&dir).map_err(ServerError::io("creating", &dir))?;
        let names: Vec<&str> = config.tls_names.iter().map(String::as_str).collect();
        let generated = SelfSigned::generate(&names)?;
        write_private(&key_path, generated.key_pem().as_bytes())?;
        std::fs::write(&cert_path, generated.cert_pem())
            .map_err(ServerError::io("writing", &cert_path))?;
        tracing::info!(path = %cert_path.display(), "generated a self-signed certificate");
    }
    let tls = ServerTls::from_pem_files(&cert_path, &key_path)?;
    let fp = tls
        .leaf()
        .map(qrpc::tls::fingerprint)
        .ok_or_else(|| ServerError::NoCertificate(cert_path.clone()))?;
    Ok((tls, fp))
}

/// Writes a file only its owner can read.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    qpq_core::files::write_private(path, bytes).map_err(ServerError::io("writing", path))
}
