#![no_main]
//! Decoding and verifying arbitrary key-transparency proofs and tree heads: never panics.
use libfuzzer_sys::fuzz_target;
use qpq_core::kt::{ConsistencyProof, InclusionProof, SignedTreeHead};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = InclusionProof::decode(data) {
        assert_eq!(p.encode(), data);
        let _ = p.verify(&[1; 32], &[2; 32]);
    }
    if let Ok(p) = ConsistencyProof::decode(data) {
        assert_eq!(p.encode(), data);
        let _ = p.verify(&[1; 32], &[2; 32]);
    }
    if let Ok(h) = SignedTreeHead::decode(data) {
        assert_eq!(h.encode(), data);
    }
});
