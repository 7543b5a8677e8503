//! Key transparency: an append-only Merkle log (RFC 9162 hashing) of key bindings, with
//! inclusion proofs, consistency proofs and signed tree heads, and the client-side checks.
//!
//! The server appends a [`KeyBinding`] whenever a device publishes keys and answers every key
//! fetch with an inclusion proof against a [`SignedTreeHead`]. A client verifies the proof, the
//! head's signature, and that each new head is consistent with the last one it saw — so the
//! server cannot show different keys to different people without keeping two logs that some
//! client will eventually see diverge.

use sha2::{Digest, Sha256};

use crate::identity::{IdentityKey, IdentityPublic, SIGNATURE_LEN};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// Why a proof, head or encoding was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KtError {
    /// A leaf index or tree size is out of range.
    #[error("index {index} out of range for tree size {size}")]
    OutOfRange {
        /// The index or old size.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The proof does not lead to the expected root.
    #[error("proof does not verify")]
    ProofMismatch,
    /// The proof has the wrong number of hashes.
    #[error("proof has the wrong length")]
    ProofLength,
    /// The tree head's signature does not verify.
    #[error("tree head signature does not verify")]
    BadSignature,
    /// An encoding was truncated or had trailing bytes.
    #[error("malformed encoding")]
    Malformed,
}

/// RFC 9162 leaf hash: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// RFC 9162 interior node hash: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// The largest power of two strictly below `n` (n >= 2).
fn split(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// One step of the RFC 9162 proof verification loops (§2.1.3.2 and §2.1.4.2): whether the next
/// proof hash is the left sibling. Advances the node index `f_n` and last index `s_n` to the
/// parent level, skipping levels where the node is a right edge without a sibling.
fn sibling_is_left(f_n: &mut u64, s_n: &mut u64) -> bool {
    let left = *f_n & 1 == 1 || *f_n == *s_n;
    if left {
        while *f_n & 1 == 0 && *f_n != 0 {
            *f_n >>= 1;
            *s_n >>= 1;
        }
    }
    *f_n >>= 1;
    *s_n >>= 1;
    left
}

/// What the log binds: a user's device and its keys.
///
/// The user, domain and device together are the device's [`DeviceName`]
/// (`qpq1:user@domain/device`), the name its MLS credentials carry; the identity key is also
/// the key that signs its MLS leaves. A client that checks a group member checks that the
/// leaf's name and key are a binding in this log.
///
/// [`DeviceName`]: crate::identity::DeviceName
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBinding {
    /// The user name.
    pub user: String,
    /// The user's home server.
    pub domain: String,
    /// The device id within the user.
    pub device: String,
    /// The device's identity key.
    pub identity_key: [u8; 32],
    /// SHA-256 of the device's hybrid public key.
    pub hybrid_key_hash: Hash,
    /// SHA-256 of the device's current last-resort MLS key package.
    pub key_package_hash: Hash,
}

impl KeyBinding {
    /// The canonical leaf encoding: `"qpq-kt-v2" || len16(user) || user || len16(domain) ||
    /// domain || len16(device) || device || identity_key || hybrid_key_hash ||
    /// key_package_hash`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            9 + 6 + self.user.len() + self.domain.len() + self.device.len() + 96,
        );
        out.extend_from_slice(b"qpq-kt-v2");
        for s in [&self.user, &self.domain, &self.device] {
            let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
        }
        out.extend_from_slice(&self.identity_key);
        out.extend_from_slice(&self.hybrid_key_hash);
        out.extend_from_slice(&self.key_package_hash);
        out
    }

    /// The leaf hash of this binding.
    pub fn leaf_hash(&self) -> Hash {
        leaf_hash(&self.encode())
    }
}

/// An append-only Merkle log. Keeps every complete subtree hash, so roots and proofs for any
/// size cost O(log n) and O(log² n) hashes.
#[derive(Debug, Clone, Default)]
pub struct MerkleLog {
    /// `levels[k][i]` is the hash of leaves `[i·2^k, (i+1)·2^k)`.
    levels: Vec<Vec<Hash>>,
}

