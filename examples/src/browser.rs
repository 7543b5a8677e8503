//! The echo and chat examples in a browser page: one qrpc server serves native clients and,
//! over WebTransport on the same UDP port, pages; a small HTTP server on localhost serves the
//! page, its scripts (the TypeScript client, built in `clients/typescript`) and the
//! certificate hashes the page trusts the server by.
//!
//! Run it with `cargo run -p qrpc-examples --bin browser` after
//! `(cd clients/typescript && npm ci && npm run build)`, and open the address it prints.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Component, Path, PathBuf};

use qrpc::middleware::{Quota, RateLimitLayer};
use qrpc::tls::{BrowserCertificates, SelfSigned};
use qrpc::webtransport::WebTransport;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chat::ChatRoom;
use crate::echo::EchoService;
use crate::proto::chat::v1::room_server::RoomServer;
use crate::proto::echo::v1::echo_server::{self, EchoServer};

/// The path pages open WebTransport sessions at.
pub const PATH: &str = "/qrpc";

/// How many Ping calls a caller may make a minute (the page shows rate limiting with it).
pub const PINGS_PER_MINUTE: u32 = 20;

/// A running example: the qrpc server and the page's HTTP server.
#[derive(Debug)]
pub struct Running {
    /// The qrpc server (UDP): native clients and WebTransport sessions.
    pub quic: SocketAddr,
    /// The page's HTTP server (TCP, loopback).
    pub http: SocketAddr,
    /// The SHA-256 of the certificate native clients pin.
    pub fingerprint: [u8; 32],
    /// The certificates pages trust by hash.
    pub browser: BrowserCertificates,
    /// The servers' tasks.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The address to open in a browser.
    pub fn page_url(&self) -> String {
        format!("http://localhost:{}/", self.http.port())
    }
}

/// Where the page's files are: the TypeScript package, built.
pub fn default_static_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/typescript")
}

/// How to run the example.
#[derive(Debug, Clone)]
pub struct Options {
    /// The qrpc server's address (UDP; port 0 picks one).
    pub quic: SocketAddr,
    /// The page's HTTP server's address (TCP, loopback; port 0 picks one).
    pub http: SocketAddr,
    /// Where the page's files are (the built TypeScript package).
    pub static_dir: PathBuf,
    /// Offer every connection an optional client-certificate request, as a quicproquo
    /// server with federation does (peers present one; pages and other clients need not).
    pub ask_client_certificates: bool,
}

/// Starts the qrpc server and the page's HTTP server.
pub async fn serve(options: Options) -> anyhow::Result<Running> {
    let Options {
        quic,
        http,
        static_dir,
        ask_client_certificates,
    } = options;
    let listener = tokio::net::TcpListener::bind(http).await?;
    let http = listener.local_addr()?;
    let cert = SelfSigned::generate(&["localhost", "127.0.0.1"])?;
    let browser = BrowserCertificates::generate(&["localhost", "127.0.0.1"])?;
    let web = WebTransport::new(PATH)
        .allow_origin(format!("http://localhost:{}", http.port()))
        .allow_origin(format!("http://127.0.0.1:{}", http.port()))
        .browser_certificates(browser.clone());
    let limit = RateLimitLayer::builder()
        .per_method(
            echo_server::PING,
            Quota::per_minute(NonZeroU32::new(PINGS_PER_MINUTE).unwrap_or(NonZeroU32::MIN)),
        )
        .build();
    let tls = if ask_client_certificates {
        // A key nobody holds: the request is offered, and no one can answer it.
        cert.server_tls()
            .with_client_auth(qrpc::tls::ClientAuth::pinned_keys([[0x5a; 32]]))
    } else {
        cert.server_tls()
    };
    let builder = qrpc::Server::builder()
        .tls(tls)
        .webtransport(web)
        .layer(limit);
    let room = ChatRoom::new(builder.push_registry());
    let server = builder
        .add_service(EchoServer::new(EchoService::default()))
        .add_service(RoomServer::new(room))
        .bind(quic)?;
    let quic = server.local_addr()?;
    let page = Page {
        root: static_dir,
        quic,
        browser: browser.clone(),
    };
    let tasks = vec![
        tokio::spawn(server.serve()),
        tokio::spawn(serve_http(listener, page)),
    ];
    Ok(Running {
        quic,
        http,
        fingerprint: cert.fingerprint(),
        browser,
        tasks,
    })
}

