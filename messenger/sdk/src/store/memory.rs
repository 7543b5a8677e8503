//! [`MemoryStore`]: everything in process memory, for tests and throwaway clients. It keeps
//! the same promises as the SQLCipher store (the conformance suite checks both), except that
//! nothing survives the process.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use qpq_core::mls::MlsMember;
use rusqlite::{Connection, OpenFlags};

use super::{Delivery, Effect, Parked, Store, StoredAccount, Tx, now_ms, state_from, state_name};
use crate::error::{SdkError, SdkResult};
use crate::model::{
    AttachmentInfo, Conversation, ConversationId, ConversationKind, Message, MessageId, SendState,
    user_of,
};

/// A store that lives in memory. MLS state is in an in-memory SQLite database (openmls's
/// storage is SQL), kept alive as long as the store.
pub(crate) struct MemoryStore {
    state: Mutex<State>,
    /// Keeps the shared in-memory MLS database alive; members open their own connections.
    _keeper: Mutex<Connection>,
    uri: String,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

#[derive(Clone)]
struct Account {
    stored: StoredAccount,
    keys_published: bool,
    key_packages: u64,
    cursor: u64,
}

#[derive(Clone)]
struct ConversationRow {
    kind: ConversationKind,
    name: String,
    created_at_ms: i64,
    channel: Option<Vec<u8>>,
    members: BTreeSet<String>,
}

#[derive(Clone)]
struct MessageRow {
    /// The message as stored (reactions and receipts live in their own maps).
    message: Message,
    /// The encoded attachment, with its key.
    attachment: Option<Vec<u8>>,
    accepted: bool,
    /// Insertion order (SQLite's rowid).
    rowid: u64,
}

/// A parked message: conversation, epoch, sender, MLS message, when it was parked.
type ParkedRow = (ConversationId, u64, Vec<u8>, Vec<u8>, i64);

#[derive(Clone)]
struct DeliveryRow {
    delivery: Delivery,
    attempts: u32,
    not_before_ms: u64,
}

#[derive(Clone, Default)]
struct State {
    account: Option<Account>,
    kt: Option<(Vec<u8>, Vec<u8>)>,
    peer_kt: HashMap<String, (Vec<u8>, Vec<u8>)>,
    relayed: HashMap<Vec<u8>, (MessageId, u64)>,
    relay_failures_seen: u64,
    conversations: BTreeMap<[u8; 16], ConversationRow>,
    messages: HashMap<[u8; 16], MessageRow>,
    next_rowid: u64,
    /// (message, user) -> emoji set.
    reactions: BTreeSet<([u8; 16], String, String)>,
    /// (message, user) -> read at.
    receipts: BTreeMap<([u8; 16], String), u64>,
    /// In insertion order; (item, user, device) is unique.
    deliveries: Vec<DeliveryRow>,
    /// seq -> (conversation, epoch, mls).
    parked: BTreeMap<u64, ParkedRow>,
    peer_identities: HashMap<(String, String), Vec<u8>>,
    /// Message requests: conversation -> inviter.
    requests: BTreeMap<[u8; 16], String>,
    /// Channels still to accept on the server: conversation -> channel.
    channel_answers: BTreeMap<[u8; 16], Vec<u8>>,
}

impl MemoryStore {
    /// A new, empty store.
    pub(crate) fn new() -> SdkResult<Self> {
        let name: [u8; 16] = rand::random();
        let hex: String = name.iter().map(|b| format!("{b:02x}")).collect();
        let uri = format!("file:qpq-memory-{hex}?mode=memory&cache=shared");
        let keeper = open_shared(&uri)?;
        Ok(Self {
            state: Mutex::new(State::default()),
            _keeper: Mutex::new(keeper),
            uri,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every change is made on a copy and swapped in whole: a panic leaves the old state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn open_shared(uri: &str) -> SdkResult<Connection> {
    let conn = Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_URI,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Whole-word tokens, case-folded (like SQLite FTS5's default tokenizer).
fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

impl State {
    fn message_in(&self, conversation: &ConversationId, id: &MessageId) -> Option<&MessageRow> {
        self.messages
            .get(&id.0)
            .filter(|m| m.message.conversation == *conversation)
    }

    fn load(&self, row: &MessageRow) -> Message {
        let id = row.message.id.0;
        let mut m = row.message.clone();
        m.reactions = self
            .reactions
            .iter()
            .filter(|(mid, _, _)| *mid == id)
            .map(|(_, u, e)| (u.clone(), e.clone()))
            .collect();
        m.read_by = self
            .receipts
            .keys()
            .filter(|(mid, _)| *mid == id)
            .map(|(_, u)| u.clone())
            .collect();
        m.attachment = if m.deleted {
            None
        } else {
            row.attachment
                .as_deref()
                .and_then(|bytes| AttachmentInfo::decode(bytes).ok())
        };
        if m.deleted {
            m.body.clear();
        }
        m
    }

    fn conversation(&self, id: &ConversationId) -> Option<Conversation> {
        self.conversations.get(&id.0).map(|c| Conversation {
            id: *id,
            kind: c.kind,
            name: c.name.clone(),
            members: c.members.iter().cloned().collect(),
        })
    }

    fn insert_message(&mut self, m: &Message) -> SdkResult<bool> {
        if self.messages.contains_key(&m.id.0) {
            return Ok(false);
        }
        if !self.conversations.contains_key(&m.conversation.0) {
            return Err(SdkError::Store(
                "FOREIGN KEY constraint failed: no such conversation".into(),
            ));
        }
        self.next_rowid += 1;
        let mut message = m.clone();
        message.reactions.clear();
        message.read_by.clear();
        let attachment = m.attachment.as_ref().map(AttachmentInfo::encode);
        self.messages.insert(
            m.id.0,
            MessageRow {
                message,
                attachment,
                accepted: false,
                rowid: self.next_rowid,
            },
        );
        Ok(true)
    }

    fn apply(&mut self, effect: &Effect) -> SdkResult<bool> {
        Ok(match effect {
            Effect::None | Effect::LeaveRequest { .. } => false,
            Effect::Request {
                conversation,
                channel,
                inviter,
            } => {
                self.apply(&Effect::Conversation(conversation.clone(), channel.clone()))?;
                self.requests.insert(conversation.id.0, inviter.clone());
                true
            }
            Effect::Park {
                seq,
                conversation,
                epoch,
                sender,
                mls,
            } => {
                self.parked.entry(*seq).or_insert_with(|| {
                    (*conversation, *epoch, sender.clone(), mls.clone(), now_ms())
                });
                false
            }
            Effect::Conversation(c, channel) => {
                let row = self
                    .conversations
                    .entry(c.id.0)
                    .or_insert_with(|| ConversationRow {
                        kind: c.kind,
                        name: c.name.clone(),
                        created_at_ms: now_ms(),
                        channel: None,
                        members: BTreeSet::new(),
                    });
                row.kind = c.kind;
                row.name.clone_from(&c.name);
                row.members = c.members.iter().cloned().collect();
                if let Some(channel) = channel {
                    row.channel = Some(channel.clone());
                }
                true
            }
            Effect::Members {
                conversation,
                members,
            } => {
                let row = self.conversations.get_mut(&conversation.0).ok_or_else(|| {
                    SdkError::Store("FOREIGN KEY constraint failed: no such conversation".into())
                })?;
                row.members = members.iter().cloned().collect();
                true
            }
            Effect::Message(m) => self.insert_message(m)?,
            Effect::Edit {
                conversation,
                target,
                author: by,
                body,
            } => match self.messages.get_mut(&target.0) {
                Some(row)
                    if row.message.conversation == *conversation
                        && user_of(&row.message.sender) == by
                        && !row.message.deleted =>
                {
                    row.message.body.clone_from(body);
                    row.message.edited = true;
                    true
                }
                _ => false,
            },
            Effect::Delete {
                conversation,
                target,
                author: by,
            } => match self.messages.get_mut(&target.0) {
                Some(row)
                    if row.message.conversation == *conversation
                        && user_of(&row.message.sender) == by
                        && !row.message.deleted =>
                {
                    row.message.body.clear();
                    row.attachment = None;
                    row.message.deleted = true;
                    true
                }
                _ => false,
            },
            Effect::Reaction {
                conversation,
                target,
                user,
                emoji,
                remove,
            } => {
                if self.message_in(conversation, target).is_none() {
                    false
                } else if *remove {
                    self.reactions
                        .remove(&(target.0, user.clone(), emoji.clone()))
                } else {
                    self.reactions
                        .insert((target.0, user.clone(), emoji.clone()))
                }
            }
            Effect::Receipt {
                conversation,
                targets,
                user,
                at_ms,
            } => {
                let mut changed = false;
                for target in targets {
                    if self.message_in(conversation, target).is_some()
                        && let std::collections::btree_map::Entry::Vacant(e) =
                            self.receipts.entry((target.0, user.clone()))
                    {
                        e.insert(*at_ms);
                        changed = true;
                    }
                }
                changed
            }
            Effect::Rename { conversation, name } => {
                match self.conversations.get_mut(&conversation.0) {
                    Some(row) => {
                        row.name.clone_from(name);
                        true
                    }
                    None => false,
                }
            }
        })
    }
}

/// A transaction: changes go to a copy of the state, swapped in when it succeeds.
struct MemoryTx<'a>(&'a mut State);

impl Tx for MemoryTx<'_> {
    fn commit_incoming(&mut self, seq: u64, effect: &Effect) -> SdkResult<bool> {
        let changed = self.0.apply(effect)?;
        if let Some(account) = &mut self.0.account {
            account.cursor = account.cursor.max(seq);
        }
        Ok(changed)
    }

    fn apply(&mut self, effect: &Effect) -> SdkResult<bool> {
        self.0.apply(effect)
    }

    fn queue_outgoing(&mut self, echo: Option<&Message>, deliveries: &[Delivery]) -> SdkResult<()> {
        if let Some(m) = echo {
            self.0.insert_message(m)?;
        }
        for d in deliveries {
            let exists = self.0.deliveries.iter().any(|r| {
                r.delivery.item == d.item
                    && r.delivery.user == d.user
                    && r.delivery.device == d.device
            });
            if !exists {
                self.0.deliveries.push(DeliveryRow {
                    delivery: d.clone(),
                    attempts: 0,
                    not_before_ms: 0,
                });
            }
        }
        Ok(())
    }

    fn parked_count(&mut self, conversation: &ConversationId) -> SdkResult<u64> {
        Ok(self
            .0
            .parked
            .values()
            .filter(|(c, ..)| c == conversation)
            .count() as u64)
    }

    fn parked_from(&mut self, sender: &[u8]) -> SdkResult<u64> {
        Ok(self
            .0
            .parked
            .values()
            .filter(|(_, _, s, ..)| s == sender)
            .count() as u64)
    }

    fn parked_total(&mut self) -> SdkResult<u64> {
        Ok(self.0.parked.len() as u64)
    }

    fn channel_user(&mut self, channel: &[u8]) -> SdkResult<Option<ConversationId>> {
        Ok(self
            .0
            .conversations
            .iter()
            .find(|(_, c)| c.channel.as_deref() == Some(channel))
            .map(|(id, _)| ConversationId(*id)))
    }

    fn channel_of(&mut self, id: &ConversationId) -> SdkResult<Option<Vec<u8>>> {
        Ok(self
            .0
            .conversations
            .get(&id.0)
            .and_then(|c| c.channel.clone()))
    }

    fn in_request(&mut self, id: &ConversationId) -> SdkResult<bool> {
        Ok(self.0.requests.contains_key(&id.0))
    }

    fn knows(&mut self, user: &str, me: &str) -> SdkResult<bool> {
        Ok(self.0.conversations.iter().any(|(id, c)| {
            !self.0.requests.contains_key(id) && c.members.contains(user) && c.members.contains(me)
        }))
    }

    fn unpark(&mut self, seq: u64) -> SdkResult<()> {
        self.0.parked.remove(&seq);
        Ok(())
    }

    fn conversation(&mut self, id: &ConversationId) -> SdkResult<Option<Conversation>> {
        Ok(self.0.conversation(id))
    }

    fn identity(&mut self, user: &str, device: &str) -> SdkResult<Option<Vec<u8>>> {
        Ok(self
            .0
            .peer_identities
            .get(&(user.to_owned(), device.to_owned()))
            .cloned())
    }
}

impl Store for MemoryStore {
    fn mls_connection(&self) -> SdkResult<Connection> {
        open_shared(&self.uri)
    }

    fn transact_dyn(
        &self,
        mls: Option<&MlsMember>,
        f: &mut dyn FnMut(&mut dyn Tx) -> SdkResult<()>,
    ) -> SdkResult<()> {
        let mut state = self.lock();
        let mut staged = state.clone();
        match mls {
            Some(mls) => mls.atomically(|_| f(&mut MemoryTx(&mut staged)))?,
            None => f(&mut MemoryTx(&mut staged))?,
        }
        *state = staged;
        Ok(())
    }

    fn account(&self) -> SdkResult<Option<StoredAccount>> {
        Ok(self.lock().account.as_ref().map(|a| a.stored.clone()))
    }

    fn create_account(&self, a: &StoredAccount) -> SdkResult<()> {
        let mut state = self.lock();
        if state.account.is_some() {
            return Err(SdkError::Store(
                "UNIQUE constraint failed: the store has an account".into(),
            ));
        }
        let mut stored = a.clone();
        stored.session_token = None;
        state.account = Some(Account {
            stored,
            keys_published: false,
            key_packages: 0,
            cursor: 0,
        });
        Ok(())
    }

    fn set_session_token(&self, token: Option<&[u8]>) -> SdkResult<()> {
        if let Some(a) = &mut self.lock().account {
            a.stored.session_token = token.map(|t| zeroize::Zeroizing::new(t.to_vec()));
        }
        Ok(())
    }

    fn keys_published(&self) -> SdkResult<bool> {
        Ok(self
            .lock()
            .account
            .as_ref()
            .is_some_and(|a| a.keys_published))
    }

    fn set_keys_published(&self) -> SdkResult<()> {
        if let Some(a) = &mut self.lock().account {
            a.keys_published = true;
        }
        Ok(())
    }

    fn key_packages(&self) -> SdkResult<u64> {
        Ok(self.lock().account.as_ref().map_or(0, |a| a.key_packages))
    }

    fn set_key_packages(&self, n: u64) -> SdkResult<()> {
        if let Some(a) = &mut self.lock().account {
            a.key_packages = n;
        }
        Ok(())
    }

    fn key_package_used(&self) -> SdkResult<()> {
        if let Some(a) = &mut self.lock().account {
            a.key_packages = a.key_packages.saturating_sub(1);
        }
        Ok(())
    }

    fn kt(&self) -> SdkResult<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.lock().kt.clone())
    }

    fn set_kt(&self, log_key: &[u8], head: &[u8]) -> SdkResult<()> {
        let mut state = self.lock();
        let pinned = state
            .kt
            .as_ref()
            .map_or_else(|| log_key.to_vec(), |(k, _)| k.clone());
        state.kt = Some((pinned, head.to_vec()));
        Ok(())
    }

    fn peer_kt(&self, domain: &str) -> SdkResult<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self.lock().peer_kt.get(domain).cloned())
    }

