//! The client's connection: dialing, the reconnect supervisor, and the push reader.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::config::{ClientConfig, ClientError};
use super::push::PushEvents;
use crate::frame::PushFrame;
use crate::io::{FrameReader, ReadFrameError};
use crate::protocol::close;
use crate::status::Status;

/// The state of a client's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected; `generation` counts connections made, starting at 1. A reconnect that
    /// resumes a session with 0-RTT is announced once the server has answered its handshake
    /// (idempotent calls may go out as 0-RTT data before); a refused or unanswered resumption
    /// is a failed attempt, not a connection that was lost.
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

/// Where a connection's handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Handshake {
    /// A resumed connection carrying 0-RTT data; the server has not answered yet.
    Pending,
    /// The handshake completed; `early_accepted` says whether the server took the 0-RTT data.
    Done { early_accepted: bool },
    /// The connection was lost or timed out before the handshake completed.
    Failed,
}

/// A connection and the state of its handshake.
/// The answer to "does the server speak the call extension?", shared by every call that asks.
pub(super) type ExtensionProbe =
    futures::future::Shared<futures::future::BoxFuture<'static, Result<bool, Status>>>;

#[derive(Clone)]
pub(super) struct Live {
    pub(super) conn: quinn::Connection,
    handshake: watch::Receiver<Handshake>,
    /// On a connection that sent 0-RTT data, where the handles of its 0-RTT streams go.
    early_streams: Option<Arc<EarlyStreams>>,
    /// Whether the server speaks the call extension: probed once per connection, by the
    /// first call that carries a deadline or metadata; every such call awaits the same probe.
    pub(super) extension: Arc<std::sync::Mutex<Option<ExtensionProbe>>>,
}

impl Live {
    fn established(conn: quinn::Connection) -> Self {
        let (_done, handshake) = watch::channel(Handshake::Done {
            early_accepted: false,
        });
        Self {
            conn,
            handshake,
            early_streams: None,
            extension: Arc::default(),
        }
    }

    /// Whether data sent now travels as 0-RTT data.
    pub(super) fn is_early(&self) -> bool {
        *self.handshake.borrow() == Handshake::Pending
    }

    /// Where a stream's handles go when dropped, if the stream was opened as 0-RTT data
    /// (`is_0rtt`); `None` for every other stream.
    pub(super) fn early_streams(&self, is_0rtt: bool) -> Option<Arc<EarlyStreams>> {
        self.early_streams.as_ref().filter(|_| is_0rtt).cloned()
    }

    /// Waits for the handshake; `Ok(true)` when the server accepted the 0-RTT data sent on
    /// this connection. An error means the handshake failed: nothing sent on this connection
    /// reached the server's application, except perhaps 0-RTT data.
    pub(super) async fn handshake_done(&self) -> Result<bool, Status> {
        // Every call asks; nearly always the handshake is long done: answer without cloning
        // the watch.
        if let Handshake::Done { early_accepted } = *self.handshake.borrow() {
            return Ok(early_accepted);
        }
        let mut handshake = self.handshake.clone();
        loop {
            match *handshake.borrow_and_update() {
                Handshake::Done { early_accepted } => return Ok(early_accepted),
                Handshake::Failed => break,
                Handshake::Pending => {}
            }
            if handshake.changed().await.is_err() {
                break;
            }
        }
        Err(Status::unavailable(
            "the resumed connection's handshake did not complete",
        ))
    }
}

/// The handle of a stream opened as 0-RTT data.
#[expect(
    dead_code,
    reason = "a handle is only held, so that it is dropped at the right time"
)]
pub(super) enum EarlyHandle {
    /// The sending half.
    Send(quinn::SendStream),
    /// The receiving half.
    Recv(quinn::RecvStream),
}

/// Keeps the handles of a connection's 0-RTT streams that their calls are done with, unless
/// the server is known to have accepted the 0-RTT data.
///
/// When the server rejects 0-RTT data, quinn forgets the client's streams and numbers new ones
/// from zero again, so a new stream takes the id of a rejected one. Dropping a rejected
/// stream's handle then clears the waker quinn keeps for that id (quinn 0.11 removes it before
/// it looks at the stream), and the new stream's blocked write or read never wakes. So a
/// rejected stream's handles live as long as the connection, and the handles of a call dropped
/// before the handshake settled wait here until it does.
#[derive(Default)]
pub(super) struct EarlyStreams {
    state: std::sync::Mutex<EarlyState>,
}

#[derive(Default)]
struct EarlyState {
    /// `Some(accepted)` once the handshake completed.
    accepted: Option<bool>,
    parked: Vec<EarlyHandle>,
}

