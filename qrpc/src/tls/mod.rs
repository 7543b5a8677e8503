//! TLS for qrpc: server certificates ([`ServerTls`]), client trust in root certificates or a
//! pinned certificate ([`ClientTls`]), self-signed certificates for development
//! ([`SelfSigned`], feature `self-signed`), and the crypto provider.
//!
//! qrpc uses rustls with the aws-lc-rs provider, so every QUIC handshake offers the
//! post-quantum hybrid key exchange `X25519MLKEM768` first (falling back to X25519 for peers
//! without it). TLS 1.3 only, as QUIC requires. There is no verifier that accepts any
//! certificate: a client trusts root certificates or pins the server's certificate by SHA-256.

#[cfg(feature = "webtransport")]
mod browser;
mod client;
mod client_auth;
mod error;
mod keys;
mod pinned;
#[cfg(feature = "self-signed")]
mod self_signed;
mod server;

#[cfg(feature = "webtransport")]
pub(crate) use browser::AlpnCertResolver;
#[cfg(feature = "webtransport")]
pub use browser::{BrowserCertificates, MAX_BROWSER_VALIDITY};
pub use client::ClientTls;
pub use client_auth::ClientAuth;
pub use error::{PemError, TlsError};
pub use keys::{
    crypto_provider, fingerprint, format_fingerprint, key_fingerprint, parse_fingerprint,
};
#[cfg(feature = "self-signed")]
pub use self_signed::SelfSigned;
pub use server::ServerTls;

#[cfg(all(test, feature = "self-signed"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;

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
