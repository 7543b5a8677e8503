//! The rules of one call, without I/O, in the style of quinn-proto: state machines fed what
//! happened on a call's receive stream (bytes, FIN, reset, a timer) that say what the call
//! sees next. The async code in `server` and `client` only moves bytes between QUIC streams
//! and these machines, so every rule — opening frame, method and request-id matching, the end
//! of single-response calls, limits, reset codes — is decided here, where it is property-tested
//! and fuzzed (`fuzz/fuzz_targets/call_state.rs`).
//!
//! * [`ServerCallState`] reads a call's request stream on the server.
//! * [`ClientCallState`] reads a call's response stream on the client.
//!
//! Both take [`StreamInput`]s with `handle` and give events with `poll` until a terminal
//! event; after it, `poll` returns `None` forever and inputs are ignored.

// Public for the fuzz targets (feature `fuzzing`); the rest of qrpc uses part of it.
#![cfg_attr(not(feature = "fuzzing"), allow(dead_code, unreachable_pub))]

use bytes::{Bytes, BytesMut};

use crate::extension::{EXTENSION_METHOD_ID, EXTENSION_STATUS, MAX_EXTENSION_LEN};
use crate::frame::{
    FrameError, REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN, RequestFrame, RequestHeader,
    ResponseFrame, ResponseHeader,
};
use crate::protocol::{VarInt, reset};
use crate::status::{Code, Status};

/// What happened on a call's receive stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamInput {
    /// Bytes received, in stream order.
    Data(Bytes),
    /// The peer finished the stream (FIN).
    Fin,
    /// The peer reset the stream with this application error code.
    Reset(u64),
    /// The connection was lost (the text says why).
    ConnectionLost(String),
    /// The stream failed otherwise (for example 0-RTT data the server rejected).
    Failed(String),
}

/// How the server ends a call whose request stream broke the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// The status to answer with and the request id to answer under, when an answer is
    /// possible (when `reset` is set, no answer is sent).
    pub answer: Option<(u32, Status)>,
    /// `STOP_SENDING` code for the request stream.
    pub stop: Option<VarInt>,
    /// `RESET_STREAM` code for the response stream.
    pub reset: Option<VarInt>,
}

/// What the server sees of a call's request stream.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestEvent {
    /// An extension frame before the opening frame: the payload of the call's extension
    /// (`docs/wire-protocol.md` §11). At most one, always first.
    Extension(Bytes),
    /// Terminal: an extension frame and then the end of the stream, without an opening frame:
    /// the client asks whether this server speaks the extension; answer under `request_id`.
    Probe {
        /// The probe's request id.
        request_id: u32,
    },
    /// The opening frame: the call can be dispatched.
    Open(RequestFrame),
    /// A later request message (client-streaming and bidi calls).
    Message(Bytes),
    /// Terminal: the client finished its requests.
    End,
    /// Terminal: the client reset the request stream, or the connection was lost.
    Cancelled,
    /// Terminal: the request stream broke the rules.
    Rejected(Rejection),
}

/// How far ahead of the received bytes a frame buffer may be reserved: a peer that announces
/// a large payload and sends nothing cannot make the receiver allocate it.
const MAX_RESERVE_AHEAD: usize = 256 * 1024;

/// Makes room for the rest of a frame once its header is buffered (so a payload arriving in
/// many packets is not copied through repeated reallocations), at most [`MAX_RESERVE_AHEAD`]
/// past the bytes received.
pub(crate) fn reserve_frame(buf: &mut BytesMut, header_len: usize, payload_len: Option<u32>) {
    if let Some(payload_len) = payload_len {
        let missing = (header_len + payload_len as usize).saturating_sub(buf.len());
        buf.reserve(missing.min(MAX_RESERVE_AHEAD));
    }
}

fn append(buf: &mut BytesMut, data: Bytes) {
    if buf.is_empty() {
        // Take the chunk without copying when nothing is buffered.
        *buf = data
            .try_into_mut()
            .unwrap_or_else(|b| BytesMut::from(&b[..]));
    } else {
        buf.extend_from_slice(&data);
    }
}