impl std::fmt::Debug for EarlyStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("EarlyStreams")
            .field("accepted", &state.accepted)
            .field("parked", &state.parked.len())
            .finish()
    }
}

impl EarlyStreams {
    fn lock(&self) -> std::sync::MutexGuard<'_, EarlyState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a 0-RTT stream's handle that its call is done with.
    pub(super) fn release(&self, handle: EarlyHandle) {
        let mut state = self.lock();
        if state.accepted == Some(true) {
            drop(state);
            drop(handle);
        } else {
            state.parked.push(handle);
        }
    }

    /// Records how the handshake ended; on acceptance the parked handles are dropped.
    fn settle(&self, accepted: bool) {
        let released = {
            let mut state = self.lock();
            state.accepted = Some(accepted);
            if accepted {
                std::mem::take(&mut state.parked)
            } else {
                Vec::new()
            }
        };
        drop(released);
    }
}

/// The connection every clone of a client shares.
pub(super) struct Link {
    pub(super) endpoint: quinn::Endpoint,
    pub(super) config: ClientConfig,
    conn: watch::Receiver<Option<Live>>,
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
        let mut quic =
            quinn::ClientConfig::new(Arc::new(tls.quic_config(&config.alpn, config.zero_rtt)?));
        quic.transport_config(Arc::new(config.transport()));

        let local = config.local_addr.unwrap_or_else(|| default_local(addr));
        let endpoint = quinn::Endpoint::client(local).map_err(ClientError::Bind)?;
        let server_name = tls.server_name().to_owned();
        let addrs: Vec<SocketAddr> = std::iter::once(addr)
            .chain(config.fallback_addresses.iter().copied())
            .collect();
        // The builder's address first, then the others in order.
        let mut failure = None;
        let mut first = None;
        for (index, candidate) in addrs.iter().enumerate() {
            match dial(&endpoint, &quic, *candidate, &server_name, &config).await {
                Ok(live) => {
                    first = Some((index, live));
                    break;
                }
                Err(err) => {
                    tracing::debug!(%err, addr = %candidate, "connect failed");
                    failure = Some(err);
                }
            }
        }
        let Some((current, first)) = first else {
            return Err(failure.unwrap_or(ClientError::Timeout));
        };

