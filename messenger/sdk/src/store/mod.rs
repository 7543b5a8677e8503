//! The client's local store, behind the [`Store`] trait: what the account keeps (keys,
//! conversations, messages, the outbox, the receive cursor, the key-transparency monitor) and
//! where its MLS state lives.
//!
//! Two implementations run the same conformance suite (`conformance.rs`):
//! - [`SqlStore`]: one SQLCipher database per account and device, with numbered migrations
//!   and WAL; nothing is written to disk in plaintext. The key is a raw 32-byte key or a
//!   passphrase stretched with Argon2id under a random per-store salt (kept beside the
//!   database in `store.salt`; a salt is not secret). The MLS state is in the same database.
//! - [`MemoryStore`]: everything in memory (tests, throwaway bots); gone with the process.
//!
//! Work that must happen together — the MLS step that decrypted or encrypted a message and the
//! store changes that follow from it — runs through [`transact`]: all of it commits or none.

mod memory;
pub(crate) mod sql;

#[cfg(test)]
mod conformance;

pub(crate) use memory::MemoryStore;
pub(crate) use sql::SqlStore;

use qpq_core::mls::MlsMember;
use rusqlite::Connection;
use zeroize::Zeroizing;

use crate::error::{SdkError, SdkResult};
use crate::model::{Conversation, ConversationId, Message, MessageId, SendState};

/// How the local store is encrypted.
pub enum StoreKey {
    /// A passphrase, stretched with Argon2id and the store's salt.
    Passphrase(Zeroizing<String>),
    /// A raw 32-byte key (from a keyring, say).
    Raw(Zeroizing<[u8; 32]>),
}

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Passphrase(_) => f.write_str("StoreKey::Passphrase(..)"),
            Self::Raw(_) => f.write_str("StoreKey::Raw(..)"),
        }
    }
}

/// A change to apply to the store, from an incoming message or a local action.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    /// Nothing to store (the cursor still advances).
    None,
    /// A conversation joined or created, with its server channel.
    Conversation(Conversation, Option<Vec<u8>>),
    /// A conversation's member users changed.
    Members {
        conversation: ConversationId,
        members: Vec<String>,
    },
    /// A new message.
    Message(Box<Message>),
    /// A message's author changed its text.
    Edit {
        conversation: ConversationId,
        target: MessageId,
        author: String,
        body: String,
    },
    /// A message's author withdrew it.
    Delete {
        conversation: ConversationId,
        target: MessageId,
        author: String,
    },
    /// A reaction added or removed.
    Reaction {
        conversation: ConversationId,
        target: MessageId,
        user: String,
        emoji: String,
        remove: bool,
    },
    /// Messages read by a user.
    Receipt {
        conversation: ConversationId,
        targets: Vec<MessageId>,
        user: String,
        at_ms: u64,
    },
    /// A conversation renamed.
    Rename {
        conversation: ConversationId,
        name: String,
    },
    /// A group message from an epoch not reached yet: kept until the commit before it comes.
    Park {
        seq: u64,
        conversation: ConversationId,
        epoch: u64,
        /// The identity that sealed it (checked again against the MLS sender when it is
        /// processed; the parking budget is counted per sender).
        sender: Vec<u8>,
        mls: Vec<u8>,
    },
    /// A user asked to leave a conversation (the commit removing it follows).
    LeaveRequest { user: String },
    /// An invitation from a user this one has no conversation with: the conversation is
    /// kept as a message request until the user answers.
    Request {
        conversation: Conversation,
        channel: Option<Vec<u8>>,
        inviter: String,
    },
}

/// A parked group message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Parked {
    pub(crate) seq: u64,
    pub(crate) conversation: ConversationId,
    pub(crate) sender: Vec<u8>,
    pub(crate) mls: Vec<u8>,
}

/// The account stored on this device.
#[derive(Clone)]
pub(crate) struct StoredAccount {
    pub user: String,
    pub device: String,
    pub identity_secret: Zeroizing<[u8; 32]>,
    pub hybrid_seed: Zeroizing<[u8; 32]>,
    pub delivery_token: Zeroizing<[u8; 32]>,
    pub session_token: Option<Zeroizing<Vec<u8>>>,
}

/// One pending delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub item: MessageId,
    pub user: String,
    pub device: String,
    pub message_id: [u8; 16],
    pub transport: Vec<u8>,
}

