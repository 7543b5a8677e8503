//! The server's view of a connection and its streams, whatever carries them: a native `qrpc/1`
//! QUIC connection, or a WebTransport session (feature `webtransport`) whose streams carry the
//! same frames inside HTTP/3.
//!
//! Calls, push and datagrams go through these types only, so both kinds of connection share
//! one call path: the same rules, layers, limits and metrics.

use bytes::Bytes;
use quinn::VarInt;

use crate::call_state::StreamInput;

/// The application protocol `quic` negotiated (known from the client's first flight, so also
/// for a 0-RTT connection).
pub(crate) fn negotiated_alpn(quic: &quinn::Connection) -> Option<Vec<u8>> {
    quic.handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol)
}

/// A stream write failed: the peer stopped reading, reset, or the connection is gone.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct WriteFailed(String);

impl From<quinn::WriteError> for WriteFailed {
    fn from(err: quinn::WriteError) -> Self {
        Self(err.to_string())
    }
}

#[cfg(feature = "webtransport")]
impl From<web_transport_quinn::WriteError> for WriteFailed {
    fn from(err: web_transport_quinn::WriteError) -> Self {
        Self(err.to_string())
    }
}

impl WriteFailed {
    /// The peer stopped reading the stream.
    pub(crate) fn stopped() -> Self {
        Self("stream stopped by peer".into())
    }
}

/// A WebTransport stream or session error code: qrpc's codes are small, and a code that does
/// not fit (none does today) saturates rather than wrapping into another meaning.
#[cfg(feature = "webtransport")]
fn web_code(code: VarInt) -> u32 {
    u32::try_from(code.into_inner()).unwrap_or(u32::MAX)
}

/// The sending half of a call's stream (or of the push stream).
pub(crate) enum SendHalf {
    Quic(quinn::SendStream),
    #[cfg(feature = "webtransport")]
    Web(web_transport_quinn::SendStream),
}

impl SendHalf {
    /// Writes every chunk, in order.
    pub(crate) async fn write_all_chunks(
        &mut self,
        chunks: &mut [Bytes],
    ) -> Result<(), WriteFailed> {
        match self {
            Self::Quic(send) => Ok(send.write_all_chunks(chunks).await?),
            #[cfg(feature = "webtransport")]
            Self::Web(send) => Ok(send.write_all_chunks(chunks).await?),
        }
    }

    /// Abandons the stream with `code` (RESET_STREAM).
    pub(crate) fn reset(&mut self, code: VarInt) {
        // Resetting a stream that already ended is not worth reporting.
        match self {
            Self::Quic(send) => drop(send.reset(code)),
            #[cfg(feature = "webtransport")]
            Self::Web(send) => drop(send.reset(web_code(code))),
        }
    }

    /// Ends the stream cleanly (FIN).
    pub(crate) fn finish(&mut self) {
        match self {
            Self::Quic(send) => drop(send.finish()),
            #[cfg(feature = "webtransport")]
            Self::Web(send) => drop(send.finish()),
        }
    }

    /// [`stopped`](Self::stopped) as a future that owns what it watches, where the
    /// transport offers one (native QUIC); WebTransport streams are watched by borrowing.
    pub(crate) fn stopped_owned(
        &self,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
        match self {
            Self::Quic(send) => {
                let stopped = send.stopped();
                Some(Box::pin(async move { drop(stopped.await) }))
            }
            #[cfg(feature = "webtransport")]
            Self::Web(_) => None,
        }
    }

    /// Completes when the peer stopped reading, acknowledged everything after a finish, or
    /// the connection ended.
    pub(crate) async fn stopped(&self) {
        match self {
            Self::Quic(send) => drop(send.stopped().await),
            #[cfg(feature = "webtransport")]
            Self::Web(send) => drop(send.stopped().await),
        }
    }
}

/// The receiving half of a call's stream.
pub(crate) enum RecvHalf {
    Quic(quinn::RecvStream),
    #[cfg(feature = "webtransport")]
    Web(web_transport_quinn::RecvStream),
}

impl RecvHalf {
    /// What happens next on the stream, as input for a call state machine.
    pub(crate) async fn read_input(&mut self) -> StreamInput {
        match self {
            Self::Quic(recv) => crate::io::read_input(recv).await,
            #[cfg(feature = "webtransport")]
            Self::Web(recv) => {
                use web_transport_quinn::ReadError;
                match recv.read_chunk(usize::MAX, true).await {
                    Ok(Some(chunk)) => StreamInput::Data(chunk.bytes),
                    Ok(None) => StreamInput::Fin,
                    Err(ReadError::Reset(code)) => StreamInput::Reset(code.into()),
                    Err(ReadError::SessionError(err)) => {
                        StreamInput::ConnectionLost(err.to_string())
                    }
                    Err(other) => StreamInput::Failed(other.to_string()),
                }
            }
        }
    }

