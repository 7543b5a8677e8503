//! The key-transparency log: appends with their store rows, inclusion and consistency
//! proofs, and the signed head.
//!
//! The store holds the log (every node of a cluster appends to the same one, in one order);
//! each node keeps a copy in memory for proofs and brings it up to date from the store
//! before it answers. A signed head is kept in the store per log size, so every node (and
//! every restart) serves the same head for a size.

use qpq_core::kt::{KeyBinding, MerkleLog, SignedTreeHead};
use qpq_proto::v1;
use qrpc::Status;

use crate::state::AppState;
use crate::store::{BundleRow, DeviceId, Store};
use crate::util::sha256;

/// The key-transparency log and the head last signed for it. A head is signed once per tree
/// size, not once per key answer.
pub(crate) struct KtLog {
    pub(crate) log: MerkleLog,
    pub(crate) head: Option<SignedTreeHead>,
}

impl<S: Store> AppState<S> {
    /// Appends `device`'s current key binding (bundle + last-resort key package) to the log,
    /// unless the log's latest binding for it is the same (then nothing grows). Store and
    /// memory are updated under one lock, and the last-resort package is read under it, so
    /// their leaf orders agree and the leaf holds the package stored with it. Returns the
    /// binding's leaf index and the key-package hash its leaf holds.
    pub async fn publish_binding(
        &self,
        device: &DeviceId,
        bundle: Vec<u8>,
        identity_key: [u8; 32],
        hybrid_key_hash: [u8; 32],
        delivery_token_hash: Option<Vec<u8>>,
    ) -> Result<(u64, [u8; 32]), Status> {
        let mut kt = self.kt.lock().await;
        let last_resort = self.store.last_resort_key_package(device.clone()).await?;
        let key_package_hash = last_resort.map_or([0; 32], |kp| sha256(&kp));
        if let Some(row) = self.store.bundle(device.clone()).await?
            && row.bundle == bundle
            && row.delivery_token_hash == delivery_token_hash
            && row.kt_key_package_hash.as_deref() == Some(key_package_hash.as_slice())
        {
            return Ok((row.kt_index, key_package_hash));
        }
        let binding = KeyBinding {
            user: device.user.clone(),
            domain: self.domain.clone(),
            device: device.device.clone(),
            identity_key,
            hybrid_key_hash,
            key_package_hash,
        };
        let leaf = binding.leaf_hash();
        let index = self
            .store
            .publish_bundle(
                device.clone(),
                bundle,
                identity_key.to_vec(),
                delivery_token_hash,
                leaf,
                key_package_hash,
            )
            .await?;
        // Other nodes may have appended before this leaf: bring the copy up to the store.
        self.sync_log(&mut kt).await?;
        if kt.log.leaf(index) != Some(leaf) {
            tracing::error!(index, "key-transparency log out of step with the store");
            return Err(Status::internal("key-transparency log out of step"));
        }
        Ok((index, key_package_hash))
    }

    /// The inclusion proof of `device`'s binding (`row`) at the current head, with the signed
    /// head and the key-package hash its leaf was built with.
    pub async fn kt_proof(
        &self,
        row: &BundleRow,
        device: &DeviceId,
    ) -> Result<v1::KtProof, Status> {
        let key_package_hash = match &row.kt_key_package_hash {
            Some(hash) => hash.clone(),
            // Written before the hash was kept: the current package's.
            None => self
                .store
                .last_resort_key_package(device.clone())
                .await?
                .map_or([0; 32], |kp| sha256(&kp))
                .to_vec(),
        };
        self.kt_proof_at(row.kt_index, key_package_hash).await
    }

    /// The inclusion proof of leaf `index` (built with `key_package_hash`) at the current
    /// head, with the signed head.
    pub async fn kt_proof_at(
        &self,
        index: u64,
        key_package_hash: Vec<u8>,
    ) -> Result<v1::KtProof, Status> {
        let mut kt = self.kt.lock().await;
        self.sync_log(&mut kt).await?;
        let size = kt.log.size();
        let proof = kt
            .log
            .inclusion_proof(index, size)
            .map_err(|_| Status::internal("key-transparency leaf missing"))?;
        let head = self.current_head(&mut kt).await?;
        Ok(v1::KtProof {
            leaf_index: index,
            inclusion_proof: proof.encode().into(),
            tree_head: head.encode().into(),
            key_package_hash: key_package_hash.into(),
        })
    }

    /// The latest signed head and a consistency proof from `since_size` to it.
    pub async fn kt_head(&self, since_size: u64) -> Result<v1::KtHeadResponse, Status> {
        let mut kt = self.kt.lock().await;
        self.sync_log(&mut kt).await?;
        let size = kt.log.size();
        let consistency = if since_size == 0 {
            Vec::new()
        } else {
            kt.log
                .consistency_proof(since_size, size)
                .map_err(|_| Status::out_of_range("since_size: larger than the log"))?
                .encode()
        };
        let head = self.current_head(&mut kt).await?;
        Ok(v1::KtHeadResponse {
            domain: self.domain.clone(),
            log_key: self.kt_key.public().to_bytes().to_vec().into(),
            tree_head: head.encode().into(),
            consistency_proof: consistency.into(),
            cosignature: Default::default(),
        })
    }

    /// Appends what the store holds beyond the memory copy (other nodes' appends).
    async fn sync_log(&self, kt: &mut KtLog) -> Result<(), Status> {
        for leaf in self.store.kt_leaves_from(kt.log.size()).await? {
            kt.log.append_hash(leaf);
        }
        Ok(())
    }

    /// The signed head of the log's current size: the one kept in the store for that size
    /// (signed by whichever node got there first), or a new one, kept.
    async fn current_head(&self, kt: &mut KtLog) -> Result<SignedTreeHead, Status> {
        let size = kt.log.size();
        if let Some(head) = &kt.head
            && head.tree_size() == size
        {
            return Ok(head.clone());
        }
        let signed = kt.log.sign_head(&self.kt_key, self.now_ms());
        let kept = self.store.init_kt_head(size, signed.encode()).await?;
        let head = SignedTreeHead::decode(&kept)
            .and_then(|h| h.verify(&self.kt_key.public()))
            .ok()
            .filter(|h| h.tree_size() == size && h.root() == &kt.log.root())
            .ok_or_else(|| {
                tracing::error!(size, "the kept signed tree head does not match the log");
                Status::internal("key-transparency log out of step")
            })?;
        kt.head = Some(head.clone());
        Ok(head)
    }
}
