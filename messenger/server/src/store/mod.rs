//! Storage behind a trait: every method is one domain operation and one transaction.
//!
//! The SQLite implementation ([`SqliteStore`]) is the embedded default. The trait assumes
//! nothing SQLite-specific — methods are async, take owned values, and hide their transactions —
//! so a PostgreSQL implementation for multi-node deployments can stand beside it.

mod any;
#[cfg(test)]
mod conformance;
mod pool;
mod postgres;
mod sqlite;
mod writer;

use std::future::Future;

pub use any::AnyStore;
pub use postgres::PostgresStore;
#[cfg(any(test, feature = "testing"))]
pub use postgres::TestDatabase;
pub use sqlite::SqliteStore;
pub use writer::WriterStats;

/// A device address: user name and device id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId {
    /// User name.
    pub user: String,
    /// Device id within the user.
    pub device: String,
}

impl DeviceId {
    /// A device id.
    pub fn new(user: impl Into<String>, device: impl Into<String>) -> Self {
        Self {
            user: user.into(),
            device: device.into(),
        }
    }

    /// The identity a logged-in connection is bound to: `user/device`.
    pub fn identity(&self) -> qrpc::PeerIdentity {
        qrpc::PeerIdentity::new(format!("{}/{}", self.user, self.device))
    }

    /// Parses `user/device` back.
    pub fn from_identity(identity: &qrpc::PeerIdentity) -> Option<Self> {
        let (user, device) = identity.as_str().split_once('/')?;
        Some(Self::new(user, device))
    }
}

/// Why a storage operation failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The thing to create exists.
    #[error("already exists")]
    AlreadyExists,
    /// The thing to change does not exist.
    #[error("not found")]
    NotFound,
    /// A queue is at its message or byte limit.
    #[error("queue full")]
    QueueFull,
    /// The sender's share of a recipient queue is used up.
    #[error("sender quota in the recipient queue exceeded")]
    SenderQuota {
        /// Whether the lower quota for senders the recipient never talked to applied.
        stranger: bool,
    },
    /// The device id was revoked and can never be registered again.
    #[error("device id revoked")]
    Revoked,
    /// A quota would be exceeded.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// A write at a position other than the current end (a blob chunk).
    #[error("out of order: expected offset {expected}")]
    OutOfOrder {
        /// Where the next write must start.
        expected: u64,
    },
    /// The caller may not make this change (it exists, and the caller can see it).
    #[error("not allowed")]
    Forbidden,
    /// The backend failed; the source chain says why.
    #[error("storage failure")]
    Backend(#[source] BackendError),
}

impl StoreError {
    /// A backend failure caused by `source` (an error, or a text for failures with no error
    /// value of their own).
    pub fn backend(source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Backend(BackendError(std::sync::Arc::from(source.into())))
    }
}

/// Why the storage backend failed: the backend's own error, kept whole (its source chain
/// included) for logs; never shown to clients.
#[derive(Debug, Clone)]
pub struct BackendError(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<StoreError> for qrpc::Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::AlreadyExists => qrpc::Status::already_exists("already exists"),
            StoreError::NotFound => qrpc::Status::not_found("not found"),
            StoreError::QueueFull => qrpc::Status::resource_exhausted("recipient queue is full"),
            StoreError::SenderQuota { stranger: false } => qrpc::Status::resource_exhausted(
                "too many of your messages are waiting in the recipient's queue",
            ),
            StoreError::SenderQuota { stranger: true } => qrpc::Status::resource_exhausted(
                "too many of your messages are waiting for a recipient who has not written to you",
            ),
            StoreError::Revoked => qrpc::Status::failed_precondition(
                "this device id was revoked and cannot be used again; choose another",
            ),
            StoreError::QuotaExceeded => qrpc::Status::resource_exhausted("storage quota exceeded"),
            StoreError::Forbidden => qrpc::Status::permission_denied("not allowed"),
            StoreError::OutOfOrder { expected } => {
                qrpc::Status::failed_precondition(format!("offset: expected {expected}"))
            }
            StoreError::Backend(reason) => {
                let chain = crate::util::error_chain(&reason);
                tracing::error!(reason = %chain, "storage failure");
                qrpc::Status::internal("storage failure")
            }
        }
    }
}

