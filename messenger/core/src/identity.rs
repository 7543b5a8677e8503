//! Device identities (Ed25519) and safety numbers.
//!
//! A device's [`IdentityKey`] signs its key bundles and sealed-sender envelopes. Its public half,
//! [`IdentityPublic`], is 32 bytes and is what users compare, through a [`SafetyNumber`].

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha512};
use zeroize::Zeroizing;

/// Length of an encoded public identity key.
pub const IDENTITY_PUBLIC_LEN: usize = 32;
/// Length of a signature.
pub const SIGNATURE_LEN: usize = 64;

/// Why an identity key or signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The bytes are not a valid Ed25519 public key.
    #[error("invalid identity public key")]
    InvalidPublicKey,
    /// A key or signature had the wrong length.
    #[error("expected {expected} bytes, got {got}")]
    Length {
        /// Expected length.
        expected: usize,
        /// Actual length.
        got: usize,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
}

/// A device's secret signing key. Zeroized on drop; never printed.
pub struct IdentityKey {
    signing: SigningKey,
}

impl IdentityKey {
    /// A fresh random identity.
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::generate(&mut rand::rng()),
        }
    }

    /// Restores an identity from its 32-byte secret seed.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(secret),
        }
    }

    /// The 32-byte secret seed, for encrypted storage only.
    pub fn to_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_bytes())
    }

    /// The public identity.
    pub fn public(&self) -> IdentityPublic {
        IdentityPublic(self.signing.verifying_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.signing.sign(message).to_bytes()
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// A device's public identity key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityPublic(VerifyingKey);

impl IdentityPublic {
    /// Decodes the 32-byte encoding, rejecting invalid points.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IdentityError> {
        let array: [u8; IDENTITY_PUBLIC_LEN] =
            bytes.try_into().map_err(|_| IdentityError::Length {
                expected: IDENTITY_PUBLIC_LEN,
                got: bytes.len(),
            })?;
        VerifyingKey::from_bytes(&array)
            .map(Self)
            .map_err(|_| IdentityError::InvalidPublicKey)
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; IDENTITY_PUBLIC_LEN] {
        self.0.to_bytes()
    }

    /// Verifies `signature` over `message` (strict: rejects malleable and small-order cases).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), IdentityError> {
        let array: [u8; SIGNATURE_LEN] =
            signature.try_into().map_err(|_| IdentityError::Length {
                expected: SIGNATURE_LEN,
                got: signature.len(),
            })?;
        self.0
            .verify_strict(message, &Signature::from_bytes(&array))
            .map_err(|_| IdentityError::BadSignature)
    }

    /// A short hex fingerprint for logs and debugging (first 8 bytes of SHA-512).
    pub fn short_fingerprint(&self) -> String {
        Sha512::digest(self.to_bytes())[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Debug for IdentityPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityPublic({})", self.short_fingerprint())
    }
}

/// The version prefix of an encoded [`DeviceName`].
pub const DEVICE_NAME_PREFIX: &str = "qpq1:";

/// Why a device name was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Not `qpq1:user@domain/device` (wrong version, a part missing or empty, or a character
    /// a part may not hold).
    #[error("not a qpq device name (expected qpq1:user@domain/device)")]
    Malformed,
}

/// The name that identifies one device everywhere it is bound to a key: in the
/// key-transparency log and in MLS credentials.
///
/// Encoded as `qpq1:<user>@<domain>/<device>`: the version prefix lets the format change
/// without ambiguity, and the domain is that of the user's home server, so names stay unique
/// when servers of different operators deliver to each other. A user part holds no `@` or
/// `/`, a domain no `/`, `@` or `:`, a device no `/`; none is empty, none holds control
/// characters or spaces, and the whole encoding is at most 255 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceName {
    user: String,
    domain: String,
    device: String,
}

fn name_part_ok(part: &str, forbidden: &[char]) -> bool {
    !part.is_empty()
        && part
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && !forbidden.contains(&c))
}