/// The end of a receive stream, once known.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    Fin,
    Reset(u64),
    Lost(String),
    Failed(String),
}

impl End {
    fn of(input: StreamInput) -> Result<Bytes, Self> {
        match input {
            StreamInput::Data(data) => Ok(data),
            StreamInput::Fin => Err(Self::Fin),
            StreamInput::Reset(code) => Err(Self::Reset(code)),
            StreamInput::ConnectionLost(why) => Err(Self::Lost(why)),
            StreamInput::Failed(why) => Err(Self::Failed(why)),
        }
    }
}

/// [`MAX_EXTENSION_LEN`] as a frame payload length.
fn extension_limit() -> u32 {
    u32::try_from(MAX_EXTENSION_LEN).unwrap_or(u32::MAX)
}

/// Reads one call's request stream on the server.
#[derive(Debug)]
pub struct ServerCallState {
    buf: BytesMut,
    max_payload: u32,
    /// Method and request id of the opening frame, once it arrived.
    opened: Option<(u16, u32)>,
    /// Request id of the extension frame, once it arrived.
    extension: Option<u32>,
    end: Option<End>,
    done: bool,
}

impl ServerCallState {
    /// A call whose request frames may carry at most `max_payload` bytes each.
    pub fn new(max_payload: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            max_payload,
            opened: None,
            extension: None,
            end: None,
            done: false,
        }
    }

    /// Feeds what happened on the request stream.
    pub fn handle(&mut self, input: StreamInput) {
        if self.done || self.end.is_some() {
            return;
        }
        match End::of(input) {
            Ok(data) => append(&mut self.buf, data),
            Err(end) => self.end = Some(end),
        }
    }

    /// The header timeout fired: a call that has not opened yet ends (both directions reset
    /// with `HEADER_TIMEOUT`); an open call is unaffected and `None` is returned.
    pub fn header_timeout(&mut self) -> Option<Rejection> {
        if self.done || self.opened.is_some() {
            return None;
        }
        self.done = true;
        Some(Rejection {
            answer: None,
            stop: Some(reset::HEADER_TIMEOUT),
            reset: Some(reset::HEADER_TIMEOUT),
        })
    }

    /// Whether the opening frame has arrived.
    pub fn is_open(&self) -> bool {
        self.opened.is_some()
    }

    /// Whether a terminal event was given.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The next event, or `None` until more input arrives (or forever, once done).
    pub fn poll(&mut self) -> Option<RequestEvent> {
        if self.done {
            return None;
        }
        if self.opened.is_none() && self.extension.is_none() {
            // An extension frame has a smaller limit than a request: refused on its header,
            // before its payload is buffered.
            if let Ok(Some(h)) = RequestHeader::peek(&self.buf, u32::MAX) {
                if h.method_id == EXTENSION_METHOD_ID && h.payload_len > extension_limit() {
                    let too_large = FrameError::PayloadTooLarge {
                        len: h.payload_len,
                        max: extension_limit(),
                    };
                    return Some(self.reject_frame(&too_large));
                }
            }
        }
        match RequestFrame::decode(&mut self.buf, self.max_payload) {
            Ok(Some(frame)) => return Some(self.frame(frame)),
            Ok(None) => {}
            Err(err) => return Some(self.reject_frame(&err)),
        }
        let header = RequestHeader::peek(&self.buf, u32::MAX).ok().flatten();
        reserve_frame(
            &mut self.buf,
            REQUEST_HEADER_LEN,
            header.map(|h| h.payload_len),
        );
        let end = self.end.clone()?;
        self.done = true;
        Some(match end {
            End::Fin if self.buf.is_empty() && self.opened.is_some() => RequestEvent::End,
            End::Fin if self.buf.is_empty() && self.extension.is_some() => RequestEvent::Probe {
                request_id: self.extension.unwrap_or_default(),
            },
            // FIN with no frame at all: nothing to answer.
            End::Fin if self.buf.is_empty() => RequestEvent::Rejected(Rejection {
                answer: None,
                stop: None,
                reset: Some(reset::PROTOCOL_ERROR),
            }),
            End::Fin => {
                let (request_id, what) = match (self.opened, header) {
                    (Some((_, id)), _) => (id, "stream ended inside a request frame"),
                    (None, Some(h)) => (h.request_id, "stream ended inside the request frame"),
                    (None, None) => (0, "stream ended inside the request frame"),
                };
                RequestEvent::Rejected(Rejection {
                    answer: Some((request_id, Status::invalid_argument(what))),
                    stop: None,
                    reset: None,
                })
            }
            End::Reset(_) | End::Lost(_) | End::Failed(_) => RequestEvent::Cancelled,
        })
    }

    fn frame(&mut self, frame: RequestFrame) -> RequestEvent {
        match (self.opened, self.extension) {
            (None, None) if frame.method_id == EXTENSION_METHOD_ID => {
                self.extension = Some(frame.request_id);
                RequestEvent::Extension(frame.payload)
            }
            (None, Some(request_id))
                if frame.method_id == EXTENSION_METHOD_ID || frame.request_id != request_id =>
            {
                self.done = true;
                RequestEvent::Rejected(Rejection {
                    answer: Some((
                        request_id,
                        Status::invalid_argument(
                            "the frame after an extension frame must open the same call",
                        ),
                    )),
                    stop: Some(reset::PROTOCOL_ERROR),
                    reset: None,
                })
            }
            (None, _) => {
                self.opened = Some((frame.method_id, frame.request_id));
                RequestEvent::Open(frame)
            }
            (Some((method_id, request_id)), _)
                if frame.method_id == method_id && frame.request_id == request_id =>
            {
                RequestEvent::Message(frame.payload)
            }
            (Some((_, request_id)), _) => {
                self.done = true;
                RequestEvent::Rejected(Rejection {
                    answer: Some((
                        request_id,
                        Status::invalid_argument("request frame belongs to another call"),
                    )),
                    stop: Some(reset::PROTOCOL_ERROR),
                    reset: None,
                })
            }
        }
    }

    fn reject_frame(&mut self, err: &FrameError) -> RequestEvent {
        self.done = true;
        let request_id = self
            .opened
            .map(|(_, id)| id)
            .or(self.extension)
            .unwrap_or_else(|| {
                RequestHeader::peek(&self.buf, u32::MAX)
                    .ok()
                    .flatten()
                    .map_or(0, |h| h.request_id)
            });
        let (status, stop) = match err {
            FrameError::PayloadTooLarge { len, max } => (
                Status::resource_exhausted(format!(
                    "request payload of {len} bytes exceeds the limit of {max} bytes"
                )),
                reset::PAYLOAD_TOO_LARGE,
            ),
            other => (
                Status::invalid_argument(other.to_string()),
                reset::PROTOCOL_ERROR,
            ),
        };
        RequestEvent::Rejected(Rejection {
            answer: Some((request_id, status)),
            stop: Some(stop),
            reset: None,
        })
    }
}