/// How long a relay failure is kept for its sender to read (30 days).
pub const RELAY_FAILURES_KEPT_MS: u64 = 30 * 24 * 3600 * 1000;

/// Result of storage operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// A backend's error as a [`StoreError::Backend`].
fn backend(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::backend(e)
}

/// A stored count or timestamp (the databases' signed integers) as `u64`.
fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// A count or timestamp as the databases' signed integer (saturating).
fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The device it belongs to.
    pub device: DeviceId,
    /// Expiry, ms since the epoch.
    pub expires_at_ms: u64,
}

/// A device as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// Device id.
    pub device: String,
    /// Label.
    pub label: String,
    /// Registered at, ms.
    pub created_at_ms: u64,
    /// Whether a key bundle is published.
    pub has_keys: bool,
}

/// A message to enqueue.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Recipient device.
    pub recipient: DeviceId,
    /// Who sent it: `user/device` of a logged-in sender, empty for a sealed send. Quotas and
    /// deduplication are scoped to it.
    pub sender: String,
    /// The sending user, when logged in; the store records that it wrote to the recipient.
    pub sender_user: Option<String>,
    /// Whether the recipient never talked to the sender (the lower quota applies).
    pub stranger: bool,
    /// Sender-chosen id for idempotence, unique per (recipient, sender).
    pub message_id: Vec<u8>,
    /// Ciphertext.
    pub payload: Vec<u8>,
}

impl NewMessage {
    /// What the per-sender quota of the recipient queue counts this message under: the
    /// sending user (every device of it together), or `""` for sealed sends, which share one
    /// bucket per queue.
    pub fn quota_key(&self) -> &str {
        self.sender
            .split_once('/')
            .map_or(self.sender.as_str(), |(user, _)| user)
    }
}

/// Bounds of one recipient queue, checked in the transaction that inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueLimits {
    /// Messages the queue may hold.
    pub max_messages: u64,
    /// Payload bytes the queue may hold.
    pub max_bytes: u64,
    /// Messages one sending user (every device of it), or all sealed senders together, may
    /// have waiting in it.
    pub sender_messages: u64,
    /// Payload bytes one sending user, or all sealed senders together, may have waiting in it.
    pub sender_bytes: u64,
    /// Messages a stranger (see [`NewMessage::stranger`]) may have waiting in it.
    pub stranger_messages: u64,
    /// Payload bytes a stranger may have waiting in it.
    pub stranger_bytes: u64,
}

/// A queued message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Sequence number in its queue.
    pub seq: u64,
    /// Sender-chosen id.
    pub message_id: Vec<u8>,
    /// Ciphertext.
    pub payload: Vec<u8>,
    /// Accepted at, ms.
    pub received_at_ms: u64,
}

/// Outcome of one enqueue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The message's sequence number.
    pub seq: u64,
    /// Whether the id was already queued.
    pub duplicate: bool,
}

impl Enqueued {
    /// A message already in the relay outbox, or already relayed here: it has no queue
    /// position.
    pub const SEEN: Self = Self {
        seq: 0,
        duplicate: true,
    };
    /// A message put in the relay outbox (no queue here, so no position).
    pub const IN_OUTBOX: Self = Self {
        seq: 0,
        duplicate: false,
    };
}

/// A queue's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueDepth {
    /// Messages queued.
    pub depth: u64,
    /// Oldest seq (0 when empty).
    pub first_seq: u64,
    /// Newest seq (0 when empty).
    pub last_seq: u64,
}

