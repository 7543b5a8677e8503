//! [`QpqClient`]: accounts, conversations, sending and receiving.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use qpq_core::bundle::KeyBundle;
use qpq_core::identity::{DeviceName, IdentityKey, IdentityPublic};
use qpq_core::kem::{HybridPublicKey, HybridSecretKey};
use qpq_core::mls::{Incoming, Leaf, MlsMember, Suite};
use qpq_core::sealed::ReplayGuard;
use qpq_proto::v1;
use qrpc::Code;
use qrpc::tls::ClientTls;
use tokio::sync::{Notify, broadcast};
use zeroize::Zeroizing;

use crate::error::{SdkError, SdkResult};
use crate::events::{ClientEvent, ConnectionState};
use crate::model::{
    AttachmentInfo, Conversation, ConversationId, ConversationKind, Device, Message, MessageId,
    Progress, SendState, user_of,
};
use crate::store::{
    Delivery, Effect, MemoryStore, SqlStore, Store, StoreKey, StoredAccount, Tx, transact,
};

/// The ALPN the messenger server speaks.
const ALPN: &[u8] = b"qpq/1";

/// Limits and timings of a client. Every field has a default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientLimits {
    /// Longest text message, in bytes (default 64 KiB).
    pub max_text_bytes: usize,
    /// Largest attachment, in bytes (default 100 MiB, the server's default blob limit).
    pub max_attachment_bytes: u64,
    /// Attempts an upload or download makes, resuming where it stopped (default 8).
    pub transfer_attempts: u32,
    /// Most member devices a conversation may have (default 100).
    pub max_conversation_devices: usize,
    /// One-time key packages published at the first login (default 20).
    pub key_packages: usize,
    /// How long one long-poll waits on the server (default 20 s).
    pub fetch_wait: Duration,
    /// First retry delay of the outbox and the receiver; doubles up to `max_backoff`
    /// (default 200 ms).
    pub initial_backoff: Duration,
    /// Longest retry delay (default 10 s).
    pub max_backoff: Duration,
    /// Events buffered for a slow subscriber before it misses some (default 1024).
    pub event_buffer: usize,
    /// Undelivered outgoing items (messages, edits, reactions, ...) the outbox holds at most;
    /// a send beyond it fails with [`SdkError::OutboxFull`] (default 10,000).
    pub max_outbox: u64,
    /// Group messages per conversation kept while they wait for the commit before them
    /// (default 1,000); beyond it one is reported as undecryptable.
    pub max_parked: u64,
    /// Group messages from one sender (in every conversation, its invitation not arrived
    /// or its commit not yet processed) kept while they wait (default 200): anyone who knows
    /// a conversation's id can send to it, so one sender cannot fill the parking.
    pub max_parked_per_sender: u64,
    /// Group messages kept waiting in all (default 2,000), whoever sealed them: a sealed
    /// sender is any key its author made, so this bounds what the parking can hold.
    pub max_parked_total: u64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_text_bytes: 64 * 1024,
            max_attachment_bytes: 100 * 1024 * 1024,
            transfer_attempts: 8,
            max_conversation_devices: 100,
            key_packages: 20,
            fetch_wait: Duration::from_secs(20),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            event_buffer: 1024,
            max_outbox: 10_000,
            max_parked: 1_000,
            max_parked_per_sender: 200,
            max_parked_total: 2_000,
        }
    }
}

/// Configures a [`QpqClient`]; see [`QpqClient::builder`].
#[derive(Debug, Default)]
pub struct QpqClientBuilder {
    server: Option<SocketAddr>,
    tls: Option<ClientTls>,
    data_dir: Option<PathBuf>,
    key: Option<StoreKey>,
    limits: ClientLimits,
    crash: Option<CrashPoint>,
    in_memory: bool,
    invitations: InvitationPolicy,
}

/// Which invitations a client joins at once; the others become message requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvitationPolicy {
    /// From this user's other devices and from users it already has a conversation with
    /// (default). An invitation from anyone else is a message request
    /// ([`ClientEvent::MessageRequest`]) that the user accepts or declines.
    #[default]
    FromKnown,
    /// Every invitation (scripted users, tests): nobody is asked.
    FromAnyone,
}

impl QpqClientBuilder {
    /// Tests only (the `testing` feature): the first time the client reaches `point`, it
    /// fails there: a crash point stops the background tasks as if the process were killed
    /// (reported as `Offline` with "simulated crash"); [`CrashPoint::StoreFailure`] fails
    /// like a local store error, and the client goes on in the same process.
    #[cfg(feature = "testing")]
    pub fn crash_at(mut self, point: CrashPoint) -> Self {
        self.crash = Some(point);
        self
    }

    /// Which invitations are joined at once (default [`InvitationPolicy::FromKnown`]).
    pub fn invitations(mut self, policy: InvitationPolicy) -> Self {
        self.invitations = policy;
        self
    }

    /// The server's address.
    pub fn server(mut self, addr: SocketAddr) -> Self {
        self.server = Some(addr);
        self
    }

    /// Trusts exactly the server certificate with this SHA-256 (printed by `qpq-server`).
    pub fn pin(mut self, fingerprint: [u8; 32]) -> Self {
        self.tls = Some(ClientTls::pinned(fingerprint));
        self
    }

    /// Any other trust setting (CA roots, say).
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Where the encrypted store lives (one directory per account and device).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    /// Encrypts the store with a key stretched from `passphrase` (Argon2id, per-store salt).
    pub fn passphrase(mut self, passphrase: impl Into<String>) -> Self {
        self.key = Some(StoreKey::Passphrase(Zeroizing::new(passphrase.into())));
        self
    }

    /// Encrypts the store with a raw 32-byte key.
    pub fn raw_key(mut self, key: [u8; 32]) -> Self {
        self.key = Some(StoreKey::Raw(Zeroizing::new(key)));
        self
    }

    /// Keeps everything in memory instead of a data directory (tests, throwaway bots):
    /// nothing survives the process, and no data directory or store key is needed.
    pub fn in_memory(mut self) -> Self {
        self.in_memory = true;
        self
    }

    /// Replaces the limits.
    pub fn limits(mut self, limits: ClientLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Opens the local store (offline). Nothing talks to the server until
    /// [`register`](QpqClient::register), [`login`](QpqClient::login) or
    /// [`connect`](QpqClient::connect).
    pub fn build(self) -> SdkResult<QpqClient> {
        let server = self
            .server
            .ok_or_else(|| SdkError::Config("server address missing".into()))?;
        let tls = self
            .tls
            .ok_or_else(|| SdkError::Config("server trust (pin or tls) missing".into()))?;
        let store: Box<dyn Store> = if self.in_memory {
            Box::new(MemoryStore::new()?)
        } else {
            let dir = self
                .data_dir
                .ok_or_else(|| SdkError::Config("data directory missing".into()))?;
            let key = self.key.ok_or_else(|| {
                SdkError::Config("store key (passphrase or raw key) missing".into())
            })?;
            Box::new(SqlStore::open(&dir, &key)?)
        };
        let (events, _) = broadcast::channel(self.limits.event_buffer.max(1));
        Ok(QpqClient {
            tasks: Arc::new(Tasks::default()),
            inner: Arc::new(Inner {
                store,
                server,
                tls,
                limits: self.limits,
                rpc: tokio::sync::Mutex::new(None),
                keys: Mutex::new(None),
                events,
                outbox_wake: Notify::new(),
                session_generation: std::sync::atomic::AtomicU64::new(0),
                sealed_bytes_sent: std::sync::atomic::AtomicU64::new(0),
                peer_keys: Mutex::new(HashMap::new()),
                peer_identities: Mutex::new(HashMap::new()),
                unverifiable: Mutex::new(HashMap::new()),
                invitations: self.invitations,
                one_at_a_time: std::sync::atomic::AtomicBool::new(false),
                channel_answers_recorded: std::sync::atomic::AtomicU64::new(1),
                channel_answers_none_at: std::sync::atomic::AtomicU64::new(0),
                channel_leaves: Mutex::new(Vec::new()),
                crash: Mutex::new(self.crash),
            }),
        })
    }
}

/// The device's secrets once logged in.
struct Keys {
    /// `user/device`, as the user sees it.
    me: String,
    /// This device's name in the log and in MLS credentials.
    name: DeviceName,
    identity: IdentityKey,
    hybrid: HybridSecretKey,
    mls: MlsMember,
    replay: ReplayGuard,
}

struct Inner {
    store: Box<dyn Store>,
    server: SocketAddr,
    tls: ClientTls,
    limits: ClientLimits,
    rpc: tokio::sync::Mutex<Option<qrpc::Client>>,
    keys: Mutex<Option<Keys>>,
    events: broadcast::Sender<ClientEvent>,
    outbox_wake: Notify,
    /// The connection generation the session was last bound on (0: none).
    session_generation: std::sync::atomic::AtomicU64,
    sealed_bytes_sent: std::sync::atomic::AtomicU64,
    peer_keys: Mutex<HashMap<(String, String), HybridPublicKey>>,
    peer_identities: Mutex<HashMap<(String, String), qpq_core::identity::IdentityPublic>>,
    /// Server channels of conversations this device was removed from, still to leave.
    channel_leaves: Mutex<Vec<Vec<u8>>>,
    /// Whether the outbox sends one delivery per call (a call was refused as a whole).
    one_at_a_time: std::sync::atomic::AtomicBool,
    /// Counts the channel invitations recorded to answer (from 1: the store may hold some
    /// at start) ...
    channel_answers_recorded: std::sync::atomic::AtomicU64,
    /// ... and the count at which the store was last seen to hold none: while the two are
    /// equal, receiving a message need not ask the store.
    channel_answers_none_at: std::sync::atomic::AtomicU64,
    /// Which invitations are joined at once.
    invitations: InvitationPolicy,
    /// Devices whose keys recently failed the check, with the reason and when.
    unverifiable: Mutex<HashMap<(String, String), (String, std::time::Instant)>>,
    crash: CrashSwitch,
}

/// A quicproquo client: one account on one device, with its encrypted store.
///
/// Cheap to clone. Background tasks (receiving, the outbox) run from a successful
/// [`login`](Self::login) or [`connect`](Self::connect) until [`logout`](Self::logout) or until
/// the last clone is dropped.
#[derive(Clone)]
pub struct QpqClient {
    inner: Arc<Inner>,
    tasks: Arc<Tasks>,
}

/// The background tasks; aborted when the last clone of the client goes away.
#[derive(Default)]
struct Tasks(Mutex<Vec<tokio::task::JoinHandle<()>>>);

impl Tasks {
    fn stop(&self) {
        for task in lock(&self.0).drain(..) {
            task.abort();
        }
    }
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.stop();
    }
}

impl std::fmt::Debug for QpqClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QpqClient")
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Envelopes are accepted up to this old: a device may be offline for a month.
const REPLAY_WINDOW_MS: u64 = 31 * 24 * 3600 * 1000;

