//! The receive path: fetching the queue, opening each envelope, processing it through MLS
//! and committing its effects with the cursor in one transaction before it is acknowledged;
//! messages that arrive ahead of their commit or invitation wait parked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use qpq_core::identity::IdentityPublic;
use qpq_core::mls::Incoming;
use qpq_proto::v1;
use qrpc::Code;

use crate::error::{SdkError, SdkResult};
use crate::events::{ClientEvent, ConnectionState};
use crate::model::{Conversation, ConversationId, ConversationKind, MessageId, user_of};
use crate::store::{Effect, Store, Tx, transact};

use crate::client::Inner;
use crate::client::Keys;
use crate::client::backoff;
use crate::client::limits::InvitationPolicy;
use crate::client::lock;
use crate::client::now_ms;
use crate::encryption::device_name;
use crate::encryption::split_name;
use crate::faults::CrashPoint;
use crate::faults::fail_point;
use crate::faults::simulated_crash;
use crate::send_queue::deliveries_for;
use crate::send_queue::group_transport;
use crate::sync::effects::content_effect;
use crate::sync::effects::conversation_id;
use crate::sync::effects::events_for;
use crate::sync::effects::member_users;
use crate::sync::effects::other_devices;

pub(crate) mod effects;

/// Envelopes are accepted up to this old: a device may be offline for a month.
pub(crate) const REPLAY_WINDOW_MS: u64 = 31 * 24 * 3600 * 1000;

/// Devices whose keys could not be checked against the log in this pass, with the reason: a
/// leaf naming one of them is refused instead of fetched again.
pub(crate) type Refused = HashMap<(String, String), String>;

/// What retrying parked messages did: their events, whether anything was queued, and the
/// devices whose keys the messages still parked wait for.
pub(crate) type Unparked = (Vec<ClientEvent>, bool, Vec<(String, String)>);

/// What applying a queue entry needs next.
pub(crate) enum Step {
    /// Applied (or refused and reported): go on.
    Done,
    /// Nothing was applied: these devices' keys must be checked against the log first.
    NeedKeys(Vec<(String, String)>),
    /// Applied; messages parked for this conversation wait for these devices' keys.
    UnparkAfter(ConversationId, Vec<(String, String)>),
}

/// How long a parked message waits for the commit or invitation before it.
pub(crate) const PARKED_FOR_MS: u64 = 7 * 24 * 3600 * 1000;

/// How long a device whose keys failed the check is refused without asking again.
pub(crate) const REFUSAL_MEMORY: Duration = Duration::from_secs(600);

/// How far beyond a group's epoch a message may be and still be parked: further is no
/// commit on its way but a sender filling the parking.
pub(crate) const MAX_EPOCHS_AHEAD: u64 = 64;

impl Inner {
    /// Opens every envelope of a fetched page (on all cores), once, without holding the
    /// keys: freshness is checked when each is applied.
    pub(crate) fn open_page(
        &self,
        envelopes: &[v1::Envelope],
    ) -> SdkResult<Vec<Result<Opened, String>>> {
        let hybrid = self.hybrid_key()?;
        Ok(self.open_with_key(&hybrid, envelopes))
    }

    /// The key envelopes are sealed to, to open them on other threads.
    pub(crate) fn hybrid_key(&self) -> SdkResult<Arc<qpq_core::kem::HybridSecretKey>> {
        let guard = lock(&self.keys);
        let keys = guard.as_ref().ok_or(SdkError::NotLoggedIn)?;
        Ok(Arc::clone(&keys.hybrid))
    }

    fn open_with_key(
        &self,
        hybrid: &qpq_core::kem::HybridSecretKey,
        envelopes: &[v1::Envelope],
    ) -> Vec<Result<Opened, String>> {
        self.envelopes_opened.fetch_add(
            u64::try_from(envelopes.len()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        open_all(hybrid, envelopes)
    }
}

/// An opened envelope: its sender, message id, timestamp and what it carries.
pub(crate) type Opened = (IdentityPublic, [u8; 16], u64, v1::Transport);

/// Refuses an opened envelope already seen (or too old): checked when it is applied, since a
/// page is opened before any of it is.
fn fresh(replay: &qpq_core::sealed::ReplayGuard, opened: &Opened, now: u64) -> Result<(), String> {
    replay
        .is_fresh(&opened.1, opened.2, now)
        .map_err(|e| format!("sealed envelope: {e}"))
}

/// Opens one envelope and decodes what it carries; whether it is fresh is the caller's check.
fn open_envelope(
    hybrid: &qpq_core::kem::HybridSecretKey,
    envelope: &v1::Envelope,
) -> Result<Opened, String> {
    // Whatever the bytes, opening ends in an answer: a panic in the cryptography below is
    // this envelope's failure, not the receiver's.
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        qpq_core::sealed::open_unrecorded(hybrid, &envelope.payload)
    }))
    .map_err(|_| "sealed envelope: opening failed".to_owned())?
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