/// What the HTTP server serves.
#[derive(Clone)]
struct Page {
    root: PathBuf,
    quic: SocketAddr,
    browser: BrowserCertificates,
}

/// The largest request head read.
const MAX_HEAD: usize = 8 * 1024;

async fn serve_http(listener: tokio::net::TcpListener, page: Page) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let page = page.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), answer(stream, &page))
                .await;
        });
    }
}

/// Answers one request and closes the connection.
async fn answer(mut stream: tokio::net::TcpStream, page: &Page) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split(['?', '#']).next().unwrap_or("");
    let (status, kind, body) = if method != "GET" {
        (405, "text/plain", b"GET only\n".to_vec())
    } else {
        match route(page, path).await {
            Some((kind, body)) => (200, kind, body),
            None => (404, "text/plain", b"not found\n".to_vec()),
        }
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\ncache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(&body).await?;
    stream.shutdown().await
}

/// The file or document at `path`, with its content type.
async fn route(page: &Page, path: &str) -> Option<(&'static str, Vec<u8>)> {
    if path == "/config.json" {
        let hashes: Vec<String> = page
            .browser
            .hashes()
            .iter()
            .map(|h| format!("\"{}\"", hex(h)))
            .collect();
        let body = format!(
            "{{\"url\":\"https://127.0.0.1:{}{PATH}\",\"certificateHashes\":[{}],\"pingsPerMinute\":{PINGS_PER_MINUTE}}}\n",
            page.quic.port(),
            hashes.join(",")
        );
        return Some(("application/json", body.into_bytes()));
    }
    let relative = match path {
        "/" | "/index.html" => "examples/page/index.html",
        other => {
            let rest = other.strip_prefix('/')?;
            // Only the built scripts and the protobuf runtime's browser modules.
            if !(rest.starts_with("dist/")
                || rest.starts_with("node_modules/@bufbuild/protobuf/dist/esm/"))
            {
                return None;
            }
            rest
        }
    };
    let relative = Path::new(relative);
    if !relative
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return None;
    }
    let body = tokio::fs::read(page.root.join(relative)).await.ok()?;
    let kind = match relative.extension().and_then(|e| e.to_str()) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("json" | "map") => "application/json",
        _ => "application/octet-stream",
    };
    Some((kind, body))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn only_the_page_s_files_are_served() {
        let dir = std::env::temp_dir().join(format!("qrpc-page-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("dist/src")).unwrap();
        std::fs::create_dir_all(dir.join("examples/page")).unwrap();
        std::fs::write(dir.join("dist/src/index.js"), "export {};").unwrap();
        std::fs::write(dir.join("examples/page/index.html"), "<html>").unwrap();
        std::fs::write(dir.join("secret.txt"), "no").unwrap();
        let page = Page {
            root: dir.clone(),
            quic: "127.0.0.1:4433".parse().unwrap(),
            browser: BrowserCertificates::generate(&["localhost"]).unwrap(),
        };
        assert_eq!(route(&page, "/").await.unwrap().1, b"<html>");
        let (kind, _) = route(&page, "/dist/src/index.js").await.unwrap();
        assert!(kind.starts_with("text/javascript"));
        for refused in [
            "/secret.txt",
            "/dist/../secret.txt",
            "/dist/src/../../secret.txt",
            "//etc/passwd",
            "/dist//etc/passwd",
            "/node_modules/other/x.js",
        ] {
            assert!(route(&page, refused).await.is_none(), "{refused}");
        }
        let (_, config) = route(&page, "/config.json").await.unwrap();
        let config = String::from_utf8(config).unwrap();
        assert!(config.contains("https://127.0.0.1:4433/qrpc"), "{config}");
        assert!(config.contains(&hex(&page.browser.current_hash())));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
