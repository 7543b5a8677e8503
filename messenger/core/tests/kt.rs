//! Key transparency: RFC 6962/9162 known answers, proofs for every shape of tree, tampering.
#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use qpq_core::identity::IdentityKey;
use qpq_core::kt::*;

fn h(hex: &str) -> Hash {
    let mut out = [0u8; 32];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len() / 2)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// The Certificate Transparency reference leaves and roots (RFC 6962 test data, also used by
/// the RFC 9162 reference implementations).
const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];
const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn reference_log() -> MerkleLog {
    let mut log = MerkleLog::new();
    for leaf in LEAVES {
        log.append(&unhex(leaf));
    }
    log
}

#[test]
fn roots_match_the_reference_for_every_size() {
    let log = reference_log();
    for (size, root) in ROOTS.iter().enumerate() {
        assert_eq!(log.root_at(size as u64).unwrap(), h(root), "size {size}");
    }
    assert_eq!(empty_root(), h(ROOTS[0]));
}

#[test]
fn inclusion_proofs_match_the_reference() {
    let log = reference_log();
    let p0 = log.inclusion_proof(0, 8).unwrap();
    assert_eq!(
        p0.path,
        vec![
            h("96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"),
            h("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
            h("6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"),
        ]
    );
    let p5 = log.inclusion_proof(5, 8).unwrap();
    assert_eq!(
        p5.path,
        vec![
            h("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
            h("ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0"),
            h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
        ]
    );
    p5.verify(&log.leaf(5).unwrap(), &h(ROOTS[8])).unwrap();
}

/// Consistency proofs of the reference tree, as published with the Certificate Transparency
/// reference verifier's test data (certificate-transparency-go, `merkle/log_verifier_test.go`,
/// `consistencyProofs`): produced and checked by an implementation other than this one.
const CONSISTENCY: [(u64, u64, &[&str]); 4] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
];

#[test]
fn consistency_proofs_match_the_reference_and_the_reference_proofs_verify() {
    let log = reference_log();
    for (old, new, path) in CONSISTENCY {
        let reference: Vec<Hash> = path.iter().map(|p| h(p)).collect();
        // The prover produces exactly the published proof...
        let ours = log.consistency_proof(old, new).unwrap();
        assert_eq!(ours.path, reference, "proof {old} -> {new}");
        // ...and the verifier accepts the published proof between the published roots, built
        // here without the prover.
        let published = ConsistencyProof {
            old_size: old,
            new_size: new,
            path: reference.clone(),
        };
        let (old_root, new_root) = (h(ROOTS[old as usize]), h(ROOTS[new as usize]));
        published.verify(&old_root, &new_root).unwrap();
        if reference.is_empty() {
            continue;
        }
        // Swapped roots, a flipped bit, a dropped or an extra hash: all refused.
        assert!(published.verify(&new_root, &old_root).is_err());
        for i in 0..reference.len() {
            let mut flipped = published.clone();
            flipped.path[i][0] ^= 16;
            assert!(flipped.verify(&old_root, &new_root).is_err(), "bit {i}");
        }
        let mut short = published.clone();
        short.path.pop();
        assert!(short.verify(&old_root, &new_root).is_err());
        let mut long = published.clone();
        long.path.push(old_root);
        assert!(long.verify(&old_root, &new_root).is_err());
    }
}

#[test]
fn every_inclusion_and_consistency_proof_verifies_up_to_40_leaves() {
    let mut log = MerkleLog::new();
    for i in 0..40u32 {
        log.append(&i.to_be_bytes());
    }
    for size in 1..=40 {
        let root = log.root_at(size).unwrap();
        for index in 0..size {
            let proof = log.inclusion_proof(index, size).unwrap();
            proof.verify(&log.leaf(index).unwrap(), &root).unwrap();
            assert_eq!(InclusionProof::decode(&proof.encode()).unwrap(), proof);
        }
        for old in 0..=size {
            let proof = log.consistency_proof(old, size).unwrap();
            proof.verify(&log.root_at(old).unwrap(), &root).unwrap();
            assert_eq!(ConsistencyProof::decode(&proof.encode()).unwrap(), proof);
        }
    }
}

#[test]
fn tampered_proofs_fail() {
    let mut log = MerkleLog::new();
    for i in 0..13u32 {
        log.append(&i.to_be_bytes());
    }
    let root = log.root();
    let proof = log.inclusion_proof(6, 13).unwrap();
    let leaf = log.leaf(6).unwrap();
    for i in 0..proof.path.len() {
        let mut bad = proof.clone();
        bad.path[i][0] ^= 1;
        assert!(bad.verify(&leaf, &root).is_err(), "path element {i}");
    }
    let mut short = proof.clone();
    short.path.pop();
    assert!(short.verify(&leaf, &root).is_err());
    let mut long = proof.clone();
    long.path.push([0; 32]);
    assert!(long.verify(&leaf, &root).is_err());
    let mut moved = proof.clone();
    moved.index = 7;
    assert!(moved.verify(&leaf, &root).is_err());
    assert!(
        proof.verify(&log.leaf(5).unwrap(), &root).is_err(),
        "other leaf"
    );

    let old_root = log.root_at(5).unwrap();
    let cons = log.consistency_proof(5, 13).unwrap();
    cons.verify(&old_root, &root).unwrap();
    for i in 0..cons.path.len() {
        let mut bad = cons.clone();
        bad.path[i][31] ^= 0x80;
        assert!(
            bad.verify(&old_root, &root).is_err(),
            "consistency element {i}"
        );
    }
    assert!(cons.verify(&root, &root).is_err());
    let mut other_old = log.root_at(4).unwrap();
    other_old[0] ^= 1;
    assert!(cons.verify(&other_old, &root).is_err());
}

#[test]
fn signed_heads_and_the_client_monitor() {
    let log_key = IdentityKey::generate();
    let mut log = MerkleLog::new();
    let binding = KeyBinding {
        user: "alice".into(),
        domain: "example.org".into(),
        device: "phone".into(),
        identity_key: [1; 32],
        hybrid_key_hash: [2; 32],
        key_package_hash: [3; 32],
    };
    log.append(&binding.encode());
    log.append(b"other");
    let mut monitor = LogMonitor::new(log_key.public());
    let head1 = log.sign_head(&log_key, 1000);
    // Decoding yields a head that is only a claim; verifying it gives the signed head back.
    let decoded = SignedTreeHead::decode(&head1.encode()).unwrap();
    assert_eq!(decoded.tree_size, head1.tree_size());
    assert_eq!(decoded.verify(&log_key.public()).unwrap(), head1);
    assert_eq!(
        decoded.verify(&IdentityKey::generate().public()),
        Err(KtError::BadSignature)
    );
    monitor
        .advance(&decoded, &log.consistency_proof(0, 2).unwrap())
        .unwrap();
    monitor
        .verify_binding(&binding, &log.inclusion_proof(0, 2).unwrap())
        .unwrap();

    // A binding the log does not contain fails, as does a forged head.
    let mut fake = binding.clone();
    fake.hybrid_key_hash = [9; 32];
    assert!(
        monitor
            .verify_binding(&fake, &log.inclusion_proof(0, 2).unwrap())
            .is_err()
    );
    let mut forged = decoded.clone();
    forged.root[0] ^= 1;
    assert_eq!(forged.verify(&log_key.public()), Err(KtError::BadSignature));

    // Growth is accepted with a consistency proof; a rewritten history is not.
    log.append(b"third");
    let head2 = log.sign_head(&log_key, 2000);
    monitor
        .advance(
            &SignedTreeHead::decode(&head2.encode()).unwrap(),
            &log.consistency_proof(2, 3).unwrap(),
        )
        .unwrap();

    let mut forked = MerkleLog::new();
    forked.append(b"rewritten");
    forked.append(b"other");
    forked.append(b"third");
    forked.append(b"fourth");
    let forked_head = forked.sign_head(&log_key, 3000);
    let err = monitor
        .advance(
            &SignedTreeHead::decode(&forked_head.encode()).unwrap(),
            &forked.consistency_proof(3, 4).unwrap(),
        )
        .unwrap_err();
    assert_eq!(err, KtError::ProofMismatch);
    assert_eq!(monitor.head(), Some(&head2));
}

#[test]
fn out_of_range_requests_are_errors() {
    let log = reference_log();
    assert!(log.inclusion_proof(8, 8).is_err());
    assert!(log.inclusion_proof(0, 9).is_err());
    assert!(log.consistency_proof(5, 4).is_err());
    assert!(log.root_at(9).is_err());
    assert!(InclusionProof::decode(&[0; 16]).is_err());
    assert!(SignedTreeHead::decode(&[0; 119]).is_err());
}

proptest! {
    #[test]
    fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = InclusionProof::decode(&bytes);
        let _ = ConsistencyProof::decode(&bytes);
        let _ = SignedTreeHead::decode(&bytes);
        let _ = Cosignature::decode(&bytes);
    }

    #[test]
    fn random_proofs_never_verify(path in proptest::collection::vec(any::<[u8; 32]>(), 0..8), index in 0u64..20, size in 1u64..20) {
        let proof = InclusionProof { index, tree_size: size, path };
        prop_assert!(proof.verify(&[7; 32], &[8; 32]).is_err());
    }
}