fn state_from(state: &str, reason: String) -> SendState {
    match state {
        "queued" => SendState::Queued,
        "sending" => SendState::Sending,
        "sent" => SendState::Sent,
        "retrying" => SendState::Failed {
            recoverable: true,
            reason,
        },
        "failed" => SendState::Failed {
            recoverable: false,
            reason,
        },
        _ => SendState::Received,
    }
}

fn state_name(state: &SendState) -> (&'static str, String) {
    match state {
        SendState::Queued => ("queued", String::new()),
        SendState::Sending => ("sending", String::new()),
        SendState::Sent => ("sent", String::new()),
        SendState::Failed {
            recoverable: true,
            reason,
        } => ("retrying", reason.clone()),
        SendState::Failed { reason, .. } => ("failed", reason.clone()),
        SendState::Received => ("received", String::new()),
    }
}

/// Everything a client keeps. Methods are single atomic steps; work that spans several
/// (with MLS) goes through [`transact`].
pub(crate) trait Store: Send + Sync {
    /// A connection to the database the MLS state lives in (one per [`MlsMember`]).
    fn mls_connection(&self) -> SdkResult<Connection>;
    /// Runs `f` once as one transaction, together with the MLS work done through `mls` while
    /// it runs: on `Err` nothing of either is kept. Use [`transact`].
    fn transact_dyn(
        &self,
        mls: Option<&MlsMember>,
        f: &mut dyn FnMut(&mut dyn Tx) -> SdkResult<()>,
    ) -> SdkResult<()>;

