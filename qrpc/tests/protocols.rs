//! Several application protocols on one endpoint: services reachable per ALPN, and a protocol
//! whose connections must present a pinned client certificate.
#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{Msg, cert, run};
use qrpc::tls::{ClientAuth, ClientTls, SelfSigned, key_fingerprint};
use qrpc::{CallKind, Client, Handler, MethodInfo, Methods, Server, ServiceDescriptor, Status};

const PEER_ALPN: &[u8] = b"peer/1";

const WHO: MethodInfo = MethodInfo {
    id: 100,
    service: "test.Peer",
    name: "Who",
    kind: CallKind::Unary,
    idempotent: true,
};

static PEER_DESCRIPTOR: ServiceDescriptor = ServiceDescriptor {
    name: "test.Peer",
    methods: &[WHO],
};

/// Answers with the SHA-256 of the caller's certificate key, and counts its calls.
fn peer_service(calls: Arc<AtomicUsize>) -> Methods {
    Methods::new(&PEER_DESCRIPTOR).route(
        WHO,
        Handler::unary(move |ctx, _m: Msg| {
            let calls = Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let certs = ctx.peer().peer_certificates().unwrap_or_default();
                let key = certs
                    .first()
                    .map(|c| key_fingerprint(c).unwrap().to_vec())
                    .unwrap_or_default();
                let alpn = ctx.peer().alpn().unwrap_or_default().to_vec();
                Ok::<_, Status>(Msg {
                    data: key,
                    text: String::from_utf8(alpn).unwrap(),
                    ..Msg::default()
                })
            }
        }),
    )
}

struct Fixture {
    running: common::Running,
    server_cert: SelfSigned,
    trusted: SelfSigned,
    calls: Arc<AtomicUsize>,
}

fn fixture() -> Fixture {
    let server_cert = cert();
    let trusted = cert();
    let calls = Arc::new(AtomicUsize::new(0));
    let tls = server_cert
        .server_tls()
        .with_client_auth(ClientAuth::pinned_keys([
            key_fingerprint(trusted.cert()).unwrap()
        ]));
    let server = Server::builder()
        .tls(tls)
        .configure(|c| {
            c.require_client_certificate(PEER_ALPN);
        })
        .add_service(common::TestService::default().into_methods())
        .add_service_on(PEER_ALPN, peer_service(Arc::clone(&calls)))
        .bind("127.0.0.1:0".parse().unwrap())
        .unwrap();
    let running = run(server, server_cert.fingerprint());
    Fixture {
        running,
        server_cert,
        trusted,
        calls,
    }
}

async fn peer_client(f: &Fixture, tls: ClientTls) -> Result<Client, qrpc::ClientError> {
    Client::builder(f.running.addr, tls)
        .configure(|c| {
            c.alpn(vec![PEER_ALPN.to_vec()]);
        })
        .connect()
        .await
}

/// Trusts the fixture's server by its certificate and presents `presented`'s certificate.
fn presenting(f: &Fixture, presented: &SelfSigned) -> ClientTls {
    let key =
        rustls::pki_types::pem::PemObject::from_pem_slice(presented.key_pem().as_bytes()).unwrap();
    ClientTls::pinned(f.server_cert.fingerprint()).with_client_certificate(
        vec![presented.cert().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key),
    )
}

#[tokio::test]
async fn a_pinned_peer_reaches_its_protocol_and_only_it() {
    let f = fixture();
    let client = peer_client(&f, presenting(&f, &f.trusted)).await.unwrap();
    let who: Msg = client
        .unary(&WHO, &Msg::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.data, key_fingerprint(f.trusted.cert()).unwrap());
    assert_eq!(who.text.as_bytes(), PEER_ALPN);
    // The default protocol's services are not reachable from the peer protocol.
    let err = client
        .unary::<_, Msg>(&common::ECHO, &Msg::n(1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), qrpc::Code::Unimplemented);
}

#[tokio::test]
async fn the_default_protocol_needs_no_certificate_and_cannot_reach_the_peer_protocol() {
    let f = fixture();
    let client = f.running.client().await;
    let echo: Msg = client
        .unary(&common::ECHO, &Msg::n(7))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echo.n, 7);
    let err = client
        .unary::<_, Msg>(&WHO, &Msg::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), qrpc::Code::Unimplemented);
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_peer_protocol_without_a_certificate_is_closed_before_any_call() {
    let f = fixture();
    let outcome = match peer_client(&f, f.running.tls()).await {
        Err(err) => Err(err.to_string()),
        Ok(client) => client
            .unary::<_, Msg>(&WHO, &Msg::default())
            .await
            .map_err(|e| e.to_string()),
    };
    assert!(outcome.is_err(), "a certificate-less peer was served");
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_certificate_whose_key_is_not_pinned_fails_the_handshake() {
    let f = fixture();
    let stranger = cert();
    let outcome = match peer_client(&f, presenting(&f, &stranger)).await {
        Err(err) => Err(err.to_string()),
        Ok(client) => client
            .unary::<_, Msg>(&WHO, &Msg::default())
            .await
            .map_err(|e| e.to_string()),
    };
    assert!(outcome.is_err(), "an unpinned certificate was served");
    assert_eq!(f.calls.load(Ordering::SeqCst), 0);
    // A default-protocol client that presents the same stranger's certificate is refused
    // too: a presented certificate must be pinned, whatever the protocol.
    let default = Client::connect(f.running.addr, presenting(&f, &stranger)).await;
    let refused = match default {
        Err(_) => true,
        Ok(client) => client
            .unary::<_, Msg>(&common::ECHO, &Msg::n(1))
            .await
            .is_err(),
    };
    assert!(refused);
}

#[tokio::test]
async fn a_client_pins_the_server_key() {
    let f = fixture();
    let right = ClientTls::pinned_key(key_fingerprint(f.server_cert.cert()).unwrap());
    let client = Client::connect(f.running.addr, right).await.unwrap();
    let echo: Msg = client
        .unary(&common::ECHO, &Msg::n(3))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(echo.n, 3);
    let wrong = ClientTls::pinned_key(key_fingerprint(f.trusted.cert()).unwrap());
    assert!(Client::connect(f.running.addr, wrong).await.is_err());
}

#[test]
fn a_key_pin_is_the_public_key_hash_not_the_certificate_hash() {
    let c = cert();
    let key = key_fingerprint(c.cert()).unwrap();
    assert_ne!(key, c.fingerprint());
    // Known answer from an independent implementation: OpenSSL extracts the public key and
    // hashes its DER `SubjectPublicKeyInfo`.
    let dir = std::env::temp_dir().join(format!("qrpc-key-pin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let pem = dir.join("cert.pem");
    std::fs::write(&pem, c.cert_pem()).unwrap();
    let pubkey = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in"])
        .arg(&pem)
        .output()
        .unwrap();
    assert!(pubkey.status.success());
    let pub_pem = dir.join("pub.pem");
    std::fs::write(&pub_pem, &pubkey.stdout).unwrap();
    let der = std::process::Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "der", "-in"])
        .arg(&pub_pem)
        .output()
        .unwrap();
    assert!(der.status.success());
    use sha2::Digest;
    let expected: [u8; 32] = sha2::Sha256::digest(&der.stdout).into();
    assert_eq!(key, expected);
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(key_fingerprint(&rustls::pki_types::CertificateDer::from(vec![1, 2, 3])).is_err());
}