impl MerkleLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf (raw data, hashed here); returns its index.
    pub fn append(&mut self, data: &[u8]) -> u64 {
        self.append_hash(leaf_hash(data))
    }

    /// Appends an already-hashed leaf; returns its index.
    pub fn append_hash(&mut self, leaf: Hash) -> u64 {
        let index = self.size();
        let mut node = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(node);
            let len = self.levels[level].len();
            if len % 2 == 1 {
                break;
            }
            node = node_hash(&self.levels[level][len - 2], &self.levels[level][len - 1]);
            level += 1;
        }
        index
    }

    /// Hash of leaves `[start, start + n)`, following RFC 9162's recursive split.
    fn subtree(&self, start: u64, n: u64) -> Hash {
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() && start % n == 0 {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(start / n) as usize];
        }
        let k = split(n);
        node_hash(&self.subtree(start, k), &self.subtree(start + k, n - k))
    }

    /// The root of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, KtError> {
        if size > self.size() {
            return Err(KtError::OutOfRange {
                index: size,
                size: self.size(),
            });
        }
        Ok(self.subtree(0, size))
    }

    /// The current root.
    pub fn root(&self) -> Hash {
        self.subtree(0, self.size())
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// Proof that leaf `index` is in the tree of the first `size` leaves (RFC 9162 §2.1.3.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<InclusionProof, KtError> {
        if index >= size || size > self.size() {
            return Err(KtError::OutOfRange { index, size });
        }
        let mut path = Vec::new();
        self.path(index, 0, size, &mut path);
        Ok(InclusionProof {
            index,
            tree_size: size,
            path,
        })
    }

    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) {
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, k, out);
            out.push(self.subtree(start + k, n - k));
        } else {
            self.path(m - k, start + k, n - k, out);
            out.push(self.subtree(start, k));
        }
    }

    /// Proof that the tree of `old` leaves is a prefix of the tree of `new` leaves
    /// (RFC 9162 §2.1.4.1).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<ConsistencyProof, KtError> {
        if old > new || new > self.size() {
            return Err(KtError::OutOfRange {
                index: old,
                size: new,
            });
        }
        let mut path = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut path);
        }
        Ok(ConsistencyProof {
            old_size: old,
            new_size: new,
            path,
        })
    }

    fn subproof(&self, m: u64, start: u64, n: u64, whole: bool, out: &mut Vec<Hash>) {
        if m == n {
            if !whole {
                out.push(self.subtree(start, n));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, whole, out);
            out.push(self.subtree(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.subtree(start, k));
        }
    }

    /// Signs the current head with the log's key.
    pub fn sign_head(&self, log_key: &IdentityKey, timestamp_ms: u64) -> SignedTreeHead {
        let (tree_size, root) = (self.size(), self.root());
        let signature = log_key.sign(&head_signed_bytes(tree_size, &root, timestamp_ms));
        SignedTreeHead {
            head: UnverifiedTreeHead {
                tree_size,
                root,
                timestamp_ms,
                signature,
            },
        }
    }
}

fn put_hashes(out: &mut Vec<u8>, hashes: &[Hash]) {
    // Proofs have at most 64 hashes (tree sizes fit in u64).
    out.push(u8::try_from(hashes.len()).unwrap_or(u8::MAX));
    for h in hashes {
        out.extend_from_slice(h);
    }
}

fn take_u64(input: &mut &[u8]) -> Result<u64, KtError> {
    let (head, rest) = input.split_first_chunk::<8>().ok_or(KtError::Malformed)?;
    *input = rest;
    Ok(u64::from_be_bytes(*head))
}

fn take_hashes(input: &mut &[u8]) -> Result<Vec<Hash>, KtError> {
    let (&count, rest) = input.split_first().ok_or(KtError::Malformed)?;
    if count > 64 || rest.len() < usize::from(count) * 32 {
        return Err(KtError::Malformed);
    }
    let (hashes, rest) = rest.split_at(usize::from(count) * 32);
    *input = rest;
    Ok(hashes
        .chunks_exact(32)
        .map(|c| {
            let mut h = [0u8; 32];
            h.copy_from_slice(c);
            h
        })
        .collect())
}

/// Proof that a leaf is in a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The leaf's index.
    pub index: u64,
    /// The tree size the proof is for.
    pub tree_size: u64,
    /// Sibling hashes from the leaf up.
    pub path: Vec<Hash>,
}

