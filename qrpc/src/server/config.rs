//! Server limits and timeouts, with the defaults documented in `docs/wire-protocol.md`.

use std::sync::Arc;
use std::time::Duration;

use crate::frame::DEFAULT_MAX_PAYLOAD;
use crate::protocol::DEFAULT_ALPN;

/// Limits and timeouts of a server: every setting has a sensible default and a setter of its
/// name (`config.max_payload(1 << 20).idle_timeout(..)`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Largest payload of one request frame (default 4 MiB). A larger frame ends its call with
    /// `ResourceExhausted`.
    pub(crate) max_payload: u32,
    /// Calls (bidirectional streams) one connection may have open at once (default 100).
    /// QUIC flow control makes further calls wait on the client, not fail.
    pub(crate) max_concurrent_streams: u32,
    /// A connection with no traffic for this long is closed (default 30 s).
    pub(crate) idle_timeout: Duration,
    /// A QUIC+TLS handshake that takes longer is abandoned (default 10 s).
    pub(crate) handshake_timeout: Duration,
    /// A stream that does not deliver its first complete request frame in this time is reset
    /// with `HEADER_TIMEOUT` (default 10 s).
    pub(crate) header_timeout: Duration,
    /// On graceful shutdown, how long in-flight calls may take to finish (default 30 s).
    pub(crate) shutdown_grace: Duration,
    /// Push events queued per connection before `try_send` reports `Full` (default 256).
    pub(crate) push_queue_capacity: usize,
    /// ALPN protocol ids offered, most preferred first (default `qrpc/1`).
    pub(crate) alpn: Vec<Vec<u8>>,
    /// Whether quinn batches several datagrams into one send (UDP generic segmentation offload,
    /// where the socket supports it; default true). quinn keeps each connection's transmit
    /// buffer at the largest batch it sent (about 13 KB at ten segments), so a server holding
    /// many idle connections can turn this off to save that memory, at the cost of more system
    /// calls for bulk sends.
    pub(crate) segmentation_offload: bool,
    /// QUIC transport preset (default [`TransportProfile::Rpc`](crate::TransportProfile::Rpc)).
    pub(crate) transport_profile: crate::TransportProfile,
    /// Whether resumed clients may send calls in 0-RTT data (default true). Only calls of
    /// methods marked idempotent are executed from 0-RTT data; any other call that arrives
    /// that way is reset with `TOO_EARLY` without running (0-RTT data can be replayed by an
    /// attacker; session tickets are single-use, which stops replays on other connections).
    pub(crate) zero_rtt: bool,
    /// Largest event, encoded, that an unreliable push channel sends as one QUIC datagram
    /// (default 1,200 bytes); larger events, and events for clients that do not accept
    /// datagrams, go on the push stream. The connection's path MTU bounds it further.
    pub(crate) max_datagram_event: usize,
    /// The secret the endpoint's stateless-reset key derives from (default: a random one per
    /// endpoint).
    pub(crate) stateless_reset: Option<ResetSecret>,
    /// Protocols (ALPN ids) whose connections must present a verified client certificate.
    pub(crate) client_certificate_required: Vec<Vec<u8>>,
    /// Browsers' sessions, when served (`Server::webtransport`).
    #[cfg(feature = "webtransport")]
    pub(crate) webtransport: Option<crate::webtransport::WebTransport>,
}

/// A stateless-reset secret; never printed.
#[derive(Clone)]
pub(crate) struct ResetSecret(pub(crate) zeroize::Zeroizing<[u8; 32]>);

impl std::fmt::Debug for ResetSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResetSecret(..)")
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_concurrent_streams: 100,
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
            push_queue_capacity: 256,
            alpn: vec![DEFAULT_ALPN.to_vec()],
            segmentation_offload: true,
            transport_profile: crate::TransportProfile::default(),
            zero_rtt: true,
            max_datagram_event: 1200,
            stateless_reset: None,
            client_certificate_required: Vec::new(),
            #[cfg(feature = "webtransport")]
            webtransport: None,
        }
    }
}

impl ServerConfig {
    /// Largest payload of one request frame (default 4 MiB). A larger frame ends its call with
    /// `ResourceExhausted`.
    pub fn max_payload(&mut self, value: u32) -> &mut Self {
        self.max_payload = value;
        self
    }

