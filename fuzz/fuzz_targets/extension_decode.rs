#![no_main]
//! The call-extension decoder (deadline and metadata, `docs/wire-protocol.md` §9): never
//! panics, keeps its limits, and what decodes encodes and decodes to the same extension.
use libfuzzer_sys::fuzz_target;
use qrpc::fuzzing::{CallExtension, MAX_METADATA_ENTRIES};

fuzz_target!(|data: &[u8]| {
    if let Ok(extension) = CallExtension::decode(data) {
        assert!(extension.metadata.len() <= MAX_METADATA_ENTRIES);
        let encoded = extension.encode().expect("a decoded extension encodes");
        assert_eq!(CallExtension::decode(&encoded).expect("decodes again"), extension);
    }
});
