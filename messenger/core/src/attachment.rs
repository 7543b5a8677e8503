//! Attachment encryption: a file is encrypted on the client under a fresh random key with
//! ChaCha20-Poly1305 (zero nonce: each key encrypts exactly one file), uploaded as an opaque
//! blob addressed by the SHA-256 of its ciphertext, and the key travels inside the end-to-end
//! encrypted message. The server stores ciphertext it cannot read.

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use sha2::Digest;
use zeroize::Zeroizing;

/// Bytes the ciphertext adds to the plaintext (the Poly1305 tag).
pub const OVERHEAD: usize = 16;

/// Why an attachment could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttachmentError {
    /// The downloaded bytes are not the blob the message names.
    #[error("attachment ciphertext does not match its hash")]
    HashMismatch,
    /// The key does not open the ciphertext (tampered or wrong key).
    #[error("attachment does not decrypt")]
    Tampered,
    /// The key has the wrong length.
    #[error("attachment key must be 32 bytes")]
    BadKey,
}

/// An encrypted attachment, ready to upload.
pub struct Sealed {
    /// The key to send inside the message (secret).
    pub key: Zeroizing<[u8; 32]>,
    /// The ciphertext to upload.
    pub ciphertext: Vec<u8>,
    /// SHA-256 of the ciphertext: the blob's address.
    pub sha256: [u8; 32],
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealed")
            .field("len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

/// Encrypts `plaintext` under a fresh key.
pub fn encrypt(plaintext: &[u8]) -> Sealed {
    let key = Zeroizing::new(rand::random::<[u8; 32]>());
    let cipher = ChaCha20Poly1305::new(&(*key).into());
    // Encryption under a fresh key with a zero nonce cannot fail for any length we accept.
    let ciphertext = cipher
        .encrypt(&Nonce::default(), plaintext)
        .unwrap_or_default();
    let sha256 = sha2::Sha256::digest(&ciphertext).into();
    Sealed {
        key,
        ciphertext,
        sha256,
    }
}

/// Checks `ciphertext` against `sha256` and decrypts it with `key`.
pub fn decrypt(
    key: &[u8],
    sha256: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AttachmentError> {
    let digest: [u8; 32] = sha2::Sha256::digest(ciphertext).into();
    if digest.as_slice() != sha256 {
        return Err(AttachmentError::HashMismatch);
    }
    let key: [u8; 32] = key.try_into().map_err(|_| AttachmentError::BadKey)?;
    let cipher = ChaCha20Poly1305::new(&key.into());
    cipher
        .decrypt(&Nonce::default(), ciphertext)
        .map(Zeroizing::new)
        .map_err(|_| AttachmentError::Tampered)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_hash_and_tamper() {
        let sealed = encrypt(b"a picture");
        assert_eq!(sealed.ciphertext.len(), 9 + 16);
        let opened = decrypt(sealed.key.as_slice(), &sealed.sha256, &sealed.ciphertext).unwrap();
        assert_eq!(opened.as_slice(), b"a picture");
        let mut bad = sealed.ciphertext.clone();
        bad[0] ^= 1;
        assert_eq!(
            decrypt(sealed.key.as_slice(), &sealed.sha256, &bad).unwrap_err(),
            AttachmentError::HashMismatch
        );
        let bad_sha: [u8; 32] = sha2::Sha256::digest(&bad).into();
        assert_eq!(
            decrypt(sealed.key.as_slice(), &bad_sha, &bad).unwrap_err(),
            AttachmentError::Tampered
        );
        assert_eq!(
            decrypt(&[0; 31], &sealed.sha256, &sealed.ciphertext).unwrap_err(),
            AttachmentError::BadKey
        );
        // Keys are fresh: the same file encrypts differently each time.
        assert_ne!(encrypt(b"a picture").sha256, sealed.sha256);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn any_file_round_trips(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let s = encrypt(&data);
            let opened = decrypt(s.key.as_slice(), &s.sha256, &s.ciphertext).unwrap();
            prop_assert_eq!(opened.as_slice(), data.as_slice());
        }
    }
}