    /// Calls (bidirectional streams) one connection may have open at once (default 100).
    /// QUIC flow control makes further calls wait on the client, not fail.
    pub fn max_concurrent_streams(&mut self, value: u32) -> &mut Self {
        self.max_concurrent_streams = value;
        self
    }

    /// The secret the endpoint's stateless-reset key is derived from (default: random, new
    /// for every endpoint). Give every start of a server, and every server behind one
    /// address, the same secret: then a server restarted after a crash, or another node that
    /// receives a dead connection's packets, answers them with a stateless reset (RFC 9000
    /// section 10.3), and the client learns at once that its connection is gone instead of
    /// waiting for its idle timeout. Keep it as secret as a TLS key: whoever knows it can
    /// reset this server's connections.
    pub fn stateless_reset_key(&mut self, secret: [u8; 32]) -> &mut Self {
        self.stateless_reset = Some(ResetSecret(zeroize::Zeroizing::new(secret)));
        self
    }

    /// Connections that negotiate `alpn` must present a client certificate the server's
    /// [`ClientAuth`](crate::tls::ClientAuth) accepts: such a connection skips 0-RTT, and one
    /// that completes its handshake without a certificate is closed with
    /// [`close::CLIENT_CERTIFICATE_REQUIRED`](crate::protocol::close::CLIENT_CERTIFICATE_REQUIRED)
    /// before any call runs. Connections of other protocols are unaffected (they may ignore
    /// the certificate request every connection is offered).
    pub fn require_client_certificate(&mut self, alpn: impl Into<Vec<u8>>) -> &mut Self {
        let alpn = alpn.into();
        if !self.client_certificate_required.contains(&alpn) {
            self.client_certificate_required.push(alpn);
        }
        self
    }

    /// A connection with no traffic for this long is closed (default 30 s).
    pub fn idle_timeout(&mut self, value: Duration) -> &mut Self {
        self.idle_timeout = value;
        self
    }

    /// A QUIC+TLS handshake that takes longer is abandoned (default 10 s).
    pub fn handshake_timeout(&mut self, value: Duration) -> &mut Self {
        self.handshake_timeout = value;
        self
    }

    /// A stream that does not deliver its first complete request frame in this time is reset
    /// with `HEADER_TIMEOUT` (default 10 s).
    pub fn header_timeout(&mut self, value: Duration) -> &mut Self {
        self.header_timeout = value;
        self
    }

    /// On graceful shutdown, how long in-flight calls may take to finish (default 30 s).
    pub fn shutdown_grace(&mut self, value: Duration) -> &mut Self {
        self.shutdown_grace = value;
        self
    }

    /// Push events queued per connection before `try_send` reports `Full` (default 256).
    pub fn push_queue_capacity(&mut self, value: usize) -> &mut Self {
        self.push_queue_capacity = value;
        self
    }

    /// ALPN protocol ids offered, most preferred first (default `qrpc/1`).
    pub fn alpn(&mut self, value: Vec<Vec<u8>>) -> &mut Self {
        self.alpn = value;
        self
    }

    /// Whether quinn batches several datagrams into one send (UDP generic segmentation offload,
    /// where the socket supports it; default true). quinn keeps each connection's transmit
    /// buffer at the largest batch it sent (about 13 KB at ten segments), so a server holding
    /// many idle connections can turn this off to save that memory, at the cost of more system
    /// calls for bulk sends.
    pub fn segmentation_offload(&mut self, value: bool) -> &mut Self {
        self.segmentation_offload = value;
        self
    }

    /// QUIC transport preset (default [`TransportProfile::Rpc`](crate::TransportProfile::Rpc)).
    pub fn transport_profile(&mut self, value: crate::TransportProfile) -> &mut Self {
        self.transport_profile = value;
        self
    }

    /// Whether resumed clients may send calls in 0-RTT data (default true). Only calls of
    /// methods marked idempotent are executed from 0-RTT data; any other call that arrives
    /// that way is reset with `TOO_EARLY` without running (0-RTT data can be replayed by an
    /// attacker; session tickets are single-use, which stops replays on other connections).
    pub fn zero_rtt(&mut self, value: bool) -> &mut Self {
        self.zero_rtt = value;
        self
    }