        let (push_tx, push_rx) = mpsc::channel(config.push_buffer.max(1));
        spawn_push_readers(&first.conn, &push_tx, config.max_payload);
        let (conn_tx, conn_rx) = watch::channel(Some(first.clone()));
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connected { generation: 1 });
        let (disconnect_tx, disconnect_rx) = watch::channel(None);
        let closed = CancellationToken::new();
        let supervisor = Supervisor {
            endpoint: endpoint.clone(),
            quic,
            addrs,
            current,
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
            PushEvents::new(push_rx),
        ))
    }

    /// The current connection, waiting for a reconnect up to the connect timeout.
    pub(super) async fn connection(&self) -> Result<Live, Status> {
        // Nearly every call finds the connection up: answer without cloning the watches or
        // arming the connect timer.
        if let Some(live) = self.conn.borrow().as_ref()
            && live.conn.close_reason().is_none()
        {
            return Ok(live.clone());
        }
        let mut conn = self.conn.clone();
        let mut state = self.state.clone();
        let wait = async {
            loop {
                if let Some(live) = conn.borrow_and_update().as_ref()
                    && live.conn.close_reason().is_none()
                {
                    return Ok(live.clone());
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
        if let Some(live) = self.conn.borrow().as_ref() {
            live.conn.close(close::NO_ERROR, b"client closed");
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

/// Connects. A resumable session with 0-RTT enabled returns at once, before the handshake
/// completes: idempotent calls go out as 0-RTT data, everything else waits for
/// [`Live::handshake_done`]. A handshake that does not complete within the connect timeout
/// closes the connection, which the supervisor then replaces.
async fn dial(
    endpoint: &quinn::Endpoint,
    quic: &quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    config: &ClientConfig,
) -> Result<Live, ClientError> {
    let mut connecting = endpoint.connect_with(quic.clone(), addr, server_name)?;
    if config.zero_rtt {
        match connecting.into_0rtt() {
            Ok((conn, accepted)) => {
                let (tx, handshake) = watch::channel(Handshake::Pending);
                let early_streams = Arc::new(EarlyStreams::default());
                let settled = Arc::clone(&early_streams);
                let timeout = config.connect_timeout;
                let watched = conn.clone();
                tokio::spawn(async move {
                    let outcome = tokio::time::timeout(timeout, accepted).await;
                    match outcome {
                        // quinn also answers "not accepted" when the connection is lost.
                        Ok(early_accepted) if watched.close_reason().is_none() => {
                            tracing::debug!(early_accepted, "resumed handshake done");
                            settled.settle(early_accepted);
                            let _ = tx.send(Handshake::Done { early_accepted });
                        }
                        Ok(_) => {
                            tracing::debug!("resumed connection lost during the handshake");
                            let _ = tx.send(Handshake::Failed);
                        }
                        Err(_) => {
                            watched.close(close::NO_ERROR, b"handshake timed out");
                            let _ = tx.send(Handshake::Failed);
                        }
                    }
                });
                return Ok(Live {
                    conn,
                    handshake,
                    early_streams: Some(early_streams),
                    extension: Arc::default(),
                });
            }
            Err(full) => connecting = full,
        }
    }
    match tokio::time::timeout(config.connect_timeout, connecting).await {
        Ok(result) => Ok(Live::established(result?)),
        Err(_) => Err(ClientError::Timeout),
    }
}

/// Watches the connection and reconnects with exponential backoff when it is lost.
struct Supervisor {
    endpoint: quinn::Endpoint,
    quic: quinn::ClientConfig,
    /// The service's addresses: the builder's first, then the fallbacks.
    addrs: Vec<SocketAddr>,
    /// Which of them the current (or last) connection went to.
    current: usize,
    server_name: String,
    config: ClientConfig,
    conn_tx: watch::Sender<Option<Live>>,
    state_tx: watch::Sender<ConnectionState>,
    disconnect_tx: watch::Sender<Option<Disconnect>>,
    push_tx: mpsc::Sender<PushFrame>,
    closed: CancellationToken,
}

impl Supervisor {
    async fn run(mut self, mut current: Live) {
        let policy = self.config.reconnect.clone();
        let mut generation = 1;
        loop {
            tokio::select! {
                reason = current.conn.closed() => {
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
                // Round the addresses, starting after the one that was lost.
                let index =
                    (self.current + usize::try_from(attempt).unwrap_or(0)) % self.addrs.len();
                let dialed = dial(
                    &self.endpoint,
                    &self.quic,
                    self.addrs[index],
                    &self.server_name,
                    &self.config,
                )
                .await;
                let outcome = match dialed {
                    // A resumed connection: idempotent calls may send 0-RTT data on it at
                    // once, but it is a reconnect only once the server answers the handshake.
                    // A server that refuses or never answers makes this a failed attempt.
                    Ok(live) if live.is_early() => {
                        let _ = self.conn_tx.send(Some(live.clone()));
                        tokio::select! {
                            done = live.handshake_done() => done
                                .map(|_| live)
                                .map_err(|status| status.message().to_owned()),
                            () = self.closed.cancelled() => {
                                self.give_up("closed by the application");
                                return;
                            }
                        }
                    }
                    other => other.map_err(|err| err.to_string()),
                };
                match outcome {
                    Ok(live) => {
                        self.current = index;
                        break live;
                    }
                    Err(err) => {
                        let _ = self.conn_tx.send(None);
                        tracing::debug!(%err, attempt, "reconnect failed");
                        backoff = (backoff * 2).min(policy.max_backoff);
                    }
                }
            };
            generation += 1;
            spawn_push_readers(&current.conn, &self.push_tx, self.config.max_payload);
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

fn spawn_push_readers(conn: &quinn::Connection, tx: &mpsc::Sender<PushFrame>, max_payload: u32) {
    tokio::spawn(read_push(conn.clone(), tx.clone(), max_payload));
    tokio::spawn(read_datagrams(conn.clone(), tx.clone(), max_payload));
}

/// Reads push events sent as QUIC datagrams (unreliable channels) into the client's push
/// buffer. Unlike the push stream, a full buffer drops the event: datagrams are droppable by
/// contract and reading must not stall behind a slow consumer.
async fn read_datagrams(conn: quinn::Connection, tx: mpsc::Sender<PushFrame>, max_payload: u32) {
    loop {
        let datagram = match conn.read_datagram().await {
            Ok(datagram) => datagram,
            Err(_) => return,
        };
        match PushFrame::decode_exact(&datagram, max_payload) {
            Ok(frame) => match tx.try_send(frame) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::debug!("push buffer full; unreliable event dropped");
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            },
            Err(err) => {
                tracing::warn!(%err, "malformed push datagram; closing the connection");
                conn.close(close::PUSH_PROTOCOL_ERROR, b"malformed push datagram");
                return;
            }
        }
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
