//! The sans-IO frame codec (wire protocol, `docs/wire-protocol.md`).
//!
//! Every integer is big-endian. Three frame shapes exist:
//!
//! ```text
//! Request frame:   [method_id: u16][request_id: u32][payload_len: u32][payload]
//! Response frame:  [status: u8]   [request_id: u32][payload_len: u32][payload]
//! Push frame:      [event_type: u16][payload_len: u32][payload]
//! ```
//!
//! Nothing here touches a socket or a clock. Encoders write into any [`BufMut`]; the incremental
//! decoders ([`RequestFrame::decode`] and friends) consume whole frames from a [`BytesMut`] and
//! leave partial ones in place, and [`RequestFrame::decode_exact`] decodes exactly one frame and
//! rejects trailing bytes. The payload length is checked against a limit *before* any payload
//! is buffered, so a peer cannot make the receiver allocate more than the limit.

// Public for the fuzz targets (feature `fuzzing`); the rest of qrpc uses part of it.
#![cfg_attr(not(feature = "fuzzing"), allow(dead_code, unreachable_pub))]

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Default upper bound for one frame's payload: 4 MiB.
pub const DEFAULT_MAX_PAYLOAD: u32 = 4 * 1024 * 1024;

/// Size in bytes of a request frame header.
pub const REQUEST_HEADER_LEN: usize = 10;
/// Size in bytes of a response frame header.
pub const RESPONSE_HEADER_LEN: usize = 9;
/// Size in bytes of a push frame header.
pub const PUSH_HEADER_LEN: usize = 6;

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The header announced a payload longer than the configured limit.
    #[error("frame payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        /// Announced payload length.
        len: u32,
        /// Configured limit.
        max: u32,
    },
    /// The input ended before the frame was complete.
    #[error("truncated frame: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes the complete frame needs.
        needed: usize,
        /// Bytes that were available.
        available: usize,
    },
    /// Bytes followed a complete frame where exactly one frame was expected.
    #[error("{0} trailing bytes after a complete frame")]
    TrailingBytes(usize),
}

/// The header of a request frame, decoded before its payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Method being called.
    pub method_id: u16,
    /// Caller-chosen id, echoed in every response frame of the call.
    pub request_id: u32,
    /// Length of the payload that follows.
    pub payload_len: u32,
}

impl RequestHeader {
    /// The header's wire bytes.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        let mut b = &mut out[..];
        b.put_u16(self.method_id);
        b.put_u32(self.request_id);
        b.put_u32(self.payload_len);
        out
    }

    /// Reads a request header from the front of `buf` without consuming it.
    ///
    /// Returns `Ok(None)` when fewer than [`REQUEST_HEADER_LEN`] bytes are available, and an
    /// error when the announced payload is larger than `max_payload`.
    pub fn peek(buf: &[u8], max_payload: u32) -> Result<Option<Self>, FrameError> {
        let Some(mut h) = buf.get(..REQUEST_HEADER_LEN) else {
            return Ok(None);
        };
        let header = Self {
            method_id: h.get_u16(),
            request_id: h.get_u32(),
            payload_len: h.get_u32(),
        };
        check_len(header.payload_len, max_payload)?;
        Ok(Some(header))
    }
}

/// The header of a response frame, decoded before its payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHeader {
    /// Status code: 0 is OK, other values follow gRPC numbering.
    pub status: u8,
    /// The request id of the call this frame answers.
    pub request_id: u32,
    /// Length of the payload that follows.
    pub payload_len: u32,
}

impl ResponseHeader {
    /// The header's wire bytes.
    pub fn encode(&self) -> [u8; RESPONSE_HEADER_LEN] {
        let mut out = [0u8; RESPONSE_HEADER_LEN];
        let mut b = &mut out[..];
        b.put_u8(self.status);
        b.put_u32(self.request_id);
        b.put_u32(self.payload_len);
        out
    }

    /// Reads a response header from the front of `buf` without consuming it.
    pub fn peek(buf: &[u8], max_payload: u32) -> Result<Option<Self>, FrameError> {
        let Some(mut h) = buf.get(..RESPONSE_HEADER_LEN) else {
            return Ok(None);
        };
        let header = Self {
            status: h.get_u8(),
            request_id: h.get_u32(),
            payload_len: h.get_u32(),
        };
        check_len(header.payload_len, max_payload)?;
        Ok(Some(header))
    }
}

/// The header of a push frame, decoded before its payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushHeader {
    /// Application-defined event type.
    pub event_type: u16,
    /// Length of the payload that follows.
    pub payload_len: u32,
}

impl PushHeader {
    /// The header's wire bytes.
    pub fn encode(&self) -> [u8; PUSH_HEADER_LEN] {
        let mut out = [0u8; PUSH_HEADER_LEN];
        let mut b = &mut out[..];
        b.put_u16(self.event_type);
        b.put_u32(self.payload_len);
        out
    }