#[test]
fn a_head_older_than_the_latest_is_proven_part_of_the_log_not_an_alarm() {
    // A key answer comes with the head of size 3; before the client checks it, the log
    // grows to 5 (another device published keys). The older head is proven a prefix of the
    // newer one; a head of another log of size 3 is not, nor one signed by another key.
    let log_key = IdentityKey::generate();
    let mut log = MerkleLog::new();
    for leaf in [b"a", b"b", b"c"] {
        log.append(leaf);
    }
    let answered = SignedTreeHead::decode(&log.sign_head(&log_key, 1).encode()).unwrap();
    log.append(b"d");
    log.append(b"e");
    let latest = log.sign_head(&log_key, 2);
    let proof = log.consistency_proof(3, 5).unwrap();
    verify_prefix(&answered, &latest, &proof, &log_key.public()).unwrap();

    let mut other = MerkleLog::new();
    for leaf in [b"a", b"x", b"c"] {
        other.append(leaf);
    }
    let forked = SignedTreeHead::decode(&other.sign_head(&log_key, 1).encode()).unwrap();
    assert_eq!(
        verify_prefix(&forked, &latest, &proof, &log_key.public()),
        Err(KtError::ProofMismatch)
    );
    let foreign =
        SignedTreeHead::decode(&log.sign_head(&IdentityKey::generate(), 1).encode()).unwrap();
    assert!(verify_prefix(&foreign, &latest, &proof, &log_key.public()).is_err());
    // A proof between other sizes proves nothing about this head.
    let wrong = log.consistency_proof(2, 5).unwrap();
    assert_eq!(
        verify_prefix(&answered, &latest, &wrong, &log_key.public()),
        Err(KtError::ProofMismatch)
    );
}

