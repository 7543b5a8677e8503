//! Hybrid post-quantum KEM: X-Wing (X25519 + ML-KEM-768, draft-connolly-cfrg-xwing-kem-06),
//! and an HPKE-like seal/open on top of it.
//!
//! `seal` = X-Wing encapsulation to the recipient's key, HKDF-SHA-256 over the shared secret
//! (salted with the KEM ciphertext and bound to a caller-chosen `info`), then
//! ChaCha20-Poly1305 over the plaintext with the caller's associated data. Each seal uses a fresh
//! encapsulation, so the derived key is used once and a fixed nonce is safe.

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x_wing::{Decapsulate, Decapsulator, Encapsulate, Generate, KeyExport};
use zeroize::Zeroizing;

/// Length of an encoded hybrid public key.
pub const HYBRID_PUBLIC_LEN: usize = x_wing::ENCAPSULATION_KEY_SIZE;
/// Length of the KEM ciphertext at the front of every sealed box.
pub const KEM_CIPHERTEXT_LEN: usize = x_wing::CIPHERTEXT_SIZE;
/// Length of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// Bytes `seal` adds to a plaintext.
pub const SEAL_OVERHEAD: usize = KEM_CIPHERTEXT_LEN + TAG_LEN;

const SEAL_LABEL: &[u8] = b"qpq hybrid seal v1";

/// Why a hybrid operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KemError {
    /// A public key had the wrong length or is invalid.
    #[error("invalid hybrid public key")]
    InvalidPublicKey,
    /// The sealed box is shorter than its fixed overhead.
    #[error("sealed box truncated: {0} bytes")]
    Truncated(usize),
    /// Decryption failed: wrong key, wrong associated data, or the box was modified.
    #[error("sealed box does not decrypt")]
    Decrypt,
}

/// A hybrid secret key (a 32-byte X-Wing seed). Zeroized on drop; never printed.
///
/// The seed is expanded into its ML-KEM-768 and X25519 keys once, when the key is made:
/// X-Wing defines decapsulation from the seed, and expanding it again for every message (an
/// ML-KEM key generation and an X25519 base-point multiplication) would cost about as much
/// as the decapsulation itself.
pub struct HybridSecretKey {
    inner: x_wing::DecapsulationKey,
    expanded: Expanded,
}

/// The seed's expansion (draft-connolly-cfrg-xwing-kem-06, `expandDecapsulationKey`): the
/// ML-KEM-768 decapsulation key, the X25519 secret, and the X25519 public key the combiner
/// hashes. Both secrets zeroize on drop.
struct Expanded {
    ml_kem: ml_kem::ml_kem_768::DecapsulationKey,
    x25519: x25519_dalek_xwing::StaticSecret,
    x25519_public: [u8; 32],
}

impl Expanded {
    fn of(seed: &[u8; 32]) -> Self {
        use ml_kem::FromSeed;
        use shake::{ExtendableOutput, Update, XofReader};
        let mut xof = shake::Shake256::default();
        xof.update(seed);
        let mut reader = xof.finalize_xof();
        let mut ml_kem_seed = Zeroizing::new([0u8; 64]);
        reader.read(ml_kem_seed.as_mut());
        let mut x25519_secret = Zeroizing::new([0u8; 32]);
        reader.read(x25519_secret.as_mut());
        let (ml_kem, _) = ml_kem::MlKem768::from_seed(&(*ml_kem_seed).into());
        let x25519 = x25519_dalek_xwing::StaticSecret::from(*x25519_secret);
        let x25519_public = x25519_dalek_xwing::PublicKey::from(&x25519).to_bytes();
        Self {
            ml_kem,
            x25519,
            x25519_public,
        }
    }

    /// X-Wing decapsulation of `ct` (ML-KEM-768 ciphertext, then the X25519 one), with the
    /// draft's combiner: SHA3-256(ss_M || ss_X || ct_X || pk_X || label).
    fn decapsulate(&self, ct: &[u8; KEM_CIPHERTEXT_LEN]) -> Zeroizing<[u8; 32]> {
        use sha3::Digest as _;
        const LABEL: &[u8; 6] = br"\.//^\";
        let (ct_m, ct_x) = ct.split_at(KEM_CIPHERTEXT_LEN - 32);
        let ct_m = ml_kem::Ciphertext::<ml_kem::MlKem768>::try_from(ct_m)
            .unwrap_or_else(|_| unreachable!("the split leaves exactly the ML-KEM ciphertext"));
        let mut ct_x_bytes = [0u8; 32];
        ct_x_bytes.copy_from_slice(ct_x);
        let ss_m = Zeroizing::new(self.ml_kem.decapsulate(&ct_m));
        let ss_x = self
            .x25519
            .diffie_hellman(&x25519_dalek_xwing::PublicKey::from(ct_x_bytes));
        let mut hasher = sha3::Sha3_256::new();
        hasher.update(ss_m.as_slice());
        hasher.update(ss_x.as_bytes());
        hasher.update(ct_x_bytes);
        hasher.update(self.x25519_public);
        hasher.update(LABEL);
        Zeroizing::new(hasher.finalize().into())
    }
}

