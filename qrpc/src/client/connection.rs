//! The client's connection: dialing, the reconnect supervisor, and the push reader.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{ClientConfig, ClientError};
use crate::frame::PushFrame;
use crate::io::{FrameReader, ReadFrameError};
use crate::protocol::close;
use crate::status::Status;

/// The state of a client's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected; `generation` counts connections made, starting at 1.
    Connected {
        /// 1 for the first connection, incremented by every reconnect.
        generation: u64,
    },
    /// The connection was lost; the client is trying again.
    Reconnecting {
        /// Attempts made so far.
        attempt: u32,
    },
    /// The client gave up or was closed; calls fail with `Unavailable`.
    Closed {
        /// Why.
        reason: String,
    },
}

/// How the client's last connection ended, as the peer or the transport reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Disconnect {
    /// The application close code when the server closed the connection with one (for
    /// example a messenger's "session revoked"); `None` for transport-level ends (idle
    /// timeout, reset, local close).
    pub application_code: Option<u64>,
    /// The close reason the peer sent, or a description of the transport error.
    pub reason: String,
}

impl Disconnect {
    fn from_error(err: &quinn::ConnectionError) -> Self {
        match err {
            quinn::ConnectionError::ApplicationClosed(close) => Self {
                application_code: Some(close.error_code.into_inner()),
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            },
            other => Self {
                application_code: None,
                reason: other.to_string(),
            },
        }
    }
}

/// The stream of push events a client receives. See [`Client::push_events`](super::Client::push_events).
#[derive(Debug)]
pub struct PushEvents {
    rx: mpsc::Receiver<PushFrame>,
}

impl PushEvents {
    /// The next event; `None` once the client is closed for good.
    pub async fn recv(&mut self) -> Option<PushFrame> {
        self.rx.recv().await
    }
}

impl Stream for PushEvents {
    type Item = PushFrame;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PushFrame>> {
        self.rx.poll_recv(cx)
    }
}

/// The connection every clone of a client shares.
pub(super) struct Link {
    pub(super) endpoint: quinn::Endpoint,
    pub(super) config: ClientConfig,
    conn: watch::Receiver<Option<quinn::Connection>>,
    state: watch::Receiver<ConnectionState>,
    disconnect: watch::Receiver<Option<Disconnect>>,
    closed: CancellationToken,
}

impl Link {
    pub(super) async fn connect(
        addr: SocketAddr,
        tls: &crate::tls::ClientTls,
        config: ClientConfig,
    ) -> Result<(Arc<Self>, PushEvents), ClientError> {
        let mut quic = quinn::ClientConfig::new(Arc::new(tls.quic_config(&config.alpn)?));
        let mut transport = quinn::TransportConfig::default();
        config.transport_profile.apply(&mut transport);
        transport
            .keep_alive_interval(config.keep_alive_interval)
            .max_idle_timeout(quinn::IdleTimeout::try_from(config.idle_timeout).ok())
            // The server opens exactly one push stream per connection.
            .max_concurrent_uni_streams(1u32.into());
        quic.transport_config(Arc::new(transport));

        let local = config.local_addr.unwrap_or_else(|| default_local(addr));
        let endpoint = quinn::Endpoint::client(local).map_err(ClientError::Bind)?;
        let server_name = tls.server_name().to_owned();
        let first = dial(&endpoint, &quic, addr, &server_name, &config).await?;

        let (push_tx, push_rx) = mpsc::channel(config.push_buffer.max(1));
        tokio::spawn(read_push(
            first.clone(),
            push_tx.clone(),
            config.max_payload,
        ));
        let (conn_tx, conn_rx) = watch::channel(Some(first.clone()));
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connected { generation: 1 });
        let (disconnect_tx, disconnect_rx) = watch::channel(None);
        let closed = CancellationToken::new();
        let supervisor = Supervisor {
            endpoint: endpoint.clone(),
            quic,
            addr,
            server_name,
            config: config.clone(),
            conn_tx,
            state_tx,
            disconnect_tx,
            push_tx,
            closed: closed.clone(),
        };
        tokio::spawn(supervisor.run(first));
        Ok((
            Arc::new(Self {
                endpoint,
                config,
                conn: conn_rx,
                state: state_rx,
                disconnect: disconnect_rx,
                closed,
            }),
            PushEvents { rx: push_rx },
        ))
    }

    /// The current connection, waiting for a reconnect up to the connect timeout.
    pub(super) async fn connection(&self) -> Result<quinn::Connection, Status> {
        let mut conn = self.conn.clone();
        let mut state = self.state.clone();
        let wait = async {
            loop {
                if let Some(c) = conn.borrow_and_update().as_ref()
                    && c.close_reason().is_none()
                {
                    return Ok(c.clone());
                }
                if let ConnectionState::Closed { reason } = &*state.borrow_and_update() {
                    return Err(Status::unavailable(format!("client closed: {reason}")));
                }
                tokio::select! {
                    changed = conn.changed() => if changed.is_err() { break },
                    changed = state.changed() => if changed.is_err() { break },
                }
            }
            Err(Status::unavailable("client closed"))
        };
        tokio::time::timeout(self.config.connect_timeout, wait)
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("no connection to the server")))
    }

    pub(super) fn state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    pub(super) fn disconnects(&self) -> watch::Receiver<Option<Disconnect>> {
        self.disconnect.clone()
    }

    pub(super) fn close(&self) {
        self.closed.cancel();
        if let Some(conn) = self.conn.borrow().as_ref() {
            conn.close(close::NO_ERROR, b"client closed");
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.close();
    }
}