    fn set_peer_kt(&self, domain: &str, log_key: &[u8], head: &[u8]) -> SdkResult<()> {
        let mut state = self.lock();
        let entry = state
            .peer_kt
            .entry(domain.to_owned())
            .or_insert_with(|| (log_key.to_vec(), Vec::new()));
        entry.1 = head.to_vec();
        Ok(())
    }

    fn channel(&self, conversation: &ConversationId) -> SdkResult<Option<Vec<u8>>> {
        Ok(self
            .lock()
            .conversations
            .get(&conversation.0)
            .and_then(|c| c.channel.clone()))
    }

    fn conversation_of_channel(&self, channel: &[u8]) -> SdkResult<Option<ConversationId>> {
        Ok(self
            .lock()
            .conversations
            .iter()
            .find(|(_, c)| c.channel.as_deref() == Some(channel))
            .map(|(id, _)| ConversationId(*id)))
    }

    fn cursor(&self) -> SdkResult<u64> {
        Ok(self.lock().account.as_ref().map_or(0, |a| a.cursor))
    }

    fn attachment(&self, id: &MessageId) -> SdkResult<Option<Vec<u8>>> {
        Ok(self
            .lock()
            .messages
            .get(&id.0)
            .filter(|m| !m.message.deleted)
            .and_then(|m| m.attachment.clone()))
    }

