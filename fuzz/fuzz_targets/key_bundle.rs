#![no_main]
//! Decoding arbitrary bytes as a key bundle: never panics; what decodes re-encodes identically.
use libfuzzer_sys::fuzz_target;
use qpq_core::bundle::KeyBundle;

fuzz_target!(|data: &[u8]| {
    if let Ok(bundle) = KeyBundle::decode(data) {
        assert_eq!(bundle.encode(), data);
    }
});