    /// Largest event, encoded, that an unreliable push channel sends as one QUIC datagram
    /// (default 1,200 bytes); larger events, and events for clients that do not accept
    /// datagrams, go on the push stream. The connection's path MTU bounds it further.
    pub fn max_datagram_event(&mut self, value: usize) -> &mut Self {
        self.max_datagram_event = value;
        self
    }

    /// The endpoint configuration: quinn's default, with the stateless-reset key and the
    /// connection-id key derived from the configured secret when there is one.
    pub(crate) fn endpoint(&self) -> quinn::EndpointConfig {
        match &self.stateless_reset {
            None => quinn::EndpointConfig::default(),
            Some(secret) => {
                // HMAC-SHA-256 keyed by a derivation of the secret, as quinn's default key is.
                use sha2::Digest;
                let derived: zeroize::Zeroizing<[u8; 32]> = zeroize::Zeroizing::new(
                    sha2::Sha256::new()
                        .chain_update(b"qrpc stateless reset key v1")
                        .chain_update(secret.0.as_slice())
                        .finalize()
                        .into(),
                );
                let mut config = quinn::EndpointConfig::new(Arc::new(aws_lc_rs::hmac::Key::new(
                    aws_lc_rs::hmac::HMAC_SHA256,
                    derived.as_slice(),
                )));
                // Connection ids are signed with a key of the endpoint, and packets whose id
                // does not check out are dropped unanswered: the id key derives from the same
                // secret, so a restarted endpoint recognises its predecessor's ids and resets
                // them.
                let cid_key = u64::from_le_bytes(
                    sha2::Sha256::new()
                        .chain_update(b"qrpc connection id key v1")
                        .chain_update(secret.0.as_slice())
                        .finalize()[..8]
                        .try_into()
                        .unwrap_or_default(),
                );
                config.cid_generator(move || {
                    Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
                });
                config
            }
        }
    }

    /// Whether connections must finish their handshake before they are served (no 0-RTT):
    /// a protocol that needs a client certificate, or a WebTransport session, is told apart
    /// by its ALPN first.
    pub(crate) fn checks_alpn_first(&self) -> bool {
        #[cfg(feature = "webtransport")]
        if self.webtransport.is_some() {
            return true;
        }
        !self.client_certificate_required.is_empty()
    }

    /// The WebTransport configuration, if browsers are served.
    #[cfg(feature = "webtransport")]
    pub(crate) fn webtransport(&self) -> Option<&crate::webtransport::WebTransport> {
        self.webtransport.as_ref()
    }

    /// The datagram receive buffer: none for native clients (they send no datagrams); a
    /// small one when browsers are served, as their sessions must advertise datagrams.
    fn datagram_receive_buffer(&self) -> usize {
        #[cfg(feature = "webtransport")]
        if self.webtransport.is_some() {
            return crate::webtransport::DATAGRAM_RECEIVE_BUFFER;
        }
        0
    }

    /// Unidirectional streams a client may open before its protocol is known.
    fn client_uni_streams(&self) -> u32 {
        #[cfg(feature = "webtransport")]
        if self.webtransport.is_some() {
            return crate::webtransport::H3_UNI_STREAMS;
        }
        0
    }

    pub(crate) fn transport(&self) -> Arc<quinn::TransportConfig> {
        let mut transport = quinn::TransportConfig::default();
        self.transport_profile.apply(&mut transport);
        transport
            .max_concurrent_bidi_streams(self.max_concurrent_streams.into())
            // Native clients never open unidirectional streams (the server opens the push
            // stream); a browser's HTTP/3 layer needs three from the start (Chromium refuses
            // a server that grants fewer, even later), so an endpoint serving browsers grants
            // them to every connection and takes the credit back from native ones once their
            // ALPN is known.
            .max_concurrent_uni_streams(self.client_uni_streams().into())
            .max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok())
            .enable_segmentation_offload(self.segmentation_offload)
            // Clients send no datagrams. A zero-byte receive buffer advertises a maximum
            // DATAGRAM frame size of 0 ("not supported", RFC 9221 section 3), so a client cannot
            // park quinn's default 1.25 MB of unread datagrams per connection, while quinn still
            // lets the server send them (it refuses to send when receiving is off entirely).
            // Serving browsers, the endpoint advertises a small buffer to every connection
            // (the setting is endpoint-wide): HTTP/3 datagrams require support.
            .datagram_receive_buffer_size(Some(self.datagram_receive_buffer()));
        Arc::new(transport)
    }
}