/// Opens every envelope of a run on all cores: opening (a post-quantum decapsulation and a
/// signature check each) is most of the cost of receiving, and each envelope opens on its own.
fn open_all(
    hybrid: &qpq_core::kem::HybridSecretKey,
    envelopes: &[v1::Envelope],
) -> Vec<Result<Opened, String>> {
    crate::parallel::map(envelopes, 8, |e| open_envelope(hybrid, e))
        .into_iter()
        .map(|opened| opened.unwrap_or_else(|| Err("sealed envelope: opening failed".into())))
        .collect()
}

/// Why a queue entry was not applied.
pub(crate) enum Fail {
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

/// Why a run of entries was rolled back: the entry (its index in the run) that failed and
/// how. A failure of the transaction itself is the store's.
struct BatchFail(usize, Fail);

impl From<SdkError> for BatchFail {
    fn from(e: SdkError) -> Self {
        Self(0, Fail::Sdk(e))
    }
}

/// What committed entries leave to do once the keys are released: events to send, and
/// whether the outbox has something new.
#[derive(Default)]
struct Committed {
    events: Vec<ClientEvent>,
    queued: bool,
}

impl Committed {
    fn report(self, inner: &Inner) {
        for event in self.events {
            let _ = inner.events.send(event);
        }
        if self.queued {
            inner.outbox_wake.notify_one();
        }
    }
}

/// An effect committed with its queue entry, and what is needed to report it.
pub(crate) struct Applied {
    pub(crate) effect: Effect,
    pub(crate) before: Option<Conversation>,
    pub(crate) changed: bool,
    pub(crate) queued: bool,
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

/// Turns the server's ephemeral notifications (typing, sent as QUIC datagrams) into events.
/// Server events on the push stream need no forwarding: new messages are fetched by the
/// receive loop anyway.
pub(crate) async fn forward_pushes(inner: std::sync::Weak<Inner>, mut pushes: qrpc::PushEvents) {
    while let Some(push) = pushes.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        if v1::server_event_push::EVENT_TYPES.contains(&push.event_type()) {
            // A message of this user's could not be relayed to another server: read why.
            if let Ok(v1::server_event_push::Event::RelayFailed(_)) =
                push.decode::<v1::server_event_push::Event>()
            {
                inner.relay_failures_due.notify_one();
            }
            continue;
        }
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

/// Reads the relay failures the server announces (a push), for as long as the session's
/// tasks run.
pub(crate) async fn relay_failure_loop(strong: Arc<Inner>) {
    loop {
        strong.relay_failures_due.notified().await;
        if let Err(e) = strong.check_relay_failures().await {
            tracing::warn!(error = %e, "could not read relay failures");
        }
    }
}

/// Whether the server ended the session (the state last reported says so).
pub(crate) fn session_ended(inner: &Inner) -> bool {
    matches!(
        *crate::client::lock(&inner.connection),
        ConnectionState::SessionEnded { .. }
    )
}

/// Fetches, applies and acknowledges queue entries in order, for as long as the client lives.
pub(crate) async fn receive_loop(strong: Arc<Inner>) {
    let mut attempt = 0u32;
    loop {
        let limits = strong.limits.clone();
        let mut reached = false;
        match receive_session(&strong, &mut reached).await {
            Ok(()) => return,
            Err(SdkError::Server(status)) if status.code() == Code::Unauthenticated => {
                // The close code may have said why already (revoked, logged out elsewhere):
                // that reason stays.
                if !session_ended(&strong) {
                    strong.set_connection(ConnectionState::SessionEnded {
                        reason: status.message().to_owned(),
                    });
                }
                return;
            }
            Err(e) => {
                let reason = e.to_string();
                let crashed = simulated_crash(&e);
                // A session the server ended (the close code said so) stays ended.
                if session_ended(&strong) {
                    return;
                }
                strong.set_connection(ConnectionState::Offline { reason });
                if crashed {
                    return;
                }
                // A session that worked before it failed starts the backoff afresh: a
                // server that went away once a day is retried at once, not every 10 s.
                if reached {
                    attempt = 0;
                }
            }
        }
        tokio::time::sleep(backoff(&limits, attempt)).await;
        attempt = attempt.saturating_add(1);
    }
}

/// Queue entries asked for in one fetch.
const PAGE: u32 = 100;

/// The next page, fetched while the current one is processed; abandoned (and its call
/// cancelled) when dropped unused.
struct Prefetch {
    after: u64,
    task: Option<tokio::task::JoinHandle<Result<Page, qrpc::Status>>>,
}

/// A fetched page and, when it was opened ahead, what its envelopes hold.
type Page = (v1::FetchResponse, Option<Vec<Result<Opened, String>>>);

impl Prefetch {
    /// Fetches the page after `after` and opens it (on threads of its own), while the
    /// current page is processed.
    fn start(
        delivery: &v1::delivery_client::DeliveryClient,
        after: u64,
        inner: &Arc<Inner>,
    ) -> Self {
        let delivery = delivery.clone();
        let inner = Arc::clone(inner);
        // Taken now: while the current page is processed the keys are busy.
        let hybrid = inner.hybrid_key();
        let task = tokio::spawn(async move {
            let page = delivery
                .fetch_wait(&v1::FetchWaitRequest {
                    after_seq: after,
                    limit: PAGE,
                    timeout_ms: 0,
                })
                .await?;
            let Ok(hybrid) = hybrid else {
                return Ok((page, None));
            };
            tokio::task::spawn_blocking(move || {
                let opened = inner.open_with_key(&hybrid, &page.messages);
                (page, Some(opened))
            })
            .await
            .map_err(|e| qrpc::Status::internal(format!("prefetch: {e}")))
        });
        Self {
            after,
            task: Some(task),
        }
    }

    async fn take(mut self) -> Result<Page, qrpc::Status> {
        match self.task.take() {
            Some(task) => task
                .await
                .unwrap_or_else(|e| Err(qrpc::Status::internal(format!("prefetch: {e}")))),
            None => Err(qrpc::Status::internal("prefetch taken twice")),
        }
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// One session of the receive loop; `reached` is set once it is connected.
pub(crate) async fn receive_session(inner: &Arc<Inner>, reached: &mut bool) -> SdkResult<()> {
    let rpc = inner.session().await?;
    let delivery = v1::delivery_client::DeliveryClient::new(rpc);
    *reached = true;
    inner.set_connection(ConnectionState::CatchingUp);
    let mut caught_up = false;
    let mut resumed = false;
    let mut prefetched: Option<Prefetch> = None;
    inner.retry_parked().await?;
    // Failures reported while this device was away.
    inner.check_relay_failures().await?;
    loop {
        // Channel answers still owed (a call that failed, a session resumed since): before
        // every wait, so a server that went away and came back gets them.
        inner.answer_invitations().await;
        let cursor = inner.store.cursor()?;
        let request = v1::FetchWaitRequest {
            after_seq: cursor,
            limit: PAGE,
            timeout_ms: if caught_up {
                u32::try_from(inner.limits.fetch_wait.as_millis()).unwrap_or(u32::MAX)
            } else {
                0
            },
        };
        let fetched = match prefetched.take() {
            Some(next) if next.after == cursor => next.take().await,
            _ => delivery.fetch_wait(&request).await.map(|page| (page, None)),
        };
        let (page, opened) = match fetched {
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
            inner.set_connection(ConnectionState::Connected);
        }
        let last = page.messages.last().map(|e| e.seq);
        // Opened once (on all cores, or ahead with the fetch), whatever number of runs the
        // page takes.
        let opened = match opened {
            Some(opened) => opened,
            None => inner.open_page(&page.messages)?,
        };
        // A full page: more is likely waiting, fetched while this page is processed.
        if let Some(after) = last
            && page.messages.len() >= usize::try_from(PAGE).unwrap_or(usize::MAX)
        {
            prefetched = Some(Prefetch::start(&delivery, after, inner));
        }
        let mut at = 0;
        while let (Some(first), Some(first_opened)) = (page.messages.get(at), opened.get(at)) {
            let mut refused = inner.recently_refused();
            let rest = (
                page.messages.get(at..).unwrap_or_default(),
                opened.get(at..).unwrap_or_default(),
            );
            let applied = match inner.apply_batch(rest.0, rest.1, &refused)? {
                (0, _) => {
                    inner.apply_keys_checked(first, first_opened).await?;
                    1
                }
                (n, Step::UnparkAfter(conversation, devices)) => {
                    inner
                        .unpark_checked(conversation, devices, &mut refused)
                        .await?;
                    n
                }
                (n, _) => n,
            };
            at += applied;
            inner.answer_invitations().await;
            inner.leave_channels().await;
        }
        // Acknowledge only what is committed locally.
        if let Some(up_to_seq) = last {
            fail_point(&inner.crash, CrashPoint::BeforeAck)?;
            let ack = v1::AckRequest { up_to_seq };
            match delivery.ack(&ack).await {
                // As for fetching: the connection may have lost the session since (a server
                // going down or coming back); resume it once.
                Err(status) if status.code() == Code::Unauthenticated && !resumed => {
                    inner.resume().await?;
                    delivery.ack(&ack).await?;
                }
                other => {
                    other?;
                }
            }
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

impl Inner {
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
    ///
    /// `opened` is what [`open_page`](Self::open_page) made of the envelope (opened once,
    /// however often the entry is tried).
    pub(crate) fn apply(
        self: &Arc<Self>,
        envelope: &v1::Envelope,
        opened: &Result<Opened, String>,
        refused: &Refused,
    ) -> SdkResult<Step> {
        let seq = envelope.seq;
        let mut guard = lock(&self.keys);
        let keys = guard.as_mut().ok_or(SdkError::NotLoggedIn)?;
        let now = now_ms();
        let opened = opened
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|o| fresh(&keys.replay, o, now).map(|()| o));
        let result = match opened {
            Ok((sender, message_id, timestamp_ms, transport)) => {
                let (message_id, timestamp_ms) = (*message_id, *timestamp_ms);
                let keys_ref = &*keys;
                let result = transact(&*self.store, Some(&keys_ref.mls), |tx| {
                    let applied =
                        self.process(keys_ref, tx, seq, sender, transport.clone(), refused)?;
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
        let mut done = Committed::default();
        let step = self.committed(guard.as_ref(), applied, refused, &mut done)?;
        drop(guard);
        done.report(self);
        Ok(step)
    }

    /// What follows the commit of an applied entry: the store's bookkeeping of invitations,
    /// its events, and the parked messages its epoch change may release.
    fn committed(
        self: &Arc<Self>,
        keys: Option<&Keys>,
        applied: Applied,
        refused: &Refused,
        done: &mut Committed,
    ) -> SdkResult<Step> {
        done.queued |= applied.queued;
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
        done.events.extend(applied.events(&*self.store)?);
        let mut step = Step::Done;
        if let Some(conversation) = applied.epoch_changed() {
            let (more, more_queued, needed) = self.unpark(keys, conversation, refused)?;
            done.events.extend(more);
            done.queued |= more_queued;
            if !needed.is_empty() {
                step = Step::UnparkAfter(conversation, needed);
            }
        }
        Ok(step)
    }

    /// Applies a run of queue entries from the start of `envelopes` in one transaction: the
    /// MLS steps, their effects and the cursor commit (or roll back) together, as one entry's
    /// do in [`apply`](Self::apply), and the server is told only after. Returns how many
    /// entries were applied. The run stops after an entry that moves an epoch (parked
    /// messages may follow it) and before one that cannot simply be applied (it does not
    /// open, repeats an earlier one, needs keys checked, fails): 0 means the first entry is
    /// for [`apply_keys_checked`](Self::apply_keys_checked). With the count comes what the run's last
    /// entry needs next ([`Step::UnparkAfter`] or done).
    ///
    /// `opened` holds what [`open_page`](Self::open_page) made of each envelope: a page is
    /// opened once, however many runs it takes. Freshness is checked again here, so an entry
    /// repeating one committed earlier in the page ends the run.
    pub(crate) fn apply_batch(
        self: &Arc<Self>,
        envelopes: &[v1::Envelope],
        opened: &[Result<Opened, String>],
        refused: &Refused,
    ) -> SdkResult<(usize, Step)> {
        let mut guard = lock(&self.keys);
        let keys = guard.as_mut().ok_or(SdkError::NotLoggedIn)?;
        let now = now_ms();
        let mut ids = std::collections::HashSet::with_capacity(envelopes.len());
        let opened: Vec<(u64, &Opened)> = envelopes
            .iter()
            .zip(opened)
            .map_while(|(envelope, entry)| match entry {
                Ok(entry) if fresh(&keys.replay, entry, now).is_ok() && ids.insert(entry.1) => {
                    Some((envelope.seq, entry))
                }
                _ => None,
            })
            .collect();
        let mut run = opened.len();
        let keys_ref = &*keys;
        let applied = loop {
            if run == 0 {
                return Ok((0, Step::Done));
            }
            let result = transact(&*self.store, Some(&keys_ref.mls), |tx| {
                let mut applied = Vec::with_capacity(run);
                for (i, (seq, (sender, _, _, transport))) in opened[..run].iter().enumerate() {
                    let (seq, sender, transport) = (*seq, sender, transport);
                    let entry = self
                        .process(keys_ref, tx, seq, sender, transport.clone(), refused)
                        .map_err(|fail| BatchFail(i, fail))?;
                    fail_point(&self.crash, CrashPoint::AfterDecrypt)
                        .map_err(|e| BatchFail(i, Fail::Sdk(e)))?;
                    let last = entry.epoch_changed().is_some();
                    applied.push(entry);
                    if last {
                        break;
                    }
                }
                Ok::<_, BatchFail>(applied)
            });
            match result {
                Ok(applied) => break applied,
                // The store failed (or a test's simulated crash): nothing of the run is kept
                // and the session ends, as for one entry; the run is fetched again.
                Err(BatchFail(_, Fail::Sdk(e))) => return Err(e),
                // Everything was rolled back: again without the entry that cannot simply be
                // applied (and what follows it), which then goes on its own.
                Err(BatchFail(i, _)) => run = i,
            }
        };
        let count = applied.len();
        for (_, (_, message_id, timestamp_ms, _)) in &opened[..count] {
            let _ = keys.replay.check(*message_id, *timestamp_ms, now);
        }
        let mut done = Committed::default();
        let mut step = Step::Done;
        for entry in applied {
            // Only the run's last entry can move an epoch, so only it can leave parked
            // messages waiting for keys.
            step = self.committed(guard.as_ref(), entry, refused, &mut done)?;
        }
        drop(guard);
        done.report(self);
        Ok((count, step))
    }

    /// Retries the messages parked for `conversation` now that its epoch moved (or the
    /// conversation arrived), until a pass makes no progress (a parked commit may unlock
    /// more). Returns their events, whether anything was queued, and the devices whose keys
    /// parked messages wait for.
    pub(crate) fn unpark(
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

    /// What one transport does, worked out and committed inside the caller's transaction.
    /// `sender` is the identity the sealed envelope was signed by.
    pub(crate) fn process(
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
                let members = member_users(&group, keys);
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
    pub(crate) fn check_parking(
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
    pub(crate) fn process_group(
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
                let mut members = member_users(group, keys);
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
    pub(crate) fn commit_leave(
        &self,
        keys: &Keys,
        tx: &mut dyn Tx,
        group: &mut qpq_core::mls::Group,
        id: &ConversationId,
        leaving: &str,
    ) -> Result<Option<Vec<String>>, Fail> {
        // In the order of the full credential names (`qpq1:user@domain/device`): every
        // member's device picks the same committer, whichever servers the members are on.
        let mut raw = group.members();
        raw.sort();
        let names: Vec<(String, String)> = raw
            .iter()
            .filter_map(|n| split_name(n, keys.name.domain()))
            .collect();
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
        let recipients = other_devices(group, keys);
        let commit = group.remove_members(&keys.mls, &refs)?;
        let deliveries = deliveries_for(
            MessageId::random(),
            &recipients,
            &group_transport(id, commit),
        );
        tx.queue_outgoing(None, &deliveries)?;
        Ok(Some(member_users(group, keys)))
    }

    /// Leaves the server channels of conversations this device was removed from (best
    /// effort: a removed user is no member of the conversation whatever the channel says).
    pub(crate) async fn leave_channels(self: &Arc<Self>) {
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
    pub(crate) async fn answer_invitations(self: &Arc<Self>) {
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

    /// Applies one queue entry, first checking against the log the keys of every device it
    /// names that this client has not checked yet.
    pub(crate) async fn apply_keys_checked(
        self: &Arc<Self>,
        envelope: &v1::Envelope,
        opened: &Result<Opened, String>,
    ) -> SdkResult<()> {
        let mut refused = self.recently_refused();
        let mut checked = false;
        loop {
            match self.apply(envelope, opened, &refused)? {
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
    pub(crate) async fn unpark_checked(
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
    pub(crate) async fn retry_parked(self: &Arc<Self>) -> SdkResult<()> {
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
    pub(crate) fn recently_refused(&self) -> Refused {
        let mut cache = lock(&self.unverifiable);
        cache.retain(|_, (_, at)| at.elapsed() < REFUSAL_MEMORY);
        cache
            .iter()
            .map(|(device, (reason, _))| (device.clone(), reason.clone()))
            .collect()
    }
}
