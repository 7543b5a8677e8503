//! The client: [`QpqClient`], its shared state, its connection and its session.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use qpq_core::identity::{DeviceName, IdentityKey};
use qpq_core::kem::{HybridPublicKey, HybridSecretKey};
use qpq_core::mls::MlsMember;
use qpq_core::sealed::ReplayGuard;
use qpq_proto::v1;
use qrpc::Code;
use qrpc::tls::ClientTls;
use tokio::sync::{Notify, broadcast};

use crate::error::{SdkError, SdkResult};
use crate::events::{ClientEvent, ConnectionState};
use crate::model::{Message, MessageId};
use crate::store::Store;

use crate::client::builder::QpqClientBuilder;
use crate::client::limits::ClientLimits;
use crate::client::limits::InvitationPolicy;
use crate::faults::CrashSwitch;
use crate::sync::forward_pushes;

pub(crate) mod builder;
pub(crate) mod limits;

/// The ALPN the messenger server speaks.
pub(crate) const ALPN: &[u8] = b"qpq/1";

/// The device's secrets once logged in.
pub(crate) struct Keys {
    /// `user/device`, as the user sees it.
    pub(crate) me: String,
    /// This device's name in the log and in MLS credentials.
    pub(crate) name: DeviceName,
    pub(crate) identity: IdentityKey,
    /// Shared with the threads that open envelopes while the rest of the keys are in use.
    pub(crate) hybrid: Arc<HybridSecretKey>,
    pub(crate) mls: MlsMember,
    pub(crate) replay: ReplayGuard,
}

pub(crate) struct Inner {
    pub(crate) store: Box<dyn Store>,
    pub(crate) server: SocketAddr,
    /// The other nodes of the server's cluster, tried in turn after `server`.
    pub(crate) fallback_servers: Vec<SocketAddr>,
    pub(crate) tls: ClientTls,
    pub(crate) limits: ClientLimits,
    pub(crate) rpc: tokio::sync::Mutex<Option<qrpc::Client>>,
    pub(crate) keys: Mutex<Option<Keys>>,
    pub(crate) events: broadcast::Sender<ClientEvent>,
    /// The connection state last reported.
    pub(crate) connection: Mutex<ConnectionState>,
    pub(crate) outbox_wake: Notify,
    /// The server pushed that a message could not be relayed to another server.
    pub(crate) relay_failures_due: Notify,
    /// The connection generation the session was last bound on (0: none).
    pub(crate) session_generation: std::sync::atomic::AtomicU64,
    pub(crate) sealed_bytes_sent: std::sync::atomic::AtomicU64,
    /// Sealed envelopes opened (the costly step of receiving), for tests of its bound.
    pub(crate) envelopes_opened: std::sync::atomic::AtomicU64,
    pub(crate) peer_keys: Mutex<HashMap<(String, String), HybridPublicKey>>,
    pub(crate) peer_identities:
        Mutex<HashMap<(String, String), qpq_core::identity::IdentityPublic>>,
    /// Server channels of conversations this device was removed from, still to leave.
    pub(crate) channel_leaves: Mutex<Vec<Vec<u8>>>,
    /// Whether the outbox sends one delivery per call (a call was refused as a whole).
    pub(crate) one_at_a_time: std::sync::atomic::AtomicBool,
    /// Counts the channel invitations recorded to answer (from 1: the store may hold some
    /// at start) ...
    pub(crate) channel_answers_recorded: std::sync::atomic::AtomicU64,
    /// ... and the count at which the store was last seen to hold none: while the two are
    /// equal, receiving a message need not ask the store.
    pub(crate) channel_answers_none_at: std::sync::atomic::AtomicU64,
    /// Which invitations are joined at once.
    pub(crate) invitations: InvitationPolicy,
    /// The key-transparency alarms and safety-number changes reported so far (the newest
    /// [`WARNINGS_KEPT`]), for front ends that missed the events.
    pub(crate) warnings: Mutex<std::collections::VecDeque<ClientEvent>>,
    /// Devices whose keys recently failed the check, with the reason and when.
    pub(crate) unverifiable: Mutex<HashMap<(String, String), (String, std::time::Instant)>>,
    pub(crate) crash: CrashSwitch,
    /// The data directory's lock (none in memory). Last, so that it outlives the store: the
    /// directory is free only once nothing of this client can write to it any more.
    pub(crate) dir_lock: Mutex<Option<std::fs::File>>,
}

/// A quicproquo client: one account on one device, with its encrypted store.
///
/// Cheap to clone. Background tasks (receiving, the outbox) run from a successful
/// [`login`](Self::login) or [`connect`](Self::connect) until [`logout`](Self::logout) or until
/// the last clone is dropped.
#[derive(Clone)]
pub struct QpqClient {
    pub(crate) inner: Arc<Inner>,
    pub(crate) tasks: Arc<Tasks>,
}

