//! The cryptography openmls runs on: libcrux for everything, except Ed25519 signature
//! checks, which use ed25519-dalek (about twice as fast as libcrux's portable code on the
//! machines qpq runs on). Receiving an application message checks one signature, so a client
//! catching up on a backlog spends much of its time here.
//!
//! The check accepts exactly what libcrux accepts (RFC 8032's cofactorless equation, a
//! canonical `s`), not ed25519-dalek's stricter rules: every member of a group must reach the
//! same verdict on every commit, also members on clients that still check with libcrux, or a
//! member could split the group with a signature one side accepts and the other refuses.

use openmls::prelude::tls_codec::SecretVLBytes;
use openmls_libcrux_crypto::CryptoProvider;
use openmls_traits::crypto::OpenMlsCrypto;
use openmls_traits::random::OpenMlsRand;
use openmls_traits::types::{
    AeadType, Ciphersuite, CryptoError, ExporterSecret, HashType, HpkeCiphertext, HpkeConfig,
    HpkeKeyPair, KemOutput, SignatureScheme,
};

/// openmls's crypto and randomness provider for qpq members.
pub struct QpqCrypto(CryptoProvider);

impl std::fmt::Debug for QpqCrypto {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QpqCrypto").finish_non_exhaustive()
    }
}

impl QpqCrypto {
    /// The provider, with libcrux initialised.
    pub fn new() -> Result<Self, CryptoError> {
        CryptoProvider::new().map(Self)
    }
}

/// Checks an Ed25519 signature as libcrux does: RFC 8032's cofactorless equation with a
/// canonical `s`, small-order points allowed.
fn verify_ed25519(data: &[u8], pk: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
    let pk: &[u8; 32] = pk.try_into().map_err(|_| CryptoError::InvalidLength)?;
    let signature: &[u8; 64] = signature
        .try_into()
        .map_err(|_| CryptoError::InvalidLength)?;
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(pk).map_err(|_| CryptoError::InvalidSignature)?;
    ed25519_dalek::Verifier::verify(&key, data, &ed25519_dalek::Signature::from_bytes(signature))
        .map_err(|_| CryptoError::InvalidSignature)
}

impl OpenMlsCrypto for QpqCrypto {
    fn supports(&self, ciphersuite: Ciphersuite) -> Result<(), CryptoError> {
        self.0.supports(ciphersuite)
    }

    fn supported_ciphersuites(&self) -> Vec<Ciphersuite> {
        self.0.supported_ciphersuites()
    }

    fn hkdf_extract(
        &self,
        hash_type: HashType,
        salt: &[u8],
        ikm: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.0.hkdf_extract(hash_type, salt, ikm)
    }

    fn hmac(
        &self,
        hash_type: HashType,
        key: &[u8],
        message: &[u8],
    ) -> Result<SecretVLBytes, CryptoError> {
        self.0.hmac(hash_type, key, message)
    }

    fn hkdf_expand(
        &self,
        hash_type: HashType,
        prk: &[u8],
        info: &[u8],
        okm_len: usize,
    ) -> Result<SecretVLBytes, CryptoError> {
        self.0.hkdf_expand(hash_type, prk, info, okm_len)
    }

    fn hash(&self, hash_type: HashType, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.0.hash(hash_type, data)
    }

