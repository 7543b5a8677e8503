//! The key bundle a device publishes: its identity key and its hybrid key, signed by the
//! identity key together with the user and device they belong to, so the server can neither
//! substitute the hybrid key nor let another account re-publish the bundle as its own.
//!
//! ```text
//! bundle = version(1) = 2 || len(1) || user || len(1) || device
//!          || identity_public(32) || hybrid_public(1216) || signature(64)
//! signed = "qpq key bundle v2" || len(1) || user || len(1) || device
//!          || identity_public || hybrid_public
//! ```
//!
//! `user` and `device` are UTF-8, 1 to 255 bytes each; the server applies its own, narrower
//! naming rules on upload.

use crate::identity::{IDENTITY_PUBLIC_LEN, IdentityKey, IdentityPublic, SIGNATURE_LEN};
use crate::kem::{HYBRID_PUBLIC_LEN, HybridPublicKey};

/// Bundle format version.
pub const BUNDLE_VERSION: u8 = 2;
/// Length of the fixed part of a bundle (version, keys and signature, without the names).
pub const BUNDLE_FIXED_LEN: usize = 1 + 2 + IDENTITY_PUBLIC_LEN + HYBRID_PUBLIC_LEN + SIGNATURE_LEN;
/// Longest encoded bundle (both names 255 bytes).
pub const BUNDLE_MAX_LEN: usize = BUNDLE_FIXED_LEN + 2 * 255;
const LABEL: &[u8] = b"qpq key bundle v2";

/// Why a bundle was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Too short, too long, or the name lengths do not add up.
    #[error("key bundle is malformed ({0} bytes)")]
    Length(usize),
    /// Unknown version.
    #[error("unsupported key bundle version {0}")]
    UnsupportedVersion(u8),
    /// A name is empty or not UTF-8.
    #[error("key bundle names an invalid user or device")]
    InvalidName,
    /// A key inside is invalid.
    #[error("invalid key in bundle")]
    InvalidKey,
    /// The signature does not verify.
    #[error("key bundle signature does not verify")]
    BadSignature,
}

/// A verified key bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBundle {
    /// The user the device belongs to.
    pub user: String,
    /// The device id within the user.
    pub device: String,
    /// The device's identity.
    pub identity: IdentityPublic,
    /// The device's hybrid key.
    pub hybrid: HybridPublicKey,
    signature: [u8; SIGNATURE_LEN],
}

fn push_name(out: &mut Vec<u8>, name: &str) {
    // Names are checked to be 1..=255 bytes before they get here.
    out.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(name.as_bytes());
}

fn signed_bytes(
    user: &str,
    device: &str,
    identity: &IdentityPublic,
    hybrid: &HybridPublicKey,
) -> Vec<u8> {
    let mut m = Vec::with_capacity(
        LABEL.len() + 2 + user.len() + device.len() + IDENTITY_PUBLIC_LEN + HYBRID_PUBLIC_LEN,
    );
    m.extend_from_slice(LABEL);
    push_name(&mut m, user);
    push_name(&mut m, device);
    m.extend_from_slice(&identity.to_bytes());
    m.extend_from_slice(&hybrid.to_bytes());
    m
}

fn valid_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
}

/// Splits a length-prefixed name off the front of `bytes`.
fn take_name(bytes: &[u8]) -> Result<(String, &[u8]), BundleError> {
    let (&len, rest) = bytes.split_first().ok_or(BundleError::Length(0))?;
    let len = usize::from(len);
    if len == 0 {
        return Err(BundleError::InvalidName);
    }
    if rest.len() < len {
        return Err(BundleError::Length(bytes.len()));
    }
    let (name, rest) = rest.split_at(len);
    let name = std::str::from_utf8(name).map_err(|_| BundleError::InvalidName)?;
    Ok((name.to_owned(), rest))
}

impl KeyBundle {
    /// Signs `hybrid` with `identity` for device `device` of `user` (each 1 to 255 bytes).
    pub fn new(
        identity: &IdentityKey,
        hybrid: HybridPublicKey,
        user: &str,
        device: &str,
    ) -> Result<Self, BundleError> {
        if !valid_name(user) || !valid_name(device) {
            return Err(BundleError::InvalidName);
        }
        let public = identity.public();
        let signature = identity.sign(&signed_bytes(user, device, &public, &hybrid));
        Ok(Self {
            user: user.to_owned(),
            device: device.to_owned(),
            identity: public,
            hybrid,
            signature,
        })
    }

    /// The encoding to upload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BUNDLE_FIXED_LEN + self.user.len() + self.device.len());
        out.push(BUNDLE_VERSION);
        push_name(&mut out, &self.user);
        push_name(&mut out, &self.device);
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(&self.hybrid.to_bytes());
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes and verifies a bundle.
    pub fn decode(bytes: &[u8]) -> Result<Self, BundleError> {
        if !(BUNDLE_FIXED_LEN + 2..=BUNDLE_MAX_LEN).contains(&bytes.len()) {
            return Err(BundleError::Length(bytes.len()));
        }
        if bytes[0] != BUNDLE_VERSION {
            return Err(BundleError::UnsupportedVersion(bytes[0]));
        }
        let (user, rest) = take_name(&bytes[1..])?;
        let (device, rest) = take_name(rest)?;
        if rest.len() != IDENTITY_PUBLIC_LEN + HYBRID_PUBLIC_LEN + SIGNATURE_LEN {
            return Err(BundleError::Length(bytes.len()));
        }
        let (identity, rest) = rest.split_at(IDENTITY_PUBLIC_LEN);
        let (hybrid, signature) = rest.split_at(HYBRID_PUBLIC_LEN);
        let identity = IdentityPublic::from_bytes(identity).map_err(|_| BundleError::InvalidKey)?;
        let hybrid = HybridPublicKey::from_bytes(hybrid).map_err(|_| BundleError::InvalidKey)?;
        identity
            .verify(&signed_bytes(&user, &device, &identity, &hybrid), signature)
            .map_err(|_| BundleError::BadSignature)?;
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(signature);
        Ok(Self {
            user,
            device,
            identity,
            hybrid,
            signature: sig,
        })
    }

