//! The key bundle a device publishes: its identity key and its hybrid key, signed by the
//! identity key so the server cannot substitute the hybrid key.
//!
//! ```text
//! bundle = version(1) = 1 || identity_public(32) || hybrid_public(1216) || signature(64)
//! signed = "qpq key bundle v1" || identity_public || hybrid_public
//! ```

use crate::identity::{IDENTITY_PUBLIC_LEN, IdentityKey, IdentityPublic, SIGNATURE_LEN};
use crate::kem::{HYBRID_PUBLIC_LEN, HybridPublicKey};

/// Bundle format version.
pub const BUNDLE_VERSION: u8 = 1;
/// Encoded length of a bundle.
pub const BUNDLE_LEN: usize = 1 + IDENTITY_PUBLIC_LEN + HYBRID_PUBLIC_LEN + SIGNATURE_LEN;
const LABEL: &[u8] = b"qpq key bundle v1";

/// Why a bundle was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    /// Wrong length.
    #[error("key bundle must be {BUNDLE_LEN} bytes, got {0}")]
    Length(usize),
    /// Unknown version.
    #[error("unsupported key bundle version {0}")]
    UnsupportedVersion(u8),
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
    /// The device's identity.
    pub identity: IdentityPublic,
    /// The device's hybrid key.
    pub hybrid: HybridPublicKey,
    signature: [u8; SIGNATURE_LEN],
}

fn signed_bytes(identity: &IdentityPublic, hybrid: &HybridPublicKey) -> Vec<u8> {
    let mut m = Vec::with_capacity(LABEL.len() + IDENTITY_PUBLIC_LEN + HYBRID_PUBLIC_LEN);
    m.extend_from_slice(LABEL);
    m.extend_from_slice(&identity.to_bytes());
    m.extend_from_slice(&hybrid.to_bytes());
    m
}

impl KeyBundle {
    /// Signs `hybrid` with `identity`.
    pub fn new(identity: &IdentityKey, hybrid: HybridPublicKey) -> Self {
        let public = identity.public();
        let signature = identity.sign(&signed_bytes(&public, &hybrid));
        Self {
            identity: public,
            hybrid,
            signature,
        }
    }

    /// The encoding to upload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(BUNDLE_LEN);
        out.push(BUNDLE_VERSION);
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(&self.hybrid.to_bytes());
        out.extend_from_slice(&self.signature);
        out
    }

    /// Decodes and verifies a bundle.
    pub fn decode(bytes: &[u8]) -> Result<Self, BundleError> {
        if bytes.len() != BUNDLE_LEN {
            return Err(BundleError::Length(bytes.len()));
        }
        if bytes[0] != BUNDLE_VERSION {
            return Err(BundleError::UnsupportedVersion(bytes[0]));
        }
        let (identity, rest) = bytes[1..].split_at(IDENTITY_PUBLIC_LEN);
        let (hybrid, signature) = rest.split_at(HYBRID_PUBLIC_LEN);
        let identity = IdentityPublic::from_bytes(identity).map_err(|_| BundleError::InvalidKey)?;
        let hybrid = HybridPublicKey::from_bytes(hybrid).map_err(|_| BundleError::InvalidKey)?;
        identity
            .verify(&signed_bytes(&identity, &hybrid), signature)
            .map_err(|_| BundleError::BadSignature)?;
        let mut sig = [0u8; SIGNATURE_LEN];
        sig.copy_from_slice(signature);
        Ok(Self {
            identity,
            hybrid,
            signature: sig,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::kem::HybridSecretKey;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_tamper() {
        let id = IdentityKey::generate();
        let bundle = KeyBundle::new(&id, HybridSecretKey::generate().public());
        let bytes = bundle.encode();
        assert_eq!(bytes.len(), BUNDLE_LEN);
        assert_eq!(KeyBundle::decode(&bytes).unwrap(), bundle);
        assert_eq!(
            KeyBundle::decode(&bytes[1..]).unwrap_err(),
            BundleError::Length(BUNDLE_LEN - 1)
        );
        let mut v = bytes.clone();
        v[0] = 9;
        assert_eq!(
            KeyBundle::decode(&v).unwrap_err(),
            BundleError::UnsupportedVersion(9)
        );
        // Substituting the hybrid key (the server's attack) breaks the signature.
        let mut swapped = bytes.clone();
        swapped[1 + 32..1 + 32 + HYBRID_PUBLIC_LEN]
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), BUNDLE_LEN - 2..BUNDLE_LEN + 2)) {
            let _ = KeyBundle::decode(&bytes);
        }
    }
}