/// The background tasks; aborted when the last clone of the client goes away.
#[derive(Default)]
pub(crate) struct Tasks {
    pub(crate) handles: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Tasks {
    pub(crate) fn stop(&self) {
        for task in lock(&self.handles).drain(..) {
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

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The client's current connection generation (0 while it is reconnecting).
pub(crate) fn generation(rpc: &qrpc::Client) -> u64 {
    match &*rpc.state().borrow() {
        qrpc::ConnectionState::Connected { generation } => *generation,
        _ => 0,
    }
}

/// Errors a transfer survives by trying again (after resuming the session if need be).
pub(crate) fn retryable(status: &qrpc::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::Unauthenticated | Code::Aborted | Code::DeadlineExceeded
    )
}

pub(crate) fn futures_iter(
    chunks: Vec<v1::BlobChunk>,
) -> futures::stream::Iter<std::vec::IntoIter<v1::BlobChunk>> {
    futures::stream::iter(chunks)
}

pub(crate) fn backoff(limits: &ClientLimits, attempt: u32) -> Duration {
    let factor = 1u32 << attempt.min(16);
    (limits.initial_backoff * factor).min(limits.max_backoff)
}

impl QpqClient {
    /// Starts configuring a client.
    pub fn builder() -> QpqClientBuilder {
        QpqClientBuilder::default()
    }

    /// Stops the client and frees its data directory: the background tasks stop (a store
    /// transaction in progress finishes or rolls back first), and when this returns another
    /// client may open the directory. Close the last handle; the other clones of a closed
    /// client must not be used. Dropping the last handle stops the client as well, but frees
    /// the directory only once the stopped tasks are gone, a moment later.
    pub async fn close(self) {
        let handles: Vec<_> = lock(&self.tasks.handles).drain(..).collect();
        for task in &handles {
            task.abort();
        }
        for task in handles {
            // Aborted tasks end at their next await: no transaction is cut in the middle.
            let _ = task.await;
        }
        lock(&self.inner.dir_lock).take();
    }

    /// Subscribes to events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.inner.events.subscribe()
    }

    /// The connection state now: the last one reported with
    /// [`ClientEvent::ConnectionStateChanged`], so a view can show it from the start and
    /// follow the events from there ([`ConnectionState::Offline`] before the first attempt).
    pub fn connection_state(&self) -> ConnectionState {
        lock(&self.inner.connection).clone()
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
    /// for messages, without attachments and transport overhead). Only with the `testing`
    /// feature: a measurement for tests and benchmarks.
    #[cfg(feature = "testing")]
    pub fn sealed_bytes_sent(&self) -> u64 {
        self.inner
            .sealed_bytes_sent
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sealed envelopes this client has opened (a post-quantum decapsulation and a signature
    /// check each). Only with the `testing` feature: a measurement for tests of what receiving
    /// costs.
    #[cfg(feature = "testing")]
    pub fn envelopes_opened(&self) -> u64 {
        self.inner
            .envelopes_opened
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

    /// A message this device has; [`SdkError::NotFound`] otherwise.
    pub(crate) fn stored_message(&self, id: &MessageId) -> SdkResult<Message> {
        self.message(id)?
            .ok_or_else(|| SdkError::NotFound(format!("message {id}")))
    }

    /// `user/device` of the logged-in account, if any.
    pub fn whoami(&self) -> Option<String> {
        lock(&self.inner.keys).as_ref().map(|k| k.me.clone())
    }

    /// The key-transparency alarms and safety-number changes this client reported since it
    /// was built (the newest 100), oldest first. Events are broadcast once: a front end that
    /// subscribed late, or fell behind ([`tokio::sync::broadcast::error::RecvError::Lagged`]),
    /// reads here what it must still show.
    pub fn security_warnings(&self) -> Vec<ClientEvent> {
        lock(&self.inner.warnings).iter().cloned().collect()
    }

    pub(crate) fn emit(&self, event: ClientEvent) {
        let _ = self.inner.events.send(event);
    }

    pub(crate) async fn rpc(&self) -> SdkResult<qrpc::Client> {
        self.inner.rpc().await
    }
}

/// How many security warnings [`QpqClient::security_warnings`] keeps.
pub const WARNINGS_KEPT: usize = 100;

/// Adds `event` to the warnings kept, once; when they are [`WARNINGS_KEPT`] already, the
/// oldest safety-number change makes room (the oldest warning only when there is none): many
/// devices, real or invented by a server, must not push a key-transparency alarm out.
fn keep_warning(kept: &mut std::collections::VecDeque<ClientEvent>, event: ClientEvent) {
    if kept.contains(&event) {
        return;
    }
    if kept.len() >= WARNINGS_KEPT {
        let oldest = kept
            .iter()
            .position(|e| matches!(e, ClientEvent::SafetyNumberChanged { .. }))
            .unwrap_or(0);
        kept.remove(oldest);
    }
    kept.push_back(event);
}

impl Inner {
    /// Reports a key-transparency alarm or a safety-number change, and keeps it for
    /// [`QpqClient::security_warnings`].
    pub(crate) fn warn(&self, event: ClientEvent) {
        keep_warning(&mut lock(&self.warnings), event.clone());
        let _ = self.events.send(event);
    }

    /// Records the connection state and reports it (once per change: the same state again
    /// is not an event).
    pub(crate) fn set_connection(&self, state: ConnectionState) {
        let mut now = lock(&self.connection);
        if *now != state {
            *now = state.clone();
            drop(now);
            let _ = self.events.send(ClientEvent::ConnectionStateChanged(state));
        }
    }
}

/// Close codes with which the server ends a session (`device_revoked`, `expired`,
/// `logged_out`; docs/security-model.md).
const SESSION_END_CODES: [u64; 3] = [0x101, 0x102, 0x103];

/// QUIC keep-alive interval of the client's connection.
pub(crate) const KEEP_ALIVE: Duration = Duration::from_secs(1);
/// A connection that hears nothing for this long is lost.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(4);

/// Reports [`ConnectionState::Offline`] the moment the connection is lost (a stateless reset
/// from a restarted server, an idle timeout), before any call notices; the receive loop
/// reports the way back.
async fn watch_connection(inner: std::sync::Weak<Inner>, client: qrpc::Client) {
    let mut state = client.state();
    while state.changed().await.is_ok() {
        let lost = match &*state.borrow_and_update() {
            qrpc::ConnectionState::Reconnecting { .. } => Some("connection lost; reconnecting"),
            qrpc::ConnectionState::Closed { .. } => Some("connection closed"),
            _ => None,
        };
        let Some(inner) = inner.upgrade() else { return };
        let Some(lost) = lost else { continue };
        let disconnect = client.disconnects().borrow().clone();
        // The server ended the session (docs/security-model.md, close codes): revoked,
        // expired or logged out elsewhere. No reconnect brings it back.
        if let Some(d) = &disconnect
            && d.application_code
                .is_some_and(|c| SESSION_END_CODES.contains(&c))
        {
            inner.set_connection(ConnectionState::SessionEnded {
                reason: d.reason.clone(),
            });
            continue;
        }
        if !matches!(
            *lock(&inner.connection),
            ConnectionState::Offline { .. } | ConnectionState::SessionEnded { .. }
        ) {
            let reason = disconnect
                .as_ref()
                .map_or_else(|| lost.to_owned(), |d| format!("{lost} ({})", d.reason));
            inner.set_connection(ConnectionState::Offline { reason });
        }
    }
}

impl Inner {
    /// The connection, made on first use; the qrpc client reconnects by itself afterwards.
    /// Its push events are forwarded for as long as the client lives.
    pub(crate) async fn rpc(self: &Arc<Self>) -> SdkResult<qrpc::Client> {
        let mut rpc = self.rpc.lock().await;
        if let Some(client) = rpc.as_ref() {
            return Ok(client.clone());
        }
        let client = qrpc::Client::builder(self.server, self.tls.clone())
            .configure(|c| {
                c.alpn(vec![ALPN.to_vec()]);
                c.fallback_addresses(self.fallback_servers.clone());
                // A messenger wants to know soon that its server is gone: a ping every
                // second, and a connection silent for 4 s is lost (then the next node, or
                // the same one once it is back, is tried at once and every second after).
                c.keep_alive_interval(Some(KEEP_ALIVE));
                c.idle_timeout(IDLE_TIMEOUT);
                c.reconnect_mut()
                    .initial_backoff(Duration::from_millis(100))
                    .max_backoff(Duration::from_secs(1));
            })
            .connect()
            .await?;
        if let Some(push) = client.push_events() {
            tokio::spawn(forward_pushes(Arc::downgrade(self), push));
        }
        tokio::spawn(watch_connection(Arc::downgrade(self), client.clone()));
        *rpc = Some(client.clone());
        Ok(client)
    }

    /// Makes sure the connection holds the session, resuming it if the connection is new.
    pub(crate) async fn resume(self: &Arc<Self>) -> SdkResult<qrpc::Client> {
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
    pub(crate) fn session_bound(&self, rpc: &qrpc::Client) {
        self.session_generation
            .store(generation(rpc), std::sync::atomic::Ordering::Release);
    }

    /// The connection for a call that needs the session: a connection made since the
    /// session was last bound (a reconnect) gets it resumed first.
    pub(crate) async fn session(self: &Arc<Self>) -> SdkResult<qrpc::Client> {
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
}

#[cfg(test)]
mod tests {
    use super::{ClientEvent, WARNINGS_KEPT, keep_warning};

    #[test]
    fn changed_safety_numbers_cannot_push_an_alarm_out_of_the_warnings_kept() {
        let alarm = ClientEvent::KeyTransparencyAlarm {
            device: "carol/pc".into(),
            reason: "not in the log".into(),
        };
        let changed = |n: usize| ClientEvent::SafetyNumberChanged {
            user: "mallory".into(),
            device: format!("fake{n}"),
        };
        let mut kept = std::collections::VecDeque::new();
        keep_warning(&mut kept, alarm.clone());
        keep_warning(&mut kept, alarm.clone());
        assert_eq!(kept.len(), 1, "kept once");
        for n in 0..1000 {
            keep_warning(&mut kept, changed(n));
        }
        assert_eq!(kept.len(), WARNINGS_KEPT);
        assert_eq!(kept.front(), Some(&alarm));
        assert_eq!(kept.back(), Some(&changed(999)));
    }
}