/// What the client sees of a call's response stream.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseEvent {
    /// The server's extension frame (response metadata), before any message; only when the
    /// request carried one.
    Extension(Bytes),
    /// A response message.
    Message(Bytes),
    /// Terminal: the call ended with this error status.
    Failed(Status),
    /// Terminal: the call ended without error.
    End,
}

/// Reads one call's response stream on the client.
#[derive(Debug)]
pub struct ClientCallState {
    buf: BytesMut,
    max_payload: u32,
    request_id: u32,
    /// Whether exactly one OK frame ends the call (unary and client-streaming calls).
    single: bool,
    end: Option<End>,
    done: bool,
    /// A single-response call got its response: `End` comes next.
    answered: bool,
    /// The request carried an extension frame, and no frame has come back yet: the server
    /// may answer with an extension frame first.
    extension_allowed: bool,
}

impl ClientCallState {
    /// The response side of call `request_id`; `single` for unary and client-streaming
    /// calls, whose one OK frame ends the call.
    pub fn new(request_id: u32, single: bool, max_payload: u32) -> Self {
        Self {
            buf: BytesMut::new(),
            max_payload,
            request_id,
            single,
            end: None,
            done: false,
            answered: false,
            extension_allowed: false,
        }
    }

    /// The request carried an extension frame, so the first response frame may be the
    /// server's extension frame (status 255).
    pub fn accept_extension(mut self) -> Self {
        self.extension_allowed = true;
        self
    }