    /// The account on this device, if one logged in.
    fn account(&self) -> SdkResult<Option<StoredAccount>>;
    /// Records the account (once).
    fn create_account(&self, a: &StoredAccount) -> SdkResult<()>;
    /// Sets or clears the session token.
    fn set_session_token(&self, token: Option<&[u8]>) -> SdkResult<()>;
    /// Whether the key bundle was published.
    fn keys_published(&self) -> SdkResult<bool>;
    /// Records that the key bundle was published.
    fn set_keys_published(&self) -> SdkResult<()>;
    /// One-time key packages believed to be on the server.
    fn key_packages(&self) -> SdkResult<u64>;
    /// Sets that count (the server's answer to an upload).
    fn set_key_packages(&self, n: u64) -> SdkResult<()>;
    /// Counts one key package as used (an invitation was accepted).
    fn key_package_used(&self) -> SdkResult<()>;
    /// The pinned key-transparency log key and the last verified head.
    fn kt(&self) -> SdkResult<Option<(Vec<u8>, Vec<u8>)>>;
    /// Records a newly verified head (and pins the log key on first use).
    fn set_kt(&self, log_key: &[u8], head: &[u8]) -> SdkResult<()>;
    /// The pinned log key and last verified head of another server's log (`domain`).
    fn peer_kt(&self, domain: &str) -> SdkResult<Option<(Vec<u8>, Vec<u8>)>>;
    /// Records a newly verified head of `domain`'s log (pinning its key on first use: a
    /// stored key is never replaced).
    fn set_peer_kt(&self, domain: &str, log_key: &[u8], head: &[u8]) -> SdkResult<()>;
    /// The server channel of a conversation, if it has one.
    fn channel(&self, conversation: &ConversationId) -> SdkResult<Option<Vec<u8>>>;
    /// The conversation using a server channel.
    fn conversation_of_channel(&self, channel: &[u8]) -> SdkResult<Option<ConversationId>>;
    /// The last queue sequence number whose effects are committed here.
    fn cursor(&self) -> SdkResult<u64>;
    /// The encoded attachment (with its key) of a message that was not deleted.
    fn attachment(&self, id: &MessageId) -> SdkResult<Option<Vec<u8>>>;
    /// Messages whose text contains every word of `query` (whole words, case-insensitive),
    /// at most `limit`. Deleted messages are not found.
    fn search(&self, query: &str, limit: u32) -> SdkResult<Vec<Message>>;
    /// One message.
    fn message(&self, id: &MessageId) -> SdkResult<Option<Message>>;
    /// Every conversation, newest first.
    fn conversations(&self) -> SdkResult<Vec<Conversation>>;
    /// One conversation.
    fn conversation(&self, id: &ConversationId) -> SdkResult<Option<Conversation>>;
    /// The newest `limit` messages of a conversation older than `before` (all when `None`),
    /// oldest first.
    fn messages(
        &self,
        conversation: &ConversationId,
        before: Option<&MessageId>,
        limit: u32,
    ) -> SdkResult<Vec<Message>>;
    /// Deliveries due at `now_ms` (not waiting out a retry delay), oldest items first.
    fn pending_deliveries(&self, limit: u32, now_ms: u64) -> SdkResult<Vec<Delivery>>;
    /// Claims an outbox item for one attempt: a queued (or retrying) message moves to
    /// `Sending`, after which it can no longer be cancelled. Returns whether the item still
    /// has deliveries to make and, if its state changed, its conversation.
    fn claim(&self, item: &MessageId) -> SdkResult<(bool, Option<ConversationId>)>;
    /// Withdraws an outgoing message no device has received and the outbox has not claimed.
    fn cancel(&self, id: &MessageId) -> SdkResult<ConversationId>;
    /// Records that a delivery reached the server (`accepted`) or can never be made; returns
    /// whether its item has no delivery left.
    fn delivery_done(
        &self,
        item: &MessageId,
        user: &str,
        device: &str,
        accepted: bool,
    ) -> SdkResult<bool>;
    /// Counts one more failed attempt on a delivery and holds it back until
    /// `retry_at(attempts)` (milliseconds since the Unix epoch), so deliveries behind it go
    /// first. Returns the attempts made so far.
    fn delivery_failed(
        &self,
        item: &MessageId,
        user: &str,
        device: &str,
        retry_at: &dyn Fn(u32) -> u64,
    ) -> SdkResult<u32>;
    /// Marks an outgoing item as possibly taken by a queue (a call whose outcome is unknown
    /// carried it): it can no longer be cancelled.
    fn mark_accepted(&self, item: &MessageId) -> SdkResult<()>;
    /// Outgoing items not yet fully delivered.
    fn outbox_len(&self) -> SdkResult<u64>;
    /// Records that the delivery with wire id `delivery_id` of `item` went to a user of
    /// another server (the home server relays it and may report it failed later). Entries
    /// older than 30 days (`now_ms` decides) are forgotten.
    fn note_relayed(&self, delivery_id: &[u8], item: &MessageId, now_ms: u64) -> SdkResult<()>;
    /// The item whose relayed delivery had wire id `delivery_id`.
    fn relayed_item(&self, delivery_id: &[u8]) -> SdkResult<Option<MessageId>>;
    /// The id of the last relay failure applied (0: none).
    fn relay_failures_seen(&self) -> SdkResult<u64>;
    /// Records the last relay failure applied.
    fn set_relay_failures_seen(&self, id: u64) -> SdkResult<()>;
    /// Moves an outgoing message to `state` unless it failed for good, or is sent and
    /// `state` is a step before that. Returns its conversation when the state changed.
    fn set_state(&self, id: &MessageId, state: &SendState) -> SdkResult<Option<ConversationId>>;
    /// Records the identity key `user/device` uses. Returns whether that changes a safety
    /// number: the key differs from the one seen before, or it is a new device of a user
    /// seen before. The first device of a user is recorded quietly.
    fn note_identity(&self, user: &str, device: &str, identity: &[u8]) -> SdkResult<bool>;
    /// Messages parked for `conversation`, oldest epoch first.
    fn parked(&self, conversation: &ConversationId) -> SdkResult<Vec<Parked>>;
    /// Message requests (conversations not yet accepted), newest first, with their inviters.
    fn requests(&self) -> SdkResult<Vec<(Conversation, String)>>;
    /// How many message requests [`requests`](Self::requests) lists, without loading them.
    fn request_count(&self) -> SdkResult<u64> {
        Ok(u64::try_from(self.requests()?.len()).unwrap_or(u64::MAX))
    }
    /// Records that the server channel of joined conversation `id` is still to be accepted.
    fn channel_to_accept(&self, id: &ConversationId, channel: &[u8]) -> SdkResult<()>;
    /// Channels still to be accepted on the server.
    fn channels_to_accept(&self) -> SdkResult<Vec<(ConversationId, Vec<u8>)>>;
    /// The channel of `id` was accepted on the server.
    fn channel_accepted(&self, id: &ConversationId) -> SdkResult<()>;
    /// Whether `id` is a message request.
    fn is_request(&self, id: &ConversationId) -> SdkResult<bool>;
    /// Turns a request into a conversation; whether it was one.
    fn accept_request(&self, id: &ConversationId) -> SdkResult<bool>;
    /// Deletes a request with its conversation and messages; whether it was one.
    fn decline_request(&self, id: &ConversationId) -> SdkResult<bool>;
    /// Forgets the messages parked before `before_ms`; returns their queue seqs.
    fn expire_parked(&self, before_ms: u64) -> SdkResult<Vec<u64>>;
    /// The conversations that have parked messages.
    fn parked_conversations(&self) -> SdkResult<Vec<ConversationId>>;
    /// Forgets a parked message.
    fn unpark(&self, seq: u64) -> SdkResult<()>;
}

