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
    MessageReceived(Message),
    /// This device joined a conversation, or created one.
    ConversationCreated(Conversation),
    /// An outgoing message moved on.
    SendStateChanged {
        /// The message.
        id: MessageId,
        /// Its conversation.
        conversation: ConversationId,
        /// The new state.
        state: SendState,
    },
    /// The connection changed.
    ConnectionStateChanged(ConnectionState),
    /// Something arrived that could not be decrypted or verified; it was skipped and the
    /// conversation goes on.
    UndecryptableMessage {
        /// The queue sequence number it had.
        seq: u64,
        /// Why it failed.
        reason: String,
    },
}