impl DeviceName {
    /// Builds a name from its parts, checking each.
    pub fn new(user: &str, domain: &str, device: &str) -> Result<Self, NameError> {
        let ok = name_part_ok(user, &['@', '/'])
            && name_part_ok(domain, &['@', '/', ':'])
            && name_part_ok(device, &['/'])
            && DEVICE_NAME_PREFIX.len() + user.len() + domain.len() + device.len() + 2 <= 255;
        if !ok {
            return Err(NameError::Malformed);
        }
        Ok(Self {
            user: user.to_owned(),
            domain: domain.to_owned(),
            device: device.to_owned(),
        })
    }

    /// Parses the encoding, rejecting anything [`new`](Self::new) would not build.
    pub fn parse(bytes: &[u8]) -> Result<Self, NameError> {
        let text = std::str::from_utf8(bytes).map_err(|_| NameError::Malformed)?;
        let rest = text
            .strip_prefix(DEVICE_NAME_PREFIX)
            .ok_or(NameError::Malformed)?;
        let (user, rest) = rest.split_once('@').ok_or(NameError::Malformed)?;
        let (domain, device) = rest.split_once('/').ok_or(NameError::Malformed)?;
        Self::new(user, domain, device)
    }

    /// The encoding: `qpq1:user@domain/device`.
    pub fn encode(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }

    /// The user, without the domain.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The user's home server.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The device id within the user.
    pub fn device(&self) -> &str {
        &self.device
    }
}

impl fmt::Display for DeviceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{DEVICE_NAME_PREFIX}{}@{}/{}",
            self.user, self.domain, self.device
        )
    }
}

/// Format version of safety numbers (part of every hash input).
const SAFETY_NUMBER_VERSION: u16 = 1;
/// Hash iterations per fingerprint: makes searching for a colliding key expensive.
const SAFETY_NUMBER_ITERATIONS: usize = 5200;

/// A 60-digit number two users compare to check they see each other's real keys.
///
/// Format (`docs/security-model.md`): for each party, `h = SHA-512(version_be16 || key || id)`,
/// then 5,200 times `h = SHA-512(h || key)`. The first 30 bytes of `h` become six 5-byte
/// big-endian integers, each reduced mod 100,000 to 5 digits: 30 digits per party. The two
/// 30-digit halves are sorted and concatenated, so both parties compute the same number.
#[derive(Clone, PartialEq, Eq)]
pub struct SafetyNumber(String);

impl SafetyNumber {
    /// The safety number of two parties, each a stable user id and identity key.
    pub fn compute(a_id: &str, a_key: &IdentityPublic, b_id: &str, b_key: &IdentityPublic) -> Self {
        let mut halves = [
            fingerprint_digits(a_id, a_key),
            fingerprint_digits(b_id, b_key),
        ];
        halves.sort();
        Self(halves.concat())
    }

    /// The 60 digits.
    pub fn digits(&self) -> &str {
        &self.0
    }

    /// The digits in 12 groups of 5, as users read them aloud.
    pub fn grouped(&self) -> String {
        self.0
            .as_bytes()
            .chunks(5)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.grouped())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({})", self.grouped())
    }
}