    fn search(&self, query: &str, limit: u32) -> SdkResult<Vec<Message>> {
        let words: Vec<Vec<String>> = query
            .split_whitespace()
            .map(tokens)
            .filter(|t| !t.is_empty())
            .collect();
        if words.is_empty() {
            return Ok(Vec::new());
        }
        let state = self.lock();
        let mut hits: Vec<&MessageRow> = state
            .messages
            .values()
            .filter(|m| !m.message.deleted)
            .filter(|m| {
                let body = tokens(&m.message.body);
                words
                    .iter()
                    .all(|phrase| body.windows(phrase.len()).any(|w| w == phrase.as_slice()))
            })
            .collect();
        hits.sort_by_key(|m| std::cmp::Reverse(m.rowid));
        Ok(hits
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|m| state.load(m))
            .collect())
    }

    fn message(&self, id: &MessageId) -> SdkResult<Option<Message>> {
        let state = self.lock();
        Ok(state.messages.get(&id.0).map(|m| state.load(m)))
    }

    fn conversations(&self) -> SdkResult<Vec<Conversation>> {
        let state = self.lock();
        let mut rows: Vec<(&[u8; 16], &ConversationRow)> = state.conversations.iter().collect();
        rows.sort_by(|a, b| b.1.created_at_ms.cmp(&a.1.created_at_ms).then(a.0.cmp(b.0)));
        Ok(rows
            .into_iter()
            .filter(|(id, _)| !state.requests.contains_key(*id))
            .filter_map(|(id, _)| state.conversation(&ConversationId(*id)))
            .collect())
    }