impl HybridSecretKey {
    /// A fresh random key pair.
    pub fn generate() -> Self {
        let inner = x_wing::DecapsulationKey::generate_from_rng(&mut rand::rng());
        let expanded = Expanded::of(inner.as_bytes());
        Self { inner, expanded }
    }

    /// Restores a key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self {
            inner: x_wing::DecapsulationKey::from(*seed),
            expanded: Expanded::of(seed),
        }
    }

    /// The 32-byte seed, for encrypted storage only.
    pub fn to_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.inner.as_bytes())
    }

    /// The public key to publish.
    pub fn public(&self) -> HybridPublicKey {
        HybridPublicKey {
            inner: self.inner.encapsulation_key().clone(),
        }
    }

    /// Recovers the shared secret of an encapsulation.
    pub fn decapsulate(&self, ciphertext: &[u8]) -> Result<Zeroizing<[u8; 32]>, KemError> {
        let ct: &[u8; KEM_CIPHERTEXT_LEN] = ciphertext
            .try_into()
            .map_err(|_| KemError::Truncated(ciphertext.len()))?;
        Ok(self.expanded.decapsulate(ct))
    }

    /// Opens a box sealed to this key with the same `info` and `aad`.
    pub fn open(
        &self,
        info: &[u8],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, KemError> {
        if sealed.len() < SEAL_OVERHEAD {
            return Err(KemError::Truncated(sealed.len()));
        }
        let (kem_ct, body) = sealed.split_at(KEM_CIPHERTEXT_LEN);
        let ss = self.decapsulate(kem_ct)?;
        let cipher = aead(&ss, kem_ct, info);
        cipher
            .decrypt(&Nonce::from([0u8; 12]), Payload { msg: body, aad })
            .map(Zeroizing::new)
            .map_err(|_| KemError::Decrypt)
    }
}

impl fmt::Debug for HybridSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HybridSecretKey")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

/// A hybrid public key (1216 bytes), uploaded to the server for others to seal to.
#[derive(Clone, PartialEq, Eq)]
pub struct HybridPublicKey {
    inner: x_wing::EncapsulationKey,
}

impl HybridPublicKey {
    /// Decodes the 1216-byte encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, KemError> {
        x_wing::EncapsulationKey::try_from(bytes)
            .map(|inner| Self { inner })
            .map_err(|_| KemError::InvalidPublicKey)
    }

    /// The 1216-byte encoding.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.inner.to_bytes().to_vec()
    }

    /// An 8-byte id naming this key (a SHA-256 prefix), as sealed-sender headers carry it.
    pub fn key_id(&self) -> [u8; 8] {
        let digest = Sha256::digest(self.to_bytes());
        let mut id = [0u8; 8];
        id.copy_from_slice(&digest[..8]);
        id
    }

    /// SHA-256 of the encoding, as key-transparency bindings carry it.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }

    /// A fresh shared secret and the ciphertext that carries it to the key's owner.
    pub fn encapsulate(&self) -> (Vec<u8>, Zeroizing<[u8; 32]>) {
        let (ct, ss) = self.inner.encapsulate_with_rng(&mut rand::rng());
        (ct.to_vec(), Zeroizing::new(ss.into()))
    }

    /// Seals `plaintext` to this key. `info` binds the box to a purpose; `aad` is
    /// authenticated but not encrypted. Output: `kem_ciphertext || aead_ciphertext`.
    pub fn seal(&self, info: &[u8], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let (kem_ct, ss) = self.encapsulate();
        let cipher = aead(&ss, &kem_ct, info);
        let mut out = kem_ct;
        // Encryption with a valid key and a bounded message cannot fail.
        let body = cipher
            .encrypt(
                &Nonce::from([0u8; 12]),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .unwrap_or_default();
        out.extend_from_slice(&body);
        out
    }
}

impl fmt::Debug for HybridPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id: String = self.key_id().iter().map(|b| format!("{b:02x}")).collect();
        write!(f, "HybridPublicKey({id})")
    }
}

