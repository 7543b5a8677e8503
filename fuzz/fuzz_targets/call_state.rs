#![no_main]
//! The call rules (`qrpc::fuzzing`) driven by arbitrary inputs: bytes in arbitrary chunks,
//! FIN, resets, lost connections and header timeouts, in any order. Never panics; at most one
//! opening frame and it comes first; exactly one terminal event once the stream ended and
//! nothing after it; no payload over the limit; a single-response call yields at most one
//! message.
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use qrpc::fuzzing::{
    ClientCallState, RequestEvent, ResponseEvent, ServerCallState, StreamInput,
};

const MAX: u32 = 64;

fn inputs(data: &[u8]) -> (Vec<StreamInput>, bool) {
    let mut out = Vec::new();
    let mut timeout = false;
    let mut rest = data;
    while let Some((&op, tail)) = rest.split_first() {
        let len = usize::from(op >> 3).min(tail.len());
        let (chunk, tail) = tail.split_at(len);
        rest = tail;
        out.push(match op & 7 {
            0..=3 => StreamInput::Data(Bytes::copy_from_slice(chunk)),
            4 => StreamInput::Fin,
            5 => StreamInput::Reset(u64::from(op)),
            6 => StreamInput::ConnectionLost("lost".into()),
            _ => {
                timeout = true;
                continue;
            }
        });
    }
    (out, timeout)
}

fuzz_target!(|data: &[u8]| {
    let (inputs, timeout) = inputs(data);
    let ended = inputs.iter().any(|i| !matches!(i, StreamInput::Data(_)));

    let mut server = ServerCallState::new(MAX);
    let mut events = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        server.handle(input.clone());
        while let Some(event) = server.poll() {
            events.push(event);
        }
        if timeout && i == inputs.len() / 2 && server.header_timeout().is_some() {
            assert!(!server.is_open());
            assert!(server.poll().is_none());
        }
    }
    let terminal = |e: &RequestEvent| {
        matches!(e, RequestEvent::End | RequestEvent::Cancelled | RequestEvent::Rejected(_))
    };
    let terminals = events.iter().filter(|e| terminal(e)).count();
    assert!(terminals <= 1);
    if terminals == 1 {
        assert!(terminal(events.last().expect("one event")));
    } else if ended && !server.is_done() {
        panic!("stream ended without a terminal event: {events:?}");
    }
    for (i, event) in events.iter().enumerate() {
        match event {
            RequestEvent::Open(frame) => {
                assert_eq!(i, 0);
                assert!(frame.payload.len() <= MAX as usize);
            }
            RequestEvent::Message(m) => assert!(m.len() <= MAX as usize),
            _ => {}
        }
    }

    for single in [true, false] {
        let mut client = ClientCallState::new(9, single, MAX);
        let mut events = Vec::new();
        for input in &inputs {
            client.handle(input.clone());
            while let Some(event) = client.poll() {
                events.push(event);
            }
        }
        let terminal = |e: &ResponseEvent| !matches!(e, ResponseEvent::Message(_));
        let terminals = events.iter().filter(|e| terminal(e)).count();
        assert!(terminals <= 1);
        if terminals == 1 {
            assert!(terminal(events.last().expect("one event")));
        }
        let messages = events.len() - terminals;
        if single {
            assert!(messages <= 1);
        }
        for event in &events {
            if let ResponseEvent::Message(m) = event {
                assert!(m.len() <= MAX as usize);
            }
        }
    }
});
