//! What a push event is: the trait qrpc-build implements for every push channel's events,
//! on both sides of a connection.

use bytes::Bytes;

/// A typed push event: generated for every `(qrpc.push_channel)` message by qrpc-build.
pub trait PushEvent: Sized + Send + 'static {
    /// Whether the channel is unreliable (`(qrpc.unreliable)`): its events go as QUIC
    /// datagrams where possible.
    const UNRELIABLE: bool = false;

    /// The event type on the wire.
    fn event_type(&self) -> u16;
    /// The protobuf payload.
    fn encode_payload(&self) -> Bytes;
    /// Rebuilds an event from a push frame; unknown types and bad payloads are errors.
    fn decode_payload(event_type: u16, payload: Bytes) -> Result<Self, crate::status::Status>;
}