fn delivery_id(item: &MessageId, user: &str, device: &str) -> [u8; 16] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"qpq delivery id");
    h.update(item.0);
    h.update(user.as_bytes());
    h.update([0]);
    h.update(device.as_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// `(user, device)` of a credential name. Names are checked against the key-transparency log
/// when their leaf joins a group; this only reads them.
fn split_name(name: &[u8]) -> Option<(String, String)> {
    let name = DeviceName::parse(name).ok()?;
    Some((name.user().to_owned(), name.device().to_owned()))
}

/// The credential name of `user/device` under this device's domain.
fn device_name(keys: &Keys, user: &str, device: &str) -> SdkResult<DeviceName> {
    DeviceName::new(user, keys.name.domain(), device)
        .map_err(|_| SdkError::InvalidArgument(format!("{user}/{device}: not a valid device name")))
}

/// Devices whose keys could not be checked against the log in this pass, with the reason: a
/// leaf naming one of them is refused instead of fetched again.
type Refused = HashMap<(String, String), String>;

/// What retrying parked messages did: their events, whether anything was queued, and the
/// devices whose keys the messages still parked wait for.
type Unparked = (Vec<ClientEvent>, bool, Vec<(String, String)>);

/// What applying a queue entry needs next.
enum Step {
    /// Applied (or refused and reported): go on.
    Done,
    /// Nothing was applied: these devices' keys must be checked against the log first.
    NeedKeys(Vec<(String, String)>),
    /// Applied; messages parked for this conversation wait for these devices' keys.
    UnparkAfter(ConversationId, Vec<(String, String)>),
}

impl QpqClient {
    /// Starts configuring a client.
    pub fn builder() -> QpqClientBuilder {
        QpqClientBuilder::default()
    }

    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.events.subscribe()
    }

    /// Events from now on as a `Stream`. A subscriber that falls more than `event_buffer`
    /// events behind skips the oldest ones (the store keeps the full state).
    pub fn events(&self) -> impl futures::Stream<Item = ClientEvent> + Send + 'static {
        futures::stream::unfold(self.subscribe(), |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(event) => return Some((event, rx)),
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(skipped = n, "event subscriber fell behind");
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Bytes of sealed envelopes this client has handed to the server (its upload traffic
    /// for messages, without attachments and transport overhead).
    pub fn sealed_bytes_sent(&self) -> u64 {
        self.inner
            .sealed_bytes_sent
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Outgoing items (messages, edits, reactions, membership changes) the outbox has not
    /// handed to the server yet.
    pub fn outbox_len(&self) -> SdkResult<u64> {
        self.inner.store.outbox_len()
    }

    /// One message from the store.
    pub fn message(&self, id: &MessageId) -> SdkResult<Option<Message>> {
        self.inner.store.message(id)
    }

    /// `user/device` of the logged-in account, if any.
    pub fn whoami(&self) -> Option<String> {
        lock(&self.inner.keys).as_ref().map(|k| k.me.clone())
    }

    fn emit(&self, event: ClientEvent) {
        let _ = self.inner.events.send(event);
    }

    async fn rpc(&self) -> SdkResult<qrpc::Client> {
        self.inner.rpc().await
    }

    /// Creates an account on the server. Does not log in.
    pub async fn register(&self, user: &str, password: &str) -> SdkResult<()> {
        let rpc = self.rpc().await?;
        qpq_proto::auth_flows::register(&rpc, user, password).await?;
        Ok(())
    }

    /// Logs `device` of `user` in. The first login on this store creates the device's keys
    /// and publishes them; later logins reuse them. Starts receiving and sending.
    pub async fn login(&self, user: &str, device: &str, password: &str) -> SdkResult<()> {
        let existing = self.inner.store.account()?;
        if let Some(a) = &existing
            && (a.user != user || a.device != device)
        {
            return Err(SdkError::OtherAccount(format!("{}/{}", a.user, a.device)));
        }
        let rpc = self.rpc().await?;
        let session = qpq_proto::auth_flows::login(&rpc, user, device, password).await?;
        self.inner.session_bound(&rpc);
        let first = existing.is_none();
        if first && session.domain.is_empty() {
            return Err(SdkError::Invalid(
                "the server did not name its domain (a server older than this client)".into(),
            ));
        }
        if first {
            self.inner.store.create_account(&StoredAccount {
                user: user.into(),
                device: device.into(),
                identity_secret: IdentityKey::generate().to_secret_bytes(),
                hybrid_seed: HybridSecretKey::generate().to_seed(),
                delivery_token: Zeroizing::new(rand::random()),
                session_token: None,
            })?;
        }
        self.inner
            .store
            .set_session_token(Some(&session.session_token))?;
        self.load_keys(first.then_some(session.domain.as_str()))?;
        self.publish_keys(&rpc).await?;
        self.start_tasks();
        Ok(())
    }

    /// Resumes the stored session (after a restart): works offline too, then connects and
    /// catches up in the background. Fails with [`SdkError::NotLoggedIn`] if this store never
    /// logged in.
    pub async fn connect(&self) -> SdkResult<()> {
        let account = self.inner.store.account()?.ok_or(SdkError::NotLoggedIn)?;
        if account.session_token.is_none() {
            return Err(SdkError::NotLoggedIn);
        }
        self.load_keys(None)?;
        self.start_tasks();
        Ok(())
    }

    /// Ends the session on the server and stops the background tasks. The store keeps the
    /// conversations and keys; log in again to continue.
    ///
    /// The session is resumed first if the connection was made anew (a reconnect leaves the
    /// new connection without it), so the server really ends it; the local token is cleared
    /// whatever the server answers. A server that cannot be reached is reported after the
    /// token is gone: the session then ends on the server when it expires.
    pub async fn logout(&self) -> SdkResult<()> {
        self.stop_tasks();
        let ended = match self.inner.session().await {
            Ok(rpc) => match v1::auth_client::AuthClient::new(rpc)
                .logout(&v1::LogoutRequest {})
                .await
            {
                Ok(_) => Ok(()),
                // Nothing to end: the server no longer knows the session.
                Err(status) if status.code() == Code::Unauthenticated => Ok(()),
                Err(status) => Err(status.into()),
            },
            Err(SdkError::Server(status)) if status.code() == Code::Unauthenticated => Ok(()),
            Err(e) => Err(e),
        };
        self.inner.store.set_session_token(None)?;
        ended
    }

    /// Loads the device's keys; `new_domain` is the server's domain on the first login, when
    /// the MLS member is created (its credential names the device under that domain).
    fn load_keys(&self, new_domain: Option<&str>) -> SdkResult<()> {
        let account = self.inner.store.account()?.ok_or(SdkError::NotLoggedIn)?;
        let me = format!("{}/{}", account.user, account.device);
        let identity = IdentityKey::from_secret_bytes(&account.identity_secret);
        let conn = self.inner.store.mls_connection()?;
        let mls = match new_domain {
            Some(domain) => {
                let name = DeviceName::new(&account.user, domain, &account.device)
                    .map_err(|_| SdkError::Invalid(format!("server domain {domain:?}")))?;
                MlsMember::create(conn, &name.encode(), &identity, Suite::XWing)?
            }
            None => MlsMember::load(conn, &identity).map_err(|e| match e {
                qpq_core::mls::MlsError::IdentityMismatch => SdkError::Crypto(
                    "this store was made by a qpq-sdk whose MLS keys were not bound to the \
                     device identity; use a new data directory and log in as a new device"
                        .into(),
                ),
                e => e.into(),
            })?,
        };
        let name = DeviceName::parse(mls.name()).map_err(|_| {
            SdkError::Crypto(
                "this store's MLS member has no versioned device name (made by an older \
                 qpq-sdk); use a new data directory and log in as a new device"
                    .into(),
            )
        })?;
        *lock(&self.inner.keys) = Some(Keys {
            me,
            name,
            identity,
            hybrid: HybridSecretKey::from_seed(&account.hybrid_seed),
            mls,
            replay: ReplayGuard::new(REPLAY_WINDOW_MS),
        });
        Ok(())
    }

    /// Publishes the key bundle (with the delivery token) unless the store records it as
    /// published, then tops up the one-time key packages.
    async fn publish_keys(&self, rpc: &qrpc::Client) -> SdkResult<()> {
        let account = self.inner.store.account()?.ok_or(SdkError::NotLoggedIn)?;
        if !self.inner.store.keys_published()? {
            let bundle = {
                let keys = lock(&self.inner.keys);
                let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
                KeyBundle::new(
                    &keys.identity,
                    keys.hybrid.public(),
                    &account.user,
                    &account.device,
                )
                .map_err(|e| SdkError::Crypto(e.to_string()))?
            };
            v1::keys_client::KeysClient::new(rpc.clone())
                .upload_hybrid_key(&v1::UploadHybridKeyRequest {
                    key_bundle: bundle.encode().into(),
                    delivery_token: account.delivery_token.to_vec().into(),
                })
                .await?;
            self.inner.store.set_keys_published()?;
        }
        self.inner.replenish(rpc).await
    }

    fn start_tasks(&self) {
        self.stop_tasks();
        let receiver = tokio::spawn(receive_loop(Arc::clone(&self.inner)));
        let outbox = tokio::spawn(outbox_loop(Arc::clone(&self.inner)));
        lock(&self.tasks.0).extend([receiver, outbox]);
        self.inner.outbox_wake.notify_one();
    }

    fn stop_tasks(&self) {
        self.tasks.stop();
    }

    /// Every conversation, newest first (message requests are not among them).
    pub fn conversations(&self) -> SdkResult<Vec<Conversation>> {
        self.inner.store.conversations()
    }

    /// Message requests: invitations from users this one has no conversation with, newest
    /// first, each with its inviter. Their messages are stored but not announced until the
    /// request is accepted.
    pub fn requests(&self) -> SdkResult<Vec<(Conversation, String)>> {
        self.inner.store.requests()
    }

    /// How many message requests wait for an answer (what [`requests`](Self::requests)
    /// lists), without loading them.
    pub fn request_count(&self) -> SdkResult<u64> {
        self.inner.store.request_count()
    }

    /// Accepts a message request: the conversation joins the list
    /// ([`ClientEvent::ConversationCreated`]), what arrived in it so far is announced
    /// ([`ClientEvent::MessageReceived`]), and this user becomes a member of its server
    /// channel. `NotFound` if it is no request.
    pub async fn accept_request(&self, id: &ConversationId) -> SdkResult<Conversation> {
        let not_found = || SdkError::NotFound(format!("message request {id}"));
        if !self.inner.store.is_request(id)? {
            return Err(not_found());
        }
        let c = self.inner.store.conversation(id)?.ok_or_else(not_found)?;
        self.answer_channel(id, true).await?;
        self.inner.store.accept_request(id)?;
        self.emit(ClientEvent::ConversationCreated(c.clone()));
        // What arrived while it was a request is announced now.
        for m in self.inner.store.messages(id, None, 1000)? {
            if !m.outgoing {
                self.emit(ClientEvent::MessageReceived(Box::new(m)));
            }
        }
        Ok(c)
    }

    /// Declines a message request: its conversation, messages and group keys are deleted,
    /// and the server channel invitation is declined. `NotFound` if it is no request.
    pub async fn decline_request(&self, id: &ConversationId) -> SdkResult<()> {
        if !self.inner.store.is_request(id)? {
            return Err(SdkError::NotFound(format!("message request {id}")));
        }
        self.answer_channel(id, false).await?;
        {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            if let Some(group) = keys.mls.group(&id.0)? {
                group.delete(&keys.mls)?;
            }
        }
        self.inner.store.decline_request(id)?;
        Ok(())
    }

    /// Answers the server channel invitation of conversation `id`, if it has a channel. An
    /// invitation already answered (or withdrawn) is not an error.
    async fn answer_channel(&self, id: &ConversationId, accept: bool) -> SdkResult<()> {
        let Some(channel_id) = self.inner.store.channel(id)? else {
            return Ok(());
        };
        let rpc = self.inner.session().await?;
        match v1::channel_client::ChannelClient::new(rpc.clone())
            .answer_invitation(&v1::AnswerInvitationRequest {
                channel_id: channel_id.clone().into(),
                accept,
                mls_group_id: id.0.to_vec().into(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(status.into()),
        }
    }

    /// Searches this device's decrypted messages (full-text, every word must match), best
    /// matches first. The index lives in the encrypted store; nothing leaves the device.
    pub fn search(&self, query: &str) -> SdkResult<Vec<Message>> {
        self.inner.store.search(query, 50)
    }

    /// The newest `limit` messages of a conversation, oldest first.
    pub fn messages(&self, conversation: &ConversationId, limit: u32) -> SdkResult<Vec<Message>> {
        self.inner.store.messages(conversation, None, limit)
    }

    /// The `limit` messages of a conversation just older than `before`, oldest first (paging
    /// back through history: pass the first message of the previous page).
    pub fn messages_before(
        &self,
        conversation: &ConversationId,
        before: &MessageId,
        limit: u32,
    ) -> SdkResult<Vec<Message>> {
        self.inner.store.messages(conversation, Some(before), limit)
    }

    /// Encrypts `body` for `conversation` and queues one delivery per member device (other
    /// than this one). Returns the content id and this device's name.
    fn send_content(
        &self,
        conversation: &ConversationId,
        body: v1::content::Body,
        echo: impl FnOnce(MessageId, String, u64, bool) -> Option<Message>,
    ) -> SdkResult<MessageId> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let c = self
            .inner
            .store
            .conversation(conversation)?
            .ok_or_else(|| SdkError::NotFound(format!("conversation {conversation}")))?;
        if !c.members.iter().any(|m| m == user_of(&me)) {
            return Err(SdkError::InvalidArgument(format!(
                "this user is no longer a member of conversation {conversation}"
            )));
        }
        let limit = self.inner.limits.max_outbox;
        if self.inner.store.outbox_len()? >= limit {
            return Err(SdkError::OutboxFull { limit });
        }
        let id = MessageId::random();
        let sent_at_ms = now_ms();
        let content = v1::Content {
            id: id.0.to_vec().into(),
            sent_at_ms,
            body: Some(body),
        }
        .encode_to_vec();
        // Encrypting moves the group's ratchet: the ciphertext is queued in the same
        // transaction, so a crash leaves neither.
        let echo = {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            transact(&*self.inner.store, Some(&keys.mls), |tx| {
                let mut group = keys
                    .mls
                    .group(&conversation.0)?
                    .ok_or_else(|| SdkError::NotFound(format!("conversation {conversation}")))?;
                let ciphertext = group.encrypt(&keys.mls, &content)?;
                let recipients = other_devices(&group, &keys.me);
                let transport = group_transport(conversation, ciphertext);
                let deliveries = deliveries_for(id, &recipients, &transport);
                let echo = echo(id, keys.me.clone(), sent_at_ms, deliveries.is_empty());
                keys.mls.keep(group);
                tx.queue_outgoing(echo.as_ref(), &deliveries)?;
                SdkResult::Ok(echo)
            })?
        };
        if let Some(echo) = echo {
            self.emit(ClientEvent::MessageReceived(Box::new(echo.clone())));
            self.emit(ClientEvent::SendStateChanged {
                id,
                conversation: *conversation,
                state: echo.state,
            });
        }
        self.inner.outbox_wake.notify_one();
        Ok(id)
    }

    /// Sends a text message (optionally a reply). It is stored and shown at once (local echo,
    /// state [`SendState::Queued`]), then delivered by the outbox, which retries until the
    /// server takes it — also after a restart.
    pub fn send_text(
        &self,
        conversation: &ConversationId,
        body: &str,
        reply_to: Option<MessageId>,
    ) -> SdkResult<MessageId> {
        self.check_text(body)?;
        let conversation = *conversation;
        let text = body.to_owned();
        self.send_content(
            &conversation,
            v1::content::Body::Text(v1::Text {
                body: body.to_owned(),
                reply_to: reply_to.map(|r| r.0.to_vec()).unwrap_or_default().into(),
            }),
            move |id, me, sent_at_ms, nobody| {
                Some(Message {
                    body: text,
                    reply_to,
                    ..Message::new(id, conversation, me, sent_at_ms, true, echo_state(nobody))
                })
            },
        )
    }

    /// Sends a file: encrypts it under a fresh key, uploads the ciphertext as a blob in
    /// chunks (resuming after a disconnect, `progress` called as the server confirms bytes),
    /// then sends a message carrying the key to the conversation.
    pub async fn send_attachment(
        &self,
        conversation: &ConversationId,
        name: &str,
        mime: &str,
        caption: &str,
        data: &[u8],
        mut progress: impl FnMut(Progress) + Send,
    ) -> SdkResult<MessageId> {
        if data.len() as u64 > self.inner.limits.max_attachment_bytes {
            return Err(SdkError::InvalidArgument(format!(
                "attachment: at most {} bytes",
                self.inner.limits.max_attachment_bytes
            )));
        }
        if name.is_empty() || name.len() > 255 {
            return Err(SdkError::InvalidArgument("name: 1 to 255 bytes".into()));
        }
        if self.inner.store.conversation(conversation)?.is_none() {
            return Err(SdkError::NotFound(format!("conversation {conversation}")));
        }
        let sealed = qpq_core::attachment::encrypt(data);
        self.upload(&sealed.ciphertext, &sealed.sha256, &mut progress)
            .await?;
        let wire = v1::Attachment {
            blob_sha256: sealed.sha256.to_vec().into(),
            key: sealed.key.to_vec().into(),
            name: name.to_owned(),
            size: data.len() as u64,
            mime: mime.to_owned(),
            caption: caption.to_owned(),
        };
        let conversation = *conversation;
        let info = AttachmentInfo::from_wire(wire.clone());
        let caption = caption.to_owned();
        self.send_content(
            &conversation,
            v1::content::Body::Attachment(wire),
            move |id, me, sent_at_ms, nobody| {
                Some(Message {
                    body: caption,
                    attachment: Some(info),
                    ..Message::new(id, conversation, me, sent_at_ms, true, echo_state(nobody))
                })
            },
        )
    }

    /// Uploads a blob in calls of up to 1 MiB, each answered with the bytes the server holds,
    /// so an interrupted upload resumes where the server stopped.
    async fn upload(
        &self,
        ciphertext: &[u8],
        sha256: &[u8; 32],
        progress: &mut (impl FnMut(Progress) + Send),
    ) -> SdkResult<()> {
        const CHUNK: usize = 256 * 1024;
        const CALL: usize = 4 * CHUNK;
        let total = ciphertext.len() as u64;
        let chunk = |offset: u64, data: &[u8]| v1::BlobChunk {
            sha256: sha256.to_vec().into(),
            total_size: total,
            offset,
            data: data.to_vec().into(),
        };
        let mut offset: Option<u64> = Some(0);
        let mut failures = 0u32;
        loop {
            let Some(rpc) = self.transfer_session(&mut failures).await? else {
                offset = None;
                continue;
            };
            let blobs = v1::blob_client::BlobClient::new(rpc);
            // Without a known offset, ask: a call with no data answers how much is stored.
            let from = offset.unwrap_or(0);
            let call: Vec<v1::BlobChunk> = match offset {
                None => vec![chunk(0, &[])],
                Some(from) => {
                    let start = usize::try_from(from)
                        .unwrap_or(usize::MAX)
                        .min(ciphertext.len());
                    let end = (start + CALL).min(ciphertext.len());
                    ciphertext[start..end]
                        .chunks(CHUNK)
                        .scan(from, |at, piece| {
                            let c = chunk(*at, piece);
                            *at += piece.len() as u64;
                            Some(c)
                        })
                        .collect()
                }
            };
            let answer = blobs.upload_blob(futures_iter(call)).await;
            match answer {
                Ok(r) => {
                    failures = 0;
                    progress(Progress {
                        done: r.received,
                        total,
                    });
                    if r.complete {
                        return Ok(());
                    }
                    offset = Some(r.received);
                    let _ = from;
                }
                Err(status) => {
                    self.after_failed_attempt(status, &mut failures).await?;
                    offset = None;
                }
            }
        }
    }

    /// Downloads, verifies and decrypts the file of an attachment message; `progress` is called
    /// as bytes arrive. An interrupted download resumes where it stopped.
    pub async fn download_attachment(
        &self,
        id: &MessageId,
        mut progress: impl FnMut(Progress) + Send,
    ) -> SdkResult<Zeroizing<Vec<u8>>> {
        use futures::StreamExt;
        let wire = self
            .inner
            .store
            .attachment(id)?
            .ok_or_else(|| SdkError::NotFound(format!("attachment of message {id}")))?;
        let wire = AttachmentInfo::decode(&wire)?.wire;
        // The size comes from the sender: bounded, and the buffer grows as chunks arrive.
        let limit = self.inner.limits.max_attachment_bytes;
        if wire.size > limit {
            return Err(SdkError::Invalid(format!(
                "the attachment announces {} bytes, above this client's limit of {limit}",
                wire.size
            )));
        }
        let total = wire
            .size
            .checked_add(qpq_core::attachment::OVERHEAD as u64)
            .ok_or_else(|| SdkError::Invalid("attachment size out of range".into()))?;
        let mut data: Vec<u8> = Vec::new();
        let mut failures = 0u32;
        while (data.len() as u64) < total {
            let Some(rpc) = self.transfer_session(&mut failures).await? else {
                continue;
            };
            let blobs = v1::blob_client::BlobClient::new(rpc);
            let result: Result<(), qrpc::Status> = async {
                let mut stream = blobs
                    .download_blob(&v1::DownloadBlobRequest {
                        sha256: wire.blob_sha256.clone(),
                        offset: data.len() as u64,
                    })
                    .await?;
                while let Some(chunk) = stream.next().await {
                    let chunk = chunk?;
                    if chunk.offset != data.len() as u64
                        || data.len() as u64 + chunk.data.len() as u64 > total
                    {
                        return Err(qrpc::Status::data_loss("blob chunk out of place"));
                    }
                    data.extend_from_slice(&chunk.data);
                    progress(Progress {
                        done: data.len() as u64,
                        total,
                    });
                }
                Ok(())
            }
            .await;
            match result {
                Ok(()) if (data.len() as u64) < total => {
                    return Err(SdkError::Invalid("blob shorter than announced".into()));
                }
                Ok(()) => {}
                Err(status) => self.after_failed_attempt(status, &mut failures).await?,
            }
        }
        qpq_core::attachment::decrypt(&wire.key, &wire.blob_sha256, &data)
            .map_err(|e| SdkError::Invalid(e.to_string()))
    }

    /// The session for one attempt of a transfer. A server that cannot be reached (or a
    /// session that cannot be resumed yet) counts as a failed attempt like a failed call:
    /// after it is waited out the answer is `None`, try again, until the attempts are used up.
    async fn transfer_session(&self, failures: &mut u32) -> SdkResult<Option<qrpc::Client>> {
        match self.inner.session().await {
            Ok(rpc) => Ok(Some(rpc)),
            Err(SdkError::Server(status)) => {
                tracing::debug!(%status, "no session for the transfer yet");
                self.after_failed_attempt(status, failures).await?;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// After a failed attempt of a transfer: `Ok` once another attempt may follow (the session
    /// resumed if the server no longer knew it, else a backoff waited out), or the error when
    /// it cannot be retried or the attempts are used up.
    async fn after_failed_attempt(
        &self,
        status: qrpc::Status,
        failures: &mut u32,
    ) -> SdkResult<()> {
        if !retryable(&status) || *failures >= self.inner.limits.transfer_attempts {
            return Err(status.into());
        }
        *failures += 1;
        if status.code() == Code::Unauthenticated {
            self.inner.resume().await?;
        } else {
            tokio::time::sleep(backoff(&self.inner.limits, *failures)).await;
        }
        Ok(())
    }

    fn check_text(&self, body: &str) -> SdkResult<()> {
        if body.is_empty() || body.len() > self.inner.limits.max_text_bytes {
            return Err(SdkError::InvalidArgument(format!(
                "text: 1 to {} bytes",
                self.inner.limits.max_text_bytes
            )));
        }
        Ok(())
    }

    /// This user's message `id`, or an error naming why it cannot be changed.
    fn own_message(&self, id: &MessageId) -> SdkResult<Message> {
        let m = self
            .inner
            .store
            .message(id)?
            .ok_or_else(|| SdkError::NotFound(format!("message {id}")))?;
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        if user_of(&m.sender) != user_of(&me) {
            return Err(SdkError::InvalidArgument(
                "only the author may edit or delete a message".into(),
            ));
        }
        if m.deleted {
            return Err(SdkError::InvalidArgument("the message was deleted".into()));
        }
        Ok(m)
    }

    /// Applies this device's own action locally and reports it.
    fn apply_local(&self, effect: Effect) -> SdkResult<()> {
        if self.inner.store.apply(&effect)?
            && let Some(event) = event_for(&*self.inner.store, &effect)?
        {
            self.emit(event);
        }
        Ok(())
    }

    /// Changes the text of one of this user's messages, on every member's device.
    pub fn edit(&self, id: &MessageId, body: &str) -> SdkResult<()> {
        self.check_text(body)?;
        let m = self.own_message(id)?;
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        self.send_content(
            &m.conversation,
            v1::content::Body::Edit(v1::Edit {
                target: id.0.to_vec().into(),
                body: body.to_owned(),
            }),
            |_, _, _, _| None,
        )?;
        self.apply_local(Effect::Edit {
            conversation: m.conversation,
            target: *id,
            author: user_of(&me).to_owned(),
            body: body.to_owned(),
        })
    }

    /// Withdraws one of this user's messages from every member's device.
    pub fn delete(&self, id: &MessageId) -> SdkResult<()> {
        let m = self.own_message(id)?;
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        self.send_content(
            &m.conversation,
            v1::content::Body::Delete(v1::Delete {
                target: id.0.to_vec().into(),
            }),
            |_, _, _, _| None,
        )?;
        self.apply_local(Effect::Delete {
            conversation: m.conversation,
            target: *id,
            author: user_of(&me).to_owned(),
        })
    }

    /// Takes back a message no device has received yet (still queued, for instance while
    /// offline): it is removed from the outbox and the store, reported as
    /// [`ClientEvent::MessageDeleted`]. Once the outbox has started handing it over, this
    /// fails; [`delete`](Self::delete) it instead.
    pub fn cancel(&self, id: &MessageId) -> SdkResult<()> {
        let conversation = self.inner.store.cancel(id)?;
        self.emit(ClientEvent::MessageDeleted {
            id: *id,
            conversation,
        });
        Ok(())
    }

    /// Adds (or with `remove`, takes back) this user's reaction to a message.
    pub fn react(&self, id: &MessageId, emoji: &str, remove: bool) -> SdkResult<()> {
        if emoji.is_empty() || emoji.len() > 32 {
            return Err(SdkError::InvalidArgument("emoji: 1 to 32 bytes".into()));
        }
        let m = self
            .inner
            .store
            .message(id)?
            .ok_or_else(|| SdkError::NotFound(format!("message {id}")))?;
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        self.send_content(
            &m.conversation,
            v1::content::Body::Reaction(v1::Reaction {
                target: id.0.to_vec().into(),
                emoji: emoji.to_owned(),
                remove,
            }),
            |_, _, _, _| None,
        )?;
        self.apply_local(Effect::Reaction {
            conversation: m.conversation,
            target: *id,
            user: user_of(&me).to_owned(),
            emoji: emoji.to_owned(),
            remove,
        })
    }

    /// Tells the conversation's members that this user has read these messages.
    pub fn mark_read(&self, conversation: &ConversationId, ids: &[MessageId]) -> SdkResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        self.send_content(
            conversation,
            v1::content::Body::Receipt(v1::Receipt {
                read: ids.iter().map(|id| id.0.to_vec().into()).collect(),
            }),
            |_, _, _, _| None,
        )?;
        self.apply_local(Effect::Receipt {
            conversation: *conversation,
            targets: ids.to_vec(),
            user: user_of(&me).to_owned(),
            at_ms: now_ms(),
        })
    }

    /// Renames a group for every member.
    pub fn rename(&self, conversation: &ConversationId, name: &str) -> SdkResult<()> {
        check_name(name)?;
        self.send_content(
            conversation,
            v1::content::Body::Rename(v1::Rename {
                name: name.to_owned(),
            }),
            |_, _, _, _| None,
        )?;
        self.apply_local(Effect::Rename {
            conversation: *conversation,
            name: name.to_owned(),
        })
    }

    /// Tells the conversation's other members' live connections that this user is typing.
    /// Nothing is stored; the server rate-limits it (call it at most every few seconds).
    pub async fn typing(&self, conversation: &ConversationId) -> SdkResult<()> {
        let channel = self
            .inner
            .store
            .channel(conversation)?
            .ok_or_else(|| SdkError::NotFound(format!("conversation {conversation}")))?;
        // A conversation just joined may not have answered its channel invitation yet.
        self.inner.answer_invitations().await;
        v1::channel_client::ChannelClient::new(self.inner.session().await?)
            .typing(&v1::TypingRequest {
                channel_id: channel.into(),
            })
            .await?;
        Ok(())
    }

    /// Keeps the server channel's membership in step with the conversation's.
    async fn update_channel(
        &self,
        conversation: &ConversationId,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> SdkResult<()> {
        if let Some(channel) = self.inner.store.channel(conversation)? {
            self.inner.answer_invitations().await;
            v1::channel_client::ChannelClient::new(self.inner.session().await?)
                .update_channel(&v1::UpdateChannelRequest {
                    channel_id: channel.into(),
                    add,
                    remove,
                })
                .await?;
        }
        Ok(())
    }

    /// Creates a group named `name` with `members` (user names; this user is added): one MLS
    /// group with every device of every member, each invited through its sealed queue.
    pub async fn create_group(&self, name: &str, members: &[&str]) -> SdkResult<Conversation> {
        check_name(name)?;
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let mut users: Vec<String> = members.iter().map(|m| (*m).to_owned()).collect();
        users.push(user_of(&me).to_owned());
        users.sort();
        users.dedup();
        self.create_conversation(ConversationKind::Group, name, users)
            .await
    }

    /// Creates a direct conversation with `user`: an MLS group with every device of theirs and
    /// every other device of this user, each invited through its sealed queue.
    pub async fn create_dm(&self, user: &str) -> SdkResult<Conversation> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let my_user = user_of(&me).to_owned();
        if user == my_user {
            return Err(SdkError::InvalidArgument(
                "user: a direct conversation needs another user".into(),
            ));
        }
        let mut users = vec![user.to_owned(), my_user];
        users.sort();
        self.create_conversation(ConversationKind::Direct, "", users)
            .await
    }

    async fn create_conversation(
        &self,
        kind: ConversationKind,
        name: &str,
        users: Vec<String>,
    ) -> SdkResult<Conversation> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let rpc = self.inner.session().await?;
        let devices = self
            .member_devices(&rpc, &users, std::slice::from_ref(&me))
            .await?;
        for u in users.iter().filter(|u| **u != user_of(&me)) {
            if !devices.iter().any(|(du, _)| du == u) {
                return Err(SdkError::NotFound(format!(
                    "{u} has no device with published keys"
                )));
            }
        }
        let packages = self.key_packages(&rpc, &devices).await?;
        let id = ConversationId(rand::random());
        let channel = v1::channel_client::ChannelClient::new(rpc.clone())
            .create_channel(&v1::CreateChannelRequest {
                name: if name.is_empty() { "direct" } else { name }.to_owned(),
                members: users
                    .iter()
                    .filter(|u| **u != user_of(&me))
                    .cloned()
                    .collect(),
                mls_group_id: id.0.to_vec().into(),
            })
            .await?
            .channel_id
            .to_vec();
        let conversation = Conversation {
            id,
            kind,
            name: name.to_owned(),
            members: users,
        };
        // The group, the conversation and the invitations commit together.
        {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            transact(&*self.inner.store, Some(&keys.mls), |tx| {
                let mut group = keys.mls.create_group(&id.0)?;
                let deliveries = if packages.is_empty() {
                    Vec::new()
                } else {
                    let refs: Vec<&[u8]> = packages.iter().map(Vec::as_slice).collect();
                    let welcome = group.add_members(&keys.mls, &refs)?.1;
                    deliveries_for(
                        MessageId::random(),
                        &devices,
                        &invitation(&conversation, welcome, Some(&channel)),
                    )
                };
                keys.mls.keep(group);
                tx.apply(&Effect::Conversation(
                    conversation.clone(),
                    Some(channel.clone()),
                ))?;
                tx.queue_outgoing(None, &deliveries)?;
                SdkResult::Ok(())
            })?;
        }
        self.emit(ClientEvent::ConversationCreated(conversation.clone()));
        self.inner.outbox_wake.notify_one();
        Ok(conversation)
    }

    /// Adds `user` (every device of theirs) to a conversation: the commit goes to the current
    /// members, the invitation to the new devices.
    pub async fn invite(&self, conversation: &ConversationId, user: &str) -> SdkResult<()> {
        let mut c = self
            .inner
            .store
            .conversation(conversation)?
            .ok_or_else(|| SdkError::NotFound(format!("conversation {conversation}")))?;
        if c.members.iter().any(|m| m == user) {
            return Err(SdkError::InvalidArgument(format!(
                "{user} is already a member"
            )));
        }
        let rpc = self.inner.session().await?;
        let devices = self.member_devices(&rpc, &[user.to_owned()], &[]).await?;
        if devices.is_empty() {
            return Err(SdkError::NotFound(format!(
                "{user} has no device with published keys"
            )));
        }
        let present = {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            keys.mls
                .group(&conversation.0)?
                .map_or(0, |g| other_devices(&g, &keys.me).len())
        };
        if present + devices.len() > self.inner.limits.max_conversation_devices {
            return Err(SdkError::InvalidArgument(format!(
                "a conversation may have at most {} devices",
                self.inner.limits.max_conversation_devices
            )));
        }
        let before = c.clone();
        c.members.push(user.to_owned());
        c.members.sort();
        // Only the channel's owner brings users into the server channel (typing, endpoints):
        // anyone else's invitation adds them to the conversation only.
        match self
            .update_channel(conversation, vec![user.to_owned()], Vec::new())
            .await
        {
            Ok(()) => {}
            Err(SdkError::Server(status)) if status.code() == Code::PermissionDenied => {
                tracing::debug!(
                    "not the channel's owner: the new member joins the conversation only"
                );
            }
            Err(e) => return Err(e),
        }
        self.add_devices(&c, &devices).await?;
        self.set_members(before, c.members)
    }

    /// Removes `user` (every device of theirs) from a conversation. The removed devices get
    /// the commit too, so they learn it; they cannot read anything sent afterwards.
    pub async fn remove(&self, conversation: &ConversationId, user: &str) -> SdkResult<()> {
        let mut c = self
            .inner
            .store
            .conversation(conversation)?
            .ok_or_else(|| SdkError::NotFound(format!("conversation {conversation}")))?;
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        if user == user_of(&me) {
            return Err(SdkError::InvalidArgument(
                "remove: use another member's device to remove this user".into(),
            ));
        }
        let gone = user.to_owned();
        self.remove_devices(&c, |(u, _)| *u == gone)?;
        // Only the channel's owner may remove others from the server channel: for anyone
        // else the MLS removal is what counts, and the removed user's client leaves the
        // channel when it learns it.
        match self
            .update_channel(conversation, Vec::new(), vec![user.to_owned()])
            .await
        {
            Ok(()) => {}
            Err(SdkError::Server(status)) if status.code() == Code::PermissionDenied => {
                tracing::debug!("not the channel's owner: the removed user leaves it itself");
            }
            Err(e) => return Err(e),
        }
        let before = c.clone();
        c.members.retain(|m| m != user);
        self.set_members(before, c.members)
    }

    /// Leaves a conversation with every device of this user: the members are told, one of
    /// their devices (the first by name) removes this user's devices from the MLS group, and
    /// this device forgets the group's keys at once, so it cannot read anything sent later.
    /// Sending to the conversation fails from now on; its history stays in the store.
    pub async fn leave(&self, conversation: &ConversationId) -> SdkResult<()> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let my_user = user_of(&me).to_owned();
        let before = self
            .inner
            .store
            .conversation(conversation)?
            .ok_or_else(|| SdkError::NotFound(format!("conversation {conversation}")))?;
        self.send_content(
            conversation,
            v1::content::Body::Leave(v1::Leave {}),
            |_, _, _, _| None,
        )?;
        let mut members = before.members.clone();
        members.retain(|u| *u != my_user);
        let effect = Effect::Members {
            conversation: *conversation,
            members,
        };
        {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            transact(&*self.inner.store, Some(&keys.mls), |tx| {
                if let Some(group) = keys.mls.group(&conversation.0)? {
                    group.delete(&keys.mls)?;
                }
                tx.apply(&effect)
            })?;
        }
        for event in events_for(&*self.inner.store, &effect, Some(before))? {
            self.emit(event);
        }
        // The server channel (typing, endpoint lookups) is left on a best-effort basis: the
        // members' commit is what takes this user out of the conversation.
        if let Err(e) = self
            .update_channel(conversation, Vec::new(), vec![my_user])
            .await
        {
            tracing::warn!(error = %e, "could not leave the server channel");
        }
        Ok(())
    }

    /// The safety number between this device and each device of `user` whose keys are in
    /// the server's key-transparency log: `(device, 60 digits in groups of 5)`. Two people
    /// compare them out of band; equal numbers mean no one sits between their devices.
    pub async fn safety_numbers(&self, user: &str) -> SdkResult<Vec<(String, String)>> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let my_key = lock(&self.inner.keys)
            .as_ref()
            .map(|k| k.identity.public())
            .ok_or(SdkError::NotLoggedIn)?;
        let rpc = self.inner.session().await?;
        let keys = v1::keys_client::KeysClient::new(rpc.clone());
        let devices = self
            .member_devices(&rpc, &[user.to_owned()], std::slice::from_ref(&me))
            .await?;
        let mut out = Vec::with_capacity(devices.len());
        for (u, d) in devices {
            // Fetching through the key-transparency check, like every key this client uses.
            self.inner.peer_key(&keys, &u, &d).await?;
            let identity = lock(&self.inner.peer_identities)
                .get(&(u.clone(), d.clone()))
                .cloned()
                .ok_or_else(|| SdkError::NotFound(format!("{u}/{d}")))?;
            let number = qpq_core::identity::SafetyNumber::compute(
                &me,
                &my_key,
                &format!("{u}/{d}"),
                &identity,
            );
            out.push((d, number.grouped()));
        }
        Ok(out)
    }

    /// This user's devices as the server lists them.
    pub async fn devices(&self) -> SdkResult<Vec<Device>> {
        let rpc = self.inner.session().await?;
        let listed = v1::device_client::DeviceClient::new(rpc)
            .list_devices(&v1::ListDevicesRequest {})
            .await?;
        let me = self.whoami().unwrap_or_default();
        Ok(listed
            .devices
            .into_iter()
            .map(|d| Device {
                this_device: me.ends_with(&format!("/{}", d.device)),
                id: d.device,
                label: d.label,
                created_at_ms: d.created_at_ms,
                has_keys: d.has_keys,
            })
            .collect())
    }

    /// Registers a new device of this user (step one of linking): it may then log in with
    /// the account password, and [`adopt_devices`](Self::adopt_devices) brings it into the
    /// conversations.
    pub async fn link_device(&self, device: &str, label: &str) -> SdkResult<()> {
        let rpc = self.inner.session().await?;
        v1::device_client::DeviceClient::new(rpc)
            .register_device(&v1::RegisterDeviceRequest {
                device: device.to_owned(),
                label: label.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Adds every device of this user that has published keys but is missing from a
    /// conversation to it (the linked device's step two). Returns how many conversations
    /// changed.
    pub async fn adopt_devices(&self) -> SdkResult<usize> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let rpc = self.inner.session().await?;
        let mine = self
            .member_devices(&rpc, &[user_of(&me).to_owned()], std::slice::from_ref(&me))
            .await?;
        let mut changed = 0;
        for c in self.inner.store.conversations()? {
            let missing: Vec<(String, String)> = {
                let keys = lock(&self.inner.keys);
                let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
                let Some(group) = keys.mls.group(&c.id.0)? else {
                    continue;
                };
                let present = other_devices(&group, &keys.me);
                keys.mls.keep(group);
                if !c.members.contains(&user_of(&me).to_owned()) {
                    continue;
                }
                mine.iter()
                    .filter(|d| !present.contains(d))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() {
                continue;
            }
            self.add_devices(&c, &missing).await?;
            changed += 1;
        }
        Ok(changed)
    }

    /// Revokes one of this user's devices: the server closes its connections at once and
    /// its id can never be used again, and it is removed from every conversation this device
    /// shares with it (so it cannot read anything sent afterwards).
    pub async fn revoke_device(&self, device: &str) -> SdkResult<()> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let target = (user_of(&me).to_owned(), device.to_owned());
        let rpc = self.inner.session().await?;
        v1::device_client::DeviceClient::new(rpc)
            .revoke_device(&v1::RevokeDeviceRequest {
                device: device.to_owned(),
            })
            .await?;
        for c in self.inner.store.conversations()? {
            match self.remove_devices(&c, |d| *d == target) {
                Ok(()) | Err(SdkError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Adds `devices` to conversation `c`: the commit to its current members, the
    /// invitation to the new devices.
    async fn add_devices(&self, c: &Conversation, devices: &[(String, String)]) -> SdkResult<()> {
        let rpc = self.inner.session().await?;
        let packages = self.key_packages(&rpc, devices).await?;
        let channel = self.inner.store.channel(&c.id)?;
        {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            transact(&*self.inner.store, Some(&keys.mls), |tx| {
                let mut group = keys
                    .mls
                    .group(&c.id.0)?
                    .ok_or_else(|| SdkError::NotFound(format!("conversation {}", c.id)))?;
                let existing = other_devices(&group, &keys.me);
                if existing.len() + devices.len() > self.inner.limits.max_conversation_devices {
                    return Err(SdkError::InvalidArgument(format!(
                        "a conversation may have at most {} devices",
                        self.inner.limits.max_conversation_devices
                    )));
                }
                let refs: Vec<&[u8]> = packages.iter().map(Vec::as_slice).collect();
                let (commit, welcome) = group.add_members(&keys.mls, &refs)?;
                let item = MessageId::random();
                let mut deliveries =
                    deliveries_for(item, &existing, &group_transport(&c.id, commit));
                deliveries.extend(deliveries_for(
                    item,
                    devices,
                    &invitation(c, welcome, channel.as_deref()),
                ));
                keys.mls.keep(group);
                tx.queue_outgoing(None, &deliveries)
            })?;
        }
        self.inner.outbox_wake.notify_one();
        Ok(())
    }

    /// Stores a conversation's new member list and reports the change, the same way an
    /// incoming commit is reported (joins, departures, the updated conversation).
    fn set_members(&self, before: Conversation, members: Vec<String>) -> SdkResult<()> {
        let effect = Effect::Members {
            conversation: before.id,
            members,
        };
        if self.inner.store.apply(&effect)? {
            for event in events_for(&*self.inner.store, &effect, Some(before))? {
                self.emit(event);
            }
        }
        Ok(())
    }

    /// Removes the member devices `which` selects from conversation `c`; the commit goes to
    /// every other device, the removed ones included. `NotFound` when none matches.
    fn remove_devices(
        &self,
        c: &Conversation,
        which: impl Fn(&(String, String)) -> bool,
    ) -> SdkResult<()> {
        {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            transact(&*self.inner.store, Some(&keys.mls), |tx| {
                let Some(mut group) = keys.mls.group(&c.id.0)? else {
                    return Err(SdkError::NotFound(format!("conversation {}", c.id)));
                };
                let recipients = other_devices(&group, &keys.me);
                let names: Vec<Vec<u8>> = recipients
                    .iter()
                    .filter(|d| which(d))
                    .map(|(u, d)| device_name(keys, u, d).map(|n| n.encode()))
                    .collect::<SdkResult<_>>()?;
                if names.is_empty() {
                    return Err(SdkError::NotFound("no such member device".into()));
                }
                let refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
                let commit = group.remove_members(&keys.mls, &refs)?;
                let deliveries = deliveries_for(
                    MessageId::random(),
                    &recipients,
                    &group_transport(&c.id, commit),
                );
                keys.mls.keep(group);
                tx.queue_outgoing(None, &deliveries)
            })?;
        }
        self.inner.outbox_wake.notify_one();
        Ok(())
    }

    /// Every device of `users` with published keys, except `skip`.
    async fn member_devices(
        &self,
        rpc: &qrpc::Client,
        users: &[String],
        skip: &[String],
    ) -> SdkResult<Vec<(String, String)>> {
        let client = v1::user_client::UserClient::new(rpc.clone());
        let mut devices = Vec::new();
        for u in users {
            let resolved = client
                .resolve_user(&v1::ResolveUserRequest { user: u.clone() })
                .await?;
            for d in resolved.devices {
                if !skip.contains(&format!("{u}/{}", d.device)) {
                    devices.push((u.clone(), d.device));
                }
            }
        }
        if devices.len() > self.inner.limits.max_conversation_devices {
            return Err(SdkError::InvalidArgument(format!(
                "a conversation may have at most {} devices",
                self.inner.limits.max_conversation_devices
            )));
        }
        Ok(devices)
    }

    /// One key package per device, each checked to name its device, after the device's
    /// published keys are checked against the key-transparency log.
    async fn key_packages(
        &self,
        rpc: &qrpc::Client,
        devices: &[(String, String)],
    ) -> SdkResult<Vec<Vec<u8>>> {
        let keys = v1::keys_client::KeysClient::new(rpc.clone());
        for (u, d) in devices {
            self.inner.peer_key(&keys, u, d).await?;
        }
        let domain = self.inner.domain().ok_or(SdkError::NotLoggedIn)?;
        let mut packages = Vec::with_capacity(devices.len());
        for (u, d) in devices {
            let name = DeviceName::new(u, &domain, d)
                .map_err(|_| SdkError::InvalidArgument(format!("{u}/{d}: not a device name")))?;
            let identity = lock(&self.inner.peer_identities)
                .get(&(u.clone(), d.clone()))
                .copied()
                .ok_or_else(|| SdkError::NotFound(format!("{u}/{d}")))?;
            let kp = keys
                .fetch_key_package(&v1::FetchKeyPackageRequest {
                    device: Some(v1::DeviceRef {
                        user: u.clone(),
                        device: d.clone(),
                    }),
                })
                .await?;
            let info = qpq_core::mls::inspect_key_package(&kp.key_package)
                .map_err(|e| SdkError::Invalid(format!("key package of {u}/{d}: {e}")))?;
            if info.name != name.encode() {
                return Err(SdkError::Invalid(format!(
                    "the key package fetched for {u}/{d} names someone else"
                )));
            }
            // Its leaf must sign with the identity key the log holds for the device.
            if info.signature_key != identity.to_bytes() {
                return Err(SdkError::Invalid(format!(
                    "the key package fetched for {u}/{d} is not signed by its identity key"
                )));
            }
            packages.push(kp.key_package.to_vec());
        }
        Ok(packages)
    }
}

impl Inner {
    /// The connection, made on first use; the qrpc client reconnects by itself afterwards.
    /// Its push events are forwarded for as long as the client lives.
    async fn rpc(self: &Arc<Self>) -> SdkResult<qrpc::Client> {
        let mut rpc = self.rpc.lock().await;
        if let Some(client) = rpc.as_ref() {
            return Ok(client.clone());
        }
        let client = qrpc::Client::builder(self.server, self.tls.clone())
            .configure(|c| {
                c.alpn(vec![ALPN.to_vec()]);
            })
            .connect()
            .await?;
        if let Some(push) = client.push_events() {
            tokio::spawn(forward_pushes(Arc::downgrade(self), push));
        }
        *rpc = Some(client.clone());
        Ok(client)
    }

    /// Makes sure the connection holds the session, resuming it if the connection is new.
    async fn resume(self: &Arc<Self>) -> SdkResult<qrpc::Client> {
        let rpc = self.rpc().await?;
        let token = self
            .store
            .account()?
            .and_then(|a| a.session_token)
            .ok_or(SdkError::NotLoggedIn)?;
        v1::auth_client::AuthClient::new(rpc.clone())
            .resume_session(&v1::ResumeSessionRequest {
                session_token: token.to_vec().into(),
            })
            .await?;
        self.session_bound(&rpc);
        Ok(rpc)
    }

    /// Records that the session is bound to `rpc`'s current connection.
    fn session_bound(&self, rpc: &qrpc::Client) {
        self.session_generation
            .store(generation(rpc), std::sync::atomic::Ordering::Release);
    }

    /// The connection for a call that needs the session: a connection made since the
    /// session was last bound (a reconnect) gets it resumed first.
    async fn session(self: &Arc<Self>) -> SdkResult<qrpc::Client> {
        let rpc = self.rpc().await?;
        // While the client reconnects, wait for the new connection before comparing.
        let mut state = rpc.state();
        let _ = tokio::time::timeout(
            Duration::from_secs(10),
            state.wait_for(|s| !matches!(s, qrpc::ConnectionState::Reconnecting { .. })),
        )
        .await;
        let now = generation(&rpc);
        if now != 0
            && now
                != self
                    .session_generation
                    .load(std::sync::atomic::Ordering::Acquire)
        {
            return self.resume().await;
        }
        Ok(rpc)
    }

    /// Tops the server's stock of this device's one-time key packages back up to
    /// `limits.key_packages` and rotates the last-resort package. Each invitation this device
    /// accepts used one package; the server's answer corrects the local count.
    async fn replenish(&self, rpc: &qrpc::Client) -> SdkResult<()> {
        let target = self.limits.key_packages;
        let have = usize::try_from(self.store.key_packages()?).unwrap_or(0);
        if have >= target {
            return Ok(());
        }
        let (packages, last_resort) = {
            let keys = lock(&self.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            let mut packages = Vec::with_capacity(target - have);
            for _ in have..target {
                packages.push(bytes::Bytes::from(keys.mls.key_package()?));
            }
            (
                packages,
                bytes::Bytes::from(keys.mls.last_resort_key_package()?),
            )
        };
        let keys_client = v1::keys_client::KeysClient::new(rpc.clone());
        let stored = keys_client
            .upload_key_package(&v1::UploadKeyPackageRequest {
                key_packages: packages,
                last_resort: false,
            })
            .await?
            .stored;
        // A fresh last-resort package each time; the server limits how often a device may
        // change it (each change is logged), and the previous one stays valid meanwhile.
        match keys_client
            .upload_key_package(&v1::UploadKeyPackageRequest {
                key_packages: vec![last_resort],
                last_resort: true,
            })
            .await
        {
            Ok(_) => {}
            Err(status) if status.code() == Code::ResourceExhausted && have > 0 => {
                tracing::debug!(%status, "last-resort key package kept for now");
            }
            Err(status) => return Err(status.into()),
        }
        self.store.set_key_packages(u64::from(stored))?;
        Ok(())
    }

    /// Seals and hands every pending delivery to the server once. Returns whether anything is
    /// left to retry.
    async fn flush_outbox(self: &Arc<Self>, rpc: &qrpc::Client) -> SdkResult<bool> {
        loop {
            match self.flush_batch(rpc).await? {
                // What is left waits out a retry delay.
                Batch::Empty => return Ok(self.store.outbox_len()? > 0),
                Batch::More => {}
            }
        }
    }

    /// One delivery failed for now: it waits out its own delay while the ones behind it go
    /// on, and its message says it is retrying.
    fn retry_later(self: &Arc<Self>, d: &Delivery, reason: &str) -> SdkResult<()> {
        let now = now_ms();
        let retry_at = |attempts: u32| {
            let delay = backoff(&self.limits, attempts.saturating_sub(1));
            now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
        };
        self.store
            .delivery_failed(&d.item, &d.user, &d.device, &retry_at)?;
        self.set_state(
            &d.item,
            SendState::Failed {
                recoverable: true,
                reason: format!("{}/{}: {reason}; retrying", d.user, d.device),
            },
        )
    }

    /// One delivery can never succeed: it fails alone, with the reason in its message.
    fn fail_delivery(self: &Arc<Self>, d: &Delivery, reason: &str) -> SdkResult<()> {
        self.set_state(
            &d.item,
            SendState::Failed {
                recoverable: false,
                reason: format!("{}/{}: {reason}", d.user, d.device),
            },
        )?;
        self.store
            .delivery_done(&d.item, &d.user, &d.device, false)?;
        Ok(())
    }

    /// One `BatchEnqueue`: at most 100 deliveries and about `BATCH_BYTES` of envelopes (a
    /// request frame is bounded by the server), oldest first.
    async fn flush_batch(self: &Arc<Self>, rpc: &qrpc::Client) -> SdkResult<Batch> {
        /// Envelope bytes one call carries at most (the server's frame limit is 4 MiB).
        const BATCH_BYTES: usize = 2 * 1024 * 1024;
        let page = if self
            .one_at_a_time
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            1
        } else {
            100
        };
        let pending = self.store.pending_deliveries(page, now_ms())?;
        if pending.is_empty() {
            return Ok(Batch::Empty);
        }
        let keys_client = v1::keys_client::KeysClient::new(rpc.clone());
        let mut requests = Vec::with_capacity(pending.len());
        let mut included = Vec::with_capacity(pending.len());
        let mut batch_bytes = 0usize;
        let mut claimed: Vec<MessageId> = Vec::new();
        for d in &pending {
            // Claim each item once: from here it cannot be cancelled, and one cancelled in
            // the meantime is skipped.
            if !claimed.contains(&d.item) {
                let (still_pending, changed) = self.store.claim(&d.item)?;
                if let Some(conversation) = changed {
                    let _ = self.events.send(ClientEvent::SendStateChanged {
                        id: d.item,
                        conversation,
                        state: SendState::Sending,
                    });
                }
                if !still_pending {
                    continue;
                }
                claimed.push(d.item);
            }
            let hybrid = match self.peer_key(&keys_client, &d.user, &d.device).await {
                Ok(key) => key,
                // A key that does not verify is never used: this copy fails for good.
                Err(SdkError::KeyTransparency(reason) | SdkError::Invalid(reason)) => {
                    self.fail_delivery(d, &reason)?;
                    continue;
                }
                // The device or its keys are gone (revoked, never published): nothing will
                // ever reach it.
                Err(SdkError::Server(status)) if !retryable(&status) => {
                    self.fail_delivery(d, &format!("no keys to seal to ({status})"))?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let sealed = {
                let keys = lock(&self.keys);
                let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
                qpq_core::sealed::seal(&keys.identity, &hybrid, now_ms(), &d.transport)
                    .map_err(|e| SdkError::Crypto(e.to_string()))?
            };
            if !requests.is_empty() && batch_bytes + sealed.len() > BATCH_BYTES {
                break;
            }
            batch_bytes += sealed.len();
            included.push(d);
            requests.push(v1::EnqueueRequest {
                recipient: Some(v1::DeviceRef {
                    user: d.user.clone(),
                    device: d.device.clone(),
                }),
                message_id: d.message_id.to_vec().into(),
                payload: sealed.into(),
                delivery_token: Default::default(),
            });
        }
        if requests.is_empty() {
            // Everything in this page failed for good; look at the next one.
            return Ok(Batch::More);
        }
        let results = match v1::delivery_client::DeliveryClient::new(rpc.clone())
            .batch_enqueue(&v1::BatchEnqueueRequest { messages: requests })
            .await
        {
            Ok(answer) => answer.results,
            // The server refused the whole call (one item it cannot take at all): nothing of
            // it was stored. Send one at a time until the item that cannot go has failed on
            // its own.
            Err(status) if !retryable(&status) && status.code() != Code::ResourceExhausted => {
                if let [d] = included.as_slice() {
                    self.fail_delivery(d, &status.to_string())?;
                    self.one_at_a_time
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                } else {
                    self.one_at_a_time
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok(Batch::More);
            }
            Err(status) => {
                // The call's outcome is unknown: its items may be in their queues (so they can
                // no longer be cancelled) and are sent again (the server drops repeats).
                for d in &included {
                    self.store.mark_accepted(&d.item)?;
                    self.set_state(
                        &d.item,
                        SendState::Failed {
                            recoverable: true,
                            reason: format!("server: {status}; retrying"),
                        },
                    )?;
                }
                return Err(status.into());
            }
        };
        self.sealed_bytes_sent
            .fetch_add(batch_bytes as u64, std::sync::atomic::Ordering::Relaxed);
        for (d, r) in included.into_iter().zip(results) {
            let refused = Code::from_u8(u8::try_from(r.code).unwrap_or(u8::MAX));
            let done = match refused {
                Code::Ok => true,
                // The device is gone (revoked): nothing will ever reach it.
                Code::NotFound => true,
                Code::ResourceExhausted | Code::Unavailable => {
                    self.retry_later(d, &r.error)?;
                    false
                }
                _ => {
                    self.fail_delivery(d, &r.error)?;
                    false
                }
            };
            if done
                && self
                    .store
                    .delivery_done(&d.item, &d.user, &d.device, refused == Code::Ok)?
            {
                self.set_state(&d.item, SendState::Sent)?;
            }
        }
        Ok(Batch::More)
    }

    fn set_state(self: &Arc<Self>, item: &MessageId, state: SendState) -> SdkResult<()> {
        if let Some(conversation) = self.store.set_state(item, &state)? {
            let _ = self.events.send(ClientEvent::SendStateChanged {
                id: *item,
                conversation,
                state,
            });
        }
        Ok(())
    }

    /// This device's home server's domain (from its device name), once logged in.
    fn domain(&self) -> Option<String> {
        lock(&self.keys)
            .as_ref()
            .map(|k| k.name.domain().to_owned())
    }

    /// Brings the pinned view of the key-transparency log up to the server's latest head:
    /// pins the log key on first use, then requires every new head to be signed by it and to
    /// extend the last one (a consistency proof). Returns the head now trusted.
    async fn kt_sync(
        &self,
        keys: &v1::keys_client::KeysClient,
    ) -> Result<qpq_core::kt::SignedTreeHead, KtFail> {
        use qpq_core::kt::{ConsistencyProof, LogMonitor, SignedTreeHead};
        let alarm = KtFail::Alarm;
        let stored = self.store.kt().map_err(KtFail::Other)?;
        let since = match &stored {
            Some((_, head)) => {
                SignedTreeHead::decode(head)
                    .map_err(|e| alarm(format!("stored head: {e}")))?
                    .tree_size
            }
            None => 0,
        };
        let answer = keys
            .kt_head(&v1::KtHeadRequest { since_size: since })
            .await
            .map_err(|e| KtFail::Other(e.into()))?;
        if let Some(domain) = self.domain()
            && answer.domain != domain
        {
            return Err(alarm(format!(
                "the log is for domain {:?}, not {domain:?}",
                answer.domain
            )));
        }
        let log_key_bytes = match &stored {
            Some((pinned, _)) => pinned.clone(),
            None => answer.log_key.to_vec(),
        };
        if log_key_bytes.as_slice() != answer.log_key.as_ref() {
            return Err(alarm("the log signing key changed".into()));
        }
        let log_key = monitor_key(&log_key_bytes).map_err(alarm)?;
        let claimed =
            SignedTreeHead::decode(&answer.tree_head).map_err(|e| alarm(format!("head: {e}")))?;
        let mut monitor = LogMonitor::new(log_key);
        let head = if let Some((_, old)) = &stored {
            let old =
                SignedTreeHead::decode(old).map_err(|e| alarm(format!("stored head: {e}")))?;
            monitor
                .advance(
                    &old,
                    &ConsistencyProof {
                        old_size: 0,
                        new_size: old.tree_size,
                        path: Vec::new(),
                    },
                )
                .map_err(|e| alarm(format!("stored head: {e}")))?;
            if claimed.tree_size < old.tree_size {
                return Err(alarm("the log shrank (a rollback)".into()));
            }
            if claimed.tree_size == old.tree_size {
                let head = claimed
                    .verify(&log_key)
                    .map_err(|e| alarm(format!("head signature: {e}")))?;
                if head.root() != &old.root {
                    return Err(alarm(
                        "two different logs of the same size (equivocation)".into(),
                    ));
                }
                head
            } else {
                let proof = ConsistencyProof::decode(&answer.consistency_proof)
                    .map_err(|e| alarm(format!("consistency proof: {e}")))?;
                monitor
                    .advance(&claimed, &proof)
                    .map_err(|e| alarm(format!("the new head does not extend the old one: {e}")))?;
                monitor
                    .head()
                    .cloned()
                    .ok_or_else(|| alarm("no head accepted".into()))?
            }
        } else {
            claimed
                .verify(&log_key)
                .map_err(|e| alarm(format!("head signature: {e}")))?
        };
        self.store
            .set_kt(&log_key_bytes, &head.encode())
            .map_err(KtFail::Other)?;
        Ok(head)
    }

    /// Proves that `head` (from a key answer) is a head of the log this client pinned: signed
    /// by the pinned key, and equal to or a prefix of the latest head, which itself extends
    /// the pinned one. The log may grow between a key answer and the client's sync (any
    /// device publishing keys grows it): that is proven consistent, not an alarm.
    async fn kt_reach(
        &self,
        keys: &v1::keys_client::KeysClient,
        head: &qpq_core::kt::UnverifiedTreeHead,
    ) -> Result<(), KtFail> {
        use qpq_core::kt::{ConsistencyProof, SignedTreeHead};
        let alarm = KtFail::Alarm;
        for _ in 0..3 {
            let latest = self.kt_sync(keys).await?;
            if latest.tree_size() == head.tree_size {
                return if latest.is(head) {
                    Ok(())
                } else {
                    Err(alarm(
                        "two different logs of the same size (equivocation)".into(),
                    ))
                };
            }
            if latest.tree_size() < head.tree_size {
                continue;
            }
            let answer = keys
                .kt_head(&v1::KtHeadRequest {
                    since_size: head.tree_size,
                })
                .await
                .map_err(|e| KtFail::Other(e.into()))?;
            let newer = SignedTreeHead::decode(&answer.tree_head)
                .map_err(|e| alarm(format!("head: {e}")))?;
            if !latest.is(&newer) {
                // The log grew again in between: prove against the newest head next round.
                continue;
            }
            // Checked against the pinned key (kt_sync just required the server's to equal it).
            let pinned = self
                .store
                .kt()
                .map_err(KtFail::Other)?
                .map(|(key, _)| key)
                .unwrap_or_default();
            let log_key = monitor_key(&pinned).map_err(alarm)?;
            let proof = ConsistencyProof::decode(&answer.consistency_proof)
                .map_err(|e| alarm(format!("consistency proof: {e}")))?;
            return qpq_core::kt::verify_prefix(head, &latest, &proof, &log_key).map_err(|e| {
                alarm(format!(
                    "the key answer's head is not part of the pinned log: {e}"
                ))
            });
        }
        // Busy, not wrong: the caller retries later, as after any unavailable server.
        Err(KtFail::Other(SdkError::Server(qrpc::Status::unavailable(
            "the key-transparency log kept growing while a key answer was checked",
        ))))
    }

    /// Checks that `bundle` is the binding the log holds for `user/device` at a head
    /// consistent with everything seen before.
    async fn kt_check(
        &self,
        keys: v1::keys_client::KeysClient,
        user: &str,
        device: &str,
        bundle: &KeyBundle,
        proof: &v1::KtProof,
    ) -> Result<(), KtFail> {
        use qpq_core::kt::{InclusionProof, KeyBinding, SignedTreeHead};
        let alarm = KtFail::Alarm;
        let domain = self.domain().ok_or(KtFail::Other(SdkError::NotLoggedIn))?;
        let head =
            SignedTreeHead::decode(&proof.tree_head).map_err(|e| alarm(format!("head: {e}")))?;
        // The head verified last is enough when it is the same tree (most key fetches);
        // otherwise the answer's head is proven to belong to the pinned log.
        let known = self
            .store
            .kt()
            .map_err(KtFail::Other)?
            .and_then(|(_, bytes)| SignedTreeHead::decode(&bytes).ok())
            .is_some_and(|h| h.tree_size == head.tree_size && h.root == head.root);
        if !known {
            self.kt_reach(&keys, &head).await?;
        }
        let binding = KeyBinding {
            user: user.to_owned(),
            domain,
            device: device.to_owned(),
            identity_key: bundle.identity.to_bytes(),
            hybrid_key_hash: bundle.hybrid.hash(),
            key_package_hash: proof
                .key_package_hash
                .as_ref()
                .try_into()
                .map_err(|_| alarm("binding: bad key-package hash".to_owned()))?,
        };
        let inclusion = InclusionProof::decode(&proof.inclusion_proof)
            .map_err(|e| alarm(format!("inclusion proof: {e}")))?;
        if inclusion.tree_size != head.tree_size {
            return Err(alarm("inclusion proof for another head".into()));
        }
        inclusion
            .verify(&binding.leaf_hash(), &head.root)
            .map_err(|_| alarm(format!("{user}/{device}'s keys are not in the log")))
    }

    /// A device's hybrid key, fetched once and checked to be signed for that device.
    async fn peer_key(
        &self,
        keys: &v1::keys_client::KeysClient,
        user: &str,
        device: &str,
    ) -> SdkResult<HybridPublicKey> {
        let key = (user.to_owned(), device.to_owned());
        if let Some(k) = lock(&self.peer_keys).get(&key) {
            return Ok(k.clone());
        }
        let fetched = keys
            .fetch_hybrid_key(&v1::FetchHybridKeyRequest {
                device: Some(v1::DeviceRef {
                    user: user.to_owned(),
                    device: device.to_owned(),
                }),
            })
            .await?;
        let bundle = KeyBundle::decode(&fetched.key_bundle)
            .map_err(|e| SdkError::Invalid(format!("key bundle of {user}/{device}: {e}")))?;
        if !bundle.is_for(user, device) {
            return Err(SdkError::Invalid(format!(
                "the key bundle fetched for {user}/{device} is signed for someone else"
            )));
        }
        let proof = fetched
            .proof
            .ok_or_else(|| SdkError::KeyTransparency("key answer without a proof".into()))?;
        match self
            .kt_check(keys.clone(), user, device, &bundle, &proof)
            .await
        {
            Ok(()) => {}
            Err(KtFail::Alarm(reason)) => {
                let _ = self.events.send(ClientEvent::KeyTransparencyAlarm {
                    device: format!("{user}/{device}"),
                    reason: reason.clone(),
                });
                return Err(SdkError::KeyTransparency(reason));
            }
            Err(KtFail::Other(e)) => return Err(e),
        }
        if self
            .store
            .note_identity(user, device, &bundle.identity.to_bytes())?
        {
            let _ = self.events.send(ClientEvent::SafetyNumberChanged {
                user: user.to_owned(),
                device: device.to_owned(),
            });
        }
        lock(&self.peer_identities).insert(key.clone(), bundle.identity);
        lock(&self.peer_keys).insert(key, bundle.hybrid.clone());
        Ok(bundle.hybrid)
    }

    /// Decrypts and applies one queue entry. The MLS work (joining, decrypting, merging a
    /// commit, committing a member's departure), its effect on the store, anything it queues
    /// and the receive cursor commit in one transaction: a process killed at any point either
    /// did all of it or fetches the entry again and does it then.
    ///
    /// Every leaf that joins a group (with an invitation or a commit) and the sender of every
    /// message is checked against the key-transparency log: its name must be a device whose
    /// logged identity key is the key that signs for the leaf, and the envelope's sealed
    /// sender must be that key. A device whose keys this client has not checked yet makes
    /// the entry come back as [`Step::NeedKeys`], with nothing applied; devices in `refused`
    /// could not be checked and make the entry fail instead.
    fn apply(self: &Arc<Self>, envelope: &v1::Envelope, refused: &Refused) -> SdkResult<Step> {
        let seq = envelope.seq;
        let mut guard = lock(&self.keys);
        let keys = guard.as_mut().ok_or(SdkError::NotLoggedIn)?;
        let now = now_ms();
        let result = match open_sealed(keys, envelope, now) {
            Ok((sender, message_id, timestamp_ms, transport)) => {
                let keys_ref = &*keys;
                let result = transact(&*self.store, Some(&keys_ref.mls), |tx| {
                    let applied = self.process(keys_ref, tx, seq, &sender, transport, refused)?;
                    fail_point(&self.crash, CrashPoint::AfterDecrypt)?;
                    Ok(applied)
                });
                // The envelope counts as seen only once what it carries is committed (or it
                // was refused for good): a store failure leaves it to be fetched again.
                if matches!(result, Ok(_) | Err(Fail::Undecryptable(_))) {
                    let _ = keys.replay.check(message_id, timestamp_ms, now);
                }
                result
            }
            Err(reason) => Err(Fail::Undecryptable(reason)),
        };
        let applied = match result {
            Ok(applied) => applied,
            Err(Fail::Sdk(e)) => return Err(e),
            Err(Fail::NeedKeys(devices)) => return Ok(Step::NeedKeys(devices)),
            Err(Fail::Undecryptable(reason)) => {
                drop(guard);
                tracing::warn!(seq, %reason, "undecryptable queue entry skipped");
                self.store.commit_incoming(seq, &Effect::None)?;
                let _ = self
                    .events
                    .send(ClientEvent::UndecryptableMessage { seq, reason });
                return Ok(Step::Done);
            }
        };
        let mut events = Vec::new();
        let mut queued = applied.queued;
        let unpark = applied.epoch_changed();
        if applied.changed
            && matches!(
                applied.effect,
                Effect::Conversation(..) | Effect::Request { .. }
            )
        {
            self.store.key_package_used()?;
        }
        if let Effect::Conversation(c, Some(channel)) = &applied.effect {
            self.store.channel_to_accept(&c.id, channel)?;
            self.channel_answers_recorded
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        events.extend(applied.events(&*self.store)?);
        let mut step = Step::Done;
        if let Some(conversation) = unpark {
            let (more, more_queued, needed) = self.unpark(guard.as_ref(), conversation, refused)?;
            events.extend(more);
            queued |= more_queued;
            if !needed.is_empty() {
                step = Step::UnparkAfter(conversation, needed);
            }
        }
        drop(guard);
        for event in events {
            let _ = self.events.send(event);
        }
        if queued {
            self.outbox_wake.notify_one();
        }
        Ok(step)
    }

    /// Retries the messages parked for `conversation` now that its epoch moved (or the
    /// conversation arrived), until a pass makes no progress (a parked commit may unlock
    /// more). Returns their events, whether anything was queued, and the devices whose keys
    /// parked messages wait for.
    fn unpark(
        self: &Arc<Self>,
        keys: Option<&Keys>,
        conversation: ConversationId,
        refused: &Refused,
    ) -> SdkResult<Unparked> {
        let keys = keys.ok_or(SdkError::NotLoggedIn)?;
        let mut events = Vec::new();
        let mut queued = false;
        loop {
            let parked = self.store.parked(&conversation)?;
            let mut progress = false;
            let mut needed = Vec::new();
            for p in parked {
                let sender = IdentityPublic::from_bytes(&p.sender);
                let result = transact(&*self.store, Some(&keys.mls), |tx| {
                    let sender = sender
                        .map_err(|_| Fail::Undecryptable("parked message: no sender".into()))?;
                    let Some(mut group) = keys.mls.group(&p.conversation.0)? else {
                        return Ok(None);
                    };
                    let (effect, queued) = self.process_group(
                        keys,
                        tx,
                        &mut group,
                        p.conversation,
                        p.seq,
                        &p.mls,
                        &sender,
                        refused,
                    )?;
                    keys.mls.keep(group);
                    if matches!(effect, Effect::Park { .. }) {
                        return Ok(None);
                    }
                    tx.unpark(p.seq)?;
                    Applied::commit(tx, p.seq, effect, queued).map(Some)
                });
                match result {
                    Ok(None) => {}
                    Ok(Some(applied)) => {
                        progress = true;
                        queued |= applied.queued;
                        events.extend(applied.events(&*self.store)?);
                    }
                    Err(Fail::Undecryptable(reason)) => {
                        progress = true;
                        self.store.unpark(p.seq)?;
                        events.push(ClientEvent::UndecryptableMessage { seq: p.seq, reason });
                    }
                    Err(Fail::NeedKeys(devices)) => needed.extend(devices),
                    Err(Fail::Sdk(e)) => return Err(e),
                }
            }
            if !progress {
                needed.sort();
                needed.dedup();
                return Ok((events, queued, needed));
            }
        }
    }

    /// Checks every devices' keys of `devices` against the log (fetching what is not cached);
    /// those that cannot be checked go into `refused` with the reason. Fails only when the
    /// check could not be made (the network): the entry is retried later.
    async fn check_devices(
        self: &Arc<Self>,
        devices: &[(String, String)],
        refused: &mut Refused,
    ) -> SdkResult<()> {
        let rpc = self.session().await?;
        let keys = v1::keys_client::KeysClient::new(rpc);
        for (user, device) in devices {
            let reason = match self.peer_key(&keys, user, device).await {
                Ok(_) => continue,
                Err(SdkError::Server(status)) if status.code() == Code::NotFound => {
                    "no keys in the server's key-transparency log".to_owned()
                }
                Err(SdkError::Server(status)) if status.code() == Code::InvalidArgument => {
                    format!("not a device of this server ({})", status.message())
                }
                Err(SdkError::KeyTransparency(reason)) => {
                    format!("keys fail the key-transparency check ({reason})")
                }
                Err(SdkError::Invalid(reason)) => reason,
                Err(e) => return Err(e),
            };
            lock(&self.unverifiable).insert(
                (user.clone(), device.clone()),
                (reason.clone(), std::time::Instant::now()),
            );
            refused.insert((user.clone(), device.clone()), reason);
        }
        Ok(())
    }

    /// Checks one leaf against the log: its name must be a device of this server whose
    /// identity key, as this client checked it in the log, is the key that signs for the leaf.
    /// Returns `(user, device)`.
    fn verify_leaf(
        &self,
        keys: &Keys,
        tx: &mut dyn Tx,
        leaf: &Leaf,
        refused: &Refused,
    ) -> Result<(String, String), Fail> {
        let name = DeviceName::parse(&leaf.name)
            .map_err(|_| Fail::Undecryptable("a member's name is not a qpq device name".into()))?;
        if name.domain() != keys.name.domain() {
            return Err(Fail::Undecryptable(format!(
                "member {name} belongs to another server"
            )));
        }
        let who = (name.user().to_owned(), name.device().to_owned());
        let logged = if name == keys.name {
            Some(keys.identity.public().to_bytes().to_vec())
        } else {
            tx.identity(&who.0, &who.1)?
        };
        match logged {
            Some(key) if key == leaf.signature_key => Ok(who),
            Some(_) => Err(Fail::Undecryptable(format!(
                "{}/{} is forged: the key that signs for it is not the one in the \
                 key-transparency log",
                who.0, who.1
            ))),
            None => match refused.get(&who) {
                Some(reason) => Err(Fail::Undecryptable(format!(
                    "{}/{} cannot be verified: {reason}",
                    who.0, who.1
                ))),
                None => Err(Fail::NeedKeys(vec![who])),
            },
        }
    }

    /// Checks every leaf of a group (see [`verify_leaf`](Self::verify_leaf)); collects every
    /// device whose keys must be checked first.
    fn verify_leaves(
        &self,
        keys: &Keys,
        tx: &mut dyn Tx,
        leaves: &[Leaf],
        refused: &Refused,
    ) -> Result<(), Fail> {
        // A group larger than this client takes part in is refused before any of its names
        // costs a key lookup.
        if leaves.len() > self.limits.max_conversation_devices + 1 {
            return Err(Fail::Undecryptable(format!(
                "a group of {} devices, above this client's limit of {}",
                leaves.len(),
                self.limits.max_conversation_devices
            )));
        }
        let mut needed = Vec::new();
        for leaf in leaves {
            match self.verify_leaf(keys, tx, leaf, refused) {
                Ok(_) => {}
                Err(Fail::NeedKeys(devices)) => needed.extend(devices),
                Err(e) => return Err(e),
            }
        }
        if needed.is_empty() {
            Ok(())
        } else {
            Err(Fail::NeedKeys(needed))
        }
    }

    /// What one transport does, worked out and committed inside the caller's transaction.
    /// `sender` is the identity the sealed envelope was signed by.
    fn process(
        &self,
        keys: &Keys,
        tx: &mut dyn Tx,
        seq: u64,
        sender: &IdentityPublic,
        transport: v1::Transport,
        refused: &Refused,
    ) -> Result<Applied, Fail> {
        let my_user = user_of(&keys.me);
        let (effect, queued) = match transport.kind {
            Some(v1::transport::Kind::Invitation(inv)) => {
                let id = conversation_id(&inv.conversation_id)?;
                let (group, inviter) = keys
                    .mls
                    .join(&inv.welcome)
                    .map_err(|e| Fail::Undecryptable(format!("invitation: {e}")))?;
                if group.id() != id.0 {
                    return Err(Fail::Undecryptable(
                        "invitation: conversation id does not match its group".into(),
                    ));
                }
                if !inviter.signs_with(sender) {
                    return Err(Fail::Undecryptable(
                        "invitation: the envelope's sender is not the member who signed the \
                         group"
                            .into(),
                    ));
                }
                self.verify_leaves(keys, tx, &group.leaves(), refused)?;
                let (inviter_user, _) = self.verify_leaf(keys, tx, &inviter, refused)?;
                let members = member_users(&group);
                let kind = ConversationKind::from_code(inv.kind);
                // A direct conversation is between its inviter and this user, and no one else.
                if kind == ConversationKind::Direct
                    && (members.len() != 2
                        || !members.contains(&inviter_user)
                        || !members.iter().any(|m| m == my_user))
                {
                    return Err(Fail::Undecryptable(
                        "invitation: a direct conversation must be between its inviter and \
                         this user alone"
                            .into(),
                    ));
                }
                let channel = (inv.channel_id.len() == 16).then(|| inv.channel_id.to_vec());
                // A channel another conversation of this device uses is not this one's: an
                // invitation naming it would point typing, changes and leaving at it.
                let channel = match channel {
                    Some(ch) if tx.channel_user(&ch)?.is_some_and(|other| other != id) => None,
                    other => other,
                };
                let c = Conversation {
                    id,
                    kind,
                    name: inv.name,
                    members,
                };
                // A conversation id this device already has is not taken over by someone it
                // does not know (nor turned into a request that declining would delete).
                let existing = tx.conversation(&id)?;
                let known = self.invitations == InvitationPolicy::FromAnyone
                    || inviter_user == my_user
                    || tx.knows(&inviter_user, my_user)?;
                if existing.is_some() && !known {
                    return Err(Fail::Undecryptable(
                        "invitation: a stranger reuses the id of a conversation this device has"
                            .into(),
                    ));
                }
                if known {
                    (Effect::Conversation(c, channel), false)
                } else {
                    (
                        Effect::Request {
                            conversation: c,
                            channel,
                            inviter: inviter_user,
                        },
                        false,
                    )
                }
            }
            Some(v1::transport::Kind::Group(g)) => {
                let id = conversation_id(&g.conversation_id)?;
                match keys.mls.group(&id.0)? {
                    Some(mut group) => {
                        let (effect, queued) = self.process_group(
                            keys, tx, &mut group, id, seq, &g.mls, sender, refused,
                        )?;
                        // Back to the cache: the transaction writes what changed, and a
                        // rollback empties the cache.
                        keys.mls.keep(group);
                        if matches!(effect, Effect::Park { .. }) {
                            self.check_parking(tx, &id, sender)?;
                        }
                        (effect, queued)
                    }
                    // A conversation this device left: what is sent there is not for it.
                    None if tx
                        .conversation(&id)?
                        .is_some_and(|c| !c.members.iter().any(|m| m == my_user)) =>
                    {
                        (Effect::None, false)
                    }
                    // Not joined yet: the invitation may still be on its way. Parked until
                    // it comes, within the sender's parking budget.
                    None => {
                        let epoch = qpq_core::mls::message_epoch(&g.mls)
                            .map_err(|e| Fail::Undecryptable(e.to_string()))?;
                        self.check_parking(tx, &id, sender)?;
                        (
                            Effect::Park {
                                seq,
                                conversation: id,
                                epoch,
                                sender: sender.to_bytes().to_vec(),
                                mls: g.mls.to_vec(),
                            },
                            false,
                        )
                    }
                }
            }
            None => return Err(Fail::Undecryptable("transport: empty".into())),
        };
        Applied::commit(tx, seq, effect, queued)
    }

    /// Refuses to park one more message from `sender` for `conversation` when either budget
    /// is spent: messages parked for the conversation, and messages parked from the sender.
    fn check_parking(
        &self,
        tx: &mut dyn Tx,
        conversation: &ConversationId,
        sender: &IdentityPublic,
    ) -> Result<(), Fail> {
        if tx.parked_count(conversation)? >= self.limits.max_parked {
            return Err(Fail::Undecryptable(format!(
                "{} messages already wait for an earlier commit or invitation in this \
                 conversation",
                self.limits.max_parked
            )));
        }
        if tx.parked_total()? >= self.limits.max_parked_total {
            return Err(Fail::Undecryptable(format!(
                "{} messages already wait for earlier commits or invitations",
                self.limits.max_parked_total
            )));
        }
        if tx.parked_from(&sender.to_bytes())? >= self.limits.max_parked_per_sender {
            return Err(Fail::Undecryptable(format!(
                "{} messages of this sender already wait for an earlier commit or invitation",
                self.limits.max_parked_per_sender
            )));
        }
        Ok(())
    }

    /// Processes one MLS message of a group this device is in. A message from an epoch not
    /// reached yet becomes [`Effect::Park`]; a member's request to leave is committed here if
    /// this device is the one to do it. Returns the effect and whether anything was queued.
    #[allow(clippy::too_many_arguments)]
    fn process_group(
        &self,
        keys: &Keys,
        tx: &mut dyn Tx,
        group: &mut qpq_core::mls::Group,
        id: ConversationId,
        seq: u64,
        mls: &[u8],
        sender: &IdentityPublic,
        refused: &Refused,
    ) -> Result<(Effect, bool), Fail> {
        let current = group.epoch();
        match group.process(&keys.mls, mls) {
            Err(qpq_core::mls::MlsError::FutureEpoch { epoch }) => {
                if epoch > current.saturating_add(MAX_EPOCHS_AHEAD) {
                    return Err(Fail::Undecryptable(format!(
                        "message from epoch {epoch}, far beyond the group's epoch {current}"
                    )));
                }
                Ok((
                    Effect::Park {
                        seq,
                        conversation: id,
                        epoch,
                        sender: sender.to_bytes().to_vec(),
                        mls: mls.to_vec(),
                    },
                    false,
                ))
            }
            Err(e) => Err(e.into()),
            Ok(Incoming::Application {
                sender: author,
                plaintext,
            }) => {
                if !author.signs_with(sender) {
                    return Err(Fail::Undecryptable(
                        "the envelope's sender is not the message's author".into(),
                    ));
                }
                let (user, device) = self.verify_leaf(keys, tx, &author, refused)?;
                let author = format!("{user}/{device}");
                let content = v1::Content::decode(plaintext.as_slice())
                    .map_err(|e| Fail::Undecryptable(format!("content: {e}")))?;
                if let Some(v1::content::Body::Attachment(a)) = &content.body
                    && a.size > self.limits.max_attachment_bytes
                {
                    return Err(Fail::Undecryptable(format!(
                        "an attachment of {} bytes, above this client's limit of {}",
                        a.size, self.limits.max_attachment_bytes
                    )));
                }
                let effect = content_effect(id, author, content, user_of(&keys.me))
                    .map_err(Fail::Undecryptable)?;
                // Nothing is sent on its own from inside a message request: answering would
                // tell its author this user is there (and make it a contact).
                if let Effect::LeaveRequest { user, .. } = &effect
                    && !tx.in_request(&id)?
                    && let Some(members) = self.commit_leave(keys, tx, group, &id, user)?
                {
                    return Ok((
                        Effect::Members {
                            conversation: id,
                            members,
                        },
                        true,
                    ));
                }
                Ok((effect, false))
            }
            Ok(Incoming::Commit {
                removed_self,
                committer,
            }) => {
                let committer = committer
                    .ok_or_else(|| Fail::Undecryptable("a commit not sent by a member".into()))?;
                if !committer.signs_with(sender) {
                    return Err(Fail::Undecryptable(
                        "the envelope's sender is not the commit's author".into(),
                    ));
                }
                let before = tx.conversation(&id)?;
                let mut members = member_users(group);
                if removed_self {
                    // This device is out: it no longer counts its user as a member, and the
                    // group's keys are of no more use to it. The tree it was removed from is
                    // not checked any more, so the members it reports are the ones checked
                    // before, less this user.
                    let me = user_of(&keys.me).to_owned();
                    members = before.map(|c| c.members).unwrap_or_default();
                    members.retain(|u| *u != me);
                    // Out of the conversation, out of its server channel too.
                    if let Some(channel) = tx.channel_of(&id)? {
                        lock(&self.channel_leaves).push(channel);
                    }
                    if let Some(stored) = keys.mls.group(&id.0)? {
                        stored.delete(&keys.mls)?;
                    }
                } else {
                    // Every leaf the commit added or changed, checked before it counts.
                    self.verify_leaves(keys, tx, &group.leaves(), refused)?;
                    // A direct conversation stays between its two users: devices come and go,
                    // nobody new comes in.
                    if let Some(c) = &before
                        && c.kind == ConversationKind::Direct
                        && members.iter().any(|u| !c.members.contains(u))
                    {
                        return Err(Fail::Undecryptable(
                            "a commit may not bring someone new into a direct conversation".into(),
                        ));
                    }
                }
                Ok((
                    Effect::Members {
                        conversation: id,
                        members,
                    },
                    false,
                ))
            }
            Ok(_) => Ok((Effect::None, false)),
        }
    }

    /// Removes every device of `leaving` from the group if this device is the remaining
    /// member device that comes first by name (so exactly one member commits it), queueing the
    /// commit to every other device, the leaving ones included. Returns the new member users.
    fn commit_leave(
        &self,
        keys: &Keys,
        tx: &mut dyn Tx,
        group: &mut qpq_core::mls::Group,
        id: &ConversationId,
        leaving: &str,
    ) -> Result<Option<Vec<String>>, Fail> {
        let mut names: Vec<(String, String)> = group
            .members()
            .iter()
            .filter_map(|n| split_name(n))
            .collect();
        names.sort();
        let committer = names.iter().find(|(u, _)| u != leaving);
        if committer.map(|(u, d)| format!("{u}/{d}")).as_deref() != Some(keys.me.as_str()) {
            return Ok(None);
        }
        let gone: Vec<Vec<u8>> = names
            .iter()
            .filter(|(u, _)| u == leaving)
            .map(|(u, d)| device_name(keys, u, d).map(|n| n.encode()))
            .collect::<SdkResult<_>>()?;
        if gone.is_empty() {
            return Ok(None);
        }
        let refs: Vec<&[u8]> = gone.iter().map(Vec::as_slice).collect();
        let recipients = other_devices(group, &keys.me);
        let commit = group.remove_members(&keys.mls, &refs)?;
        let deliveries = deliveries_for(
            MessageId::random(),
            &recipients,
            &group_transport(id, commit),
        );
        tx.queue_outgoing(None, &deliveries)?;
        Ok(Some(member_users(group)))
    }
}

impl Inner {
    /// Applies one queue entry, first checking against the log the keys of every device it
    /// names that this client has not checked yet.
    async fn apply_checked(self: &Arc<Self>, envelope: &v1::Envelope) -> SdkResult<()> {
        self.apply_keys_checked(envelope).await?;
        self.answer_invitations().await;
        self.leave_channels().await;
        Ok(())
    }

    /// Leaves the server channels of conversations this device was removed from (best
    /// effort: a removed user is no member of the conversation whatever the channel says).
    async fn leave_channels(self: &Arc<Self>) {
        if lock(&self.channel_leaves).is_empty() {
            return;
        }
        let Some(me) = lock(&self.keys).as_ref().map(|k| user_of(&k.me).to_owned()) else {
            return;
        };
        let Ok(rpc) = self.session().await else {
            return;
        };
        let client = v1::channel_client::ChannelClient::new(rpc);
        let channels: Vec<Vec<u8>> = std::mem::take(&mut *lock(&self.channel_leaves));
        for channel_id in channels {
            match client
                .update_channel(&v1::UpdateChannelRequest {
                    channel_id: channel_id.clone().into(),
                    add: Vec::new(),
                    remove: vec![me.clone()],
                })
                .await
            {
                Ok(_) => {}
                Err(status) if status.code() == Code::NotFound => {}
                // Kept for the next entry or session.
                Err(status) => {
                    tracing::warn!(%status, "could not leave the channel of a conversation left");
                    lock(&self.channel_leaves).push(channel_id);
                }
            }
        }
    }

    /// Tells the server this device's user accepted the channels of the invitations it joined.
    /// Kept in the store until the server has the answer, so a stop in between only delays
    /// it (to the next receive session); meanwhile the membership is an invitation there,
    /// which only withholds what membership grants (typing, endpoints, the known-sender
    /// quota).
    async fn answer_invitations(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        // Read before the store: an invitation recorded meanwhile makes the next call look.
        let recorded = self.channel_answers_recorded.load(Ordering::Acquire);
        if recorded == self.channel_answers_none_at.load(Ordering::Acquire) {
            return;
        }
        let Ok(pending) = self.store.channels_to_accept() else {
            return;
        };
        if pending.is_empty() {
            self.channel_answers_none_at
                .store(recorded, Ordering::Release);
            return;
        }
        let Ok(rpc) = self.session().await else {
            return;
        };
        let client = v1::channel_client::ChannelClient::new(rpc.clone());
        for (conversation, channel_id) in pending {
            match client
                .answer_invitation(&v1::AnswerInvitationRequest {
                    channel_id: channel_id.clone().into(),
                    accept: true,
                    mls_group_id: conversation.0.to_vec().into(),
                })
                .await
            {
                Ok(_) => {}
                // Answered before (by another device of this user), or not this
                // conversation's channel.
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => {
                    tracing::warn!(%status, "could not accept a channel invitation yet");
                    continue;
                }
            }
            if let Err(e) = self.store.channel_accepted(&conversation) {
                tracing::warn!(error = %e, "could not record a channel answer");
            }
        }
    }

    async fn apply_keys_checked(self: &Arc<Self>, envelope: &v1::Envelope) -> SdkResult<()> {
        let mut refused = self.recently_refused();
        let mut checked = false;
        loop {
            match self.apply(envelope, &refused)? {
                Step::Done => return Ok(()),
                Step::NeedKeys(devices) => {
                    if checked {
                        // Checked already and still unknown: refuse rather than loop.
                        for d in devices {
                            refused
                                .entry(d)
                                .or_insert_with(|| "keys unavailable".into());
                        }
                    } else {
                        self.check_devices(&devices, &mut refused).await?;
                        checked = true;
                    }
                }
                Step::UnparkAfter(conversation, devices) => {
                    return self
                        .unpark_checked(conversation, devices, &mut refused)
                        .await;
                }
            }
        }
    }

    /// Retries the messages parked for `conversation` after checking the keys of `devices`
    /// (the ones they wait for); any still missing are refused on the second pass.
    async fn unpark_checked(
        self: &Arc<Self>,
        conversation: ConversationId,
        mut devices: Vec<(String, String)>,
        refused: &mut Refused,
    ) -> SdkResult<()> {
        for _ in 0..2 {
            if !devices.is_empty() {
                self.check_devices(&devices, refused).await?;
            }
            let (events, queued, needed) = {
                let guard = lock(&self.keys);
                self.unpark(guard.as_ref(), conversation, refused)?
            };
            for event in events {
                let _ = self.events.send(event);
            }
            if queued {
                self.outbox_wake.notify_one();
            }
            if needed.is_empty() {
                break;
            }
            for d in &needed {
                if devices.contains(d) {
                    refused
                        .entry(d.clone())
                        .or_insert_with(|| "keys unavailable".into());
                }
            }
            devices = needed;
        }
        Ok(())
    }

    /// At the start of a receive session: forgets parked messages whose commit or invitation
    /// never came (reported), and retries the others, so none is stranded by a check that
    /// failed before (the network) after its queue entry was committed.
    async fn retry_parked(self: &Arc<Self>) -> SdkResult<()> {
        let horizon = now_ms().saturating_sub(PARKED_FOR_MS);
        for seq in self.store.expire_parked(horizon)? {
            let _ = self.events.send(ClientEvent::UndecryptableMessage {
                seq,
                reason: "waited a week for the commit or invitation before it".into(),
            });
        }
        let mut refused = self.recently_refused();
        for conversation in self.store.parked_conversations()? {
            self.unpark_checked(conversation, Vec::new(), &mut refused)
                .await?;
        }
        Ok(())
    }

    /// Devices whose keys failed the check within the last few minutes, so a flood of names
    /// that are not in the log costs one lookup each, not one per message.
    fn recently_refused(&self) -> Refused {
        let mut cache = lock(&self.unverifiable);
        cache.retain(|_, (_, at)| at.elapsed() < REFUSAL_MEMORY);
        cache
            .iter()
            .map(|(device, (reason, _))| (device.clone(), reason.clone()))
            .collect()
    }
}

/// How long a parked message waits for the commit or invitation before it.
const PARKED_FOR_MS: u64 = 7 * 24 * 3600 * 1000;

/// How long a device whose keys failed the check is refused without asking again.
const REFUSAL_MEMORY: Duration = Duration::from_secs(600);

/// How far beyond a group's epoch a message may be and still be parked: further is no
/// commit on its way but a sender filling the parking.
const MAX_EPOCHS_AHEAD: u64 = 64;

/// Opens the sealed envelope of a queue entry without recording it as seen, refuses a replay,
/// and decodes its transport. Returns the verified sender, the envelope's id and time, and
/// the transport.
fn open_sealed(
    keys: &Keys,
    envelope: &v1::Envelope,
    now: u64,
) -> Result<(IdentityPublic, [u8; 16], u64, v1::Transport), String> {
    let opened = qpq_core::sealed::open_unrecorded(&keys.hybrid, &envelope.payload)
        .map_err(|e| format!("sealed envelope: {e}"))?;
    keys.replay
        .is_fresh(&opened.message_id, opened.timestamp_ms, now)
        .map_err(|e| format!("sealed envelope: {e}"))?;
    let transport =
        v1::Transport::decode(opened.payload.as_slice()).map_err(|e| format!("transport: {e}"))?;
    Ok((
        opened.sender,
        opened.message_id,
        opened.timestamp_ms,
        transport,
    ))
}

/// Why a key answer was not accepted.
enum KtFail {
    /// The log did not check out: an alarm for the user.
    Alarm(String),
    /// The check could not be made (the network, the local store): try again later.
    Other(SdkError),
}

/// Why a queue entry was not applied.
enum Fail {
    /// It cannot be decrypted or verified: skipped, reported with an event.
    Undecryptable(String),
    /// The local store failed: the entry is fetched again later.
    Sdk(SdkError),
    /// These devices' keys must be checked against the log before the entry can be.
    NeedKeys(Vec<(String, String)>),
}

impl From<SdkError> for Fail {
    fn from(e: SdkError) -> Self {
        Self::Sdk(e)
    }
}

impl From<String> for Fail {
    fn from(reason: String) -> Self {
        Self::Undecryptable(reason)
    }
}

impl From<qpq_core::mls::MlsError> for Fail {
    fn from(e: qpq_core::mls::MlsError) -> Self {
        match e {
            qpq_core::mls::MlsError::Store(_) => Self::Sdk(e.into()),
            e => Self::Undecryptable(e.to_string()),
        }
    }
}

impl From<rusqlite::Error> for Fail {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sdk(e.into())
    }
}

/// An effect committed with its queue entry, and what is needed to report it.
struct Applied {
    effect: Effect,
    before: Option<Conversation>,
    changed: bool,
    queued: bool,
}

impl Applied {
    fn commit(tx: &mut dyn Tx, seq: u64, effect: Effect, queued: bool) -> Result<Self, Fail> {
        let before = match &effect {
            Effect::Members { conversation, .. } => tx.conversation(conversation)?,
            _ => None,
        };
        let changed = tx.commit_incoming(seq, &effect)?;
        Ok(Self {
            effect,
            before,
            changed,
            queued,
        })
    }

    /// The conversation whose epoch this moved (parked messages there may now process).
    fn epoch_changed(&self) -> Option<ConversationId> {
        match &self.effect {
            Effect::Members { conversation, .. } => Some(*conversation),
            Effect::Conversation(c, _) => Some(c.id),
            _ => None,
        }
    }

    fn events(&self, store: &dyn Store) -> SdkResult<Vec<ClientEvent>> {
        if !self.changed {
            return Ok(Vec::new());
        }
        events_for(store, &self.effect, self.before.clone())
    }
}

/// Places where a test makes the client fail (the `testing` feature).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub enum CrashPoint {
    /// After an entry is decrypted and its effect computed, before it is committed: the
    /// process dies.
    AfterDecrypt,
    /// After an entry is committed locally, before the server is told (acknowledged): the
    /// process dies.
    BeforeAck,
    /// Where [`AfterDecrypt`](Self::AfterDecrypt) is, the local store fails once (busy,
    /// full, I/O) and the process goes on.
    StoreFailure,
}

/// The armed crash point, if any (tests only; see [`QpqClientBuilder::crash_at`]).
type CrashSwitch = Mutex<Option<CrashPoint>>;

/// Fails once if `point` (or, at `AfterDecrypt`, a store failure) is armed, disarming it: a
/// crash point with [`SdkError::SimulatedCrash`] (the background tasks then stop as if the
/// process had died), a store failure as the store would.
#[cfg(feature = "testing")]
fn fail_point(switch: &CrashSwitch, point: CrashPoint) -> SdkResult<()> {
    let mut armed = lock(switch);
    match *armed {
        Some(p) if p == point => {
            *armed = None;
            Err(SdkError::SimulatedCrash(point))
        }
        Some(CrashPoint::StoreFailure) if point == CrashPoint::AfterDecrypt => {
            *armed = None;
            Err(SdkError::Store("injected store failure".into()))
        }
        _ => Ok(()),
    }
}

/// Without the `testing` feature nothing is ever armed.
#[cfg(not(feature = "testing"))]
fn fail_point(_switch: &CrashSwitch, _point: CrashPoint) -> SdkResult<()> {
    Ok(())
}

/// Whether `e` is a test's simulated crash (never, without the `testing` feature).
fn simulated_crash(e: &SdkError) -> bool {
    #[cfg(feature = "testing")]
    if matches!(e, SdkError::SimulatedCrash(_)) {
        return true;
    }
    let _ = e;
    false
}

/// Turns the server's ephemeral notifications (typing, sent as QUIC datagrams) into events.
/// Server events on the push stream need no forwarding: new messages are fetched by the
/// receive loop anyway.
async fn forward_pushes(inner: std::sync::Weak<Inner>, mut pushes: qrpc::PushEvents) {
    while let Some(push) = pushes.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        if !v1::ephemeral_event_push::EVENT_TYPES.contains(&push.event_type()) {
            continue;
        }
        let event = push.decode::<v1::ephemeral_event_push::Event>();
        if let Ok(v1::ephemeral_event_push::Event::Typing(t)) = event {
            let me = lock(&inner.keys)
                .as_ref()
                .map(|k| user_of(&k.me).to_owned());
            if me.as_deref() == Some(t.user.as_str()) {
                continue;
            }
            if let Ok(Some(conversation)) = inner.store.conversation_of_channel(&t.channel_id) {
                let _ = inner.events.send(ClientEvent::Typing {
                    conversation,
                    user: t.user,
                });
            }
        }
    }
}

fn monitor_key(bytes: &[u8]) -> Result<qpq_core::identity::IdentityPublic, String> {
    qpq_core::identity::IdentityPublic::from_bytes(bytes).map_err(|e| format!("log key: {e}"))
}

fn conversation_id(bytes: &[u8]) -> Result<ConversationId, String> {
    <[u8; 16]>::try_from(bytes)
        .map(ConversationId)
        .map_err(|_| "bad conversation id".to_owned())
}

fn message_id(bytes: &[u8]) -> Result<MessageId, String> {
    <[u8; 16]>::try_from(bytes)
        .map(MessageId)
        .map_err(|_| "bad message id".to_owned())
}

/// The member users of a group, sorted, from its `user/device` credentials.
fn member_users(group: &qpq_core::mls::Group) -> Vec<String> {
    let mut members: Vec<String> = group
        .members()
        .iter()
        .filter_map(|n| split_name(n).map(|(u, _)| u))
        .collect();
    members.sort();
    members.dedup();
    members
}

/// `(user, device)` of every member device but `me`.
fn other_devices(group: &qpq_core::mls::Group, me: &str) -> Vec<(String, String)> {
    group
        .members()
        .iter()
        .filter_map(|name| split_name(name))
        .filter(|(u, d)| me.split_once('/') != Some((u.as_str(), d.as_str())))
        .collect()
}

fn group_transport(conversation: &ConversationId, mls: Vec<u8>) -> Vec<u8> {
    v1::Transport {
        kind: Some(v1::transport::Kind::Group(v1::GroupMessage {
            conversation_id: conversation.0.to_vec().into(),
            mls: mls.into(),
        })),
    }
    .encode_to_vec()
}

fn invitation(c: &Conversation, welcome: Vec<u8>, channel: Option<&[u8]>) -> Vec<u8> {
    v1::Transport {
        kind: Some(v1::transport::Kind::Invitation(v1::Invitation {
            welcome: welcome.into(),
            conversation_id: c.id.0.to_vec().into(),
            kind: c.kind.code(),
            name: c.name.clone(),
            channel_id: channel.map(<[u8]>::to_vec).unwrap_or_default().into(),
        })),
    }
    .encode_to_vec()
}

fn deliveries_for(
    item: MessageId,
    devices: &[(String, String)],
    transport: &[u8],
) -> Vec<Delivery> {
    devices
        .iter()
        .map(|(u, d)| Delivery {
            item,
            user: u.clone(),
            device: d.clone(),
            message_id: delivery_id(&item, u, d),
            transport: transport.to_vec(),
        })
        .collect()
}

fn check_name(name: &str) -> SdkResult<()> {
    if name.is_empty() || name.len() > 64 {
        return Err(SdkError::InvalidArgument("name: 1 to 64 bytes".into()));
    }
    Ok(())
}

/// What an incoming content item does to the store.
fn content_effect(
    conversation: ConversationId,
    sender: String,
    content: v1::Content,
    my_user: &str,
) -> Result<Effect, String> {
    let author = user_of(&sender).to_owned();
    // What this user sent from another device shows as its own, already sent.
    let mine = author == my_user;
    let state = if mine {
        SendState::Sent
    } else {
        SendState::Received
    };
    let incoming = || -> Result<Message, String> {
        let mut m = Message::new(
            message_id(&content.id)?,
            conversation,
            sender.clone(),
            content.sent_at_ms,
            mine,
            state.clone(),
        );
        m.received_at_ms = now_ms();
        Ok(m)
    };
    Ok(match content.body {
        Some(v1::content::Body::Text(text)) => Effect::Message(Box::new(Message {
            body: text.body,
            reply_to: message_id(&text.reply_to).ok(),
            ..incoming()?
        })),
        Some(v1::content::Body::Attachment(a)) => Effect::Message(Box::new(Message {
            body: a.caption.clone(),
            attachment: Some(AttachmentInfo::from_wire(a)),
            ..incoming()?
        })),
        Some(v1::content::Body::Edit(e)) => Effect::Edit {
            conversation,
            target: message_id(&e.target)?,
            author,
            body: e.body,
        },
        Some(v1::content::Body::Delete(d)) => Effect::Delete {
            conversation,
            target: message_id(&d.target)?,
            author,
        },
        Some(v1::content::Body::Reaction(r)) => {
            // A reaction is an emoji, not a place for text.
            if r.emoji.is_empty() || r.emoji.len() > MAX_EMOJI_BYTES {
                return Err(format!(
                    "a reaction of {} bytes (at most {MAX_EMOJI_BYTES})",
                    r.emoji.len()
                ));
            }
            Effect::Reaction {
                conversation,
                target: message_id(&r.target)?,
                user: author,
                emoji: r.emoji,
                remove: r.remove,
            }
        }
        Some(v1::content::Body::Receipt(r)) => Effect::Receipt {
            conversation,
            targets: r
                .read
                .iter()
                .map(|id| message_id(id))
                .collect::<Result<_, _>>()?,
            user: author,
            at_ms: content.sent_at_ms,
        },
        Some(v1::content::Body::Rename(r)) => Effect::Rename {
            conversation,
            name: r.name,
        },
        // A device can only ever ask for its own user to leave.
        Some(v1::content::Body::Leave(_)) => Effect::LeaveRequest { user: author },
        None => Effect::None,
    })
}

/// The event one applied effect reports (membership changes report several).
fn event_for(store: &dyn Store, effect: &Effect) -> SdkResult<Option<ClientEvent>> {
    Ok(events_for(store, effect, None)?.into_iter().next())
}

/// Longest reaction accepted from a peer, in bytes (an emoji with its modifiers).
const MAX_EMOJI_BYTES: usize = 32;

/// The conversation an effect on existing content belongs to.
fn effect_conversation(effect: &Effect) -> Option<ConversationId> {
    match effect {
        Effect::Message(m) => Some(m.conversation),
        Effect::Members { conversation, .. }
        | Effect::Edit { conversation, .. }
        | Effect::Delete { conversation, .. }
        | Effect::Reaction { conversation, .. }
        | Effect::Receipt { conversation, .. }
        | Effect::Rename { conversation, .. } => Some(*conversation),
        _ => None,
    }
}

fn events_for(
    store: &dyn Store,
    effect: &Effect,
    before: Option<Conversation>,
) -> SdkResult<Vec<ClientEvent>> {
    // Nothing of a message request is announced until it is accepted.
    if let Some(conversation) = effect_conversation(effect)
        && store.is_request(&conversation)?
    {
        return Ok(Vec::new());
    }
    Ok(match effect {
        Effect::None | Effect::Park { .. } | Effect::LeaveRequest { .. } => Vec::new(),
        Effect::Conversation(c, _) => vec![ClientEvent::ConversationCreated(c.clone())],
        Effect::Request {
            conversation,
            inviter,
            ..
        } => vec![ClientEvent::MessageRequest {
            conversation: conversation.clone(),
            inviter: inviter.clone(),
        }],
        Effect::Message(m) => vec![ClientEvent::MessageReceived(m.clone())],
        Effect::Members {
            conversation,
            members,
        } => {
            let old = before.map(|c| c.members).unwrap_or_default();
            let mut events: Vec<ClientEvent> = members
                .iter()
                .filter(|u| !old.contains(u))
                .map(|u| ClientEvent::MemberJoined {
                    conversation: *conversation,
                    user: u.clone(),
                })
                .chain(old.iter().filter(|u| !members.contains(u)).map(|u| {
                    ClientEvent::MemberLeft {
                        conversation: *conversation,
                        user: u.clone(),
                    }
                }))
                .collect();
            if let Some(c) = store.conversation(conversation)? {
                events.push(ClientEvent::ConversationUpdated(c));
            }
            events
        }
        Effect::Edit {
            conversation,
            target,
            body,
            ..
        } => vec![ClientEvent::MessageEdited {
            id: *target,
            conversation: *conversation,
            body: body.clone(),
        }],
        Effect::Delete {
            conversation,
            target,
            ..
        } => vec![ClientEvent::MessageDeleted {
            id: *target,
            conversation: *conversation,
        }],
        Effect::Reaction {
            conversation,
            target,
            user,
            emoji,
            remove,
        } => vec![ClientEvent::ReactionChanged {
            id: *target,
            conversation: *conversation,
            user: user.clone(),
            emoji: emoji.clone(),
            added: !remove,
        }],
        Effect::Receipt {
            conversation,
            targets,
            user,
            ..
        } => vec![ClientEvent::ReceiptChanged {
            ids: targets.clone(),
            conversation: *conversation,
            user: user.clone(),
        }],
        Effect::Rename { conversation, .. } => store
            .conversation(conversation)?
            .map(ClientEvent::ConversationUpdated)
            .into_iter()
            .collect(),
    })
}

/// The state of a local echo: sent at once when nobody else is in the conversation.
fn echo_state(nobody: bool) -> SendState {
    if nobody {
        SendState::Sent
    } else {
        SendState::Queued
    }
}

/// The client's current connection generation (0 while it is reconnecting).
fn generation(rpc: &qrpc::Client) -> u64 {
    match &*rpc.state().borrow() {
        qrpc::ConnectionState::Connected { generation } => *generation,
        _ => 0,
    }
}

/// What one outbox batch left behind.
enum Batch {
    /// Nothing is due.
    Empty,
    /// More may be due: go on.
    More,
}

/// Errors a transfer survives by trying again (after resuming the session if need be).
fn retryable(status: &qrpc::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unauthenticated | Code::Aborted | Code::DeadlineExceeded
    )
}

fn futures_iter(
    chunks: Vec<v1::BlobChunk>,
) -> futures::stream::Iter<std::vec::IntoIter<v1::BlobChunk>> {
    futures::stream::iter(chunks)
}

fn backoff(limits: &ClientLimits, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.min(16);
    (limits.initial_backoff * factor).min(limits.max_backoff)
}

/// Fetches, applies and acknowledges queue entries in order, for as long as the client lives.
async fn receive_loop(strong: Arc<Inner>) {
    let mut attempt = 0u32;
    loop {
        let limits = strong.limits.clone();
        match receive_session(&strong).await {
            Ok(()) => return,
            Err(SdkError::Server(status)) if status.code() == Code::Unauthenticated => {
                let _ = strong.events.send(ClientEvent::ConnectionStateChanged(
                    ConnectionState::SessionEnded {
                        reason: status.message().to_owned(),
                    },
                ));
                return;
            }
            Err(e) => {
                let reason = e.to_string();
                let crashed = simulated_crash(&e);
                let _ = strong.events.send(ClientEvent::ConnectionStateChanged(
                    ConnectionState::Offline { reason },
                ));
                if crashed {
                    return;
                }
            }
        }
        tokio::time::sleep(backoff(&limits, attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

async fn receive_session(inner: &Arc<Inner>) -> SdkResult<()> {
    let rpc = inner.session().await?;
    let delivery = v1::delivery_client::DeliveryClient::new(rpc);
    let _ = inner.events.send(ClientEvent::ConnectionStateChanged(
        ConnectionState::CatchingUp,
    ));
    let mut caught_up = false;
    let mut resumed = false;
    inner.retry_parked().await?;
    inner.answer_invitations().await;
    loop {
        let cursor = inner.store.cursor()?;
        let request = v1::FetchWaitRequest {
            after_seq: cursor,
            limit: 100,
            timeout_ms: if caught_up {
                u32::try_from(inner.limits.fetch_wait.as_millis()).unwrap_or(u32::MAX)
            } else {
                0
            },
        };
        let page = match delivery.fetch_wait(&request).await {
            Ok(page) => page,
            // A new connection (a restart, a reconnect) starts without the session: resume
            // it once; a second refusal means the server ended it.
            Err(status) if status.code() == Code::Unauthenticated && !resumed => {
                inner.resume().await?;
                resumed = true;
                inner.outbox_wake.notify_one();
                continue;
            }
            Err(status) => return Err(status.into()),
        };
        if page.messages.is_empty() && !caught_up {
            caught_up = true;
            let _ = inner.events.send(ClientEvent::ConnectionStateChanged(
                ConnectionState::Connected,
            ));
        }
        let mut last = None;
        for envelope in &page.messages {
            inner.apply_checked(envelope).await?;
            last = Some(envelope.seq);
        }
        // Acknowledge only what is committed locally.
        if let Some(up_to_seq) = last {
            fail_point(&inner.crash, CrashPoint::BeforeAck)?;
            delivery.ack(&v1::AckRequest { up_to_seq }).await?;
            resumed = false;
            let low = usize::try_from(inner.store.key_packages()?).unwrap_or(0)
                <= inner.limits.key_packages / 2;
            if low {
                let rpc = inner.session().await?;
                if let Err(e) = inner.replenish(&rpc).await {
                    tracing::warn!(error = %e, "could not replenish key packages");
                }
            }
        }
    }
}

/// Delivers the outbox whenever it is woken, retrying with backoff while anything is left.
async fn outbox_loop(strong: Arc<Inner>) {
    let mut attempt = 0u32;
    loop {
        let result = match strong.session().await {
            Ok(rpc) => match strong.flush_outbox(&rpc).await {
                // The connection lost its session (a reconnect): resume it and go again.
                Err(SdkError::Server(status)) if status.code() == Code::Unauthenticated => {
                    match strong.resume().await {
                        Ok(rpc) => strong.flush_outbox(&rpc).await,
                        Err(e) => Err(e),
                    }
                }
                other => other,
            },
            Err(e) => Err(e),
        };
        let delay = match result {
            Ok(false) => {
                attempt = 0;
                None
            }
            Ok(true) | Err(_) => {
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "outbox delivery failed; will retry");
                }
                attempt = attempt.saturating_add(1);
                Some(backoff(&strong.limits, attempt))
            }
        };
        let wake = async {
            strong.outbox_wake.notified().await;
        };
        match delay {
            None => wake.await,
            Some(d) => {
                tokio::select! {
                    () = wake => {}
                    () = tokio::time::sleep(d) => {}
                }
            }
        }
    }
}
