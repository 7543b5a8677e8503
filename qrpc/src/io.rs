//! The thin async shell around the frame codec: reading frames from and writing frames to QUIC
//! streams.

use std::fmt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quinn::{RecvStream, SendStream};

use crate::call_state::{StreamInput, reserve_frame};
use crate::frame::{
    FrameError, PUSH_HEADER_LEN, PushFrame, PushHeader, RequestFrame, ResponseFrame,
};
use crate::stream::{Conn, SendHalf, WriteFailed};

/// Why reading the next frame failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadFrameError {
    /// The bytes did not form a valid frame.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes buffered)")]
    Truncated(usize),
    /// The stream itself failed (reset by the peer, connection lost).
    #[error(transparent)]
    Stream(#[from] quinn::ReadError),
}

/// Reads what happens next on a receive stream, as input for a call state machine.
pub(crate) async fn read_input(recv: &mut RecvStream) -> StreamInput {
    match recv.read_chunk(usize::MAX, true).await {
        Ok(Some(chunk)) => StreamInput::Data(chunk.bytes),
        Ok(None) => StreamInput::Fin,
        Err(quinn::ReadError::Reset(code)) => StreamInput::Reset(code.into_inner()),
        Err(quinn::ReadError::ConnectionLost(err)) => StreamInput::ConnectionLost(err.to_string()),
        Err(other) => StreamInput::Failed(other.to_string()),
    }
}

/// Reads whole push frames from the push stream.
pub(crate) struct FrameReader {
    recv: RecvStream,
    buf: BytesMut,
    max_payload: u32,
    finished: bool,
}

impl FrameReader {
    pub(crate) fn new(recv: RecvStream, max_payload: u32) -> Self {
        Self {
            recv,
            buf: BytesMut::new(),
            max_payload,
            finished: false,
        }
    }

    /// The next push frame, or `None` at a clean end of stream.
    pub(crate) async fn next_push(&mut self) -> Result<Option<PushFrame>, ReadFrameError> {
        loop {
            if let Some(frame) = PushFrame::decode(&mut self.buf, self.max_payload)? {
                return Ok(Some(frame));
            }
            // The decoder has checked the announced length against the limit by now.
            let header = PushHeader::peek(&self.buf, u32::MAX).ok().flatten();
            reserve_frame(
                &mut self.buf,
                PUSH_HEADER_LEN,
                header.map(|h| h.payload_len),
            );
            if self.finished {
                return if self.buf.is_empty() {
                    Ok(None)
                } else {
                    Err(ReadFrameError::Truncated(self.buf.len()))
                };
            }
            match self.recv.read_chunk(usize::MAX, true).await? {
                Some(chunk) if self.buf.is_empty() => {
                    // Take the chunk without copying when nothing is buffered.
                    self.buf = chunk
                        .bytes
                        .try_into_mut()
                        .unwrap_or_else(|b| BytesMut::from(&b[..]));
                }
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None => self.finished = true,
            }
        }
    }
}

/// A frame as two chunks (header, payload), so the payload is never copied.
fn frame_chunks(header: &[u8], payload: &Bytes) -> [Bytes; 2] {
    [Bytes::copy_from_slice(header), payload.clone()]
}

/// Writes request frames in one write (an extension frame and the opening frame leave in
/// the same packet when they fit).
pub(crate) async fn write_requests(
    send: &mut SendStream,
    frames: &[RequestFrame],
) -> Result<(), quinn::WriteError> {
    if let [frame] = frames {
        let mut chunks = frame_chunks(&frame.header().encode(), &frame.payload);
        return send.write_all_chunks(&mut chunks).await;
    }
    let mut chunks = Vec::with_capacity(frames.len() * 2);
    for frame in frames {
        chunks.push(Bytes::copy_from_slice(&frame.header().encode()));
        chunks.push(frame.payload.clone());
    }
    send.write_all_chunks(&mut chunks).await
}

/// Writes a response frame.
pub(crate) async fn write_response(
    send: &mut SendHalf,
    frame: &ResponseFrame,
) -> Result<(), WriteFailed> {
    let mut chunks = frame_chunks(&frame.header().encode(), &frame.payload);
    send.write_all_chunks(&mut chunks).await
}

/// Writes a push frame.
pub(crate) async fn write_push(send: &mut SendHalf, frame: &PushFrame) -> Result<(), WriteFailed> {
    let mut chunks = frame_chunks(&frame.header().encode(), &frame.payload);
    send.write_all_chunks(&mut chunks).await
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reservation_never_runs_far_ahead_of_received_bytes() {
        // A request header announcing 4 MiB, with no payload yet.
        let mut buf = BytesMut::from(&[0u8, 1, 0, 0, 0, 1, 0, 0x40, 0, 0][..]);
        let header = crate::frame::RequestHeader::peek(&buf, u32::MAX).unwrap();
        reserve_frame(
            &mut buf,
            crate::frame::REQUEST_HEADER_LEN,
            header.map(|h| h.payload_len),
        );
        assert!(buf.capacity() >= 256 * 1024);
        assert!(
            buf.capacity() <= 2 * (10 + 256 * 1024),
            "reserved {}",
            buf.capacity()
        );
    }

    #[test]
    fn a_small_frame_gets_room_for_all_of_it() {
        // A push header announcing 1000 bytes.
        let mut buf = BytesMut::from(&[0u8, 7, 0, 0, 0x03, 0xE8][..]);
        let header = PushHeader::peek(&buf, u32::MAX).unwrap();
        reserve_frame(&mut buf, PUSH_HEADER_LEN, header.map(|h| h.payload_len));
        assert!(buf.capacity() >= 1006);
        // Less than a header: nothing to do.
        let mut short = BytesMut::from(&[0u8, 7][..]);
        let header = PushHeader::peek(&short, u32::MAX).unwrap();
        reserve_frame(&mut short, PUSH_HEADER_LEN, header.map(|h| h.payload_len));
        assert_eq!(short.len(), 2);
    }
}

/// The connection (QUIC, or a WebTransport session over it) behind the handles an application
/// may keep ([`Peer`], [`PushSender`]), emptied by the server when the connection ends.
///
/// Every quinn connection handle keeps the endpoint's UDP socket open. If the handles an
/// application holds on to (a session table, a push registry) held quinn's connection
/// itself, a stopped server's socket would stay bound for as long as any of them lived, and
/// a server restarted on the same address could not bind it.
#[derive(Clone, Default)]
pub(crate) struct QuicSlot(Arc<std::sync::RwLock<Option<Conn>>>);

impl fmt::Debug for QuicSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let open = self.with(|_| ()).is_some();
        f.debug_struct("QuicSlot").field("open", &open).finish()
    }
}

impl QuicSlot {
    pub(crate) fn new(conn: Conn) -> Self {
        Self(Arc::new(std::sync::RwLock::new(Some(conn))))
    }

    /// A detached slot: no connection, ever.
    #[cfg(feature = "testing")]
    pub(crate) fn empty() -> Self {
        Self::default()
    }

    /// Runs `f` on the connection while it lasts; `None` once it ended (or when detached).
    pub(crate) fn with<R>(&self, f: impl FnOnce(&Conn) -> R) -> Option<R> {
        let guard = self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.as_ref().map(f)
    }

    /// Drops the connection handle: called once the connection has ended.
    pub(crate) fn clear(&self) {
        let taken = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(taken);
    }
}