    fn conversation(&self, id: &ConversationId) -> SdkResult<Option<Conversation>> {
        Ok(self.lock().conversation(id))
    }

    fn requests(&self) -> SdkResult<Vec<(Conversation, String)>> {
        let state = self.lock();
        let mut out: Vec<(i64, Conversation, String)> = state
            .requests
            .iter()
            .filter_map(|(id, inviter)| {
                let row = state.conversations.get(id)?;
                let c = state.conversation(&ConversationId(*id))?;
                Some((row.created_at_ms, c, inviter.clone()))
            })
            .collect();
        out.sort_by_key(|entry| std::cmp::Reverse(entry.0));
        Ok(out.into_iter().map(|(_, c, i)| (c, i)).collect())
    }

    fn channel_to_accept(&self, id: &ConversationId, channel: &[u8]) -> SdkResult<()> {
        self.lock().channel_answers.insert(id.0, channel.to_vec());
        Ok(())
    }

    fn channels_to_accept(&self) -> SdkResult<Vec<(ConversationId, Vec<u8>)>> {
        Ok(self
            .lock()
            .channel_answers
            .iter()
            .map(|(id, c)| (ConversationId(*id), c.clone()))
            .collect())
    }

    fn channel_accepted(&self, id: &ConversationId) -> SdkResult<()> {
        self.lock().channel_answers.remove(&id.0);
        Ok(())
    }