impl InclusionProof {
    /// Encoding: `index_be64 || tree_size_be64 || count(1) || hashes`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + 32 * self.path.len());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.tree_size.to_be_bytes());
        put_hashes(&mut out, &self.path);
        out
    }

    /// Decodes, rejecting truncation, more than 64 hashes and trailing bytes.
    pub fn decode(mut bytes: &[u8]) -> Result<Self, KtError> {
        let index = take_u64(&mut bytes)?;
        let tree_size = take_u64(&mut bytes)?;
        let path = take_hashes(&mut bytes)?;
        if !bytes.is_empty() {
            return Err(KtError::Malformed);
        }
        Ok(Self {
            index,
            tree_size,
            path,
        })
    }

    /// Checks that `leaf` (a leaf hash) is at `index` in the tree with `root` (RFC 9162 §2.1.3.2).
    pub fn verify(&self, leaf: &Hash, root: &Hash) -> Result<(), KtError> {
        if self.index >= self.tree_size {
            return Err(KtError::OutOfRange {
                index: self.index,
                size: self.tree_size,
            });
        }
        let (mut f_n, mut s_n) = (self.index, self.tree_size - 1);
        let mut r = *leaf;
        for p in &self.path {
            if s_n == 0 {
                return Err(KtError::ProofLength);
            }
            if sibling_is_left(&mut f_n, &mut s_n) {
                r = node_hash(p, &r);
            } else {
                r = node_hash(&r, p);
            }
        }
        if s_n != 0 {
            return Err(KtError::ProofLength);
        }
        if &r == root {
            Ok(())
        } else {
            Err(KtError::ProofMismatch)
        }
    }
}

/// Proof that one tree is a prefix of a larger one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    /// The older, smaller size.
    pub old_size: u64,
    /// The newer size.
    pub new_size: u64,
    /// The proof hashes.
    pub path: Vec<Hash>,
}

impl ConsistencyProof {
    /// Encoding: `old_be64 || new_be64 || count(1) || hashes`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(17 + 32 * self.path.len());
        out.extend_from_slice(&self.old_size.to_be_bytes());
        out.extend_from_slice(&self.new_size.to_be_bytes());
        put_hashes(&mut out, &self.path);
        out
    }

    /// Decodes, rejecting truncation, more than 64 hashes and trailing bytes.
    pub fn decode(mut bytes: &[u8]) -> Result<Self, KtError> {
        let old_size = take_u64(&mut bytes)?;
        let new_size = take_u64(&mut bytes)?;
        let path = take_hashes(&mut bytes)?;
        if !bytes.is_empty() {
            return Err(KtError::Malformed);
        }
        Ok(Self {
            old_size,
            new_size,
            path,
        })
    }

    /// Checks that `old_root` (of `old_size` leaves) and `new_root` (of `new_size`) are
    /// consistent (RFC 9162 §2.1.4.2).
    pub fn verify(&self, old_root: &Hash, new_root: &Hash) -> Result<(), KtError> {
        let (first, second) = (self.old_size, self.new_size);
        if first > second {
            return Err(KtError::OutOfRange {
                index: first,
                size: second,
            });
        }
        if first == second {
            return if self.path.is_empty() && old_root == new_root {
                Ok(())
            } else {
                Err(KtError::ProofMismatch)
            };
        }
        if first == 0 {
            return if self.path.is_empty() {
                Ok(())
            } else {
                Err(KtError::ProofLength)
            };
        }
        let mut path: Vec<Hash> = self.path.clone();
        if first.is_power_of_two() {
            path.insert(0, *old_root);
        }
        let (mut f_n, mut s_n) = (first - 1, second - 1);
        while f_n & 1 == 1 {
            f_n >>= 1;
            s_n >>= 1;
        }
        let mut iter = path.iter();
        let start = *iter.next().ok_or(KtError::ProofLength)?;
        let (mut fr, mut sr) = (start, start);
        for c in iter {
            if s_n == 0 {
                return Err(KtError::ProofLength);
            }
            if sibling_is_left(&mut f_n, &mut s_n) {
                fr = node_hash(c, &fr);
                sr = node_hash(c, &sr);
            } else {
                sr = node_hash(&sr, c);
            }
        }
        if s_n != 0 {
            return Err(KtError::ProofLength);
        }
        if &fr == old_root && &sr == new_root {
            Ok(())
        } else {
            Err(KtError::ProofMismatch)
        }
    }
}