    fn aead_encrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        data: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.0.aead_encrypt(alg, key, data, nonce, aad)
    }

    fn aead_decrypt(
        &self,
        alg: AeadType,
        key: &[u8],
        ct_tag: &[u8],
        nonce: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.0.aead_decrypt(alg, key, ct_tag, nonce, aad)
    }

    fn signature_key_gen(&self, alg: SignatureScheme) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        self.0.signature_key_gen(alg)
    }

    fn verify_signature(
        &self,
        alg: SignatureScheme,
        data: &[u8],
        pk: &[u8],
        signature: &[u8],
    ) -> Result<(), CryptoError> {
        match alg {
            SignatureScheme::ED25519 => verify_ed25519(data, pk, signature),
            other => self.0.verify_signature(other, data, pk, signature),
        }
    }

    fn sign(&self, alg: SignatureScheme, data: &[u8], key: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.0.sign(alg, data, key)
    }

    fn hpke_seal(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        aad: &[u8],
        ptxt: &[u8],
    ) -> Result<HpkeCiphertext, CryptoError> {
        self.0.hpke_seal(config, pk_r, info, aad, ptxt)
    }

    fn hpke_open(
        &self,
        config: HpkeConfig,
        input: &HpkeCiphertext,
        sk_r: &[u8],
        info: &[u8],
        aad: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.0.hpke_open(config, input, sk_r, info, aad)
    }

    fn hpke_setup_sender_and_export(
        &self,
        config: HpkeConfig,
        pk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<(KemOutput, ExporterSecret), CryptoError> {
        self.0
            .hpke_setup_sender_and_export(config, pk_r, info, exporter_context, exporter_length)
    }

    fn hpke_setup_receiver_and_export(
        &self,
        config: HpkeConfig,
        enc: &[u8],
        sk_r: &[u8],
        info: &[u8],
        exporter_context: &[u8],
        exporter_length: usize,
    ) -> Result<ExporterSecret, CryptoError> {
        self.0.hpke_setup_receiver_and_export(
            config,
            enc,
            sk_r,
            info,
            exporter_context,
            exporter_length,
        )
    }

    fn derive_hpke_keypair(
        &self,
        config: HpkeConfig,
        ikm: &[u8],
    ) -> Result<HpkeKeyPair, CryptoError> {
        self.0.derive_hpke_keypair(config, ikm)
    }
}

impl OpenMlsRand for QpqCrypto {
    type Error = <CryptoProvider as OpenMlsRand>::Error;

    fn random_array<const N: usize>(&self) -> Result<[u8; N], Self::Error> {
        self.0.random_array()
    }

    fn random_vec(&self, len: usize) -> Result<Vec<u8>, Self::Error> {
        self.0.random_vec(len)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ed25519_checks_agree_with_libcrux() {
        // RFC 8032, section 7.1, test 2: public key, message 0x72, signature.
        let pk = hex32("3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c");
        let sig: Vec<u8> = [
            hex32("92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"),
            hex32("085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00"),
        ]
        .concat();
        let ours = QpqCrypto::new().unwrap();
        let libcrux = CryptoProvider::new().unwrap();
        let ed = SignatureScheme::ED25519;
        for (data, pk, sig) in [
            (&b"\x72"[..], &pk[..], &sig[..]),
            (b"\x73", &pk, &sig),
            (b"\x72", &pk[..31], &sig),
            (b"\x72", &pk, &sig[..63]),
        ] {
            assert_eq!(
                ours.verify_signature(ed, data, pk, sig).is_ok(),
                libcrux.verify_signature(ed, data, pk, sig).is_ok(),
                "{data:?}"
            );
        }
        assert!(ours.verify_signature(ed, b"\x72", &pk, &sig).is_ok());
        let mut flipped = sig.clone();
        flipped[5] ^= 1;
        assert_eq!(
            ours.verify_signature(ed, b"\x72", &pk, &flipped),
            Err(CryptoError::InvalidSignature)
        );
    }

    /// A signature whose `R` is the identity point (small order): valid under RFC 8032's
    /// equation, refused by strict verification. Made by an ordinary key holder, it must get
    /// the same verdict from us as from libcrux.
    #[test]
    fn a_small_order_r_gets_libcruxs_verdict() {
        use curve25519_dalek::scalar::Scalar;
        use sha2::Digest;
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let a = key.verifying_key().to_bytes();
        let mut r = [0u8; 32];
        r[0] = 1; // the identity point's encoding
        let message = b"commit";
        let k = Scalar::from_bytes_mod_order_wide(
            &sha2::Sha512::new()
                .chain_update(r)
                .chain_update(a)
                .chain_update(message)
                .finalize()
                .into(),
        );
        let s = k * key.to_scalar();
        let signature = [r, s.to_bytes()].concat();
        let ours = QpqCrypto::new().unwrap();
        let libcrux = CryptoProvider::new().unwrap();
        let ed = SignatureScheme::ED25519;
        let theirs = libcrux.verify_signature(ed, message, &a, &signature);
        assert_eq!(ours.verify_signature(ed, message, &a, &signature), theirs);
        assert!(theirs.is_ok(), "libcrux accepts it: {theirs:?}");
    }

    fn hex32(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }
}
