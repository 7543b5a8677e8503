//! [`ConversationHandle`]: one conversation, and what a member does in it.

use crate::client::QpqClient;
use crate::error::{SdkError, SdkResult};
use crate::model::{Conversation, ConversationId, Message, MessageId, Progress, user_of};
use crate::send_queue::handle::SendHandle;

/// How many of a conversation's newest messages [`ConversationHandle::unread`] looks at.
pub const UNREAD_WINDOW: u32 = 500;

/// A handle on one conversation of this client (from [`QpqClient::conversation`]): its
/// messages, sending, and what a member does there. Cheap to clone; it holds the client and
/// the conversation's id, and every call reads the store afresh, so it never goes stale (a
/// conversation left or declined meanwhile makes calls fail with
/// [`SdkError::NotFound`]).
///
/// The data of the conversation (its name, kind and members) is [`Conversation`], from
/// [`info`](Self::info).
#[derive(Clone, Debug)]
pub struct ConversationHandle {
    client: QpqClient,
    id: ConversationId,
}

impl QpqClient {
    /// A handle on the conversation `id` (a message request included);
    /// [`SdkError::NotFound`] if this device has no such conversation.
    pub fn conversation(&self, id: &ConversationId) -> SdkResult<ConversationHandle> {
        if self.inner.store.conversation(id)?.is_none() {
            return Err(SdkError::NotFound(format!("conversation {id}")));
        }
        Ok(ConversationHandle {
            client: self.clone(),
            id: *id,
        })
    }
}

impl ConversationHandle {
    /// The conversation's id.
    pub fn id(&self) -> ConversationId {
        self.id
    }

    /// Its name, kind and members as stored now.
    pub fn info(&self) -> SdkResult<Conversation> {
        self.client
            .inner
            .store
            .conversation(&self.id)?
            .ok_or_else(|| SdkError::NotFound(format!("conversation {}", self.id)))
    }

    /// Its newest `limit` messages, oldest first.
    pub fn messages(&self, limit: u32) -> SdkResult<Vec<Message>> {
        self.client.messages(&self.id, limit)
    }

    /// The `limit` messages before `before`, oldest first (paging back).
    pub fn messages_before(&self, before: &MessageId, limit: u32) -> SdkResult<Vec<Message>> {
        self.client.messages_before(&self.id, before, limit)
    }

    /// Sends a text (optionally a reply): stored and shown at once, delivered by the outbox.
    /// The handle follows it ([`SendHandle::states`]) and can cancel or edit it.
    pub fn send_text(&self, body: &str, reply_to: Option<MessageId>) -> SdkResult<SendHandle> {
        // Subscribed before the message exists, so no state of it is missed.
        let events = self.client.subscribe();
        let id = self.client.send_text(&self.id, body, reply_to)?;
        Ok(SendHandle::new(self.client.clone(), id, self.id, events))
    }

    /// Sends an attachment: encrypted and uploaded (with `progress`) before its message is
    /// queued.
    pub async fn send_attachment(
        &self,
        name: &str,
        mime: &str,
        caption: &str,
        data: &[u8],
        progress: impl FnMut(Progress) + Send,
    ) -> SdkResult<SendHandle> {
        let events = self.client.subscribe();
        let id = self
            .client
            .send_attachment(&self.id, name, mime, caption, data, progress)
            .await?;
        Ok(SendHandle::new(self.client.clone(), id, self.id, events))
    }

    /// A message of this conversation; [`SdkError::NotFound`] for one of another.
    pub fn message(&self, id: &MessageId) -> SdkResult<Message> {
        match self.client.message(id)? {
            Some(m) if m.conversation == self.id => Ok(m),
            _ => Err(SdkError::NotFound(format!(
                "message {} in conversation {}",
                id.short(),
                self.id
            ))),
        }
    }

    /// Edits one of this user's messages here.
    pub fn edit(&self, message: &MessageId, body: &str) -> SdkResult<()> {
        self.message(message)?;
        self.client.edit(message, body)
    }

    /// Deletes one of this user's messages here, for everyone.
    pub fn delete(&self, message: &MessageId) -> SdkResult<()> {
        self.message(message)?;
        self.client.delete(message)
    }

    /// Adds (or, with `remove`, takes back) a reaction to a message here.
    pub fn react(&self, message: &MessageId, emoji: &str, remove: bool) -> SdkResult<()> {
        self.message(message)?;
        self.client.react(message, emoji, remove)
    }

    /// Marks messages here as read (receipts go to their senders);
    /// [`SdkError::NotFound`] if one of them is not of this conversation (its id would
    /// otherwise reach this conversation's members in the receipt).
    pub fn mark_read(&self, messages: &[MessageId]) -> SdkResult<()> {
        for id in messages {
            self.message(id)?;
        }
        self.client.mark_read(&self.id, messages)
    }

    /// The incoming messages here that this user has not read (on any of its devices), among
    /// the newest [`UNREAD_WINDOW`], oldest first: what a front end counts as unread.
    /// Withdrawn messages are not counted.
    pub fn unread(&self) -> SdkResult<Vec<Message>> {
        let me = self.client.whoami().ok_or(SdkError::NotLoggedIn)?;
        let me = user_of(&me);
        let mut messages = self.messages(UNREAD_WINDOW)?;
        messages.retain(|m| !m.outgoing && !m.deleted && !m.read_by.iter().any(|u| u == me));
        Ok(messages)
    }

    /// Marks every [`unread`](Self::unread) message here as read (one receipt to the
    /// members); returns how many there were.
    pub fn mark_all_read(&self) -> SdkResult<usize> {
        let ids: Vec<MessageId> = self.unread()?.iter().map(|m| m.id).collect();
        self.client.mark_read(&self.id, &ids)?;
        Ok(ids.len())
    }

    /// Renames the conversation (for every member).
    pub fn rename(&self, name: &str) -> SdkResult<()> {
        self.client.rename(&self.id, name)
    }

    /// Tells the other members this user is typing (best effort, not stored).
    pub async fn typing(&self) -> SdkResult<()> {
        self.client.typing(&self.id).await
    }

    /// Invites a user (every device of theirs) into the conversation.
    pub async fn invite(&self, user: &str) -> SdkResult<()> {
        self.client.invite(&self.id, user).await
    }

    /// Removes a user (every device of theirs) from the conversation.
    pub async fn remove(&self, user: &str) -> SdkResult<()> {
        self.client.remove(&self.id, user).await
    }

    /// Leaves the conversation: the other members are told, this device keeps its history.
    pub async fn leave(&self) -> SdkResult<()> {
        self.client.leave(&self.id).await
    }

    /// Accepts this conversation when it is a message request: it becomes a conversation like
    /// the others and its messages are announced.
    pub async fn accept(&self) -> SdkResult<Conversation> {
        self.client.accept_request(&self.id).await
    }

    /// Declines this conversation when it is a message request: it is deleted with what came
    /// with it, and nothing is sent.
    pub async fn decline(&self) -> SdkResult<()> {
        self.client.decline_request(&self.id).await
    }
}