/// A tree head whose signature by the log's key was checked: made by
/// [`MerkleLog::sign_head`] or by [`UnverifiedTreeHead::verify`], never by decoding bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTreeHead {
    head: UnverifiedTreeHead,
}

/// A tree head as it came off the wire or out of a store: its fields are claims until
/// [`verify`](Self::verify) checks the log's signature over them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnverifiedTreeHead {
    /// Number of leaves (claimed).
    pub tree_size: u64,
    /// Root hash at that size (claimed).
    pub root: Hash,
    /// When the log signed it, milliseconds since the Unix epoch (claimed).
    pub timestamp_ms: u64,
    signature: [u8; SIGNATURE_LEN],
}

/// What the log signs: `"qpq-kt-sth-v1" || tree_size || root || timestamp_ms`.
fn head_signed_bytes(tree_size: u64, root: &Hash, timestamp_ms: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(13 + 8 + 32 + 8);
    m.extend_from_slice(b"qpq-kt-sth-v1");
    m.extend_from_slice(&tree_size.to_be_bytes());
    m.extend_from_slice(root);
    m.extend_from_slice(&timestamp_ms.to_be_bytes());
    m
}

impl UnverifiedTreeHead {
    /// Checks the log's signature; the verified head on success.
    pub fn verify(&self, log_key: &IdentityPublic) -> Result<SignedTreeHead, KtError> {
        log_key
            .verify(
                &head_signed_bytes(self.tree_size, &self.root, self.timestamp_ms),
                &self.signature,
            )
            .map_err(|_| KtError::BadSignature)?;
        Ok(SignedTreeHead { head: self.clone() })
    }

    /// Encoding: signed bytes without the label, then the signature (120 bytes).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + 32 + 8 + SIGNATURE_LEN);
        out.extend_from_slice(&self.tree_size.to_be_bytes());
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.signature);
        out
    }
}

impl SignedTreeHead {
    /// Number of leaves.
    pub fn tree_size(&self) -> u64 {
        self.head.tree_size
    }

    /// Root hash at that size.
    pub fn root(&self) -> &Hash {
        &self.head.root
    }

    /// When the log signed it, milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> u64 {
        self.head.timestamp_ms
    }

    /// What the log signs: `"qpq-kt-sth-v1" || tree_size || root || timestamp_ms`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        head_signed_bytes(self.head.tree_size, &self.head.root, self.head.timestamp_ms)
    }

    /// Encoding: signed bytes without the label, then the signature (120 bytes).
    pub fn encode(&self) -> Vec<u8> {
        self.head.encode()
    }

    /// Whether `other` claims this very head (same size and root).
    pub fn is(&self, other: &UnverifiedTreeHead) -> bool {
        self.head.tree_size == other.tree_size && self.head.root == other.root
    }

    /// Decodes exactly 120 bytes into a head that is not verified yet.
    pub fn decode(bytes: &[u8]) -> Result<UnverifiedTreeHead, KtError> {
        if bytes.len() != 8 + 32 + 8 + SIGNATURE_LEN {
            return Err(KtError::Malformed);
        }
        let mut input = bytes;
        let tree_size = take_u64(&mut input)?;
        let mut root = [0u8; 32];
        root.copy_from_slice(&input[..32]);
        input = &input[32..];
        let timestamp_ms = take_u64(&mut input)?;
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(input);
        Ok(UnverifiedTreeHead {
            tree_size,
            root,
            timestamp_ms,
            signature,
        })
    }
}

/// A witness's cosignature of another server's tree head: the witness (a federated peer)
/// checked that the head is signed by that log's key and consistent with every head of it the
/// witness cosigned before, and signs that with its own log key. A client accepts a remote
/// log's head only with its home server's cosignature, so a log that shows one head to one
/// server and an inconsistent one to another is caught by the witness that saw both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cosignature {
    signature: [u8; SIGNATURE_LEN],
}

