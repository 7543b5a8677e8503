//! A client's configuration: limits, timeouts, reconnects, and why connecting failed.

use std::net::SocketAddr;
use std::time::Duration;

use crate::frame::DEFAULT_MAX_PAYLOAD;
use crate::protocol::DEFAULT_ALPN;
use crate::tls::TlsError;

/// Why a client could not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TLS configuration was rejected.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The local UDP socket could not be bound.
    #[error("cannot bind a local socket: {0}")]
    Bind(std::io::Error),
    /// The connection attempt could not start (for example an invalid server name).
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake failed (for example the server's certificate is not trusted).
    #[error("connection failed: {0}")]
    Peer(#[from] quinn::ConnectionError),
    /// The handshake did not finish within the connect timeout.
    #[error("connection attempt timed out")]
    Timeout,
}

/// How the client reconnects after losing its connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Whether to reconnect at all (default true).
    pub(crate) enabled: bool,
    /// Delay before the first retry (default 100 ms); doubles after every failure.
    pub(crate) initial_backoff: Duration,
    /// Upper bound of the delay (default 5 s).
    pub(crate) max_backoff: Duration,
    /// Attempts before giving up; `None` retries forever (default `None`).
    pub(crate) max_attempts: Option<u32>,
}

impl ReconnectPolicy {
    /// Whether to reconnect at all (default true).
    pub fn enabled(&mut self, value: bool) -> &mut Self {
        self.enabled = value;
        self
    }

    /// Delay before the first retry (default 100 ms); doubles after every failure.
    pub fn initial_backoff(&mut self, value: Duration) -> &mut Self {
        self.initial_backoff = value;
        self
    }

    /// Upper bound of the delay (default 5 s).
    pub fn max_backoff(&mut self, value: Duration) -> &mut Self {
        self.max_backoff = value;
        self
    }

    /// Attempts before giving up; `None` retries forever (default `None`).
    pub fn max_attempts(&mut self, value: Option<u32>) -> &mut Self {
        self.max_attempts = value;
        self
    }
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

/// Client limits and timeouts.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Largest payload of one response or push frame the client accepts (default 4 MiB).
    pub(crate) max_payload: u32,
    /// Handshake timeout, and how long a call waits for a connection (default 10 s).
    pub(crate) connect_timeout: Duration,
    /// Interval of QUIC keep-alive pings, which also keep the push stream open (default 10 s).
    pub(crate) keep_alive_interval: Option<Duration>,
    /// Idle timeout of the connection (default 30 s).
    pub(crate) idle_timeout: Duration,
    /// Push events buffered before the client stops reading the push stream (default 64).
    pub(crate) push_buffer: usize,
    /// ALPN protocol ids offered (default `qrpc/1`).
    pub(crate) alpn: Vec<Vec<u8>>,
    /// The local address to bind; by default loopback for a loopback server, else unspecified.
    pub(crate) local_addr: Option<SocketAddr>,
    /// Reconnect behaviour.
    pub(crate) reconnect: ReconnectPolicy,
    /// QUIC transport preset (default [`TransportProfile::Rpc`](crate::TransportProfile::Rpc)).
    pub(crate) transport_profile: crate::TransportProfile,
    /// Whether a resumed connection sends idempotent calls as 0-RTT data (default true).
    ///
    /// A client resumes a TLS session when its [`ClientTls`] (or a clone of it) reached the
    /// same server before, in this client or another. Then [`ClientBuilder::connect`] and every
    /// reconnect return without waiting for the handshake: unary and server-streaming calls of
    /// methods marked idempotent go out at once, in the first flight; every other call waits
    /// for the handshake to complete. If the server rejects the 0-RTT data, the idempotent calls
    /// are sent again, once, after the handshake. Because the handshake is not awaited, a
    /// server that vanished since the session was made is not a connect error: if the
    /// handshake fails, the calls waiting on it wait for the next connection, as they do while
    /// the client reconnects, and fail with `Unavailable` after the connect timeout.
    pub(crate) zero_rtt: bool,
    /// Whether the client accepts QUIC datagrams (default true). Servers send the events of
    /// unreliable push channels as datagrams to clients that accept them, and on the push
    /// stream to clients that do not.
    pub(crate) datagrams: bool,
    /// Other addresses of the same service (the other nodes of a cluster), tried in turn
    /// after the builder's address when connecting and reconnecting (default none).
    pub(crate) fallback_addresses: Vec<SocketAddr>,
}

