//! # qpq-core — quicproquo's cryptography
//!
//! Every construction the messenger relies on, with no I/O beyond the MLS store:
//!
//! | module | what it provides |
//! |---|---|
//! | [`address`] | user addresses across servers (`name@domain`) |
//! | [`identity`] | Ed25519 device identities and safety numbers |
//! | [`kem`] | X-Wing hybrid KEM (X25519 + ML-KEM-768) and HPKE-like seal/open |
//! | [`bundle`] | the signed key bundle a device publishes |
//! | [`padding`] | Padmé padding |
//! | [`sealed`] | sealed-sender envelopes with replay protection |
//! | [`mls`] | MLS groups (openmls), X-Wing suite by default, state in SQLite |
//! | [`kt`] | key-transparency Merkle log, proofs and signed tree heads |
//! | [`attachment`] | client-side encryption of attachments under a fresh key |
//! | [`files`] | owner-only directories and files for everything that holds secrets |
//!
//! Secrets are zeroized on drop and never appear in `Debug`, `Display` or errors. What each
//! construction protects against, and what it does not, is in `docs/security-model.md`.

pub mod address;
pub mod attachment;
pub mod bundle;
pub mod files;
pub mod identity;
pub mod kem;
pub mod kt;
pub mod mls;
pub mod mls_crypto;
pub mod padding;
pub mod sealed;
