//! State shared by every service: the store, the push registry, the key-transparency log,
//! the OPAQUE server setup, sessions and delivery waiters.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use qpq_core::identity::IdentityKey;
use qpq_core::kt::{KeyBinding, MerkleLog, SignedTreeHead};
use qpq_proto::v1::{self, server_event_push::Event};
use qrpc::{PeerIdentity, PushRegistry, Status};
use tokio::sync::watch;

use crate::abuse::Limiters;
use crate::auth::OpaqueSuite;
use crate::clock::Clock;
use crate::config::Limits;
use crate::session::Sessions;
use crate::store::{BundleRow, DeviceId, QueueLimits, Store};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section is a single map operation; a panic cannot leave it half-done.
    m.lock().unwrap_or_else(|e| e.into_inner())
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
    /// The server's domain: the one in every device name it vouches for.
    pub domain: String,
    /// Where blobs live.
    pub blob_dir: std::path::PathBuf,
    /// OPAQUE server keys (secret).
    pub opaque: opaque_ke::ServerSetup<OpaqueSuite>,
    /// The key-transparency log, with its latest signed head.
    kt: tokio::sync::Mutex<KtLog>,
    /// Signs tree heads (secret).
    pub kt_key: IdentityKey,
    /// Rate limits.
    pub limiters: Limiters,
    /// Live sessions by device.
    pub sessions: Arc<Sessions>,
    /// The time source of every expiry and stored timestamp.
    pub clock: Clock,
    /// Per device with a `FetchWait` in progress: the newest seq enqueued while it waits.
    waiters: Mutex<HashMap<DeviceId, watch::Sender<u64>>>,
    /// Blobs (by SHA-256) with an upload in progress.
    uploads: Mutex<HashSet<Vec<u8>>>,
    /// Store queries made by `FetchWait` calls (a metric, and what the amplification test
    /// watches).
    pub fetch_wait_queries: std::sync::atomic::AtomicU64,
    /// `FetchWait` calls that found nothing and began to wait (a metric; tests wait for it
    /// so that what answers a call is the wake-up, not its first look).
    pub fetch_waits_parked: std::sync::atomic::AtomicU64,
    /// `(recipient, sender)` pairs recently checked, with the answer (does the recipient know
    /// the sender?) and until when it holds: spares the stranger check a store read on every
    /// message. Forgotten when the recipient writes to the sender and when channels change.
    known: Mutex<KnownPairs>,
}

/// `percent` % of `total`, at least 1.
fn share(total: u64, percent: u8) -> u64 {
    (u128::from(total) * u128::from(percent) / 100).clamp(1, u128::from(u64::MAX)) as u64
}

/// How long a "does the recipient know the sender" answer is reused, at most. Every change
/// that can make a stranger known (the recipient writes to the sender, a channel is created or
/// changed) forgets it at once; a relationship that ends is noticed within this time.
const KNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// Pairs remembered at most; the memory is cleared when full.
const KNOWN_PAIRS: usize = 100_000;

/// Remembered stranger checks: recipient, then sender (looked up by `&str`, no allocation on
/// the enqueue path), to the answer and until when it holds.
#[derive(Default)]
struct KnownPairs {
    by_recipient: HashMap<String, HashMap<String, (bool, std::time::Instant)>>,
    pairs: usize,
}

impl KnownPairs {
    fn get(&self, recipient: &str, sender: &str, now: std::time::Instant) -> Option<bool> {
        self.by_recipient
            .get(recipient)?
            .get(sender)
            .filter(|(_, until)| *until > now)
            .map(|(k, _)| *k)
    }

    fn insert(&mut self, recipient: String, sender: &str, known: bool, until: std::time::Instant) {
        if self.pairs >= KNOWN_PAIRS {
            self.clear();
        }
        let previous = self
            .by_recipient
            .entry(recipient)
            .or_default()
            .insert(sender.to_owned(), (known, until));
        if previous.is_none() {
            self.pairs += 1;
        }
    }