    /// Asks the peer to stop sending (STOP_SENDING).
    pub(crate) fn stop(&mut self, code: VarInt) {
        // Stopping an already finished or reset stream is not an error worth reporting.
        match self {
            Self::Quic(recv) => drop(recv.stop(code)),
            #[cfg(feature = "webtransport")]
            Self::Web(recv) => drop(recv.stop(web_code(code))),
        }
    }

    /// Whether the stream was opened in 0-RTT data. A WebTransport session is served only
    /// once its handshake completed (the server waits for it, and a replayed flight cannot
    /// complete one), so its streams never count as early, whenever their bytes arrived.
    pub(crate) fn is_0rtt(&self) -> bool {
        match self {
            Self::Quic(recv) => recv.is_0rtt(),
            #[cfg(feature = "webtransport")]
            Self::Web(_) => false,
        }
    }
}

/// How sending a datagram went.
pub(crate) enum DatagramSent {
    Sent,
    /// The connection is gone.
    Closed,
    /// Refused (unsupported, too large, ...): the caller uses the push stream instead.
    Refused(String),
}

/// A served connection: native QUIC, or a WebTransport session over HTTP/3.
#[derive(Clone)]
pub(crate) enum Conn {
    Quic(quinn::Connection),
    /// Boxed: a session is large, a QUIC connection a pointer.
    #[cfg(feature = "webtransport")]
    Web(Box<web_transport_quinn::Session>),
}

impl Conn {
    /// The QUIC connection underneath.
    pub(crate) fn quic(&self) -> &quinn::Connection {
        match self {
            Self::Quic(conn) => conn,
            #[cfg(feature = "webtransport")]
            Self::Web(session) => session,
        }
    }

    /// The next call's stream.
    pub(crate) async fn accept_call(&self) -> Result<(SendHalf, RecvHalf), String> {
        match self {
            Self::Quic(conn) => conn
                .accept_bi()
                .await
                .map(|(send, recv)| (SendHalf::Quic(send), RecvHalf::Quic(recv)))
                .map_err(|e| e.to_string()),
            #[cfg(feature = "webtransport")]
            Self::Web(session) => session
                .accept_bi()
                .await
                .map(|(send, recv)| (SendHalf::Web(send), RecvHalf::Web(recv)))
                .map_err(|e| e.to_string()),
        }
    }

    /// Opens the push stream.
    pub(crate) async fn open_push(&self) -> Result<SendHalf, String> {
        match self {
            Self::Quic(conn) => conn
                .open_uni()
                .await
                .map(SendHalf::Quic)
                .map_err(|e| e.to_string()),
            #[cfg(feature = "webtransport")]
            Self::Web(session) => session
                .open_uni()
                .await
                .map(SendHalf::Web)
                .map_err(|e| e.to_string()),
        }
    }

    /// The largest datagram payload the peer accepts now; `None` when it takes none.
    pub(crate) fn max_datagram_size(&self) -> Option<usize> {
        match self {
            Self::Quic(conn) => conn.max_datagram_size(),
            #[cfg(feature = "webtransport")]
            // The session's own header (its id) is already taken off.
            Self::Web(session) => Some(session.max_datagram_size()).filter(|size| *size > 0),
        }
    }

    /// Sends one datagram without waiting.
    pub(crate) fn send_datagram(&self, payload: Bytes) -> DatagramSent {
        match self {
            Self::Quic(conn) => match conn.send_datagram(payload) {
                Ok(()) => DatagramSent::Sent,
                Err(quinn::SendDatagramError::ConnectionLost(_)) => DatagramSent::Closed,
                Err(err) => DatagramSent::Refused(err.to_string()),
            },
            #[cfg(feature = "webtransport")]
            Self::Web(session) => match session.send_datagram(payload) {
                Ok(()) => DatagramSent::Sent,
                Err(_) if session.close_reason().is_some() => DatagramSent::Closed,
                Err(err) => DatagramSent::Refused(err.to_string()),
            },
        }
    }

    /// Closes the connection (a WebTransport session is closed with its capsule, so a page
    /// sees the code and reason).
    pub(crate) fn close(&self, code: VarInt, reason: &[u8]) {
        match self {
            Self::Quic(conn) => conn.close(code, reason),
            #[cfg(feature = "webtransport")]
            Self::Web(session) => session.close(web_code(code), reason),
        }
    }

    /// Whether the connection has closed.
    pub(crate) fn is_closed(&self) -> bool {
        #[cfg(feature = "webtransport")]
        if let Self::Web(session) = self
            && session.close_reason().is_some()
        {
            return true;
        }
        self.quic().close_reason().is_some()
    }

    /// Completes when the connection closes.
    pub(crate) async fn closed(&self) {
        match self {
            Self::Quic(conn) => drop(conn.closed().await),
            #[cfg(feature = "webtransport")]
            Self::Web(session) => drop(session.closed().await),
        }
    }
}