    /// Whether the bundle was signed for device `device` of `user`.
    pub fn is_for(&self, user: &str, device: &str) -> bool {
        self.user == user && self.device == device
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kem::HybridSecretKey;
    use proptest::prelude::*;

    fn bundle(user: &str, device: &str) -> (IdentityKey, KeyBundle) {
        let id = IdentityKey::generate();
        let b = KeyBundle::new(&id, HybridSecretKey::generate().public(), user, device).unwrap();
        (id, b)
    }

    #[test]
    fn round_trip_and_tamper() {
        let (_, bundle) = bundle("alice", "phone");
        let bytes = bundle.encode();
        assert_eq!(bytes.len(), BUNDLE_FIXED_LEN + 5 + 5);
        let decoded = KeyBundle::decode(&bytes).unwrap();
        assert_eq!(decoded, bundle);
        assert!(decoded.is_for("alice", "phone"));
        assert!(!decoded.is_for("alice", "laptop"));
        assert!(matches!(
            KeyBundle::decode(&bytes[1..]).unwrap_err(),
            BundleError::Length(_) | BundleError::UnsupportedVersion(_)
        ));
        let mut v = bytes.clone();
        v[0] = 1;
        assert_eq!(
            KeyBundle::decode(&v).unwrap_err(),
            BundleError::UnsupportedVersion(1)
        );
        // Substituting the hybrid key (the server's attack) breaks the signature.
        let keys = 1 + 1 + 5 + 1 + 5;
        let mut swapped = bytes.clone();
        swapped[keys + 32..keys + 32 + HYBRID_PUBLIC_LEN]
            .copy_from_slice(&HybridSecretKey::generate().public().to_bytes());
        assert_eq!(
            KeyBundle::decode(&swapped).unwrap_err(),
            BundleError::BadSignature
        );
        let mut sig = bytes;
        let last = sig.len() - 1;
        sig[last] ^= 1;
        assert_eq!(
            KeyBundle::decode(&sig).unwrap_err(),
            BundleError::BadSignature
        );
    }

    #[test]
    fn renaming_the_owner_breaks_the_signature() {
        // Mallory re-labels Alice's bundle as her own: same keys and signature, other names.
        let (_, alice) = bundle("alice", "phone");
        let mut bytes = alice.encode();
        bytes[2..7].copy_from_slice(b"malry");
        assert_eq!(
            KeyBundle::decode(&bytes).unwrap_err(),
            BundleError::BadSignature
        );
        let mut bytes = alice.encode();
        bytes[8..13].copy_from_slice(b"tabl0");
        assert_eq!(
            KeyBundle::decode(&bytes).unwrap_err(),
            BundleError::BadSignature
        );
    }

    #[test]
    fn names_are_checked() {
        let id = IdentityKey::generate();
        let hybrid = HybridSecretKey::generate().public();
        assert_eq!(
            KeyBundle::new(&id, hybrid.clone(), "", "d").unwrap_err(),
            BundleError::InvalidName
        );
        assert_eq!(
            KeyBundle::new(&id, hybrid.clone(), "u", &"d".repeat(256)).unwrap_err(),
            BundleError::InvalidName
        );
        let long = KeyBundle::new(&id, hybrid, &"u".repeat(255), &"d".repeat(255)).unwrap();
        assert_eq!(long.encode().len(), BUNDLE_MAX_LEN);
        assert_eq!(KeyBundle::decode(&long.encode()).unwrap(), long);
        // A zero-length name and a name that is not UTF-8 are refused before the signature.
        let (_, b) = bundle("alice", "phone");
        let mut zero = b.encode();
        zero[1] = 0;
        assert_eq!(
            KeyBundle::decode(&zero).unwrap_err(),
            BundleError::InvalidName
        );
        let mut bad = b.encode();
        bad[2] = 0xff;
        assert_eq!(
            KeyBundle::decode(&bad).unwrap_err(),
            BundleError::InvalidName
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), BUNDLE_FIXED_LEN..BUNDLE_FIXED_LEN + 20)) {
            let _ = KeyBundle::decode(&bytes);
        }

        #[test]
        fn mutated_bundles_never_verify_as_another_owner(
            at in 0usize..BUNDLE_FIXED_LEN + 10, bit in 0u8..8,
        ) {
            let (_, b) = bundle("alice", "phone");
            let mut bytes = b.encode();
            bytes[at] ^= 1 << bit;
            if let Ok(other) = KeyBundle::decode(&bytes) {
                prop_assert_eq!(other, b);
            }
        }
    }
}