#[test]
fn a_cosignature_binds_the_witness_the_log_and_the_head() {
    let log_key = IdentityKey::generate();
    let witness = IdentityKey::generate();
    let mut log = MerkleLog::new();
    log.append(b"binding");
    let head = log.sign_head(&log_key, 1_000);
    let claimed = SignedTreeHead::decode(&head.encode()).unwrap();
    let cosig = Cosignature::sign(&witness, "a.test", "b.test", &head);
    let decoded = Cosignature::decode(&cosig.encode()).unwrap();
    decoded
        .verify(&witness.public(), "a.test", "b.test", &claimed)
        .unwrap();
    // Another witness key, witness name, log name or head: refused.
    let other = IdentityKey::generate();
    assert!(
        decoded
            .verify(&other.public(), "a.test", "b.test", &claimed)
            .is_err()
    );
    assert!(
        decoded
            .verify(&witness.public(), "c.test", "b.test", &claimed)
            .is_err()
    );
    assert!(
        decoded
            .verify(&witness.public(), "a.test", "c.test", &claimed)
            .is_err()
    );
    // Domain boundaries are length-prefixed: moving a byte between the names changes the
    // message.
    assert!(
        decoded
            .verify(&witness.public(), "a.testb", ".test", &claimed)
            .is_err()
    );
    log.append(b"another");
    let later = SignedTreeHead::decode(&log.sign_head(&log_key, 2_000).encode()).unwrap();
    assert!(
        decoded
            .verify(&witness.public(), "a.test", "b.test", &later)
            .is_err()
    );
    assert!(Cosignature::decode(&[0; 63]).is_err());
    assert!(Cosignature::decode(&[0; 65]).is_err());
}