    /// Feeds what happened on the response stream.
    pub fn handle(&mut self, input: StreamInput) {
        if self.done || self.answered || self.end.is_some() {
            return;
        }
        match End::of(input) {
            Ok(data) => append(&mut self.buf, data),
            Err(end) => self.end = Some(end),
        }
    }

    /// Whether a terminal event was given.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The caller ended the call itself (its deadline passed, or a response extension was
    /// malformed): no more events.
    pub fn abandon(&mut self) {
        self.done = true;
    }

    /// Whether reading more can change the outcome: false once a single-response call has its
    /// response or the call ended (the caller then stops reading the stream).
    pub fn wants_input(&self) -> bool {
        !self.done && !self.answered
    }

    /// The next event, or `None` until more input arrives (or forever, once done).
    pub fn poll(&mut self) -> Option<ResponseEvent> {
        if self.done {
            return None;
        }
        if self.answered {
            self.done = true;
            return Some(ResponseEvent::End);
        }
        if self.extension_allowed {
            if let Ok(Some(h)) = ResponseHeader::peek(&self.buf, u32::MAX) {
                if h.status == EXTENSION_STATUS && h.payload_len > extension_limit() {
                    return Some(self.fail(Status::resource_exhausted(format!(
                        "response extension of {} bytes exceeds the limit of {} bytes",
                        h.payload_len,
                        extension_limit()
                    ))));
                }
            }
        }
        match ResponseFrame::decode(&mut self.buf, self.max_payload) {
            Ok(Some(frame)) => return Some(self.frame(frame)),
            Ok(None) => {}
            Err(FrameError::PayloadTooLarge { len, max }) => {
                return Some(self.fail(Status::resource_exhausted(format!(
                    "response payload of {len} bytes exceeds the client limit of {max} bytes"
                ))));
            }
            Err(other) => {
                return Some(self.fail(Status::internal(format!("malformed response: {other}"))));
            }
        }
        let header = ResponseHeader::peek(&self.buf, u32::MAX).ok().flatten();
        reserve_frame(
            &mut self.buf,
            RESPONSE_HEADER_LEN,
            header.map(|h| h.payload_len),
        );
        let end = self.end.clone()?;
        Some(match end {
            End::Fin if self.buf.is_empty() => {
                self.done = true;
                ResponseEvent::End
            }
            End::Fin => self.fail(Status::internal(
                "server ended the stream inside a response frame",
            )),
            End::Reset(code) => self.fail(reset_status(code)),
            End::Lost(why) => self.fail(Status::unavailable(format!("connection lost: {why}"))),
            End::Failed(why) => self.fail(Status::unavailable(format!(
                "response stream failed: {why}"
            ))),
        })
    }

    fn frame(&mut self, frame: ResponseFrame) -> ResponseEvent {
        if frame.request_id != self.request_id {
            return self.fail(Status::internal(format!(
                "response for request {} on the stream of request {}",
                frame.request_id, self.request_id
            )));
        }
        if std::mem::take(&mut self.extension_allowed) && frame.status == EXTENSION_STATUS {
            return ResponseEvent::Extension(frame.payload);
        }
        if frame.status != Code::Ok.as_u8() {
            return self.fail(Status::from_wire(frame.status, &frame.payload));
        }
        if self.single {
            self.answered = true;
        }
        ResponseEvent::Message(frame.payload)
    }

    fn fail(&mut self, status: Status) -> ResponseEvent {
        self.done = true;
        ResponseEvent::Failed(status)
    }
}