    /// Reads a push header from the front of `buf` without consuming it.
    pub fn peek(buf: &[u8], max_payload: u32) -> Result<Option<Self>, FrameError> {
        let Some(mut h) = buf.get(..PUSH_HEADER_LEN) else {
            return Ok(None);
        };
        let header = Self {
            event_type: h.get_u16(),
            payload_len: h.get_u32(),
        };
        check_len(header.payload_len, max_payload)?;
        Ok(Some(header))
    }
}

fn check_len(len: u32, max: u32) -> Result<(), FrameError> {
    if len > max {
        Err(FrameError::PayloadTooLarge { len, max })
    } else {
        Ok(())
    }
}

/// Converts a payload length to the `u32` the wire carries.
///
/// Payloads above `u32::MAX` cannot be framed; callers check their own (much lower) limit first,
/// so this only saturates to keep the encoder total.
fn wire_len(payload: &Bytes) -> u32 {
    u32::try_from(payload.len()).unwrap_or(u32::MAX)
}

macro_rules! frame_codec {
    ($frame:ident, $header:ident, $header_len:expr, |$h:ident| $build:expr) => {
        impl $frame {
            /// Decodes one complete frame from the front of `buf`, consuming it.
            ///
            /// Returns `Ok(None)` and consumes nothing when `buf` holds only part of a frame.
            pub fn decode(
                buf: &mut BytesMut,
                max_payload: u32,
            ) -> Result<Option<Self>, FrameError> {
                let Some($h) = $header::peek(buf, max_payload)? else {
                    return Ok(None);
                };
                let total = $header_len + $h.payload_len as usize;
                if buf.len() < total {
                    return Ok(None);
                }
                buf.advance($header_len);
                let payload = buf.split_to($h.payload_len as usize).freeze();
                let $h = ($h, payload);
                Ok(Some($build))
            }

            /// Decodes exactly one frame from `bytes`, rejecting truncation and trailing bytes.
            pub fn decode_exact(bytes: &[u8], max_payload: u32) -> Result<Self, FrameError> {
                let header = $header::peek(bytes, max_payload)?.ok_or(FrameError::Truncated {
                    needed: $header_len,
                    available: bytes.len(),
                })?;
                let total = $header_len + header.payload_len as usize;
                match bytes.len().cmp(&total) {
                    std::cmp::Ordering::Less => Err(FrameError::Truncated {
                        needed: total,
                        available: bytes.len(),
                    }),
                    std::cmp::Ordering::Greater => {
                        Err(FrameError::TrailingBytes(bytes.len() - total))
                    }
                    std::cmp::Ordering::Equal => {
                        let payload = Bytes::copy_from_slice(&bytes[$header_len..]);
                        let $h = (header, payload);
                        Ok($build)
                    }
                }
            }

            /// Length of the encoded frame in bytes.
            pub fn encoded_len(&self) -> usize {
                $header_len + self.payload.len()
            }

            /// Encodes the frame into a fresh buffer.
            pub fn to_bytes(&self) -> Bytes {
                let mut buf = BytesMut::with_capacity(self.encoded_len());
                self.encode(&mut buf);
                buf.freeze()
            }
        }
    };
}

/// One request frame: a message sent by the client on a call's bidirectional stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFrame {
    /// Method being called.
    pub method_id: u16,
    /// Caller-chosen request id.
    pub request_id: u32,
    /// Protobuf-encoded message (may be empty).
    pub payload: Bytes,
}

impl RequestFrame {
    /// The frame's header.
    pub fn header(&self) -> RequestHeader {
        RequestHeader {
            method_id: self.method_id,
            request_id: self.request_id,
            payload_len: wire_len(&self.payload),
        }
    }

    /// Encodes the frame into `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.header().encode());
        buf.put_slice(&self.payload);
    }
}

frame_codec!(RequestFrame, RequestHeader, REQUEST_HEADER_LEN, |h| {
    RequestFrame {
        method_id: h.0.method_id,
        request_id: h.0.request_id,
        payload: h.1,
    }
});

/// One response frame: a message or a final status sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseFrame {
    /// Status code: 0 is OK; anything else ends the call.
    pub status: u8,
    /// The request id of the call.
    pub request_id: u32,
    /// Protobuf-encoded response message, or an `ErrorStatus` when `status != 0`.
    pub payload: Bytes,
}

impl ResponseFrame {
    /// The frame's header.
    pub fn header(&self) -> ResponseHeader {
        ResponseHeader {
            status: self.status,
            request_id: self.request_id,
            payload_len: wire_len(&self.payload),
        }
    }

    /// Encodes the frame into `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.header().encode());
        buf.put_slice(&self.payload);
    }
}

frame_codec!(ResponseFrame, ResponseHeader, RESPONSE_HEADER_LEN, |h| {
    ResponseFrame {
        status: h.0.status,
        request_id: h.0.request_id,
        payload: h.1,
    }
});

/// One push frame: an event sent by the server on its push stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushFrame {
    /// Application-defined event type.
    pub event_type: u16,
    /// Protobuf-encoded event.
    pub payload: Bytes,
}

impl PushFrame {
    /// The frame's header.
    pub fn header(&self) -> PushHeader {
        PushHeader {
            event_type: self.event_type,
            payload_len: wire_len(&self.payload),
        }
    }