    fn is_request(&self, id: &ConversationId) -> SdkResult<bool> {
        Ok(self.lock().requests.contains_key(&id.0))
    }

    fn accept_request(&self, id: &ConversationId) -> SdkResult<bool> {
        Ok(self.lock().requests.remove(&id.0).is_some())
    }

    fn decline_request(&self, id: &ConversationId) -> SdkResult<bool> {
        let mut state = self.lock();
        if state.requests.remove(&id.0).is_none() {
            return Ok(false);
        }
        state.conversations.remove(&id.0);
        state.messages.retain(|_, m| m.message.conversation != *id);
        Ok(true)
    }

    fn messages(
        &self,
        conversation: &ConversationId,
        before: Option<&MessageId>,
        limit: u32,
    ) -> SdkResult<Vec<Message>> {
        let state = self.lock();
        let order = |m: &MessageRow| (m.message.received_at_ms, m.rowid);
        let bound = before.and_then(|b| state.messages.get(&b.0)).map(order);
        if before.is_some() && bound.is_none() {
            return Ok(Vec::new());
        }
        let mut rows: Vec<&MessageRow> = state
            .messages
            .values()
            .filter(|m| m.message.conversation == *conversation)
            .filter(|m| bound.is_none_or(|b| order(m) < b))
            .collect();
        rows.sort_by_key(|m| std::cmp::Reverse(order(m)));
        rows.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        rows.reverse();
        Ok(rows.into_iter().map(|m| state.load(m)).collect())
    }

