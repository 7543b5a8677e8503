#![no_main]
//! Exact decoding of every frame shape: never panics, and what decodes re-encodes identically.
use libfuzzer_sys::fuzz_target;
use qrpc::fuzzing::{PushFrame, RequestFrame, ResponseFrame};

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = RequestFrame::decode_exact(data, 1 << 16) {
        assert_eq!(&f.to_bytes()[..], data);
    }
    if let Ok(f) = ResponseFrame::decode_exact(data, 1 << 16) {
        assert_eq!(&f.to_bytes()[..], data);
    }
    if let Ok(f) = PushFrame::decode_exact(data, 1 << 16) {
        assert_eq!(&f.to_bytes()[..], data);
    }
});
