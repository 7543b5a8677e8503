//! The store a server runs on, chosen by its configuration: SQLite (one node, the default)
//! or PostgreSQL (one or more nodes).

use super::*;

/// SQLite or PostgreSQL, behind the one [`Store`] trait.
#[derive(Debug, Clone)]
pub enum AnyStore {
    /// The embedded SQLite database.
    Sqlite(SqliteStore),
    /// A PostgreSQL database, possibly shared by several nodes.
    Postgres(PostgresStore),
}

impl AnyStore {
    /// The backend's name, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }
}

/// Implements [`Store`] for [`AnyStore`] by handing each call to the chosen backend.
macro_rules! delegate {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)*) -> $ret:ty; )*) => {
        impl Store for AnyStore {
            $(
                async fn $name(&self $(, $arg: $ty)*) -> $ret {
                    match self {
                        Self::Sqlite(s) => s.$name($($arg),*).await,
                        Self::Postgres(s) => s.$name($($arg),*).await,
                    }
                }
            )*
        }
    };
}

delegate! {
    fn create_user(&self, user: String, password_file: Vec<u8>, now_ms: u64) -> StoreResult<()>;
    fn password_file(&self, user: String) -> StoreResult<Option<Vec<u8>>>;
    fn register_device(&self, device: DeviceId, label: String, now_ms: u64, first_only: bool, max_devices: u32) -> StoreResult<()>;
    fn device_exists(&self, device: DeviceId) -> StoreResult<bool>;
    fn list_devices(&self, user: String) -> StoreResult<Vec<DeviceRow>>;
    fn revoke_device(&self, device: DeviceId, now_ms: u64) -> StoreResult<()>;
    fn create_session(&self, token_hash: Vec<u8>, session: Session) -> StoreResult<()>;
    fn session(&self, token_hash: Vec<u8>) -> StoreResult<Option<Session>>;
    fn delete_session(&self, token_hash: Vec<u8>) -> StoreResult<()>;
    fn delete_expired(&self, now_ms: u64) -> StoreResult<u64>;
    fn enqueue(&self, message: NewMessage, limits: QueueLimits, now_ms: u64) -> StoreResult<Enqueued>;
    fn batch_enqueue(&self, messages: Vec<NewMessage>, limits: QueueLimits, now_ms: u64) -> StoreResult<Vec<StoreResult<Enqueued>>>;
    fn known_to(&self, sender: String, recipients: Vec<String>) -> StoreResult<Vec<bool>>;
    fn share_channel(&self, a: String, b: String) -> StoreResult<bool>;
    fn fetch(&self, device: DeviceId, after_seq: u64, limit: u32) -> StoreResult<Vec<StoredMessage>>;
    fn peek(&self, device: DeviceId) -> StoreResult<QueueDepth>;
    fn ack(&self, device: DeviceId, up_to_seq: u64) -> StoreResult<u64>;
    fn add_key_packages(&self, device: DeviceId, packages: Vec<Vec<u8>>, max: u32) -> StoreResult<u32>;
    fn set_last_resort_key_package(&self, device: DeviceId, package: Vec<u8>) -> StoreResult<()>;
    fn take_key_package(&self, device: DeviceId) -> StoreResult<Option<(Vec<u8>, bool)>>;
    fn key_package_count(&self, device: DeviceId) -> StoreResult<u32>;
    fn last_resort_key_package(&self, device: DeviceId) -> StoreResult<Option<Vec<u8>>>;
    fn publish_bundle(&self, device: DeviceId, bundle: Vec<u8>, identity_key: Vec<u8>, delivery_token_hash: Option<Vec<u8>>, leaf_hash: [u8; 32], key_package_hash: [u8; 32]) -> StoreResult<u64>;
    fn bundle(&self, device: DeviceId) -> StoreResult<Option<BundleRow>>;
    fn user_identities(&self, user: String) -> StoreResult<Vec<(String, Vec<u8>)>>;
    fn resolve_identity(&self, identity_key: Vec<u8>) -> StoreResult<Option<DeviceId>>;
    fn kt_leaves(&self) -> StoreResult<Vec<[u8; 32]>>;
    fn kt_leaves_from(&self, start: u64) -> StoreResult<Vec<[u8; 32]>>;
    fn kt_head(&self, tree_size: u64) -> StoreResult<Option<Vec<u8>>>;
    fn init_kt_head(&self, tree_size: u64, head: Vec<u8>) -> StoreResult<Vec<u8>>;
    fn create_channel(&self, id: Vec<u8>, name: String, owner: String, members: Vec<String>, mls_group_id: Vec<u8>, now_ms: u64) -> StoreResult<()>;
    fn update_channel(&self, id: Vec<u8>, caller: String, add: Vec<String>, remove: Vec<String>, max_members: usize) -> StoreResult<Vec<String>>;
    fn answer_channel(&self, id: Vec<u8>, user: String, mls_group_id: Vec<u8>, accept: bool) -> StoreResult<Vec<String>>;
    fn channels_owned(&self, user: String) -> StoreResult<u64>;
    fn channel_members(&self, id: Vec<u8>, caller: String) -> StoreResult<Option<Vec<String>>>;
    fn user_exists(&self, user: String) -> StoreResult<bool>;
    fn blob(&self, sha256: Vec<u8>) -> StoreResult<Option<BlobRow>>;
    fn begin_blob(&self, sha256: Vec<u8>, owner: String, size: u64, quota: u64, now_ms: u64) -> StoreResult<()>;
    fn append_blob(&self, sha256: Vec<u8>, offset: u64, data: Vec<u8>) -> StoreResult<u64>;
    fn read_blob(&self, sha256: Vec<u8>, offset: u64) -> StoreResult<Vec<u8>>;
    fn finish_blob(&self, sha256: Vec<u8>, epoch: u64, complete: bool) -> StoreResult<bool>;
    fn reset_blob(&self, sha256: Vec<u8>) -> StoreResult<Option<u64>>;
    fn publish_endpoint(&self, device: DeviceId, addresses: Vec<String>, expires_at_ms: u64) -> StoreResult<()>;
    fn endpoint(&self, device: DeviceId, now_ms: u64) -> StoreResult<Option<(Vec<String>, u64)>>;
    fn secret(&self, name: String) -> StoreResult<Option<Vec<u8>>>;
    fn init_secret(&self, name: String, value: Vec<u8>) -> StoreResult<Vec<u8>>;
    fn outbox_push(&self, messages: Vec<OutboxMessage>, limits: QueueLimits, now_ms: u64) -> StoreResult<Vec<StoreResult<Enqueued>>>;
    fn outbox_hold(&self, ids: Vec<u64>, until_ms: u64) -> StoreResult<()>;
    fn outbox_due(&self, node: String, now_ms: u64) -> StoreResult<Vec<String>>;
    fn outbox_claim(&self, destination: String, node: String, now_ms: u64, lease_ms: u64, limit: u32) -> StoreResult<Option<(Vec<OutboxRow>, DestinationState)>>;
    fn outbox_sent(&self, destination: String, ids: Vec<u64>) -> StoreResult<()>;
    fn outbox_retry_later(&self, destination: String, next_attempt_ms: u64, now_ms: u64) -> StoreResult<()>;
    fn outbox_wake(&self, destination: String) -> StoreResult<()>;
    fn outbox_fail(&self, ids: Vec<u64>, reason: String, retryable: bool, now_ms: u64) -> StoreResult<Vec<(String, u64)>>;
    fn relay_failures(&self, user: String, after_id: u64, limit: u32) -> StoreResult<Vec<RelayFailureRow>>;
    fn relay_accept(&self, messages: Vec<NewMessage>, limits: QueueLimits, now_ms: u64, seen_until_ms: u64) -> StoreResult<Vec<StoreResult<Enqueued>>>;
    fn witnessed_head(&self, domain: String) -> StoreResult<Option<WitnessedHead>>;
    fn witness_head(&self, domain: String, previous_size: Option<u64>, head: WitnessedHead) -> StoreResult<bool>;
}
