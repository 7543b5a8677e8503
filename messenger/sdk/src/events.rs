//! What the client reports as it happens.

use crate::model::{Conversation, ConversationId, Message, MessageId, SendState};

/// The connection to the server, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Logged in and receiving.
    Connected,
    /// No usable connection; the outbox keeps messages until it returns.
    Offline {
        /// Why.
        reason: String,
    },
    /// Fetching what arrived while offline.
    CatchingUp,
    /// The server ended the session (revoked device, expiry, logout elsewhere): log in again.
    SessionEnded {
        /// The server's reason.
        reason: String,
    },
}

/// An event of a [`QpqClient`](crate::QpqClient). Subscribe with
/// [`QpqClient::subscribe`](crate::QpqClient::subscribe).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// A message arrived (or, for an outgoing one, was stored: the local echo).
    MessageReceived(Box<Message>),
    /// This device joined a conversation, or created one (or accepted a message request).
    ConversationCreated(Conversation),
    /// A user this one has no conversation with invited it: a message request, kept out of
    /// the conversation list (and its messages unannounced) until the user accepts it with
    /// [`QpqClient::accept_request`](crate::QpqClient::accept_request) or declines it.
    MessageRequest {
        /// The conversation as the invitation shows it.
        conversation: Conversation,
        /// The inviting user.
        inviter: String,
    },
    /// A conversation's name or members changed (the new state).
    ConversationUpdated(Conversation),
    /// A user joined a conversation.
    MemberJoined {
        /// The conversation.
        conversation: ConversationId,
        /// The user.
        user: String,
    },
    /// A user left or was removed from a conversation (this user too, when removed).
    MemberLeft {
        /// The conversation.
        conversation: ConversationId,
        /// The user.
        user: String,
    },
    /// A message's author changed its text.
    MessageEdited {
        /// The message.
        id: MessageId,
        /// Its conversation.
        conversation: ConversationId,
        /// The new text.
        body: String,
    },
    /// A message's author withdrew it.
    MessageDeleted {
        /// The message.
        id: MessageId,
        /// Its conversation.
        conversation: ConversationId,
    },
    /// A reaction was added or removed.
    ReactionChanged {
        /// The message.
        id: MessageId,
        /// Its conversation.
        conversation: ConversationId,
        /// Who reacted.
        user: String,
        /// The reaction.
        emoji: String,
        /// Added (true) or removed (false).
        added: bool,
    },
    /// A user read messages.
    ReceiptChanged {
        /// The messages.
        ids: Vec<MessageId>,
        /// Their conversation.
        conversation: ConversationId,
        /// The reader.
        user: String,
    },
    /// An outgoing message moved on.
    SendStateChanged {
        /// The message.
        id: MessageId,
        /// Its conversation.
        conversation: ConversationId,
        /// The new state.
        state: SendState,
    },
    /// A member is typing (a live notification; nothing is stored).
    Typing {
        /// The conversation.
        conversation: ConversationId,
        /// Who.
        user: String,
    },
    /// The connection changed.
    ConnectionStateChanged(ConnectionState),
    /// Key transparency failed: the server showed a log head inconsistent with one it showed
    /// before, or a key that is not in its log. The key was not used. Treat the server as
    /// compromised for this contact and compare safety numbers out of band.
    KeyTransparencyAlarm {
        /// `user/device` whose key was being checked.
        device: String,
        /// What failed.
        reason: String,
    },
    /// The safety number with one of `user`'s devices changed: the device's identity key is
    /// not the one seen before, or it is a device of theirs this client had not seen. Compare
    /// safety numbers again ([`QpqClient::safety_numbers`](crate::QpqClient::safety_numbers)).
    SafetyNumberChanged {
        /// The user.
        user: String,
        /// The device whose key is new.
        device: String,
    },
    /// Something arrived that could not be decrypted or verified; it was skipped and the
    /// conversation goes on.
    UndecryptableMessage {
        /// The queue sequence number it had.
        seq: u64,
        /// Why it failed.
        reason: String,
    },
}