fn aead(shared_secret: &[u8; 32], kem_ct: &[u8], info: &[u8]) -> ChaCha20Poly1305 {
    let hk = Hkdf::<Sha256>::new(Some(kem_ct), shared_secret);
    let mut key = Zeroizing::new([0u8; 32]);
    let mut full_info = Vec::with_capacity(SEAL_LABEL.len() + info.len());
    full_info.extend_from_slice(SEAL_LABEL);
    full_info.extend_from_slice(info);
    // 32 bytes is far below HKDF-SHA-256's output limit.
    let _ = hk.expand(&full_info, key.as_mut());
    ChaCha20Poly1305::new((&*key).into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encapsulation_round_trip_and_sizes() {
        let sk = HybridSecretKey::generate();
        let pk = sk.public();
        assert_eq!(pk.to_bytes().len(), HYBRID_PUBLIC_LEN);
        let (ct, ss) = pk.encapsulate();
        assert_eq!(ct.len(), KEM_CIPHERTEXT_LEN);
        assert_eq!(*sk.decapsulate(&ct).unwrap(), *ss);
        let restored = HybridSecretKey::from_seed(&sk.to_seed());
        assert_eq!(restored.public(), pk);
        assert_eq!(HybridPublicKey::from_bytes(&pk.to_bytes()).unwrap(), pk);
        assert!(HybridPublicKey::from_bytes(&pk.to_bytes()[1..]).is_err());
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn decapsulation_matches_the_drafts_test_vectors() {
        // draft-connolly-cfrg-xwing-kem-06, appendix C: seed, public key, ciphertext and
        // shared secret.
        let vectors: Vec<serde_json::Value> =
            serde_json::from_str(include_str!("../tests/data/xwing-kem-06.json")).unwrap();
        assert_eq!(vectors.len(), 3);
        for v in vectors {
            let seed: [u8; 32] = unhex(v["sk"].as_str().unwrap()).try_into().unwrap();
            let sk = HybridSecretKey::from_seed(&seed);
            assert_eq!(sk.public().to_bytes(), unhex(v["pk"].as_str().unwrap()));
            let ss = sk.decapsulate(&unhex(v["ct"].as_str().unwrap())).unwrap();
            assert_eq!(ss.to_vec(), unhex(v["ss"].as_str().unwrap()));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The once-expanded key decapsulates as x-wing's own (which expands the seed on
        /// every call), also for ciphertexts that were never made by an encapsulation.
        #[test]
        fn decapsulation_agrees_with_x_wing(seed in any::<[u8; 32]>(), junk in any::<bool>(), fill in any::<u8>()) {
            let sk = HybridSecretKey::from_seed(&seed);
            let reference = x_wing::DecapsulationKey::from(seed);
            let ct = if junk {
                vec![fill; KEM_CIPHERTEXT_LEN]
            } else {
                sk.public().encapsulate().0
            };
            let theirs: [u8; 32] = reference
                .decapsulate(&x_wing::Ciphertext::try_from(ct.as_slice()).unwrap())
                .into();
            prop_assert_eq!(*sk.decapsulate(&ct).unwrap(), theirs);
            prop_assert_eq!(
                sk.decapsulate(&ct[1..]).unwrap_err(),
                KemError::Truncated(KEM_CIPHERTEXT_LEN - 1)
            );
        }
    }

    #[test]
    fn seal_open_and_every_tamper_fails() {
        let sk = HybridSecretKey::generate();
        let sealed = sk.public().seal(b"ctx", b"aad", b"secret message");
        assert_eq!(sealed.len(), 14 + SEAL_OVERHEAD);
        assert_eq!(
            &sk.open(b"ctx", b"aad", &sealed).unwrap()[..],
            b"secret message"
        );
        assert_eq!(
            sk.open(b"ctx", b"other", &sealed).unwrap_err(),
            KemError::Decrypt
        );
        assert_eq!(
            sk.open(b"other", b"aad", &sealed).unwrap_err(),
            KemError::Decrypt
        );
        for i in [0, 100, KEM_CIPHERTEXT_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                sk.open(b"ctx", b"aad", &bad).unwrap_err(),
                KemError::Decrypt,
                "byte {i}"
            );
        }
        assert!(matches!(
            sk.open(b"ctx", b"aad", &sealed[..SEAL_OVERHEAD - 1]),
            Err(KemError::Truncated(_))
        ));
        let other = HybridSecretKey::generate();
        assert_eq!(
            other.open(b"ctx", b"aad", &sealed).unwrap_err(),
            KemError::Decrypt
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        #[test]
        fn seal_round_trips_any_plaintext(pt in proptest::collection::vec(any::<u8>(), 0..2048), aad in proptest::collection::vec(any::<u8>(), 0..64)) {
            let sk = HybridSecretKey::generate();
            let sealed = sk.public().seal(b"p", &aad, &pt);
            prop_assert_eq!(&sk.open(b"p", &aad, &sealed).unwrap()[..], &pt[..]);
        }

        #[test]
        fn open_never_panics_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let sk = HybridSecretKey::generate();
            prop_assert!(sk.open(b"p", b"", &bytes).is_err());
        }
    }
}