fn default_local(server: SocketAddr) -> SocketAddr {
    let ip = match server.ip() {
        IpAddr::V4(v4) if v4.is_loopback() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_loopback() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    SocketAddr::new(ip, 0)
}

async fn dial(
    endpoint: &quinn::Endpoint,
    quic: &quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    config: &ClientConfig,
) -> Result<quinn::Connection, ClientError> {
    let connecting = endpoint.connect_with(quic.clone(), addr, server_name)?;
    match tokio::time::timeout(config.connect_timeout, connecting).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(ClientError::Timeout),
    }
}

/// Watches the connection and reconnects with exponential backoff when it is lost.
struct Supervisor {
    endpoint: quinn::Endpoint,
    quic: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: String,
    config: ClientConfig,
    conn_tx: watch::Sender<Option<quinn::Connection>>,
    state_tx: watch::Sender<ConnectionState>,
    disconnect_tx: watch::Sender<Option<Disconnect>>,
    push_tx: mpsc::Sender<PushFrame>,
    closed: CancellationToken,
}

impl Supervisor {
    async fn run(self, mut current: quinn::Connection) {
        let policy = self.config.reconnect.clone();
        let mut generation = 1;
        loop {
            tokio::select! {
                reason = current.closed() => {
                    tracing::debug!(%reason, "connection lost");
                    let _ = self.disconnect_tx.send(Some(Disconnect::from_error(&reason)));
                }
                () = self.closed.cancelled() => {}
            }
            if self.closed.is_cancelled() {
                self.give_up("closed by the application");
                return;
            }
            if !policy.enabled {
                self.give_up("connection lost; reconnect disabled");
                return;
            }
            let _ = self.conn_tx.send(None);
            let mut backoff = policy.initial_backoff;
            let mut attempt = 0u32;
            current = loop {
                if policy.max_attempts.is_some_and(|max| attempt >= max) {
                    self.give_up(&format!("gave up after {attempt} reconnect attempts"));
                    return;
                }
                attempt += 1;
                let _ = self
                    .state_tx
                    .send(ConnectionState::Reconnecting { attempt });
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = self.closed.cancelled() => {
                        self.give_up("closed by the application");
                        return;
                    }
                }
                match dial(
                    &self.endpoint,
                    &self.quic,
                    self.addr,
                    &self.server_name,
                    &self.config,
                )
                .await
                {
                    Ok(conn) => break conn,
                    Err(err) => {
                        tracing::debug!(%err, attempt, "reconnect failed");
                        backoff = (backoff * 2).min(policy.max_backoff);
                    }
                }
            };
            generation += 1;
            tokio::spawn(read_push(
                current.clone(),
                self.push_tx.clone(),
                self.config.max_payload,
            ));
            let _ = self.conn_tx.send(Some(current.clone()));
            let _ = self
                .state_tx
                .send(ConnectionState::Connected { generation });
            tracing::debug!(generation, "reconnected");
        }
    }

    fn give_up(&self, reason: &str) {
        let _ = self.conn_tx.send(None);
        let _ = self.state_tx.send(ConnectionState::Closed {
            reason: reason.to_owned(),
        });
    }
}

/// Reads the connection's push stream into the client's push buffer. When the buffer is full,
/// reading pauses, and QUIC flow control holds back the server.
async fn read_push(conn: quinn::Connection, tx: mpsc::Sender<PushFrame>, max_payload: u32) {
    let Ok(recv) = conn.accept_uni().await else {
        return;
    };
    let mut reader = FrameReader::new(recv, max_payload);
    loop {
        match reader.next_push().await {
            Ok(Some(frame)) => {
                if tx.send(frame).await.is_err() {
                    return;
                }
            }
            Ok(None) | Err(ReadFrameError::Stream(_)) => return,
            Err(err) => {
                tracing::warn!(%err, "malformed push stream; closing the connection");
                conn.close(close::PUSH_PROTOCOL_ERROR, b"malformed push frame");
                return;
            }
        }
    }
}
