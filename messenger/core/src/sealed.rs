//! Sealed sender: an envelope that hides its sender from the server.
//!
//! The server sees only the recipient's key id (which it knows anyway: it routes to that
//! recipient) and a padded ciphertext. Inside, the sender's identity key, a timestamp, a random
//! message id and the payload are signed by the sender, padded (Padmé), and sealed to the
//! recipient's hybrid key.
//!
//! ```text
//! envelope  = version(1) = 1 || recipient_key_id(8) || hybrid_seal(padded inner)
//!             (aad of the seal = version || recipient_key_id)
//! inner     = sender_identity(32) || timestamp_ms(8) || message_id(16) || signature(64) || payload
//! signed    = "qpq sealed sender v1" || recipient_key_id || sender_identity || timestamp_ms
//!             || message_id || payload
//! ```

use std::collections::HashMap;

use zeroize::Zeroizing;

use crate::identity::{IDENTITY_PUBLIC_LEN, IdentityKey, IdentityPublic, SIGNATURE_LEN};
use crate::kem::{HybridPublicKey, HybridSecretKey, KemError};
use crate::padding;

/// Envelope format version.
pub const ENVELOPE_VERSION: u8 = 1;
const HEADER_LEN: usize = 1 + 8;
const INNER_FIXED_LEN: usize = IDENTITY_PUBLIC_LEN + 8 + 16 + SIGNATURE_LEN;
const SIGN_LABEL: &[u8] = b"qpq sealed sender v1";
const SEAL_INFO: &[u8] = b"sealed sender";

/// Why an envelope could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SealedError {
    /// Shorter than the fixed overhead.
    #[error("envelope truncated")]
    Truncated,
    /// A version this build does not know.
    #[error("unsupported envelope version {0}")]
    UnsupportedVersion(u8),
    /// Sealed to another key.
    #[error("envelope is for another recipient key")]
    WrongRecipient,
    /// Decryption failed: the envelope was modified.
    #[error("envelope was tampered with")]
    Tampered,
    /// Decrypted, but the inside is malformed.
    #[error("malformed envelope contents")]
    Malformed,
    /// The sender's signature does not verify.
    #[error("sender signature does not verify")]
    BadSignature,
    /// The message id was seen before within the replay window.
    #[error("replayed envelope")]
    Replayed,
    /// The timestamp is outside the accepted window.
    #[error("envelope timestamp outside the accepted window")]
    Stale,
    /// The payload is too large to seal (over 4 GiB).
    #[error("payload too large to seal")]
    TooLarge,
}

/// An opened, verified envelope.
#[derive(Debug)]
pub struct Opened {
    /// The verified sender.
    pub sender: IdentityPublic,
    /// Sender's clock, milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// Random id the sender chose; unique per message.
    pub message_id: [u8; 16],
    /// The payload, wiped on drop.
    pub payload: Zeroizing<Vec<u8>>,
}

fn signed_bytes(
    key_id: &[u8; 8],
    sender: &[u8],
    timestamp_ms: u64,
    message_id: &[u8; 16],
    payload: &[u8],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGN_LABEL.len() + 8 + 32 + 8 + 16 + payload.len());
    m.extend_from_slice(SIGN_LABEL);
    m.extend_from_slice(key_id);
    m.extend_from_slice(sender);
    m.extend_from_slice(&timestamp_ms.to_be_bytes());
    m.extend_from_slice(message_id);
    m.extend_from_slice(payload);
    m
}