impl ClientConfig {
    /// Largest payload of one response or push frame the client accepts (default 4 MiB).
    pub fn max_payload(&mut self, value: u32) -> &mut Self {
        self.max_payload = value;
        self
    }

    /// Handshake timeout, and how long a call waits for a connection (default 10 s).
    pub fn connect_timeout(&mut self, value: Duration) -> &mut Self {
        self.connect_timeout = value;
        self
    }

    /// Interval of QUIC keep-alive pings, which also keep the push stream open (default 10 s).
    pub fn keep_alive_interval(&mut self, value: Option<Duration>) -> &mut Self {
        self.keep_alive_interval = value;
        self
    }

    /// Idle timeout of the connection (default 30 s).
    pub fn idle_timeout(&mut self, value: Duration) -> &mut Self {
        self.idle_timeout = value;
        self
    }

    /// Other addresses of the same service, such as the other nodes of a cluster behind one
    /// certificate (default none). The first connection tries the builder's address, then
    /// these in order; when a connection is lost, each reconnect attempt goes to the next
    /// address after the one that was lost, round the list, so a client of a node that died
    /// moves to another one on its first attempt.
    pub fn fallback_addresses(&mut self, value: Vec<SocketAddr>) -> &mut Self {
        self.fallback_addresses = value;
        self
    }

    /// Push events buffered before the client stops reading the push stream (default 64).
    pub fn push_buffer(&mut self, value: usize) -> &mut Self {
        self.push_buffer = value;
        self
    }

    /// ALPN protocol ids offered (default `qrpc/1`).
    pub fn alpn(&mut self, value: Vec<Vec<u8>>) -> &mut Self {
        self.alpn = value;
        self
    }

    /// The local address to bind; by default loopback for a loopback server, else unspecified.
    pub fn local_addr(&mut self, value: Option<SocketAddr>) -> &mut Self {
        self.local_addr = value;
        self
    }

    /// QUIC transport preset (default [`TransportProfile::Rpc`](crate::TransportProfile::Rpc)).
    pub fn transport_profile(&mut self, value: crate::TransportProfile) -> &mut Self {
        self.transport_profile = value;
        self
    }

    /// Whether a resumed connection sends idempotent calls as 0-RTT data (default true).
    ///
    /// A client resumes a TLS session when its [`ClientTls`] (or a clone of it) reached the
    /// same server before, in this client or another. Then [`ClientBuilder::connect`] and every
    /// reconnect return without waiting for the handshake: unary and server-streaming calls of
    /// methods marked idempotent go out at once, in the first flight; every other call waits
    /// for the handshake to complete. If the server rejects the 0-RTT data, the idempotent calls
    /// are sent again, once, after the handshake. Because the handshake is not awaited, a
    /// server that vanished since the session was made is not a connect error: if the
    /// handshake fails, the calls waiting on it wait for the next connection, as they do while
    /// the client reconnects, and fail with `Unavailable` after the connect timeout.
    pub fn zero_rtt(&mut self, value: bool) -> &mut Self {
        self.zero_rtt = value;
        self
    }

    /// Whether the client accepts QUIC datagrams (default true). Servers send the events of
    /// unreliable push channels as datagrams to clients that accept them, and on the push
    /// stream to clients that do not.
    pub fn datagrams(&mut self, value: bool) -> &mut Self {
        self.datagrams = value;
        self
    }

    /// The reconnect policy, to change in place.
    pub fn reconnect_mut(&mut self) -> &mut ReconnectPolicy {
        &mut self.reconnect
    }

    pub(crate) fn transport(&self) -> quinn::TransportConfig {
        let mut transport = quinn::TransportConfig::default();
        self.transport_profile.apply(&mut transport);
        transport
            .keep_alive_interval(self.keep_alive_interval)
            .max_idle_timeout(quinn::IdleTimeout::try_from(self.idle_timeout).ok())
            // The server opens exactly one push stream per connection.
            .max_concurrent_uni_streams(1u32.into());
        if !self.datagrams {
            transport.datagram_receive_buffer_size(None);
        }
        transport
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            max_payload: DEFAULT_MAX_PAYLOAD,
            connect_timeout: Duration::from_secs(10),
            keep_alive_interval: Some(Duration::from_secs(10)),
            idle_timeout: Duration::from_secs(30),
            push_buffer: 64,
            alpn: vec![DEFAULT_ALPN.to_vec()],
            local_addr: None,
            reconnect: ReconnectPolicy::default(),
            transport_profile: crate::TransportProfile::default(),
            zero_rtt: true,
            datagrams: true,
            fallback_addresses: Vec::new(),
        }
    }
}
