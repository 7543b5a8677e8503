//! What the window is given: the SDK's values as JSON, ids as hex strings.

use qpq_sdk::{
    ClientEvent, ConnectionState, Conversation, ConversationId, ConversationKind, Device, Message,
    MessageId, SendState,
};
use serde::Serialize;

use crate::error::CommandError;

/// Parses a conversation id the window sent back.
pub fn conversation_id(hex_id: &str) -> Result<ConversationId, CommandError> {
    parse_id(hex_id, "conversation").map(ConversationId)
}

/// Parses a message id the window sent back.
pub fn message_id(hex_id: &str) -> Result<MessageId, CommandError> {
    parse_id(hex_id, "message").map(MessageId)
}

fn parse_id(hex_id: &str, what: &str) -> Result<[u8; 16], CommandError> {
    let mut id = [0u8; 16];
    hex::decode_to_slice(hex_id, &mut id)
        .map_err(|_| CommandError::invalid(format!("not a {what} id: {hex_id:.40}")))?;
    Ok(id)
}

/// A conversation in the list.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    /// Hex id.
    pub id: String,
    /// `direct` or `group`.
    pub kind: &'static str,
    /// The group's name; empty for a direct conversation.
    pub name: String,
    /// Member user names, sorted (this user included).
    pub members: Vec<String>,
    /// Incoming messages not read yet.
    pub unread: usize,
    /// The newest message, for the list's preview and order.
    pub last: Option<MessageView>,
}

impl ConversationView {
    /// The list entry of `c`.
    pub fn new(c: &Conversation, unread: usize, last: Option<&Message>) -> Self {
        Self {
            id: c.id.to_string(),
            kind: match c.kind {
                ConversationKind::Group => "group",
                _ => "direct",
            },
            name: c.name.clone(),
            members: c.members.clone(),
            unread,
            last: last.map(MessageView::from),
        }
    }
}

/// A message request: a conversation someone new invited this user to.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestView {
    /// The conversation as the invitation shows it.
    pub conversation: ConversationView,
    /// Who invited.
    pub inviter: String,
}

/// A delivery state.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum StateView {
    /// Stored locally, waiting for the server.
    Queued,
    /// Being handed to the server.
    Sending,
    /// Every recipient device's queue took it.
    Sent,
    /// It will not be delivered as it is.
    Failed {
        /// Whether a later retry may succeed.
        recoverable: bool,
        /// Why.
        reason: String,
    },
    /// An incoming message.
    Received,
}

impl From<&SendState> for StateView {
    fn from(state: &SendState) -> Self {
        match state {
            SendState::Queued => Self::Queued,
            SendState::Sending => Self::Sending,
            SendState::Sent => Self::Sent,
            SendState::Failed {
                recoverable,
                reason,
            } => Self::Failed {
                recoverable: *recoverable,
                reason: reason.clone(),
            },
            _ => Self::Received,
        }
    }
}

/// An attachment's description.
#[derive(Debug, Clone, Serialize)]
pub struct AttachmentView {
    /// The name the sender gave.
    pub name: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// MIME type the sender gave (may be empty).
    pub mime: String,
}

/// One message.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    /// Hex id.
    pub id: String,
    /// Its conversation's hex id.
    pub conversation: String,
    /// `user/device` of the sender.
    pub sender: String,
    /// The text (the caption of an attachment).
    pub body: String,
    /// The hex id of the message it replies to.
    pub reply_to: Option<String>,
    /// The sender's clock, ms since the Unix epoch.
    pub sent_at_ms: u64,
    /// When this device stored it, ms since the Unix epoch (the list's order: a sender's
    /// clock cannot pin a conversation to the top).
    pub received_at_ms: u64,
    /// Whether this user sent it.
    pub outgoing: bool,
    /// Delivery state.
    pub state: StateView,
    /// Whether its author changed the text.
    pub edited: bool,
    /// Whether its author withdrew it.
    pub deleted: bool,
    /// `[user, emoji]` pairs.
    pub reactions: Vec<(String, String)>,
    /// Users who have read it.
    pub read_by: Vec<String>,
    /// The file it carries.
    pub attachment: Option<AttachmentView>,
}

