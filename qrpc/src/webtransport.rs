//! Browsers over WebTransport (feature `webtransport`): the same services, on the same UDP
//! port, to pages.
//!
//! A server given a [`WebTransport`] configuration ([`Server::webtransport`](crate::Server::webtransport))
//! offers the ALPN `h3` beside `qrpc/1`. An `h3` connection completes the HTTP/3 and
//! WebTransport handshake (web-transport-quinn does it), its CONNECT request is checked
//! against the configured path and page origins, and the session is then served like a native
//! connection: each call is one bidirectional stream with the framing of
//! `docs/wire-protocol.md` unchanged (the call extension included), push events go on one
//! unidirectional stream, unreliable events as datagrams. Layers, limits, metrics, identity
//! binding and shutdown are those of native connections ([`Peer::alpn`](crate::Peer::alpn) is
//! `h3` for a session).
//!
//! Browsers accept a certificate no authority signed only by hash, and only a short-lived
//! ECDSA one: [`BrowserCertificates`](crate::tls::BrowserCertificates) serves such a
//! certificate to `h3` connections while native clients keep the server's own. With a
//! certificate an authority signed, no browser certificates are needed.

use std::time::Duration;

use crate::stream::Conn;

/// Which page origins may open a session.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origins {
    /// Only these (normalised: lowercase, no trailing slash).
    Listed(Vec<String>),
    /// Any page.
    Any,
}

/// Where browsers reach a server's services: the WebTransport path, the page origins allowed,
/// and the certificate served to them.
///
/// A browser always sends its page's origin; a request whose origin is not allowed is refused
/// with `403`, one for another path with `404`. A request without an origin comes from a
/// program, not a page (a page cannot omit it), and is served.
#[derive(Debug, Clone)]
pub struct WebTransport {
    path: String,
    origins: Origins,
    certificates: Option<crate::tls::BrowserCertificates>,
}

/// A session's CONNECT request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Another path (404).
    NotFound,
    /// A page origin not allowed (403).
    Forbidden,
}

impl WebTransport {
    /// Sessions at `path` (such as `/qrpc`; a leading `/` is added if missing), from no page
    /// origin until some are allowed.
    pub fn new(path: impl Into<String>) -> Self {
        let mut path = path.into();
        if !path.starts_with('/') {
            path.insert(0, '/');
        }
        Self {
            path,
            origins: Origins::Listed(Vec::new()),
            certificates: None,
        }
    }

    /// Lets pages of `origin` (`scheme://host[:port]`, as `location.origin` shows it) open
    /// sessions.
    pub fn allow_origin(mut self, origin: impl AsRef<str>) -> Self {
        let origin = normalise_origin(origin.as_ref());
        if let Origins::Listed(list) = &mut self.origins
            && !list.contains(&origin)
        {
            list.push(origin);
        }
        self
    }

    /// Lets any page open sessions: for services that authenticate every caller themselves
    /// and hold nothing a page could reach through its visitor's network position.
    pub fn allow_any_origin(mut self) -> Self {
        self.origins = Origins::Any;
        self
    }

    /// Serves `certificates` to browsers (connections offering `h3`) instead of the server's
    /// own certificate; publish their [`hashes`](crate::tls::BrowserCertificates::hashes)
    /// where pages fetch them.
    pub fn browser_certificates(mut self, certificates: crate::tls::BrowserCertificates) -> Self {
        self.certificates = Some(certificates);
        self
    }

    /// The path sessions are opened at.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The browser certificates, if configured.
    pub(crate) fn certificates(&self) -> Option<&crate::tls::BrowserCertificates> {
        self.certificates.as_ref()
    }

    /// Whether a CONNECT request for `path` from `origin` may open a session.
    pub(crate) fn check(&self, path: &str, origin: Option<&str>) -> Result<(), Refusal> {
        if path != self.path {
            return Err(Refusal::NotFound);
        }
        let Some(origin) = origin else {
            return Ok(());
        };
        match &self.origins {
            Origins::Any => Ok(()),
            Origins::Listed(list) if list.contains(&normalise_origin(origin)) => Ok(()),
            Origins::Listed(_) => Err(Refusal::Forbidden),
        }
    }
}

fn normalise_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The receive buffer for datagrams on an endpoint that serves browsers: a session must
/// advertise datagram support (HTTP/3 datagrams require it), but qrpc reads none from clients,
/// so little is kept (quinn drops the oldest beyond it).
pub(crate) const DATAGRAM_RECEIVE_BUFFER: usize = 2048;