/// A published key bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRow {
    /// qpq-core bundle encoding.
    pub bundle: Vec<u8>,
    /// Identity key (32 bytes).
    pub identity_key: Vec<u8>,
    /// SHA-256 of the delivery token, if one was set.
    pub delivery_token_hash: Option<Vec<u8>>,
    /// The binding's key-transparency leaf index.
    pub kt_index: u64,
    /// The last-resort key-package hash in that leaf (`None` for bindings written before
    /// schema version 5).
    pub kt_key_package_hash: Option<Vec<u8>>,
}

/// A blob's upload state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRow {
    /// Uploader.
    pub owner: String,
    /// Declared size.
    pub size: u64,
    /// Bytes received so far.
    pub received: u64,
    /// Whether complete and verified.
    pub complete: bool,
    /// How many times its bytes were dropped (a failed hash check): an upload's check and
    /// its outcome name the epoch they were about, so a stale one changes nothing.
    pub epoch: u64,
}

/// A message for a device of another server, waiting in the relay outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The recipient's server (its domain).
    pub destination: String,
    /// The local sending device.
    pub sender: DeviceId,
    /// The recipient device, its user named as the destination names it (bare).
    pub recipient: DeviceId,
    /// Sender-chosen id (with sender and recipient, what makes the relay idempotent).
    pub message_id: Vec<u8>,
    /// The sealed envelope.
    pub payload: Vec<u8>,
}

/// What the relay outbox holds per destination and per (destination, sending user), read
/// once per call and kept up to date as the call's messages go in: a batch costs one count per
/// destination and sender, not one per message.
#[derive(Debug, Default)]
pub(crate) struct OutboxTally {
    destinations: std::collections::HashMap<String, u64>,
    senders: std::collections::HashMap<(String, String), (u64, u64)>,
}

impl OutboxTally {
    /// Whether the messages waiting for `m`'s destination are still to be counted.
    pub(crate) fn needs_destination(&self, m: &OutboxMessage) -> bool {
        !self.destinations.contains_key(&m.destination)
    }

    /// Whether the messages and bytes `m`'s sender has waiting there are still to be counted.
    pub(crate) fn needs_sender(&self, m: &OutboxMessage) -> bool {
        !self
            .senders
            .contains_key(&(m.destination.clone(), m.sender.user.clone()))
    }

    /// Records the count of messages waiting for `m`'s destination.
    pub(crate) fn set_destination(&mut self, m: &OutboxMessage, waiting: u64) {
        self.destinations.insert(m.destination.clone(), waiting);
    }

    /// Records the messages and bytes `m`'s sender has waiting for its destination.
    pub(crate) fn set_sender(&mut self, m: &OutboxMessage, messages: u64, bytes: u64) {
        self.senders.insert(
            (m.destination.clone(), m.sender.user.clone()),
            (messages, bytes),
        );
    }

    /// Whether `m` fits: `QueueFull` for a full destination, `SenderQuota` for a sender at
    /// its share.
    pub(crate) fn check(&self, m: &OutboxMessage, limits: QueueLimits) -> StoreResult<()> {
        let waiting = self.destinations.get(&m.destination).copied().unwrap_or(0);
        if waiting >= limits.max_messages {
            return Err(StoreError::QueueFull);
        }
        let (mine, bytes) = self
            .senders
            .get(&(m.destination.clone(), m.sender.user.clone()))
            .copied()
            .unwrap_or((0, 0));
        if mine >= limits.sender_messages
            || bytes.saturating_add(m.payload.len() as u64) > limits.sender_bytes
        {
            return Err(StoreError::SenderQuota { stranger: false });
        }
        Ok(())
    }

    /// Counts `m`, just put in the outbox.
    pub(crate) fn add(&mut self, m: &OutboxMessage) {
        *self.destinations.entry(m.destination.clone()).or_default() += 1;
        let sender = self
            .senders
            .entry((m.destination.clone(), m.sender.user.clone()))
            .or_default();
        sender.0 += 1;
        sender.1 = sender.1.saturating_add(m.payload.len() as u64);
    }
}

/// An outbox row claimed for sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Increasing id: the order messages to one destination are sent in.
    pub id: u64,
    /// The message.
    pub message: OutboxMessage,
    /// When it entered the outbox, ms.
    pub created_at_ms: u64,
}