/// Seals `payload` from `sender` to `recipient`, stamped with `timestamp_ms`.
pub fn seal(
    sender: &IdentityKey,
    recipient: &HybridPublicKey,
    timestamp_ms: u64,
    payload: &[u8],
) -> Result<Vec<u8>, SealedError> {
    let key_id = recipient.key_id();
    let message_id: [u8; 16] = rand::random();
    let sender_public = sender.public().to_bytes();
    let signature = sender.sign(&signed_bytes(
        &key_id,
        &sender_public,
        timestamp_ms,
        &message_id,
        payload,
    ));

    let mut inner = Zeroizing::new(Vec::with_capacity(INNER_FIXED_LEN + payload.len()));
    inner.extend_from_slice(&sender_public);
    inner.extend_from_slice(&timestamp_ms.to_be_bytes());
    inner.extend_from_slice(&message_id);
    inner.extend_from_slice(&signature);
    inner.extend_from_slice(payload);
    let padded = padding::pad(&inner).map_err(|_| SealedError::TooLarge)?;

    let mut header = [0u8; HEADER_LEN];
    header[0] = ENVELOPE_VERSION;
    header[1..].copy_from_slice(&key_id);
    let mut out = header.to_vec();
    out.extend_from_slice(&recipient.seal(SEAL_INFO, &header, &padded));
    Ok(out)
}

/// Opens an envelope with the recipient's key: decrypts, verifies the sender's signature, and
/// checks freshness and replay with `guard`.
pub fn open(
    recipient: &HybridSecretKey,
    envelope: &[u8],
    guard: &mut ReplayGuard,
    now_ms: u64,
) -> Result<Opened, SealedError> {
    let opened = open_unrecorded(recipient, envelope)?;
    guard.check(opened.message_id, opened.timestamp_ms, now_ms)?;
    Ok(opened)
}

/// Opens and verifies an envelope without consulting a replay guard: for a receiver that
/// records the envelope only once what it carries is durably applied (check
/// [`ReplayGuard::is_fresh`] first, then [`ReplayGuard::check`] after the commit), so a
/// failure between the two never turns the envelope into a "replay".
pub fn open_unrecorded(
    recipient: &HybridSecretKey,
    envelope: &[u8],
) -> Result<Opened, SealedError> {
    let (header, sealed) = envelope
        .split_at_checked(HEADER_LEN)
        .ok_or(SealedError::Truncated)?;
    if header[0] != ENVELOPE_VERSION {
        return Err(SealedError::UnsupportedVersion(header[0]));
    }
    let mut key_id = [0u8; 8];
    key_id.copy_from_slice(&header[1..]);
    if key_id != recipient.public().key_id() {
        return Err(SealedError::WrongRecipient);
    }
    let padded = recipient
        .open(SEAL_INFO, header, sealed)
        .map_err(|e| match e {
            KemError::Truncated(_) => SealedError::Truncated,
            _ => SealedError::Tampered,
        })?;
    let inner = padding::unpad(&padded).map_err(|_| SealedError::Malformed)?;
    if inner.len() < INNER_FIXED_LEN {
        return Err(SealedError::Malformed);
    }
    let (sender_bytes, rest) = inner.split_at(IDENTITY_PUBLIC_LEN);
    let (ts, rest) = rest.split_at(8);
    let (id, rest) = rest.split_at(16);
    let (signature, payload) = rest.split_at(SIGNATURE_LEN);
    let sender = IdentityPublic::from_bytes(sender_bytes).map_err(|_| SealedError::Malformed)?;
    let mut ts_bytes = [0u8; 8];
    ts_bytes.copy_from_slice(ts);
    let timestamp_ms = u64::from_be_bytes(ts_bytes);
    let mut message_id = [0u8; 16];
    message_id.copy_from_slice(id);
    sender
        .verify(
            &signed_bytes(&key_id, sender_bytes, timestamp_ms, &message_id, payload),
            signature,
        )
        .map_err(|_| SealedError::BadSignature)?;
    Ok(Opened {
        sender,
        timestamp_ms,
        message_id,
        payload: Zeroizing::new(payload.to_vec()),
    })
}

/// Remembers message ids within a time window, so a replayed envelope is refused.
///
/// Envelopes older than the window (or further in the future than the window) are refused as
/// [`SealedError::Stale`], which bounds the memory the guard needs. Ids that left the
/// window are forgotten in one sweep every eighth of the window, not on every check (a
/// sweep visits every id, and a client catching up checks thousands in a row), so an id
/// stays at most 9/8 of the window.
#[derive(Debug, Clone)]
pub struct ReplayGuard {
    window_ms: u64,
    seen: HashMap<[u8; 16], u64>,
    /// When the next sweep is due (ms).
    next_sweep_ms: u64,
}

