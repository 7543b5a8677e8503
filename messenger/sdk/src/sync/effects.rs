//! What a received message does: its content becomes an effect on the store, and effects
//! become the events a user sees.

use qpq_proto::v1;

use crate::error::SdkResult;
use crate::events::ClientEvent;
use crate::model::{
    AttachmentInfo, Conversation, ConversationId, Message, MessageId, SendState, user_of,
};
use crate::store::{Effect, Store};

use crate::client::Keys;
use crate::client::now_ms;
use crate::encryption::split_name;

pub(crate) fn conversation_id(bytes: &[u8]) -> Result<ConversationId, String> {
    <[u8; 16]>::try_from(bytes)
        .map(ConversationId)
        .map_err(|_| "bad conversation id".to_owned())
}

pub(crate) fn message_id(bytes: &[u8]) -> Result<MessageId, String> {
    <[u8; 16]>::try_from(bytes)
        .map(MessageId)
        .map_err(|_| "bad message id".to_owned())
}

/// The member users of a group, sorted, from its credentials (users of other servers than
/// `keys`' qualified).
pub(crate) fn member_users(group: &qpq_core::mls::Group, keys: &Keys) -> Vec<String> {
    let home = keys.name.domain();
    let mut members: Vec<String> = group
        .members()
        .iter()
        .filter_map(|n| split_name(n, home).map(|(u, _)| u))
        .collect();
    members.sort();
    members.dedup();
    members
}

/// `(user, device)` of every member device but this one (`keys`), in the order of their
/// full credential names, which is the same on every member's device whatever its server.
pub(crate) fn other_devices(group: &qpq_core::mls::Group, keys: &Keys) -> Vec<(String, String)> {
    let home = keys.name.domain();
    let mut names = group.members();
    names.sort();
    names
        .iter()
        .filter_map(|name| split_name(name, home))
        .filter(|(u, d)| keys.me.split_once('/') != Some((u.as_str(), d.as_str())))
        .collect()
}

/// What an incoming content item does to the store.
pub(crate) fn content_effect(
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
pub(crate) fn event_for(store: &dyn Store, effect: &Effect) -> SdkResult<Option<ClientEvent>> {
    Ok(events_for(store, effect, None)?.into_iter().next())
}

/// Longest reaction accepted from a peer, in bytes (an emoji with its modifiers).
pub(crate) const MAX_EMOJI_BYTES: usize = 32;

/// The conversation an effect on existing content belongs to.
pub(crate) fn effect_conversation(effect: &Effect) -> Option<ConversationId> {
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

pub(crate) fn events_for(
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