fn fingerprint_digits(id: &str, key: &IdentityPublic) -> String {
    let key = key.to_bytes();
    let mut hasher = Sha512::new();
    hasher.update(SAFETY_NUMBER_VERSION.to_be_bytes());
    hasher.update(key);
    hasher.update(id.as_bytes());
    let mut hash = hasher.finalize();
    for _ in 0..SAFETY_NUMBER_ITERATIONS {
        let mut hasher = Sha512::new();
        hasher.update(hash);
        hasher.update(key);
        hash = hasher.finalize();
    }
    hash[..30]
        .chunks(5)
        .map(|chunk| {
            let n = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let key = IdentityKey::generate();
        let public = key.public();
        let sig = key.sign(b"hello");
        public.verify(b"hello", &sig).unwrap();
        assert_eq!(
            public.verify(b"hellp", &sig),
            Err(IdentityError::BadSignature)
        );
        let mut bad = sig;
        bad[3] ^= 1;
        assert_eq!(
            public.verify(b"hello", &bad),
            Err(IdentityError::BadSignature)
        );
        assert!(matches!(
            public.verify(b"hello", &sig[..63]),
            Err(IdentityError::Length { .. })
        ));
    }

    #[test]
    fn encodings_round_trip_and_secrets_stay_out_of_debug() {
        let key = IdentityKey::generate();
        let restored = IdentityKey::from_secret_bytes(&key.to_secret_bytes());
        assert_eq!(restored.public(), key.public());
        let public = IdentityPublic::from_bytes(&key.public().to_bytes()).unwrap();
        assert_eq!(public, key.public());
        let secret_hex: String = key
            .to_secret_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!format!("{key:?}").contains(&secret_hex[..16]));
        assert!(IdentityPublic::from_bytes(&[0u8; 31]).is_err());
    }

    #[test]
    fn device_names_round_trip_and_reject_ambiguity() {
        let name = DeviceName::new("alice", "example.org", "laptop").unwrap();
        assert_eq!(name.to_string(), "qpq1:alice@example.org/laptop");
        assert_eq!(DeviceName::parse(&name.encode()).unwrap(), name);
        for bad in [
            "alice@example.org/laptop",
            "qpq2:alice@example.org/laptop",
            "qpq1:alice/laptop",
            "qpq1:@example.org/laptop",
            "qpq1:alice@/laptop",
            "qpq1:alice@example.org/",
            "qpq1:al@ice@example.org/laptop",
            "qpq1:alice@example.org/lap/top",
            "qpq1:alice@exa:mple.org/laptop",
            "qpq1:alice@example.org/lap\u{1b}top",
            "qpq1:ali ce@example.org/laptop",
        ] {
            assert_eq!(
                DeviceName::parse(bad.as_bytes()),
                Err(NameError::Malformed),
                "{bad}"
            );
        }
        assert!(DeviceName::parse(&[0xff, 0xfe]).is_err());
        assert!(DeviceName::new("a", &"d".repeat(250), "x").is_err());
    }

    #[test]
    fn safety_number_is_symmetric_and_key_sensitive() {
        let (a, b, c) = (
            IdentityKey::generate(),
            IdentityKey::generate(),
            IdentityKey::generate(),
        );
        let ab = SafetyNumber::compute("alice", &a.public(), "bob", &b.public());
        let ba = SafetyNumber::compute("bob", &b.public(), "alice", &a.public());
        assert_eq!(ab, ba);
        assert_eq!(ab.digits().len(), 60);
        assert!(ab.digits().bytes().all(|d| d.is_ascii_digit()));
        assert_eq!(ab.grouped().split(' ').count(), 12);
        let ac = SafetyNumber::compute("alice", &a.public(), "bob", &c.public());
        assert_ne!(ab, ac);
    }

    #[test]
    fn safety_number_known_answer() {
        // Keys from fixed seeds; the keys and the number were computed independently of this
        // crate (Python's `cryptography` Ed25519 and hashlib SHA-512, following the format in
        // docs/security-model.md): messenger/core/tests/vectors/safety_number.py.
        let a = IdentityKey::from_secret_bytes(&[1u8; 32]).public();
        let b = IdentityKey::from_secret_bytes(&[2u8; 32]).public();
        assert_eq!(hex(&a.to_bytes()), KNOWN_ALICE_KEY);
        assert_eq!(hex(&b.to_bytes()), KNOWN_BOB_KEY);
        let sn = SafetyNumber::compute("alice", &a, "bob", &b);
        assert_eq!(
            sn.digits(),
            KNOWN_SAFETY_NUMBER,
            "safety number format changed"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    const KNOWN_ALICE_KEY: &str =
        "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c";
    const KNOWN_BOB_KEY: &str = "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394";
    const KNOWN_SAFETY_NUMBER: &str =
        "246206875253868458520534599878656059377904366049985521255283";
}