/// What a witness signs: `"qpq-kt-cosig-v1" || len(witness) || witness || len(log) || log
/// || tree_size || root || timestamp_ms`, the lengths as one byte each (domains are at most
/// 253 bytes).
fn cosigned_bytes(witness: &str, log: &str, head: &UnverifiedTreeHead) -> Vec<u8> {
    let mut m = Vec::with_capacity(15 + 2 + witness.len() + log.len() + 48);
    m.extend_from_slice(b"qpq-kt-cosig-v1");
    for domain in [witness, log] {
        m.push(u8::try_from(domain.len()).unwrap_or(u8::MAX));
        m.extend_from_slice(domain.as_bytes());
    }
    m.extend_from_slice(&head.tree_size.to_be_bytes());
    m.extend_from_slice(&head.root);
    m.extend_from_slice(&head.timestamp_ms.to_be_bytes());
    m
}

impl Cosignature {
    /// The cosignature of `witness` (its domain and log key) over `head` of `log`'s log.
    pub fn sign(
        witness_key: &IdentityKey,
        witness: &str,
        log: &str,
        head: &SignedTreeHead,
    ) -> Self {
        Self {
            signature: witness_key.sign(&cosigned_bytes(witness, log, &head.head)),
        }
    }

    /// Checks that `witness_key` (of `witness`) cosigned `head` as a head of `log`.
    pub fn verify(
        &self,
        witness_key: &IdentityPublic,
        witness: &str,
        log: &str,
        head: &UnverifiedTreeHead,
    ) -> Result<(), KtError> {
        witness_key
            .verify(&cosigned_bytes(witness, log, head), &self.signature)
            .map_err(|_| KtError::BadSignature)
    }

    /// Encoding: the 64-byte signature.
    pub fn encode(&self) -> Vec<u8> {
        self.signature.to_vec()
    }

    /// Decodes exactly 64 bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, KtError> {
        let signature = <[u8; SIGNATURE_LEN]>::try_from(bytes).map_err(|_| KtError::Malformed)?;
        Ok(Self { signature })
    }
}

/// Checks that `claimed` (a head a key answer came with) is a head of the same log as
/// `latest` (a head already verified, and consistent with everything seen before): signed by
/// `log_key`, and a prefix of `latest` by `proof` (a consistency proof from its size to
/// `latest`'s). A log that grew between the answer and the check is therefore no alarm; a
/// head of another log is.
pub fn verify_prefix(
    claimed: &UnverifiedTreeHead,
    latest: &SignedTreeHead,
    proof: &ConsistencyProof,
    log_key: &IdentityPublic,
) -> Result<(), KtError> {
    claimed.verify(log_key)?;
    if proof.old_size != claimed.tree_size || proof.new_size != latest.tree_size() {
        return Err(KtError::ProofMismatch);
    }
    proof.verify(&claimed.root, latest.root())
}

/// What a client remembers of the log: the last head it verified.
#[derive(Debug, Clone)]
pub struct LogMonitor {
    log_key: IdentityPublic,
    head: Option<SignedTreeHead>,
}

impl LogMonitor {
    /// A monitor trusting heads signed by `log_key`.
    pub fn new(log_key: IdentityPublic) -> Self {
        Self {
            log_key,
            head: None,
        }
    }

    /// The last accepted head.
    pub fn head(&self) -> Option<&SignedTreeHead> {
        self.head.as_ref()
    }

    /// Accepts a newer head after checking its signature and its consistency with the last one.
    /// A smaller tree than the one already seen is refused (the log never shrinks).
    pub fn advance(
        &mut self,
        head: &UnverifiedTreeHead,
        proof: &ConsistencyProof,
    ) -> Result<(), KtError> {
        let head = head.verify(&self.log_key)?;
        if let Some(old) = &self.head {
            if proof.old_size != old.tree_size() || proof.new_size != head.tree_size() {
                return Err(KtError::ProofMismatch);
            }
            proof.verify(old.root(), head.root())?;
        }
        self.head = Some(head);
        Ok(())
    }

    /// Checks that `binding` is in the log at the monitor's current head.
    pub fn verify_binding(
        &self,
        binding: &KeyBinding,
        proof: &InclusionProof,
    ) -> Result<(), KtError> {
        let head = self.head.as_ref().ok_or(KtError::ProofMismatch)?;
        if proof.tree_size != head.tree_size() {
            return Err(KtError::ProofMismatch);
        }
        proof.verify(&binding.leaf_hash(), head.root())
    }
}