impl ReplayGuard {
    /// A guard accepting timestamps within `window_ms` of now.
    pub fn new(window_ms: u64) -> Self {
        Self {
            window_ms,
            seen: HashMap::new(),
            next_sweep_ms: 0,
        }
    }

    /// Whether `check` would accept this message now, without recording it.
    pub fn is_fresh(
        &self,
        message_id: &[u8; 16],
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), SealedError> {
        if timestamp_ms.abs_diff(now_ms) > self.window_ms {
            return Err(SealedError::Stale);
        }
        if self.seen.contains_key(message_id) {
            return Err(SealedError::Replayed);
        }
        Ok(())
    }

    /// Checks and records one message.
    pub fn check(
        &mut self,
        message_id: [u8; 16],
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), SealedError> {
        if timestamp_ms.abs_diff(now_ms) > self.window_ms {
            return Err(SealedError::Stale);
        }
        // Due, or the clock went back since the last sweep (a sweep planned from a clock that
        // ran ahead would otherwise wait for the clock to catch up).
        let every = (self.window_ms / 8).max(1);
        if now_ms >= self.next_sweep_ms || self.next_sweep_ms > now_ms.saturating_add(every) {
            // Ids outside the window on either side would be refused as stale anyway.
            let window = self.window_ms;
            self.seen.retain(|_, ts| ts.abs_diff(now_ms) <= window);
            self.next_sweep_ms = now_ms.saturating_add(every);
        }
        if self.seen.insert(message_id, timestamp_ms).is_some() {
            return Err(SealedError::Replayed);
        }
        Ok(())
    }