impl From<&Message> for MessageView {
    fn from(m: &Message) -> Self {
        Self {
            id: m.id.to_string(),
            conversation: m.conversation.to_string(),
            sender: m.sender.clone(),
            body: m.body.clone(),
            reply_to: m.reply_to.map(|id| id.to_string()),
            sent_at_ms: m.sent_at_ms,
            received_at_ms: m.received_at_ms,
            outgoing: m.outgoing,
            state: StateView::from(&m.state),
            edited: m.edited,
            deleted: m.deleted,
            reactions: m.reactions.clone(),
            read_by: m.read_by.clone(),
            attachment: m.attachment.as_ref().map(|a| AttachmentView {
                // The name the file will be saved under, not the raw one: no folders, no
                // direction marks, nothing hidden.
                name: qpq_sdk::attachment_file_name(&a.name),
                size: a.size,
                mime: a.mime.clone(),
            }),
        }
    }
}

/// One of this user's devices.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    /// The device id.
    pub id: String,
    /// Its label.
    pub label: String,
    /// Registered at, ms since the Unix epoch.
    pub created_at_ms: u64,
    /// Whether it has logged in.
    pub has_keys: bool,
    /// Whether it is this window's device.
    pub this_device: bool,
}

impl From<&Device> for DeviceView {
    fn from(d: &Device) -> Self {
        Self {
            id: d.id.clone(),
            label: d.label.clone(),
            created_at_ms: d.created_at_ms,
            has_keys: d.has_keys,
            this_device: d.this_device,
        }
    }
}

/// The connection as the window shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "state", rename_all = "camelCase")]
pub enum ConnectionView {
    /// Logged in and receiving.
    Connected,
    /// Fetching what arrived while offline.
    CatchingUp,
    /// No connection; messages wait in the outbox.
    Offline {
        /// Why.
        reason: String,
    },
    /// The server ended the session: sign in again.
    SessionEnded {
        /// The server's reason.
        reason: String,
    },
}

impl From<&ConnectionState> for ConnectionView {
    fn from(state: &ConnectionState) -> Self {
        match state {
            ConnectionState::Connected => Self::Connected,
            ConnectionState::CatchingUp => Self::CatchingUp,
            ConnectionState::Offline { reason } => Self::Offline {
                reason: reason.clone(),
            },
            ConnectionState::SessionEnded { reason } => Self::SessionEnded {
                reason: reason.clone(),
            },
            other => Self::Offline {
                reason: format!("{other:?}"),
            },
        }
    }
}

/// An SDK event, forwarded to the window on the `qpq://event` channel.
#[derive(Debug, Clone, Serialize)]
#[serde(
    tag = "type",
    rename_all = "camelCase",
    rename_all_fields = "camelCase"
)]
pub enum EventView {
    /// A message arrived, or an outgoing one was stored.
    Message {
        /// The message.
        message: MessageView,
    },
    /// Something about a conversation changed (created, renamed, members, a message edited,
    /// deleted, reacted to or read): the window reloads what it shows of it.
    ConversationChanged {
        /// Its hex id.
        conversation: String,
    },
    /// A message request arrived.
    Request {
        /// The request.
        request: RequestView,
    },
    /// An outgoing message moved on.
    SendState {
        /// Its hex id.
        id: String,
        /// Its conversation's hex id.
        conversation: String,
        /// The new state.
        state: StateView,
    },
    /// A member is typing.
    Typing {
        /// The conversation's hex id.
        conversation: String,
        /// Who.
        user: String,
    },
    /// The connection changed.
    Connection {
        /// The new state.
        connection: ConnectionView,
    },
    /// Key transparency failed: the server may be lying about a contact's keys.
    KeyTransparencyAlarm {
        /// `user/device` whose key was checked.
        device: String,
        /// What failed.
        reason: String,
    },
    /// A contact's safety number changed.
    SafetyNumberChanged {
        /// The user.
        user: String,
        /// The device whose key is new.
        device: String,
    },
    /// A message could not be decrypted and was skipped.
    Undecryptable {
        /// Why.
        reason: String,
    },
    /// Events were missed (the window fell behind): reload everything.
    Resync,
}