    /// `recipient` wrote to `sender`: a remembered "stranger" answer no longer holds.
    fn forget_stranger(&mut self, recipient: &str, sender: &str) {
        if let Some(senders) = self.by_recipient.get_mut(recipient)
            && matches!(senders.get(sender), Some((false, _)))
        {
            senders.remove(sender);
            self.pairs -= 1;
        }
    }

    fn clear(&mut self) {
        self.by_recipient.clear();
        self.pairs = 0;
    }
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
        Self {
            limiters: Limiters::new(&limits),
            store,
            registry,
            limits,
            domain: "localhost".into(),
            blob_dir,
            opaque,
            kt: tokio::sync::Mutex::new(KtLog {
                log: kt_log,
                head: None,
            }),
            kt_key,
            sessions: Arc::new(Sessions::new(Clock::system())),
            clock: Clock::system(),
            waiters: Mutex::new(HashMap::new()),
            uploads: Mutex::new(HashSet::new()),
            fetch_wait_queries: std::sync::atomic::AtomicU64::new(0),
            fetch_waits_parked: std::sync::atomic::AtomicU64::new(0),
            known: Mutex::new(KnownPairs::default()),
        }
    }

    /// Sets the server's domain (default `localhost`).
    pub fn with_domain(mut self, domain: String) -> Self {
        self.domain = domain;
        self
    }

    /// Sets the time source (default: the system clock).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.sessions = Arc::new(Sessions::new(clock.clone()));
        self.clock = clock;
        self
    }

    /// Milliseconds since the Unix epoch by the server's clock.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// `writer` just wrote to `reader`: from now on `writer` knows `reader`.
    pub fn wrote_to(&self, writer: &str, reader: &str) {
        lock(&self.known).forget_stranger(writer, reader);
    }

    /// Channel memberships changed: every cached answer may be stale.
    pub fn channels_changed(&self) {
        lock(&self.known).clear();
    }

    /// Which of `recipients` know `sender` (wrote to it or share a channel), reusing recent
    /// answers and asking the store for the rest.
    pub async fn known_to(
        &self,
        sender: &str,
        recipients: &[String],
    ) -> crate::store::StoreResult<Vec<bool>> {
        let now = std::time::Instant::now();
        let mut answers: Vec<Option<bool>> = {
            let known = lock(&self.known);
            recipients
                .iter()
                .map(|r| known.get(r, sender, now))
                .collect()
        };
        let ask: Vec<String> = recipients
            .iter()
            .zip(&answers)
            .filter(|(_, a)| a.is_none())
            .map(|(r, _)| r.clone())
            .collect();
        if !ask.is_empty() {
            let fresh = self.store.known_to(sender.to_owned(), ask.clone()).await?;
            let mut known = lock(&self.known);
            let mut fresh = ask.into_iter().zip(fresh);
            for answer in answers.iter_mut().filter(|a| a.is_none()) {
                if let Some((r, k)) = fresh.next() {
                    known.insert(r, sender, k, now + KNOWN_FOR);
                    *answer = Some(k);
                }
            }
        }
        Ok(answers.into_iter().map(|a| a.unwrap_or(false)).collect())
    }

    /// The bounds of every recipient queue.
    pub fn queue_limits(&self) -> QueueLimits {
        let l = &self.limits;
        QueueLimits {
            max_messages: l.max_queue_depth,
            max_bytes: l.max_queue_bytes,
            sender_messages: l
                .max_pending_per_sender
                .min(share(l.max_queue_depth, l.max_queue_share_percent)),
            sender_bytes: l
                .max_pending_bytes_per_sender
                .min(share(l.max_queue_bytes, l.max_queue_share_percent)),
            stranger_messages: l.max_pending_per_stranger,
            stranger_bytes: l.max_pending_bytes_per_stranger,
        }
    }

    /// Watches the newest seq enqueued for `device` from now on (for `FetchWait`). The entry
    /// goes away with its last watcher.
    pub fn watch_arrivals(self: &Arc<Self>, device: &DeviceId) -> ArrivalWatch<S> {
        let rx = lock(&self.waiters)
            .entry(device.clone())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe();
        ArrivalWatch {
            rx,
            state: Arc::clone(self),
            device: device.clone(),
        }
    }

    /// Wakes `FetchWait` callers of `device` whose position is before `seq`, and pushes a
    /// notification to the device's connections.
    pub fn message_arrived(&self, device: &DeviceId, seq: u64) {
        if let Some(tx) = lock(&self.waiters).get(device) {
            tx.send_if_modified(|newest| {
                let newer = seq > *newest;
                if newer {
                    *newest = seq;
                }
                newer
            });
        }
        let event = Event::Message(v1::MessageNotification { seq });
        self.registry.try_send_event(&device.identity(), &event);
    }

    /// Devices with a `FetchWait` in progress (for tests and metrics).
    pub fn waiting_devices(&self) -> usize {
        lock(&self.waiters).len()
    }

    /// Claims the right to upload blob `sha256`; `None` while another upload of it runs.
    pub fn claim_upload(self: &Arc<Self>, sha256: &[u8]) -> Option<UploadClaim<S>> {
        lock(&self.uploads)
            .insert(sha256.to_vec())
            .then(|| UploadClaim {
                state: Arc::clone(self),
                sha256: sha256.to_vec(),
            })
    }

    /// One janitor pass: deletes expired sessions and endpoints, forgets idle rate-limit keys,
    /// ended sessions and unwatched devices. Returns the rows deleted from the store.
    pub async fn janitor_pass(&self) -> u64 {
        self.limiters.prune();
        self.sessions.prune();
        lock(&self.waiters).retain(|_, tx| tx.receiver_count() > 0);
        match self.store.delete_expired(self.now_ms()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "janitor could not delete expired rows");
                0
            }
        }
    }

    /// Pushes an event to every device of `user`.
    pub async fn push_to_user<E: qrpc::PushEvent>(&self, user: &str, event: &E) {
        if let Ok(devices) = self.store.list_devices(user.to_owned()).await {
            for d in devices {
                let identity: PeerIdentity = DeviceId::new(user, d.device).identity();
                self.registry.try_send_event(&identity, event);
            }
        }
    }

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

