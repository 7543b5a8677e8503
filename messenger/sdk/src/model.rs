//! The values the SDK hands to applications.

use std::fmt;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A conversation's id (also its MLS group id): 16 random bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationId(pub [u8; 16]);

impl fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConversationId({})", hex(&self.0))
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// A message's stable id: 16 random bytes chosen by its sender, the same on every device.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A new random id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// A 6-character id for people to type (the first 24 bits in lowercase hex). Unique
    /// enough within one conversation's recent history; front ends resolve it there.
    pub fn short(&self) -> String {
        hex(&self.0[..3])
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({})", hex(&self.0))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

/// Direct (two people) or group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConversationKind {
    /// A conversation between two users (and all their devices).
    Direct,
    /// A named group.
    Group,
}

impl ConversationKind {
    pub(crate) fn code(self) -> u32 {
        match self {
            Self::Direct => 1,
            Self::Group => 2,
        }
    }

    pub(crate) fn from_code(code: u32) -> Self {
        if code == 2 { Self::Group } else { Self::Direct }
    }
}

/// A conversation as this device knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// Its id.
    pub id: ConversationId,
    /// Direct or group.
    pub kind: ConversationKind,
    /// The group's name; empty for a direct conversation.
    pub name: String,
    /// Member user names, sorted (this user included).
    pub members: Vec<String>,
}

/// Where an outgoing message is; incoming messages are [`SendState::Received`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendState {
    /// Stored locally and waiting for the server.
    Queued,
    /// Being handed to the server.
    Sending,
    /// Every recipient device's queue accepted it.
    Sent,
    /// It will not be delivered as it is.
    Failed {
        /// Whether retrying later may succeed.
        recoverable: bool,
        /// Why.
        reason: String,
    },
    /// An incoming message.
    Received,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its stable id.
    pub id: MessageId,
    /// Its conversation.
    pub conversation: ConversationId,
    /// `user/device` of the sender.
    pub sender: String,
    /// The text.
    pub body: String,
    /// The message it replies to.
    pub reply_to: Option<MessageId>,
    /// The sender's clock, ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// When this device stored it, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// Whether this device's user sent it.
    pub outgoing: bool,
    /// Delivery state.
    pub state: SendState,
    /// Whether its author changed the text.
    pub edited: bool,
    /// Whether its author withdrew it (the body is then empty).
    pub deleted: bool,
    /// `(user, emoji)` reactions, sorted.
    pub reactions: Vec<(String, String)>,
    /// Users who have read it, sorted.
    pub read_by: Vec<String>,
    /// The file it carries, if it is an attachment (`body` is then the caption).
    pub attachment: Option<AttachmentInfo>,
}

impl Message {
    /// A message with no text, reactions or attachment yet (received when sent).
    pub(crate) fn new(
        id: MessageId,
        conversation: ConversationId,
        sender: String,
        sent_at_ms: u64,
        outgoing: bool,
        state: SendState,
    ) -> Self {
        Self {
            id,
            conversation,
            sender,
            body: String::new(),
            reply_to: None,
            sent_at_ms,
            received_at_ms: sent_at_ms,
            outgoing,
            state,
            edited: false,
            deleted: false,
            reactions: Vec::new(),
            read_by: Vec::new(),
            attachment: None,
        }
    }
}

/// What a message says about its attached file (the key stays inside the SDK).
#[derive(Clone, PartialEq, Eq)]
pub struct AttachmentInfo {
    /// The file name the sender gave.
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// MIME type the sender gave (may be empty).
    pub mime: String,
    pub(crate) wire: qpq_proto::v1::Attachment,
}

impl std::fmt::Debug for AttachmentInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachmentInfo")
            .field("name", &self.name)
            .field("size", &self.size)
            .field("mime", &self.mime)
            .finish_non_exhaustive()
    }
}

impl AttachmentInfo {
    pub(crate) fn from_wire(wire: qpq_proto::v1::Attachment) -> Self {
        Self {
            name: wire.name.clone(),
            size: wire.size,
            mime: wire.mime.clone(),
            wire,
        }
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        prost::Message::encode_to_vec(&self.wire)
    }

    pub(crate) fn decode(bytes: &[u8]) -> crate::error::SdkResult<Self> {
        <qpq_proto::v1::Attachment as prost::Message>::decode(bytes)
            .map(Self::from_wire)
            .map_err(|e| crate::error::SdkError::Store(format!("corrupt attachment: {e}")))
    }
}

/// How far an upload or download is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes done (confirmed by the server for uploads).
    pub done: u64,
    /// Bytes in all.
    pub total: u64,
}

/// The sender's user name from `user/device`.
pub(crate) fn user_of(sender: &str) -> &str {
    sender.split_once('/').map_or(sender, |(u, _)| u)
}

/// One of this user's devices, as the server lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// The device id.
    pub id: String,
    /// The label it was registered with.
    pub label: String,
    /// Registered at, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Whether it has published keys (has logged in).
    pub has_keys: bool,
    /// Whether it is the device this client runs as.
    pub this_device: bool,
}