impl EventView {
    /// The window's form of `event`; `None` for events it has no use for.
    pub fn new(event: ClientEvent) -> Option<Self> {
        let changed = |id: &ConversationId| Self::ConversationChanged {
            conversation: id.to_string(),
        };
        Some(match event {
            ClientEvent::MessageReceived(m) => Self::Message {
                message: MessageView::from(m.as_ref()),
            },
            ClientEvent::ConversationCreated(c) | ClientEvent::ConversationUpdated(c) => {
                changed(&c.id)
            }
            ClientEvent::MessageRequest {
                conversation,
                inviter,
            } => Self::Request {
                request: RequestView {
                    // As the `requests` command lists them: its messages are announced once
                    // the request is accepted, so nothing of it counts as unread before.
                    conversation: ConversationView::new(&conversation, 0, None),
                    inviter,
                },
            },
            ClientEvent::MemberJoined { conversation, .. }
            | ClientEvent::MemberLeft { conversation, .. }
            | ClientEvent::MessageEdited { conversation, .. }
            | ClientEvent::MessageDeleted { conversation, .. }
            | ClientEvent::ReactionChanged { conversation, .. }
            | ClientEvent::ReceiptChanged { conversation, .. } => changed(&conversation),
            ClientEvent::SendStateChanged {
                id,
                conversation,
                state,
            } => Self::SendState {
                id: id.to_string(),
                conversation: conversation.to_string(),
                state: StateView::from(&state),
            },
            ClientEvent::Typing { conversation, user } => Self::Typing {
                conversation: conversation.to_string(),
                user,
            },
            ClientEvent::ConnectionStateChanged(state) => Self::Connection {
                connection: ConnectionView::from(&state),
            },
            ClientEvent::KeyTransparencyAlarm { device, reason } => {
                Self::KeyTransparencyAlarm { device, reason }
            }
            ClientEvent::SafetyNumberChanged { user, device } => {
                Self::SafetyNumberChanged { user, device }
            }
            ClientEvent::UndecryptableMessage { reason, .. } => Self::Undecryptable { reason },
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_bad_ones_are_clear_errors() {
        let id = ConversationId([0xab; 16]);
        assert_eq!(conversation_id(&id.to_string()).ok(), Some(id));
        let err = message_id("zz").err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("not a message id: zz"));
        assert!(conversation_id(&"a".repeat(33)).is_err());
    }

    #[test]
    fn events_are_tagged_for_the_window() {
        let event = ClientEvent::KeyTransparencyAlarm {
            device: "bob/phone".into(),
            reason: "inconsistent log head".into(),
        };
        let json = serde_json::to_value(EventView::new(event)).ok();
        assert_eq!(
            json,
            Some(serde_json::json!({
                "type": "keyTransparencyAlarm",
                "device": "bob/phone",
                "reason": "inconsistent log head",
            }))
        );
        let state = EventView::new(ClientEvent::SendStateChanged {
            id: MessageId([1; 16]),
            conversation: ConversationId([2; 16]),
            state: SendState::Failed {
                recoverable: true,
                reason: "offline".into(),
            },
        });
        let json = serde_json::to_value(state).ok();
        assert_eq!(
            json.as_ref().and_then(|j| j.get("state")).cloned(),
            Some(serde_json::json!({"state": "failed", "recoverable": true, "reason": "offline"}))
        );
    }
}