/// The status a client reports for a call the server reset with `code`.
pub fn reset_status(code: u64) -> Status {
    match VarInt::from_u64(code) {
        Ok(c) if c == reset::REFUSED => {
            Status::unavailable("server is shutting down and refused the call")
        }
        Ok(c) if c == reset::HEADER_TIMEOUT => {
            Status::deadline_exceeded("server timed out waiting for the request frame")
        }
        Ok(c) if c == reset::PROTOCOL_ERROR => {
            Status::internal("server reset the call: protocol error")
        }
        Ok(c) if c == reset::CANCELLED => Status::cancelled("server cancelled the call"),
        Ok(c) if c == reset::TOO_EARLY => Status::unavailable(
            "server refused a call sent in 0-RTT data (its method is not idempotent); retry",
        ),
        _ => Status::unknown(format!("server reset the call with code {code}")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn request(method_id: u16, request_id: u32, payload: &[u8]) -> Bytes {
        RequestFrame {
            method_id,
            request_id,
            payload: Bytes::copy_from_slice(payload),
        }
        .to_bytes()
    }

    fn response(status: u8, request_id: u32, payload: &[u8]) -> Bytes {
        ResponseFrame {
            status,
            request_id,
            payload: Bytes::copy_from_slice(payload),
        }
        .to_bytes()
    }

    /// Splits `bytes` at `cuts` (positions taken modulo the length).
    fn chunks(bytes: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut points: Vec<usize> = cuts
            .iter()
            .map(|c| if bytes.is_empty() { 0 } else { c % bytes.len() })
            .collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        points.dedup();
        points
            .windows(2)
            .map(|w| Bytes::copy_from_slice(&bytes[w[0]..w[1]]))
            .collect()
    }

    fn run_server(inputs: Vec<StreamInput>, max_payload: u32) -> Vec<RequestEvent> {
        let mut state = ServerCallState::new(max_payload);
        let mut events = Vec::new();
        for input in inputs {
            state.handle(input);
            while let Some(event) = state.poll() {
                events.push(event);
            }
        }
        events
    }

    fn run_client(inputs: Vec<StreamInput>, single: bool, max_payload: u32) -> Vec<ResponseEvent> {
        let mut state = ClientCallState::new(9, single, max_payload);
        let mut events = Vec::new();
        for input in inputs {
            state.handle(input);
            while let Some(event) = state.poll() {
                events.push(event);
            }
        }
        events
    }

    fn is_terminal(event: &RequestEvent) -> bool {
        matches!(
            event,
            RequestEvent::End | RequestEvent::Cancelled | RequestEvent::Rejected(_)
        )
    }

    #[test]
    fn a_streaming_request_opens_carries_messages_and_ends() {
        let mut wire = request(4, 7, b"").to_vec();
        wire.extend_from_slice(&request(4, 7, b"one"));
        wire.extend_from_slice(&request(4, 7, b"two"));
        let events = run_server(vec![StreamInput::Data(wire.into()), StreamInput::Fin], 1024);
        assert_eq!(events.len(), 4);
        assert!(
            matches!(&events[0], RequestEvent::Open(f) if f.method_id == 4 && f.request_id == 7)
        );
        assert_eq!(events[1], RequestEvent::Message(Bytes::from_static(b"one")));
        assert_eq!(events[2], RequestEvent::Message(Bytes::from_static(b"two")));
        assert_eq!(events[3], RequestEvent::End);
    }

    #[test]
    fn rule_breaking_request_streams_are_rejected_with_the_documented_codes() {
        // FIN with no frame: reset, no answer.
        let events = run_server(vec![StreamInput::Fin], 1024);
        assert_eq!(
            events,
            vec![RequestEvent::Rejected(Rejection {
                answer: None,
                stop: None,
                reset: Some(reset::PROTOCOL_ERROR)
            })]
        );
        // A frame of another call: INVALID_ARGUMENT under the call's id, STOP_SENDING.
        let mut wire = request(4, 7, b"").to_vec();
        wire.extend_from_slice(&request(4, 8, b"x"));
        let events = run_server(vec![StreamInput::Data(wire.into())], 1024);
        let RequestEvent::Rejected(r) = &events[1] else {
            panic!("{events:?}")
        };
        assert_eq!(r.answer.as_ref().unwrap().0, 7);
        assert_eq!(r.answer.as_ref().unwrap().1.code(), Code::InvalidArgument);
        assert_eq!(r.stop, Some(reset::PROTOCOL_ERROR));
        // Over the limit: RESOURCE_EXHAUSTED under the frame's id, before the payload arrives.
        let header = &request(1, 5, &[0; 100])[..REQUEST_HEADER_LEN];
        let events = run_server(vec![StreamInput::Data(Bytes::copy_from_slice(header))], 99);
        let RequestEvent::Rejected(r) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(r.answer.as_ref().unwrap().0, 5);
        assert_eq!(r.answer.as_ref().unwrap().1.code(), Code::ResourceExhausted);
        assert_eq!(r.stop, Some(reset::PAYLOAD_TOO_LARGE));
        // FIN inside the header: INVALID_ARGUMENT under request id 0.
        let events = run_server(
            vec![
                StreamInput::Data(Bytes::from_static(&[0, 1, 0])),
                StreamInput::Fin,
            ],
            1024,
        );
        let RequestEvent::Rejected(r) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(r.answer.as_ref().unwrap().0, 0);
        // A client reset before or after opening cancels.
        assert_eq!(
            run_server(vec![StreamInput::Reset(1)], 1024),
            vec![RequestEvent::Cancelled]
        );
    }

    #[test]
    fn the_header_timeout_ends_only_calls_that_have_not_opened() {
        let mut waiting = ServerCallState::new(1024);
        waiting.handle(StreamInput::Data(Bytes::from_static(&[0, 1])));
        assert_eq!(waiting.poll(), None);
        let r = waiting.header_timeout().unwrap();
        assert_eq!(
            (r.stop, r.reset),
            (Some(reset::HEADER_TIMEOUT), Some(reset::HEADER_TIMEOUT))
        );
        assert_eq!(waiting.poll(), None, "nothing after the end");

        let mut open = ServerCallState::new(1024);
        open.handle(StreamInput::Data(request(1, 1, b"")));
        assert!(matches!(open.poll(), Some(RequestEvent::Open(_))));
        assert_eq!(open.header_timeout(), None);
    }

    #[test]
    fn a_single_response_call_ends_after_its_one_ok_frame() {
        let mut wire = response(0, 9, b"answer").to_vec();
        wire.extend_from_slice(&response(0, 9, b"ignored"));
        let events = run_client(vec![StreamInput::Data(wire.into())], true, 1024);
        assert_eq!(
            events,
            vec![
                ResponseEvent::Message(Bytes::from_static(b"answer")),
                ResponseEvent::End
            ]
        );
        // A streaming call takes every frame until FIN.
        let mut wire = response(0, 9, b"a").to_vec();
        wire.extend_from_slice(&response(0, 9, b"b"));
        let events = run_client(
            vec![StreamInput::Data(wire.into()), StreamInput::Fin],
            false,
            1024,
        );
        assert_eq!(events.len(), 3);
        assert_eq!(events[2], ResponseEvent::End);
    }

    #[test]
    fn responses_that_break_the_rules_fail_the_call() {
        let code = |events: Vec<ResponseEvent>| match events.last() {
            Some(ResponseEvent::Failed(s)) => s.code(),
            other => panic!("{other:?}"),
        };
        // Another call's response.
        let wire = response(0, 10, b"x");
        assert_eq!(
            code(run_client(vec![StreamInput::Data(wire)], true, 1024)),
            Code::Internal
        );
        // An error status ends the call with it.
        let status = Status::not_found("gone");
        let wire = response(Code::NotFound.as_u8(), 9, &status.to_payload());
        assert_eq!(
            code(run_client(vec![StreamInput::Data(wire)], false, 1024)),
            Code::NotFound
        );
        // Truncated, oversize, reset, lost.
        let wire = response(0, 9, b"abc");
        let cut = wire.slice(..wire.len() - 1);
        assert_eq!(
            code(run_client(
                vec![StreamInput::Data(cut), StreamInput::Fin],
                true,
                1024
            )),
            Code::Internal
        );
        assert_eq!(
            code(run_client(vec![StreamInput::Data(wire)], true, 2)),
            Code::ResourceExhausted
        );
        for (c, expected) in [
            (reset::REFUSED, Code::Unavailable),
            (reset::HEADER_TIMEOUT, Code::DeadlineExceeded),
            (reset::PROTOCOL_ERROR, Code::Internal),
            (reset::CANCELLED, Code::Cancelled),
            (reset::TOO_EARLY, Code::Unavailable),
        ] {
            let events = run_client(vec![StreamInput::Reset(c.into_inner())], true, 1024);
            assert_eq!(code(events), expected, "reset {c}");
        }
        assert_eq!(
            code(run_client(
                vec![StreamInput::ConnectionLost("x".into())],
                true,
                1024
            )),
            Code::Unavailable
        );
    }

    /// Request frames of one call, as a client would send them.
    fn call_frames() -> impl Strategy<Value = (u16, u32, Vec<Vec<u8>>)> {
        (
            any::<u16>(),
            any::<u32>(),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
        )
    }

    proptest! {
        /// However the bytes are cut into chunks, a valid request stream gives the same
        /// events: Open, one Message per later frame, End.
        #[test]
        fn request_events_do_not_depend_on_chunking(
            (method_id, request_id, payloads) in call_frames(),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut wire = Vec::new();
            for p in &payloads {
                wire.extend_from_slice(&request(method_id, request_id, p));
            }
            let mut inputs: Vec<StreamInput> =
                chunks(&wire, &cuts).into_iter().map(StreamInput::Data).collect();
            inputs.push(StreamInput::Fin);
            let events = run_server(inputs, 64);
            prop_assert_eq!(events.len(), payloads.len() + 1);
            prop_assert!(
                matches!(&events[0], RequestEvent::Open(f) if f.method_id == method_id
                    && f.request_id == request_id && f.payload[..] == payloads[0][..])
            );
            for (event, payload) in events[1..payloads.len()].iter().zip(&payloads[1..]) {
                prop_assert_eq!(event, &RequestEvent::Message(Bytes::copy_from_slice(payload)));
            }
            prop_assert_eq!(events.last(), Some(&RequestEvent::End));
        }

        /// Any sequence of inputs: no panic, at most one Open and it comes first, exactly one
        /// terminal event once the stream ended, and nothing after it.
        #[test]
        fn arbitrary_request_streams_end_in_exactly_one_terminal_event(
            data in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30), 0..8),
            end in 0u8..4,
            max_payload in 0u32..64,
        ) {
            let mut inputs: Vec<StreamInput> =
                data.into_iter().map(|d| StreamInput::Data(d.into())).collect();
            inputs.push(match end {
                0 => StreamInput::Fin,
                1 => StreamInput::Reset(1),
                2 => StreamInput::ConnectionLost("gone".into()),
                _ => StreamInput::Failed("odd".into()),
            });
            let events = run_server(inputs, max_payload);
            let terminals = events.iter().filter(|e| is_terminal(e)).count();
            prop_assert_eq!(terminals, 1, "{:?}", events);
            prop_assert!(is_terminal(events.last().unwrap()));
            let opens = events.iter().filter(|e| matches!(e, RequestEvent::Open(_))).count();
            prop_assert!(opens <= 1);
            if opens == 1 {
                prop_assert!(matches!(events[0], RequestEvent::Open(_)));
            }
            for event in &events {
                if let RequestEvent::Message(m) | RequestEvent::Open(RequestFrame { payload: m, .. }) = event {
                    prop_assert!(m.len() <= max_payload as usize);
                }
            }
        }

        /// Any sequence of inputs on the client: no panic, exactly one terminal event once the
        /// stream ended, nothing after it, and a single-response call never yields two messages.
        #[test]
        fn arbitrary_response_streams_end_in_exactly_one_terminal_event(
            data in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30), 0..8),
            end in 0u8..3,
            single: bool,
        ) {
            let mut inputs: Vec<StreamInput> =
                data.into_iter().map(|d| StreamInput::Data(d.into())).collect();
            inputs.push(match end {
                0 => StreamInput::Fin,
                1 => StreamInput::Reset(7),
                _ => StreamInput::ConnectionLost("gone".into()),
            });
            let events = run_client(inputs, single, 64);
            let terminal = |e: &ResponseEvent| !matches!(e, ResponseEvent::Message(_));
            prop_assert_eq!(events.iter().filter(|e| terminal(e)).count(), 1, "{:?}", events);
            prop_assert!(terminal(events.last().unwrap()));
            if single {
                prop_assert!(events.iter().filter(|e| !terminal(e)).count() <= 1);
            }
        }

        /// Streams of well-formed frames that mix calls, sizes over the limit and ends, cut
        /// anywhere: the same invariants, on inputs that reach every rule.
        #[test]
        fn frame_streams_that_mix_calls_keep_the_invariants(
            frames in proptest::collection::vec((0usize..3, 0usize..80), 1..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..8),
            end in 0u8..3,
        ) {
            const IDS: [(u16, u32); 3] = [(4, 7), (4, 8), (5, 7)];
            let mut wire = Vec::new();
            for (which, len) in &frames {
                let (m, r) = IDS[*which];
                wire.extend_from_slice(&request(m, r, &vec![1; *len]));
            }
            let mut inputs: Vec<StreamInput> =
                chunks(&wire, &cuts).into_iter().map(StreamInput::Data).collect();
            inputs.push(match end {
                0 => StreamInput::Fin,
                1 => StreamInput::Reset(1),
                _ => StreamInput::ConnectionLost("gone".into()),
            });
            let events = run_server(inputs, 64);
            prop_assert_eq!(events.iter().filter(|e| is_terminal(e)).count(), 1, "{:?}", events);
            prop_assert!(is_terminal(events.last().unwrap()));
            // Every message belongs to the call the first frame opened.
            if let Some(RequestEvent::Open(first)) = events.first() {
                let opened = (first.method_id, first.request_id);
                let accepted = frames
                    .iter()
                    .take_while(|(which, len)| IDS[*which] == opened && *len <= 64)
                    .count();
                let messages = events.iter().filter(|e| matches!(e, RequestEvent::Message(_))).count();
                prop_assert!(messages < accepted.max(1), "{:?}", events);
            }

            // The same frames as responses to call 9 (ids 9 and 10, OK and NOT_FOUND).
            let mut wire = Vec::new();
            for (which, len) in &frames {
                let (status, request_id) = [(0u8, 9u32), (0, 10), (5, 9)][*which];
                wire.extend_from_slice(&response(status, request_id, &vec![2; *len]));
            }
            for single in [true, false] {
                let mut inputs: Vec<StreamInput> =
                    chunks(&wire, &cuts).into_iter().map(StreamInput::Data).collect();
                inputs.push(StreamInput::Fin);
                let events = run_client(inputs, single, 64);
                let terminal = |e: &ResponseEvent| !matches!(e, ResponseEvent::Message(_));
                prop_assert_eq!(events.iter().filter(|e| terminal(e)).count(), 1, "{:?}", events);
                prop_assert!(terminal(events.last().unwrap()));
                let messages = events.len() - 1;
                if single {
                    prop_assert!(messages <= 1, "{:?}", events);
                }
            }
        }

        /// However the bytes are cut, valid responses give the same messages.
        #[test]
        fn response_events_do_not_depend_on_chunking(
            payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6),
            cuts in proptest::collection::vec(any::<usize>(), 0..12),
        ) {
            let mut wire = Vec::new();
            for p in &payloads {
                wire.extend_from_slice(&response(0, 9, p));
            }
            let mut inputs: Vec<StreamInput> =
                chunks(&wire, &cuts).into_iter().map(StreamInput::Data).collect();
            inputs.push(StreamInput::Fin);
            let events = run_client(inputs, false, 64);
            let expected: Vec<ResponseEvent> = payloads
                .iter()
                .map(|p| ResponseEvent::Message(Bytes::copy_from_slice(p)))
                .chain(std::iter::once(ResponseEvent::End))
                .collect();
            prop_assert_eq!(events, expected);
        }
    }
}