/// A `FetchWait` caller's view of new arrivals on its device.
pub struct ArrivalWatch<S: Store> {
    rx: watch::Receiver<u64>,
    state: Arc<AppState<S>>,
    device: DeviceId,
}

impl<S: Store> ArrivalWatch<S> {
    /// Forgets arrivals so far; [`wait_past`](Self::wait_past) then reports only later ones.
    pub fn mark_seen(&mut self) {
        self.rx.borrow_and_update();
    }

    /// Waits until a message with a seq past `after_seq` is enqueued after the last
    /// [`mark_seen`](Self::mark_seen); arrivals at or before it do not wake the caller.
    pub async fn wait_past(&mut self, after_seq: u64) {
        loop {
            if self.rx.changed().await.is_err() {
                // The sender is only dropped once no receiver is left; never while we hold one.
                return std::future::pending().await;
            }
            if *self.rx.borrow_and_update() > after_seq {
                return;
            }
        }
    }
}

impl<S: Store> Drop for ArrivalWatch<S> {
    fn drop(&mut self) {
        let mut waiters = lock(&self.state.waiters);
        // Our receiver still counts until this returns: 1 means we are the last one.
        if waiters
            .get(&self.device)
            .is_some_and(|tx| tx.receiver_count() <= 1)
        {
            waiters.remove(&self.device);
        }
    }
}

/// The exclusive right to upload one blob; released on drop.
pub struct UploadClaim<S: Store> {
    state: Arc<AppState<S>>,
    sha256: Vec<u8>,
}

impl<S: Store> Drop for UploadClaim<S> {
    fn drop(&mut self) {
        lock(&self.state.uploads).remove(&self.sha256);
    }
}

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}
