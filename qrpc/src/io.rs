//! The thin async shell around the frame codec: reading frames from and writing frames to QUIC
//! streams.

use bytes::{BufMut, Bytes, BytesMut};
use quinn::{RecvStream, SendStream};

use crate::frame::{FrameError, PushFrame, RequestFrame, ResponseFrame};

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

/// A decoder function of the frame codec.
type DecodeFn<F> = fn(&mut BytesMut, u32) -> Result<Option<F>, FrameError>;

/// How far ahead of the received bytes a frame buffer may be reserved.
const MAX_RESERVE_AHEAD: usize = 256 * 1024;

/// Makes room for the rest of the frame once its header is buffered, so a payload arriving in
/// many packets is not copied through repeated reallocations. The reservation runs at most
/// [`MAX_RESERVE_AHEAD`] past the bytes received, so a peer that announces a large payload and
/// sends nothing cannot make the receiver allocate it. In every frame shape the payload length
/// is the last four bytes of the header.
fn reserve_frame(buf: &mut BytesMut, header_len: usize) {
    if let Some(len) = buf.get(header_len - 4..header_len) {
        let payload_len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let missing = (header_len + payload_len).saturating_sub(buf.len());
        buf.reserve(missing.min(MAX_RESERVE_AHEAD));
    }
}

/// Reads whole frames from a receive stream, buffering at most one frame beyond what the caller
/// has taken.
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

    async fn next<F>(
        &mut self,
        decode: DecodeFn<F>,
        header_len: usize,
    ) -> Result<Option<F>, ReadFrameError> {
        loop {
            if let Some(frame) = decode(&mut self.buf, self.max_payload)? {
                return Ok(Some(frame));
            }
            // The decoder has checked the announced length against the limit by now.
            reserve_frame(&mut self.buf, header_len);
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

    /// The next request frame, or `None` at a clean end of stream.
    pub(crate) async fn next_request(&mut self) -> Result<Option<RequestFrame>, ReadFrameError> {
        self.next(RequestFrame::decode, crate::frame::REQUEST_HEADER_LEN)
            .await
    }

    /// The next response frame, or `None` at a clean end of stream.
    pub(crate) async fn next_response(&mut self) -> Result<Option<ResponseFrame>, ReadFrameError> {
        self.next(ResponseFrame::decode, crate::frame::RESPONSE_HEADER_LEN)
            .await
    }

    /// The next push frame, or `None` at a clean end of stream.
    pub(crate) async fn next_push(&mut self) -> Result<Option<PushFrame>, ReadFrameError> {
        self.next(PushFrame::decode, crate::frame::PUSH_HEADER_LEN)
            .await
    }

    /// Bytes received but not yet taken as frames, if any.
    pub(crate) fn buffered(&self) -> Option<&[u8]> {
        (!self.buf.is_empty()).then_some(&self.buf[..])
    }

    /// Tells the peer to stop sending on this stream.
    pub(crate) fn stop(&mut self, code: quinn::VarInt) {
        // Stopping an already finished or reset stream is not an error worth reporting.
        let _ = self.recv.stop(code);
    }
}

/// Writes a frame as two chunks (header, payload) so the payload is never copied.
async fn write_frame(
    send: &mut SendStream,
    header: &[u8],
    payload: &Bytes,
) -> Result<(), quinn::WriteError> {
    let mut chunks = [Bytes::copy_from_slice(header), payload.clone()];
    send.write_all_chunks(&mut chunks).await
}

/// Writes a request frame.
pub(crate) async fn write_request(
    send: &mut SendStream,
    frame: &RequestFrame,
) -> Result<(), quinn::WriteError> {
    let mut header = [0u8; crate::frame::REQUEST_HEADER_LEN];
    let mut h = &mut header[..];
    h.put_u16(frame.method_id);
    h.put_u32(frame.request_id);
    h.put_u32(u32::try_from(frame.payload.len()).unwrap_or(u32::MAX));
    write_frame(send, &header, &frame.payload).await
}

/// Writes a response frame.
pub(crate) async fn write_response(
    send: &mut SendStream,
    frame: &ResponseFrame,
) -> Result<(), quinn::WriteError> {
    let mut header = [0u8; crate::frame::RESPONSE_HEADER_LEN];
    let mut h = &mut header[..];
    h.put_u8(frame.status);
    h.put_u32(frame.request_id);
    h.put_u32(u32::try_from(frame.payload.len()).unwrap_or(u32::MAX));
    write_frame(send, &header, &frame.payload).await
}

/// Writes a push frame.
pub(crate) async fn write_push(
    send: &mut SendStream,
    frame: &PushFrame,
) -> Result<(), quinn::WriteError> {
    let mut header = [0u8; crate::frame::PUSH_HEADER_LEN];
    let mut h = &mut header[..];
    h.put_u16(frame.event_type);
    h.put_u32(u32::try_from(frame.payload.len()).unwrap_or(u32::MAX));
    write_frame(send, &header, &frame.payload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_never_runs_far_ahead_of_received_bytes() {
        // A request header announcing 4 MiB, with no payload yet.
        let mut buf = BytesMut::from(&[0u8, 1, 0, 0, 0, 1, 0, 0x40, 0, 0][..]);
        reserve_frame(&mut buf, crate::frame::REQUEST_HEADER_LEN);
        assert!(buf.capacity() >= MAX_RESERVE_AHEAD);
        assert!(
            buf.capacity() <= 2 * (10 + MAX_RESERVE_AHEAD),
            "reserved {}",
            buf.capacity()
        );
    }

    #[test]
    fn a_small_frame_gets_room_for_all_of_it() {
        // A push header announcing 1000 bytes.
        let mut buf = BytesMut::from(&[0u8, 7, 0, 0, 0x03, 0xE8][..]);
        reserve_frame(&mut buf, crate::frame::PUSH_HEADER_LEN);
        assert!(buf.capacity() >= 1006);
        // Less than a header: nothing to do.
        let mut short = BytesMut::from(&[0u8, 7][..]);
        reserve_frame(&mut short, crate::frame::PUSH_HEADER_LEN);
        assert_eq!(short.len(), 2);
    }
}
