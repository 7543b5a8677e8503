#![no_main]
//! Incremental decoding of a byte stream split at arbitrary points: never panics, never
//! returns a payload over the limit, and consumes exactly the frames it returns.
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use qrpc::fuzzing::RequestFrame;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else { return };
    let split = (split as usize).max(1);
    let mut buf = BytesMut::new();
    for chunk in rest.chunks(split) {
        buf.extend_from_slice(chunk);
        while let Ok(Some(frame)) = RequestFrame::decode(&mut buf, 256) {
            assert!(frame.payload.len() <= 256);
        }
    }
});