/// The steps available inside [`transact`].
pub(crate) trait Tx {
    /// Applies the effect of queue entry `seq` and advances the cursor to it (never back).
    /// Returns whether the effect changed anything (a repeat or a forbidden edit does not).
    fn commit_incoming(&mut self, seq: u64, effect: &Effect) -> SdkResult<bool>;
    /// Applies a local action's effect.
    fn apply(&mut self, effect: &Effect) -> SdkResult<bool>;
    /// Queues an outgoing item: its local echo (if any) and one delivery per device.
    fn queue_outgoing(&mut self, echo: Option<&Message>, deliveries: &[Delivery]) -> SdkResult<()>;
    /// How many messages are parked for `conversation`.
    fn parked_count(&mut self, conversation: &ConversationId) -> SdkResult<u64>;
    /// How many messages sealed by `sender` are parked, in every conversation.
    fn parked_from(&mut self, sender: &[u8]) -> SdkResult<u64>;
    /// How many messages are parked in all.
    fn parked_total(&mut self) -> SdkResult<u64>;
    /// Whether `user` is a member of a conversation that `me` (this user) is still a member
    /// of (a message request, or a conversation this user left, does not count).
    fn knows(&mut self, user: &str, me: &str) -> SdkResult<bool>;
    /// Whether `id` is a message request, as this transaction sees it.
    fn in_request(&mut self, id: &ConversationId) -> SdkResult<bool>;
    /// The server channel of conversation `id`, as this transaction sees it.
    fn channel_of(&mut self, id: &ConversationId) -> SdkResult<Option<Vec<u8>>>;
    /// The conversation using server channel `channel`, as this transaction sees it.
    fn channel_user(&mut self, channel: &[u8]) -> SdkResult<Option<ConversationId>>;
    /// Forgets a parked message.
    fn unpark(&mut self, seq: u64) -> SdkResult<()>;
    /// One conversation, as this transaction sees it.
    fn conversation(&mut self, id: &ConversationId) -> SdkResult<Option<Conversation>>;
    /// The identity key recorded for `user/device` by
    /// [`Store::note_identity`] (only ever after a key-transparency check), if any.
    fn identity(&mut self, user: &str, device: &str) -> SdkResult<Option<Vec<u8>>>;
}

/// Runs `f` as one transaction on `store`, with the MLS work done through `mls` while it
/// runs. `f`'s error is returned as it is, after everything was rolled back.
pub(crate) fn transact<R, E: From<SdkError>>(
    store: &dyn Store,
    mls: Option<&MlsMember>,
    f: impl FnOnce(&mut dyn Tx) -> Result<R, E>,
) -> Result<R, E> {
    let mut f = Some(f);
    let mut out: Option<Result<R, E>> = None;
    let result = store.transact_dyn(mls, &mut |tx| {
        let f = f
            .take()
            .ok_or_else(|| SdkError::Store("a transaction body ran twice".into()))?;
        match f(tx) {
            Ok(r) => {
                out = Some(Ok(r));
                Ok(())
            }
            Err(e) => {
                out = Some(Err(e));
                Err(SdkError::Store("rolled back".into()))
            }
        }
    });
    match (result, out) {
        (_, Some(Err(e))) => Err(e),
        (Err(e), _) => Err(e.into()),
        (Ok(()), Some(Ok(r))) => Ok(r),
        (Ok(()), None) => Err(SdkError::Store("a transaction body never ran".into()).into()),
    }
}

impl dyn Store + '_ {
    /// [`Tx::commit_incoming`] on its own.
    pub(crate) fn commit_incoming(&self, seq: u64, effect: &Effect) -> SdkResult<bool> {
        transact(self, None, |tx| tx.commit_incoming(seq, effect))
    }

    /// [`Tx::apply`] on its own.
    pub(crate) fn apply(&self, effect: &Effect) -> SdkResult<bool> {
        transact(self, None, |tx| tx.apply(effect))
    }
}

fn now_ms() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis()),
    )
    .unwrap_or(0)
}