/// A destination's sending state, as a claim found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DestinationState {
    /// Failed attempts since the last success.
    pub attempts: u32,
    /// Since when sending has failed, ms (0: it has not).
    pub failing_since_ms: u64,
}

/// A relayed message that was given up, as its sender sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayFailureRow {
    /// Increasing id, per server.
    pub id: u64,
    /// The local sender.
    pub sender_user: String,
    /// Sender-chosen message id.
    pub message_id: Vec<u8>,
    /// The recipient device, its user qualified (`user@domain`).
    pub recipient: DeviceId,
    /// Why.
    pub reason: String,
    /// Whether sending again may succeed.
    pub retryable: bool,
    /// When, ms.
    pub failed_at_ms: u64,
}

/// A peer's log head this server witnessed (cosigned) last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessedHead {
    /// The peer log's signing key (pinned when first witnessed).
    pub log_key: Vec<u8>,
    /// The head's tree size.
    pub tree_size: u64,
    /// The signed tree head, encoded.
    pub head: Vec<u8>,
}

/// Everything the server persists.
pub trait Store: Send + Sync + 'static {
    /// Creates a user with an OPAQUE registration record.
    fn create_user(
        &self,
        user: String,
        password_file: Vec<u8>,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// A user's OPAQUE registration record.
    fn password_file(
        &self,
        user: String,
    ) -> impl Future<Output = StoreResult<Option<Vec<u8>>>> + Send;

    /// Registers a device. `first_only` makes it succeed only when the user has no device yet
    /// (`NotFound` otherwise); a user holds at most `max_devices` (`QuotaExceeded`); a revoked
    /// id is refused (`Revoked`).
    fn register_device(
        &self,
        device: DeviceId,
        label: String,
        now_ms: u64,
        first_only: bool,
        max_devices: u32,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Whether a device exists.
    fn device_exists(&self, device: DeviceId) -> impl Future<Output = StoreResult<bool>> + Send;
    /// A user's devices.
    fn list_devices(
        &self,
        user: String,
    ) -> impl Future<Output = StoreResult<Vec<DeviceRow>>> + Send;
    /// Deletes a device with its queue, keys and sessions, and records its id as revoked.
    fn revoke_device(
        &self,
        device: DeviceId,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;

    /// Stores a session under the hash of its token.
    fn create_session(
        &self,
        token_hash: Vec<u8>,
        session: Session,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The session with this token hash.
    fn session(
        &self,
        token_hash: Vec<u8>,
    ) -> impl Future<Output = StoreResult<Option<Session>>> + Send;
    /// Deletes the session with this token hash (logout).
    fn delete_session(&self, token_hash: Vec<u8>) -> impl Future<Output = StoreResult<()>> + Send;
    /// Deletes sessions and P2P endpoints that expired by `now_ms`, relayed-message memory
    /// past its time, and relay failures older than 30 days; returns how many rows went.
    fn delete_expired(&self, now_ms: u64) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Enqueues one message: limit checks and insert in one transaction, idempotent by
    /// (recipient, sender, message id).
    fn enqueue(
        &self,
        message: NewMessage,
        limits: QueueLimits,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<Enqueued>> + Send;
    /// Enqueues several messages, each on its own: one refused message (a full queue, an
    /// unknown device) leaves the others queued. One result per message, in order.
    fn batch_enqueue(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<Vec<StoreResult<Enqueued>>>> + Send;
    /// For each of `recipients`, whether it knows `sender`: it wrote to `sender`, shares a
    /// channel with it, or is it. One read for a whole batch.
    fn known_to(
        &self,
        sender: String,
        recipients: Vec<String>,
    ) -> impl Future<Output = StoreResult<Vec<bool>>> + Send;
    /// Whether two users are members of a common channel (or are the same user).
    fn share_channel(&self, a: String, b: String)
    -> impl Future<Output = StoreResult<bool>> + Send;
    /// Messages after `after_seq`, oldest first.
    fn fetch(
        &self,
        device: DeviceId,
        after_seq: u64,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<StoredMessage>>> + Send;
    /// A queue's depth and bounds.
    fn peek(&self, device: DeviceId) -> impl Future<Output = StoreResult<QueueDepth>> + Send;
    /// Deletes messages up to `up_to_seq`; returns how many.
    fn ack(
        &self,
        device: DeviceId,
        up_to_seq: u64,
    ) -> impl Future<Output = StoreResult<u64>> + Send;

    /// Adds one-time key packages, keeping at most `max` per device; returns how many are stored.
    fn add_key_packages(
        &self,
        device: DeviceId,
        packages: Vec<Vec<u8>>,
        max: u32,
    ) -> impl Future<Output = StoreResult<u32>> + Send;
    /// Replaces the last-resort key package.
    fn set_last_resort_key_package(
        &self,
        device: DeviceId,
        package: Vec<u8>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Consumes one one-time key package, or returns the last-resort one (`true`).
    fn take_key_package(
        &self,
        device: DeviceId,
    ) -> impl Future<Output = StoreResult<Option<(Vec<u8>, bool)>>> + Send;
    /// One-time key packages stored for a device.
    fn key_package_count(&self, device: DeviceId) -> impl Future<Output = StoreResult<u32>> + Send;
    /// The last-resort key package, if any.
    fn last_resort_key_package(
        &self,
        device: DeviceId,
    ) -> impl Future<Output = StoreResult<Option<Vec<u8>>>> + Send;

    /// Publishes a key bundle and appends its key-transparency leaf in one transaction;
    /// returns the leaf index.
    fn publish_bundle(
        &self,
        device: DeviceId,
        bundle: Vec<u8>,
        identity_key: Vec<u8>,
        delivery_token_hash: Option<Vec<u8>>,
        leaf_hash: [u8; 32],
        key_package_hash: [u8; 32],
    ) -> impl Future<Output = StoreResult<u64>> + Send;
    /// A device's bundle.
    fn bundle(
        &self,
        device: DeviceId,
    ) -> impl Future<Output = StoreResult<Option<BundleRow>>> + Send;
    /// Devices of a user with published identity keys.
    fn user_identities(
        &self,
        user: String,
    ) -> impl Future<Output = StoreResult<Vec<(String, Vec<u8>)>>> + Send;
    /// The device owning an identity key.
    fn resolve_identity(
        &self,
        identity_key: Vec<u8>,
    ) -> impl Future<Output = StoreResult<Option<DeviceId>>> + Send;
    /// Every key-transparency leaf hash, in order (to rebuild the log at start).
    fn kt_leaves(&self) -> impl Future<Output = StoreResult<Vec<[u8; 32]>>> + Send;
    /// The leaf hashes from index `start` on, in order (what other nodes appended since).
    fn kt_leaves_from(&self, start: u64)
    -> impl Future<Output = StoreResult<Vec<[u8; 32]>>> + Send;
    /// The signed tree head kept for `tree_size`, encoded.
    fn kt_head(&self, tree_size: u64) -> impl Future<Output = StoreResult<Option<Vec<u8>>>> + Send;
    /// Keeps `head` as the signed head of `tree_size` unless one is kept already; returns
    /// the kept one (whichever node signed it first).
    fn init_kt_head(
        &self,
        tree_size: u64,
        head: Vec<u8>,
    ) -> impl Future<Output = StoreResult<Vec<u8>>> + Send;

    /// Creates a channel whose first member is `owner`, with `members` invited.
    fn create_channel(
        &self,
        id: Vec<u8>,
        name: String,
        owner: String,
        members: Vec<String>,
        mls_group_id: Vec<u8>,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Invites users to and removes members from a channel `caller` is an accepted member of,
    /// keeping at most `max_members` (invited and accepted); returns the accepted members
    /// after the change, sorted. `NotFound` when the channel does not exist, the caller is not
    /// a member, or an invited user does not exist; `Forbidden` when the caller, not its
    /// owner, invites anyone or removes someone else.
    fn update_channel(
        &self,
        id: Vec<u8>,
        caller: String,
        add: Vec<String>,
        remove: Vec<String>,
        max_members: usize,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
    /// `user` answers its invitation to channel `id`: accepted, it becomes a member;
    /// declined, the invitation is gone. Returns the accepted members after the answer.
    /// `NotFound` when `user` has no invitation there.
    /// `NotFound` too when the channel's MLS group id is not `mls_group_id`.
    fn answer_channel(
        &self,
        id: Vec<u8>,
        user: String,
        mls_group_id: Vec<u8>,
        accept: bool,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
    /// Channels `user` owns.
    fn channels_owned(&self, user: String) -> impl Future<Output = StoreResult<u64>> + Send;
    /// A channel's accepted members, sorted, if `caller` is one of them.
    fn channel_members(
        &self,
        id: Vec<u8>,
        caller: String,
    ) -> impl Future<Output = StoreResult<Option<Vec<String>>>> + Send;
    /// Whether a user exists.
    fn user_exists(&self, user: String) -> impl Future<Output = StoreResult<bool>> + Send;

    /// A blob's state.
    fn blob(&self, sha256: Vec<u8>) -> impl Future<Output = StoreResult<Option<BlobRow>>> + Send;
    /// Starts a blob upload, checking the owner's quota.
    fn begin_blob(
        &self,
        sha256: Vec<u8>,
        owner: String,
        size: u64,
        quota: u64,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Appends `data` to an incomplete blob at `offset`, which must be the bytes received so
    /// far ([`StoreError::OutOfOrder`] otherwise: another upload of it moved on, or the caller
    /// is behind), and records the progress in the same transaction. Returns the bytes
    /// received after it. `NotFound` when the blob was never begun, `AlreadyExists` when it
    /// is complete. Every node reads what any node appended.
    fn append_blob(
        &self,
        sha256: Vec<u8>,
        offset: u64,
        data: Vec<u8>,
    ) -> impl Future<Output = StoreResult<u64>> + Send;
    /// The stored bytes of a blob from `offset` to the end of the chunk holding it (at most
    /// one upload chunk); empty at or past the end of what is stored.
    fn read_blob(
        &self,
        sha256: Vec<u8>,
        offset: u64,
    ) -> impl Future<Output = StoreResult<Vec<u8>>> + Send;
    /// Drops a blob's bytes and progress whatever its state (complete or not) and starts its
    /// next epoch (only for importing blobs an older server kept as files). Returns the new
    /// epoch, or `None` when there is no such blob.
    fn reset_blob(&self, sha256: Vec<u8>) -> impl Future<Output = StoreResult<Option<u64>>> + Send;
    /// Ends an upload whose bytes were checked at `epoch`: `complete` marks the blob complete
    /// (only when all its bytes are stored); otherwise its bytes (all of them: a check is
    /// only made of a whole blob) are dropped and it starts again from 0 in the next epoch
    /// (its hash did not match). Returns whether it changed
    /// anything: `false` when the blob is complete already or another upload moved it to
    /// another epoch meanwhile.
    fn finish_blob(
        &self,
        sha256: Vec<u8>,
        epoch: u64,
        complete: bool,
    ) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Publishes a device's P2P endpoint.
    fn publish_endpoint(
        &self,
        device: DeviceId,
        addresses: Vec<String>,
        expires_at_ms: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// A device's unexpired endpoint.
    fn endpoint(
        &self,
        device: DeviceId,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<Option<(Vec<String>, u64)>>> + Send;

    /// A named server secret.
    fn secret(&self, name: String) -> impl Future<Output = StoreResult<Option<Vec<u8>>>> + Send;
    /// Stores a named server secret unless one exists; returns the stored value.
    fn init_secret(
        &self,
        name: String,
        value: Vec<u8>,
    ) -> impl Future<Output = StoreResult<Vec<u8>>> + Send;

    /// Puts messages for users of other servers in the relay outbox, each on its own
    /// (idempotent by sender device, recipient and message id: a repeat is a duplicate), and
    /// records that each sender wrote to its recipient (`user@destination`). A destination
    /// holding `limits.max_messages` messages refuses more (`QueueFull`), and one sending
    /// user may have `limits.sender_messages` messages and `limits.sender_bytes` bytes
    /// waiting for one destination (`SenderQuota`). `seq` is 0.
    fn outbox_push(
        &self,
        messages: Vec<OutboxMessage>,
        limits: QueueLimits,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<Vec<StoreResult<Enqueued>>>> + Send;
    /// Holds outbox messages back until `until_ms` (the destination's limits refused them
    /// for now): claims skip them and every later message of the same sender to the same
    /// device, so each sender's order per device holds while everything else goes on.
    fn outbox_hold(
        &self,
        ids: Vec<u64>,
        until_ms: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Destinations with messages waiting whose next attempt is due by `now_ms` and whose
    /// sending lease is free (or `node`'s).
    fn outbox_due(
        &self,
        node: String,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<Vec<String>>> + Send;
    /// Takes (or renews) `node`'s lease on sending to `destination` until `now_ms + lease_ms`
    /// and returns its oldest `limit` messages that are not held back (nor behind a held
    /// message of their sender) with its retry state. `None` when another
    /// node holds the lease or the next attempt is not due: only the lease holder sends, so
    /// each message leaves one node, in order.
    fn outbox_claim(
        &self,
        destination: String,
        node: String,
        now_ms: u64,
        lease_ms: u64,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Option<(Vec<OutboxRow>, DestinationState)>>> + Send;
    /// Removes delivered (or refused and reported) messages and clears the destination's
    /// failures.
    fn outbox_sent(
        &self,
        destination: String,
        ids: Vec<u64>,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Records a failed attempt: the next one is at `next_attempt_ms`; the lease is released.
    fn outbox_retry_later(
        &self,
        destination: String,
        next_attempt_ms: u64,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Makes the next attempt to `destination` due now (traffic from it, or a health probe
    /// that succeeded): backoff starts again.
    fn outbox_wake(&self, destination: String) -> impl Future<Output = StoreResult<()>> + Send;
    /// Moves outbox messages to the relay failures of their senders, with `reason`; returns
    /// the senders and failure ids, to tell them.
    fn outbox_fail(
        &self,
        ids: Vec<u64>,
        reason: String,
        retryable: bool,
        now_ms: u64,
    ) -> impl Future<Output = StoreResult<Vec<(String, u64)>>> + Send;
    /// A user's relay failures after `after_id`, oldest first.
    fn relay_failures(
        &self,
        user: String,
        after_id: u64,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<RelayFailureRow>>> + Send;
    /// Enqueues messages relayed by another server, each on its own, as
    /// [`Store::batch_enqueue`] does, and remembers each (sender, recipient, message id) until
    /// `seen_until_ms` in the same transaction: one relayed again, even after it was fetched
    /// and acknowledged, is a duplicate (`seq` 0) and is not queued twice. Once one message
    /// of a sending user is refused for room in a queue (`QueueFull`, `SenderQuota`), that
    /// user's later messages to that queue in the call are refused the same way, so none
    /// overtakes it.
    fn relay_accept(
        &self,
        messages: Vec<NewMessage>,
        limits: QueueLimits,
        now_ms: u64,
        seen_until_ms: u64,
    ) -> impl Future<Output = StoreResult<Vec<StoreResult<Enqueued>>>> + Send;
    /// The head of `domain`'s log this server witnessed last.
    fn witnessed_head(
        &self,
        domain: String,
    ) -> impl Future<Output = StoreResult<Option<WitnessedHead>>> + Send;
    /// Records `head` as the last witnessed head of `domain` if the stored one is still
    /// `previous_size` (`None`: none stored); returns whether it did (`false`: another
    /// witness call moved it meanwhile).
    fn witness_head(
        &self,
        domain: String,
        previous_size: Option<u64>,
        head: WitnessedHead,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
}
