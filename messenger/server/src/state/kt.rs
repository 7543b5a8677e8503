//! The key-transparency log: appends with their store rows, inclusion and consistency
//! proofs, and the signed head.

use qpq_core::identity::IdentityKey;
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
        let memory_index = kt.log.append_hash(leaf);
        if memory_index != index {
            tracing::error!(
                index,
                memory_index,
                "key-transparency log out of step with the store"
            );
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
        let size = kt.log.size();
        let proof = kt
            .log
            .inclusion_proof(index, size)
            .map_err(|_| Status::internal("key-transparency leaf missing"))?;
        let head = Self::current_head(&mut kt, &self.kt_key, self.now_ms());
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
        let size = kt.log.size();
        let consistency = if since_size == 0 {
            Vec::new()
        } else {
            kt.log
                .consistency_proof(since_size, size)
                .map_err(|_| Status::out_of_range("since_size: larger than the log"))?
                .encode()
        };
        let head = Self::current_head(&mut kt, &self.kt_key, self.now_ms());
        Ok(v1::KtHeadResponse {
            domain: self.domain.clone(),
            log_key: self.kt_key.public().to_bytes().to_vec().into(),
            tree_head: head.encode().into(),
            consistency_proof: consistency.into(),
        })
    }

    fn current_head(kt: &mut KtLog, key: &IdentityKey, now_ms: u64) -> SignedTreeHead {
        let size = kt.log.size();
        match &kt.head {
            Some(head) if head.tree_size() == size => head.clone(),
            _ => {
                let head = kt.log.sign_head(key, now_ms);
                kt.head = Some(head.clone());
                head
            }
        }
    }
}