    fn pending_deliveries(&self, limit: u32, now_ms: u64) -> SdkResult<Vec<Delivery>> {
        let state = self.lock();
        // A device with a delivery waiting out its delay gets nothing after it meanwhile.
        let mut held: BTreeSet<(String, String)> = BTreeSet::new();
        let due: Vec<&DeliveryRow> = state
            .deliveries
            .iter()
            .filter(|r| {
                let device = (r.delivery.user.clone(), r.delivery.device.clone());
                if held.contains(&device) {
                    return false;
                }
                if r.not_before_ms > now_ms {
                    held.insert(device);
                    return false;
                }
                true
            })
            .collect();
        Ok(due
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|r| r.delivery.clone())
            .collect())
    }

    fn claim(&self, item: &MessageId) -> SdkResult<(bool, Option<ConversationId>)> {
        let mut state = self.lock();
        let mut changed = None;
        if let Some(row) = state.messages.get_mut(&item.0)
            && row.message.outgoing
            && matches!(
                row.message.state,
                SendState::Queued
                    | SendState::Failed {
                        recoverable: true,
                        ..
                    }
            )
        {
            row.message.state = SendState::Sending;
            changed = Some(row.message.conversation);
        }
        let pending = state.deliveries.iter().any(|r| r.delivery.item == *item);
        Ok((pending, changed))
    }

    fn cancel(&self, id: &MessageId) -> SdkResult<ConversationId> {
        let mut state = self.lock();
        let row = state
            .messages
            .get(&id.0)
            .filter(|m| m.message.outgoing)
            .ok_or_else(|| SdkError::NotFound(format!("outgoing message {id}")))?;
        let (name, _) = state_name(&row.message.state);
        if row.accepted || !matches!(name, "queued" | "retrying") {
            return Err(SdkError::InvalidArgument(format!(
                "message {id} is already on its way ({name}); delete it instead"
            )));
        }
        let conversation = row.message.conversation;
        state.deliveries.retain(|r| r.delivery.item != *id);
        state.reactions.retain(|(m, _, _)| *m != id.0);
        state.receipts.retain(|(m, _), _| *m != id.0);
        state.messages.remove(&id.0);
        Ok(conversation)
    }

    fn delivery_done(
        &self,
        item: &MessageId,
        user: &str,
        device: &str,
        accepted: bool,
    ) -> SdkResult<bool> {
        let mut state = self.lock();
        state.deliveries.retain(|r| {
            !(r.delivery.item == *item && r.delivery.user == user && r.delivery.device == device)
        });
        if accepted
            && let Some(row) = state.messages.get_mut(&item.0)
            && row.message.outgoing
        {
            row.accepted = true;
        }
        Ok(!state.deliveries.iter().any(|r| r.delivery.item == *item))
    }

    fn delivery_failed(
        &self,
        item: &MessageId,
        user: &str,
        device: &str,
        retry_at: &dyn Fn(u32) -> u64,
    ) -> SdkResult<u32> {
        let mut attempts = 0;
        for r in &mut self.lock().deliveries {
            if r.delivery.item == *item && r.delivery.user == user && r.delivery.device == device {
                r.attempts = r.attempts.saturating_add(1);
                r.not_before_ms = retry_at(r.attempts);
                attempts = r.attempts;
            }
        }
        Ok(attempts)
    }

    fn note_relayed(&self, delivery_id: &[u8], item: &MessageId, now_ms: u64) -> SdkResult<()> {
        const KEPT_MS: u64 = 30 * 24 * 3600 * 1000;
        let mut state = self.lock();
        state
            .relayed
            .retain(|_, (_, at)| *at >= now_ms.saturating_sub(KEPT_MS));
        state.relayed.insert(delivery_id.to_vec(), (*item, now_ms));
        Ok(())
    }

    fn relayed_item(&self, delivery_id: &[u8]) -> SdkResult<Option<MessageId>> {
        Ok(self.lock().relayed.get(delivery_id).map(|(item, _)| *item))
    }

    fn relay_failures_seen(&self) -> SdkResult<u64> {
        Ok(self.lock().relay_failures_seen)
    }

    fn set_relay_failures_seen(&self, id: u64) -> SdkResult<()> {
        let mut state = self.lock();
        state.relay_failures_seen = state.relay_failures_seen.max(id);
        Ok(())
    }

    fn mark_accepted(&self, item: &MessageId) -> SdkResult<()> {
        if let Some(row) = self.lock().messages.get_mut(&item.0)
            && row.message.outgoing
        {
            row.accepted = true;
        }
        Ok(())
    }

    fn outbox_len(&self) -> SdkResult<u64> {
        let state = self.lock();
        let items: BTreeSet<[u8; 16]> =
            state.deliveries.iter().map(|r| r.delivery.item.0).collect();
        Ok(items.len() as u64)
    }

    fn set_state(&self, id: &MessageId, state: &SendState) -> SdkResult<Option<ConversationId>> {
        let (name, reason) = state_name(state);
        let mut all = self.lock();
        let Some(row) = all.messages.get_mut(&id.0).filter(|m| m.message.outgoing) else {
            return Ok(None);
        };
        let (current, _) = state_name(&row.message.state);
        if current == "failed"
            || current == name
            || (current == "sent" && matches!(name, "sending" | "retrying"))
        {
            return Ok(None);
        }
        row.message.state = state_from(name, reason);
        Ok(Some(row.message.conversation))
    }

    fn note_identity(&self, user: &str, device: &str, identity: &[u8]) -> SdkResult<bool> {
        let mut state = self.lock();
        let key = (user.to_owned(), device.to_owned());
        let changed = match state.peer_identities.get(&key) {
            Some(known) => known != identity,
            None => state.peer_identities.keys().any(|(u, _)| u == user),
        };
        state.peer_identities.insert(key, identity.to_vec());
        Ok(changed)
    }

    fn parked(&self, conversation: &ConversationId) -> SdkResult<Vec<Parked>> {
        let state = self.lock();
        let mut out: Vec<(u64, Parked)> = state
            .parked
            .iter()
            .filter(|(_, (c, ..))| c == conversation)
            .map(|(seq, (c, epoch, sender, mls, _))| {
                (
                    *epoch,
                    Parked {
                        seq: *seq,
                        conversation: *c,
                        sender: sender.clone(),
                        mls: mls.clone(),
                    },
                )
            })
            .collect();
        out.sort_by_key(|(epoch, p)| (*epoch, p.seq));
        Ok(out.into_iter().map(|(_, p)| p).collect())
    }

    fn unpark(&self, seq: u64) -> SdkResult<()> {
        self.lock().parked.remove(&seq);
        Ok(())
    }

    fn expire_parked(&self, before_ms: u64) -> SdkResult<Vec<u64>> {
        let before = i64::try_from(before_ms).unwrap_or(i64::MAX);
        let mut state = self.lock();
        let gone: Vec<u64> = state
            .parked
            .iter()
            .filter(|(_, (.., at))| *at < before)
            .map(|(seq, _)| *seq)
            .collect();
        for seq in &gone {
            state.parked.remove(seq);
        }
        Ok(gone)
    }

    fn parked_conversations(&self) -> SdkResult<Vec<ConversationId>> {
        let state = self.lock();
        let set: BTreeSet<[u8; 16]> = state.parked.values().map(|(c, ..)| c.0).collect();
        Ok(set.into_iter().map(ConversationId).collect())
    }
}