    /// Message ids currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

impl Default for ReplayGuard {
    /// A 24-hour window.
    fn default() -> Self {
        Self::new(24 * 60 * 60 * 1000)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn setup() -> (IdentityKey, HybridSecretKey, Vec<u8>) {
        let alice = IdentityKey::generate();
        let bob = HybridSecretKey::generate();
        let envelope = seal(&alice, &bob.public(), NOW, b"meet at noon").unwrap();
        (alice, bob, envelope)
    }

    #[test]
    fn round_trip_reveals_and_verifies_the_sender() {
        let (alice, bob, envelope) = setup();
        let opened = open(&bob, &envelope, &mut ReplayGuard::default(), NOW + 5).unwrap();
        assert_eq!(opened.sender, alice.public());
        assert_eq!(&opened.payload[..], b"meet at noon");
        assert_eq!(opened.timestamp_ms, NOW);
        // The sender's key is nowhere in the clear.
        let sender_bytes = alice.public().to_bytes();
        assert!(!envelope.windows(32).any(|w| w == sender_bytes));
    }

    #[test]
    fn typed_errors_for_every_failure() {
        let (_alice, bob, envelope) = setup();
        let mut guard = ReplayGuard::default();
        assert_eq!(
            open(&bob, &envelope[..5], &mut guard, NOW).unwrap_err(),
            SealedError::Truncated
        );
        assert_eq!(
            open(&bob, &envelope[..200], &mut guard, NOW).unwrap_err(),
            SealedError::Truncated
        );
        let mut v2 = envelope.clone();
        v2[0] = 2;
        assert_eq!(
            open(&bob, &v2, &mut guard, NOW).unwrap_err(),
            SealedError::UnsupportedVersion(2)
        );
        let carol = HybridSecretKey::generate();
        assert_eq!(
            open(&carol, &envelope, &mut guard, NOW).unwrap_err(),
            SealedError::WrongRecipient
        );
        for i in [HEADER_LEN, HEADER_LEN + 500, envelope.len() - 1] {
            let mut bad = envelope.clone();
            bad[i] ^= 0x80;
            assert_eq!(
                open(&bob, &bad, &mut guard, NOW).unwrap_err(),
                SealedError::Tampered,
                "byte {i}"
            );
        }
        assert!(
            guard.is_empty(),
            "failed opens must not consume message ids"
        );
        open(&bob, &envelope, &mut guard, NOW).unwrap();
        assert_eq!(
            open(&bob, &envelope, &mut guard, NOW).unwrap_err(),
            SealedError::Replayed
        );
        let (_, bob2, old) = {
            let a = IdentityKey::generate();
            let b = HybridSecretKey::generate();
            let e = seal(&a, &b.public(), NOW - 2 * 24 * 3600 * 1000, b"old").unwrap();
            (a, b, e)
        };
        assert_eq!(
            open(&bob2, &old, &mut guard, NOW).unwrap_err(),
            SealedError::Stale
        );
    }

    #[test]
    fn forged_signature_is_rejected() {
        // Build an envelope whose inner signature is over different bytes.
        let mallory = IdentityKey::generate();
        let bob = HybridSecretKey::generate();
        let key_id = bob.public().key_id();
        let mut inner = Vec::new();
        inner.extend_from_slice(&mallory.public().to_bytes());
        inner.extend_from_slice(&NOW.to_be_bytes());
        inner.extend_from_slice(&[7u8; 16]);
        inner.extend_from_slice(&mallory.sign(b"something else"));
        inner.extend_from_slice(b"payload");
        let padded = padding::pad(&inner).unwrap();
        let mut header = vec![ENVELOPE_VERSION];
        header.extend_from_slice(&key_id);
        let mut env = header.clone();
        env.extend_from_slice(&bob.public().seal(SEAL_INFO, &header, &padded));
        assert_eq!(
            open(&bob, &env, &mut ReplayGuard::default(), NOW).unwrap_err(),
            SealedError::BadSignature
        );
    }

    #[test]
    fn replay_guard_sweeps_once_per_eighth_of_its_window() {
        let mut guard = ReplayGuard::new(8_000);
        let id = |i: u16| {
            let mut id = [0; 16];
            id[..2].copy_from_slice(&i.to_be_bytes());
            id
        };
        // A backlog checked in one burst, all in the window.
        for i in 0..1_000u16 {
            guard
                .check(id(i), 10_000, 10_000 + u64::from(i % 500))
                .unwrap();
        }
        assert_eq!(guard.len(), 1_000);
        // A sweep at 17,500 (nothing has left the window yet); the next is due at 18,500.
        guard.check(id(2_000), 17_500, 17_500).unwrap();
        assert_eq!(guard.len(), 1_001);
        // At 18,400 the backlog is outside the window but not swept yet: its ids are still
        // refused, as replays.
        assert_eq!(
            guard.check(id(7), 10_400, 18_400),
            Err(SealedError::Replayed)
        );
        guard.check(id(2_001), 18_400, 18_400).unwrap();
        assert_eq!(guard.len(), 1_002);
        // The sweep at 18,500 forgets it.
        guard.check(id(2_002), 18_500, 18_500).unwrap();
        assert_eq!(guard.len(), 3, "only the recent ids remain");
    }

    #[test]
    fn replay_guard_sweeps_again_when_the_clock_went_back() {
        let mut guard = ReplayGuard::new(8_000);
        // A clock far ahead plans the next sweep far ahead ...
        guard.check([1; 16], 1_000_000, 1_000_000).unwrap();
        // ... then the clock is set right: a sweep runs at once, and the id from the wrong
        // time (outside the window now) is forgotten rather than kept until then.
        guard.check([2; 16], 10_000, 10_000).unwrap();
        assert_eq!(guard.len(), 1);
    }

    #[test]
    fn replay_guard_forgets_outside_the_window() {
        let mut guard = ReplayGuard::new(1000);
        guard.check([1; 16], 10_000, 10_000).unwrap();
        assert_eq!(
            guard.check([1; 16], 10_000, 10_500),
            Err(SealedError::Replayed)
        );
        guard.check([2; 16], 12_000, 12_000).unwrap();
        assert_eq!(guard.len(), 1, "old ids are pruned");
        assert_eq!(
            guard.check([3; 16], 20_000, 10_000),
            Err(SealedError::Stale)
        );
    }
}
