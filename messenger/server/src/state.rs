//! State shared by every service: the store, the push registry, the key-transparency log,
//! the OPAQUE server setup, sessions and delivery waiters.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use qpq_core::identity::IdentityKey;
use qpq_core::kt::{KeyBinding, MerkleLog, SignedTreeHead};
use qpq_proto::v1::{self, server_event_push::Event};
use qrpc::{Identity, PushRegistry, Status};
use tokio::sync::Notify;

use crate::auth::OpaqueSuite;
use crate::config::Limits;
use crate::store::{DeviceId, Store};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation; a panic cannot leave it half-done.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The session bound to a connection after login or resume.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The logged-in device.
    pub device: DeviceId,
    /// When it expires.
    pub expires_at_ms: u64,
}

/// The messenger's RPC handlers. One value implements every generated service trait (each in
/// the module of its service); clones share the state.
pub struct Api<S> {
    pub(crate) state: Arc<AppState<S>>,
}

impl<S> Api<S> {
    /// Handlers over shared state.
    pub fn new(state: Arc<AppState<S>>) -> Self {
        Self { state }
    }
}

impl<S> Clone for Api<S> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
        }
    }
}

/// The key-transparency log and the head last signed for it. A head is signed once per tree
/// size, not once per key answer.
struct KtLog {
    log: MerkleLog,
    head: Option<SignedTreeHead>,
}

/// Shared server state.
pub struct AppState<S> {
    /// Persistence.
    pub store: S,
    /// Reaches logged-in connections by `user/device`.
    pub registry: PushRegistry,
    /// Limits.
    pub limits: Limits,
    /// Where blobs live.
    pub blob_dir: std::path::PathBuf,
    /// OPAQUE server keys (secret).
    pub opaque: opaque_ke::ServerSetup<OpaqueSuite>,
    /// The key-transparency log, with its latest signed head.
    kt: tokio::sync::Mutex<KtLog>,
    /// Signs tree heads (secret).
    pub kt_key: IdentityKey,
    /// Limits sealed (not logged-in) enqueues per client IP.
    pub sealed_limiter: governor::DefaultKeyedRateLimiter<std::net::IpAddr>,
    waiters: Mutex<HashMap<DeviceId, Arc<Notify>>>,
    revoked: Mutex<HashSet<DeviceId>>,
}

impl<S> std::fmt::Debug for AppState<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl<S: Store> AppState<S> {
    /// Assembles the state; `kt_log` must already hold every stored leaf.
    pub fn new(
        store: S,
        registry: PushRegistry,
        limits: Limits,
        blob_dir: std::path::PathBuf,
        opaque: opaque_ke::ServerSetup<OpaqueSuite>,
        kt_log: MerkleLog,
        kt_key: IdentityKey,
    ) -> Self {
        let limits_sealed = limits.sealed_enqueues_per_second_per_ip;
        Self {
            store,
            registry,
            limits,
            blob_dir,
            opaque,
            kt: tokio::sync::Mutex::new(KtLog {
                log: kt_log,
                head: None,
            }),
            kt_key,
            sealed_limiter: governor::RateLimiter::keyed(governor::Quota::per_second(
                std::num::NonZeroU32::new(limits_sealed).unwrap_or(std::num::NonZeroU32::MIN),
            )),
            waiters: Mutex::new(HashMap::new()),
            revoked: Mutex::new(HashSet::new()),
        }
    }

    /// The notifier `fetchWait` calls on `device` wait on.
    pub fn waiter(&self, device: &DeviceId) -> Arc<Notify> {
        Arc::clone(lock(&self.waiters).entry(device.clone()).or_default())
    }

    /// Wakes `fetchWait` callers of `device` and pushes a notification to its connections.
    pub fn message_arrived(&self, device: &DeviceId, seq: u64) {
        if let Some(waiter) = lock(&self.waiters).get(device) {
            waiter.notify_waiters();
        }
        let event = Event::Message(v1::MessageNotification { seq });
        self.registry.try_send_event(&device.identity(), &event);
    }

    /// Marks a device revoked: its sessions fail from their next call, and its connections are
    /// told at once.
    pub fn revoke(&self, device: &DeviceId) {
        lock(&self.revoked).insert(device.clone());
        let event = Event::SessionExpired(v1::SessionExpired {
            reason: "device_revoked".into(),
        });
        self.registry.try_send_event(&device.identity(), &event);
    }

    /// Clears a revocation (a device id registered again).
    pub fn unrevoke(&self, device: &DeviceId) {
        lock(&self.revoked).remove(device);
    }

    /// Whether a device was revoked while this server ran.
    pub fn is_revoked(&self, device: &DeviceId) -> bool {
        lock(&self.revoked).contains(device)
    }

    /// Pushes an event to every device of `user`.
    pub async fn push_to_user(&self, user: &str, event: &Event) {
        if let Ok(devices) = self.store.list_devices(user.to_owned()).await {
            for d in devices {
                let identity: Identity = DeviceId::new(user, d.device).identity();
                self.registry.try_send_event(&identity, event);
            }
        }
    }

    /// Appends `device`'s current key binding (bundle + last-resort key package) to the log.
    /// Store and memory are updated under one lock so their leaf orders agree.
    pub async fn publish_binding(
        &self,
        device: &DeviceId,
        bundle: Vec<u8>,
        identity_key: [u8; 32],
        hybrid_key_hash: [u8; 32],
        delivery_token_hash: Option<Vec<u8>>,
    ) -> Result<u64, Status> {
        let last_resort = self.store.last_resort_key_package(device.clone()).await?;
        let binding = KeyBinding {
            user: device.user.clone(),
            device: device.device.clone(),
            identity_key,
            hybrid_key_hash,
            key_package_hash: last_resort.map_or([0; 32], |kp| sha256(&kp)),
        };
        let leaf = binding.leaf_hash();
        let mut kt = self.kt.lock().await;
        let index = self
            .store
            .publish_bundle(
                device.clone(),
                bundle,
                identity_key.to_vec(),
                delivery_token_hash,
                leaf,
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
        Ok(index)
    }

    /// The inclusion proof of leaf `index` at the current head, with the signed head.
    pub async fn kt_proof(&self, index: u64) -> Result<v1::KtProof, Status> {
        let mut kt = self.kt.lock().await;
        let size = kt.log.size();
        let proof = kt
            .log
            .inclusion_proof(index, size)
            .map_err(|_| Status::internal("key-transparency leaf missing"))?;
        let head = match &kt.head {
            Some(head) if head.tree_size == size => head.clone(),
            _ => {
                let head = kt.log.sign_head(&self.kt_key, now_ms());
                kt.head = Some(head.clone());
                head
            }
        };
        Ok(v1::KtProof {
            leaf_index: index,
            inclusion_proof: proof.encode().into(),
            tree_head: head.encode().into(),
        })
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
