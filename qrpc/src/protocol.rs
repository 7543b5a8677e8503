//! Protocol constants shared by client and server: ALPN and QUIC application error codes.
//!
//! The codes are part of the wire contract (`docs/wire-protocol.md`); they never change meaning.

pub use quinn::VarInt;

/// The default ALPN protocol id of qrpc version 1.
pub const DEFAULT_ALPN: &[u8] = b"qrpc/1";

/// The ALPN protocol id of HTTP/3, which browsers offer for WebTransport: a server with
/// WebTransport enabled (feature `webtransport`) serves the same calls to sessions of it.
pub const H3_ALPN: &[u8] = b"h3";

/// Application error codes carried by `RESET_STREAM` and `STOP_SENDING` for one call.
///
/// A stream reset ends that call only, never the connection.
pub mod reset {
    use super::VarInt;

    /// The caller dropped the call before it finished (client to server, both directions).
    pub const CANCELLED: VarInt = VarInt::from_u32(0x01);
    /// The peer broke the framing rules (a frame for another call, a truncated frame, or
    /// frames after the end of a unary request); sent after the error status, if one could be.
    pub const PROTOCOL_ERROR: VarInt = VarInt::from_u32(0x02);
    /// The stream did not deliver a complete first request frame within the header timeout.
    pub const HEADER_TIMEOUT: VarInt = VarInt::from_u32(0x03);
    /// The server is shutting down and did not start this call; it is safe to retry elsewhere.
    pub const REFUSED: VarInt = VarInt::from_u32(0x04);
    /// A frame announced a payload over the receiver's limit; sent as `STOP_SENDING` after the
    /// `ResourceExhausted` status so that the sender stops transmitting the payload.
    pub const PAYLOAD_TOO_LARGE: VarInt = VarInt::from_u32(0x05);
    /// The call arrived in 0-RTT data but its method is not idempotent (or not known): the
    /// server did not execute it, because 0-RTT data can be replayed. The client may send it
    /// again once the handshake has completed.
    pub const TOO_EARLY: VarInt = VarInt::from_u32(0x06);
}

/// Application error codes carried by `CONNECTION_CLOSE`.
pub mod close {
    use super::VarInt;

    /// Normal close: the client is done, or the server finished a graceful shutdown.
    pub const NO_ERROR: VarInt = VarInt::from_u32(0x00);
    /// The server is shutting down and its grace period for in-flight calls expired.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0x10);
    /// The push stream was misused (a second push stream, or an undecodable push frame).
    pub const PUSH_PROTOCOL_ERROR: VarInt = VarInt::from_u32(0x11);
    /// The connection negotiated a protocol that requires a client certificate
    /// ([`ServerConfig::require_client_certificate`](crate::ServerConfig::require_client_certificate))
    /// and presented none.
    pub const CLIENT_CERTIFICATE_REQUIRED: VarInt = VarInt::from_u32(0x12);
    /// The first code an application may use for its own closes; qrpc never sends a code at
    /// or above it (`docs/wire-protocol.md`, "Connection close codes").
    pub const APPLICATION_MIN: VarInt = VarInt::from_u32(0x100);
}