    /// Encodes the frame into `buf`.
    pub fn encode(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.header().encode());
        buf.put_slice(&self.payload);
    }
}

frame_codec!(PushFrame, PushHeader, PUSH_HEADER_LEN, |h| PushFrame {
    event_type: h.0.event_type,
    payload: h.1,
});

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_layout_is_big_endian() {
        let frame = RequestFrame {
            method_id: 0x0102,
            request_id: 0x0304_0506,
            payload: Bytes::from_static(b"hi"),
        };
        assert_eq!(
            &frame.to_bytes()[..],
            &[1, 2, 3, 4, 5, 6, 0, 0, 0, 2, b'h', b'i']
        );
    }

    #[test]
    fn response_and_push_layouts() {
        let resp = ResponseFrame {
            status: 5,
            request_id: 7,
            payload: Bytes::new(),
        };
        assert_eq!(&resp.to_bytes()[..], &[5, 0, 0, 0, 7, 0, 0, 0, 0]);
        let push = PushFrame {
            event_type: 0xABCD,
            payload: Bytes::from_static(b"x"),
        };
        assert_eq!(&push.to_bytes()[..], &[0xAB, 0xCD, 0, 0, 0, 1, b'x']);
    }

    #[test]
    fn incremental_decode_waits_for_whole_frame() {
        let frame = RequestFrame {
            method_id: 1,
            request_id: 2,
            payload: Bytes::from_static(b"payload"),
        };
        let bytes = frame.to_bytes();
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.put_u8(*b);
            let got = RequestFrame::decode(&mut buf, 1024).unwrap();
            if i + 1 < bytes.len() {
                assert!(got.is_none());
            } else {
                assert_eq!(got, Some(frame.clone()));
                assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn oversize_is_rejected_from_the_header_alone() {
        let mut buf = BytesMut::from(&[0u8, 1, 0, 0, 0, 1, 0, 0, 4, 1][..]);
        assert_eq!(
            RequestFrame::decode(&mut buf, 1024),
            Err(FrameError::PayloadTooLarge {
                len: 1025,
                max: 1024
            })
        );
    }

    #[test]
    fn limit_is_inclusive() {
        let frame = PushFrame {
            event_type: 1,
            payload: Bytes::from(vec![0u8; 16]),
        };
        assert!(PushFrame::decode_exact(&frame.to_bytes(), 16).is_ok());
        assert!(matches!(
            PushFrame::decode_exact(&frame.to_bytes(), 15),
            Err(FrameError::PayloadTooLarge { len: 16, max: 15 })
        ));
    }

    #[test]
    fn exact_decode_rejects_truncation_and_trailing_bytes() {
        let frame = ResponseFrame {
            status: 0,
            request_id: 9,
            payload: Bytes::from_static(b"abc"),
        };
        let bytes = frame.to_bytes();
        assert_eq!(
            ResponseFrame::decode_exact(&bytes[..bytes.len() - 1], 64),
            Err(FrameError::Truncated {
                needed: 12,
                available: 11
            })
        );
        assert_eq!(
            ResponseFrame::decode_exact(&bytes[..4], 64),
            Err(FrameError::Truncated {
                needed: 9,
                available: 4
            })
        );
        let mut long = bytes.to_vec();
        long.push(0);
        assert_eq!(
            ResponseFrame::decode_exact(&long, 64),
            Err(FrameError::TrailingBytes(1))
        );
    }

    proptest! {
        #[test]
        fn request_round_trip(method_id: u16, request_id: u32, payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let frame = RequestFrame { method_id, request_id, payload: Bytes::from(payload) };
            let bytes = frame.to_bytes();
            prop_assert_eq!(RequestFrame::decode_exact(&bytes, 512).unwrap(), frame.clone());
            let mut buf = BytesMut::from(&bytes[..]);
            prop_assert_eq!(RequestFrame::decode(&mut buf, 512).unwrap(), Some(frame));
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn response_round_trip(status: u8, request_id: u32, payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let frame = ResponseFrame { status, request_id, payload: Bytes::from(payload) };
            prop_assert_eq!(ResponseFrame::decode_exact(&frame.to_bytes(), 512).unwrap(), frame);
        }

        #[test]
        fn push_round_trip(event_type: u16, payload in proptest::collection::vec(any::<u8>(), 0..512)) {
            let frame = PushFrame { event_type, payload: Bytes::from(payload) };
            prop_assert_eq!(PushFrame::decode_exact(&frame.to_bytes(), 512).unwrap(), frame);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), max in 0u32..128) {
            let _ = RequestFrame::decode_exact(&bytes, max);
            let _ = ResponseFrame::decode_exact(&bytes, max);
            let _ = PushFrame::decode_exact(&bytes, max);
            let mut buf = BytesMut::from(&bytes[..]);
            // Drain whole frames until the decoder needs more input or reports an error.
            while let Ok(Some(frame)) = RequestFrame::decode(&mut buf, max) {
                prop_assert!(frame.payload.len() <= max as usize);
            }
        }
    }
}
