#![no_main]
//! Opening arbitrary bytes as a sealed-sender envelope: never panics, never succeeds.
use libfuzzer_sys::fuzz_target;
use qpq_core::kem::HybridSecretKey;
use qpq_core::sealed::{ReplayGuard, open};
use std::sync::LazyLock;

static KEY: LazyLock<HybridSecretKey> = LazyLock::new(|| HybridSecretKey::from_seed(&[7; 32]));

fuzz_target!(|data: &[u8]| {
    let mut guard = ReplayGuard::default();
    // Forging an envelope without the sender's key is infeasible: any success is a bug.
    assert!(open(&KEY, data, &mut guard, 0).is_err());
});