/// Unidirectional streams a browser's HTTP/3 layer opens: its control stream and the two
/// QPACK streams. The server reads no other stream a client opens.
pub(crate) const H3_UNI_STREAMS: u32 = 3;

/// Completes the HTTP/3 and WebTransport handshakes of an `h3` connection and checks its
/// request, all within `timeout` (a client that stalls any step, its answer included, is
/// closed); the session to serve, or `None` when refused or failed.
pub(crate) async fn accept(
    conn: quinn::Connection,
    config: &WebTransport,
    timeout: Duration,
) -> Option<Conn> {
    let remote = conn.remote_address();
    match tokio::time::timeout(timeout, open(conn.clone(), config)).await {
        Ok(Ok(session)) => Some(Conn::Web(Box::new(session))),
        Ok(Err(why)) => {
            tracing::debug!(%remote, why, "WebTransport session not opened");
            conn.close(crate::protocol::close::NO_ERROR, why.as_bytes());
            None
        }
        Err(_) => {
            tracing::debug!(%remote, "WebTransport handshake timed out");
            conn.close(
                crate::protocol::close::NO_ERROR,
                b"WebTransport handshake timed out",
            );
            None
        }
    }
}

/// The session on `conn`, or why there is none.
async fn open(
    conn: quinn::Connection,
    config: &WebTransport,
) -> Result<web_transport_quinn::Session, &'static str> {
    let remote = conn.remote_address();
    let request = web_transport_quinn::Request::accept(conn.clone())
        .await
        .map_err(|err| {
            tracing::debug!(%remote, %err, "WebTransport handshake failed");
            "WebTransport handshake failed"
        })?;
    // A header a page's browser wrote is visible ASCII; anything else is refused as a
    // foreign origin, never taken for a missing one.
    let origin = request
        .headers
        .get(web_transport_quinn::http::header::ORIGIN)
        .map(|v| v.to_str().unwrap_or("(unreadable)"));
    let path = request.url.path();
    if let Err(refusal) = config.check(path, origin) {
        let status = match refusal {
            Refusal::NotFound => web_transport_quinn::http::StatusCode::NOT_FOUND,
            Refusal::Forbidden => web_transport_quinn::http::StatusCode::FORBIDDEN,
        };
        tracing::info!(
            %remote,
            path = %truncated(path),
            origin = %truncated(origin.unwrap_or("")),
            %status,
            "WebTransport session refused",
        );
        if request.reject(status).await.is_ok() {
            // The client closes once it read the answer (or the deadline closes it).
            conn.closed().await;
        }
        return Err("WebTransport session refused");
    }
    request.ok().await.map_err(|err| {
        tracing::debug!(%remote, %err, "WebTransport session not established");
        "WebTransport session not established"
    })
}

/// At most 128 characters of a peer's text, for the logs.
fn truncated(text: &str) -> &str {
    match text.char_indices().nth(128) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_and_origin_policy() {
        let config = WebTransport::new("qrpc").allow_origin("http://LOCALHOST:8080/");
        assert_eq!(config.path(), "/qrpc");
        assert_eq!(config.check("/qrpc", Some("http://localhost:8080")), Ok(()));
        assert_eq!(
            config.check("/qrpc", Some("http://localhost:8081")),
            Err(Refusal::Forbidden)
        );
        assert_eq!(
            config.check("/other", Some("http://localhost:8080")),
            Err(Refusal::NotFound)
        );
        // A program sends no origin; a page always does.
        assert_eq!(config.check("/qrpc", None), Ok(()));
        // By default no page may connect.
        assert_eq!(
            WebTransport::new("/qrpc").check("/qrpc", Some("http://localhost:8080")),
            Err(Refusal::Forbidden)
        );
        let any = WebTransport::new("/qrpc").allow_any_origin();
        assert_eq!(any.check("/qrpc", Some("https://example.org")), Ok(()));
        assert_eq!(any.check("/qrpc/", None), Err(Refusal::NotFound));
    }

    #[test]
    fn peer_text_in_logs_is_bounded() {
        let long = "é".repeat(1000);
        assert_eq!(truncated(&long).chars().count(), 128);
        assert_eq!(truncated("short"), "short");
    }
}
