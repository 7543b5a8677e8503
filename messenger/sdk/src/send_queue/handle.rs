//! [`SendHandle`]: a message on its way, as its sender sees it.

use futures::Stream;
use tokio::sync::broadcast;

use crate::client::QpqClient;
use crate::error::{SdkError, SdkResult};
use crate::events::ClientEvent;
use crate::model::{ConversationId, MessageId, SendState};

/// A message this client sent (from [`ConversationHandle::send_text`] or
/// [`send_attachment`](crate::ConversationHandle::send_attachment)): its id, the states it
/// goes through, and what its sender can still do to it.
///
/// [`ConversationHandle::send_text`]: crate::ConversationHandle::send_text
#[derive(Debug)]
pub struct SendHandle {
    client: QpqClient,
    id: MessageId,
    conversation: ConversationId,
    events: broadcast::Receiver<ClientEvent>,
}

impl SendHandle {
    pub(crate) fn new(
        client: QpqClient,
        id: MessageId,
        conversation: ConversationId,
        events: broadcast::Receiver<ClientEvent>,
    ) -> Self {
        Self {
            client,
            id,
            conversation,
            events,
        }
    }

    /// The message's id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// Its conversation.
    pub fn conversation(&self) -> ConversationId {
        self.conversation
    }

    /// Its state as stored now; [`SdkError::NotFound`] once cancelled or deleted.
    pub fn state(&self) -> SdkResult<SendState> {
        self.client
            .message(&self.id)?
            .map(|m| m.state)
            .ok_or_else(|| SdkError::NotFound(format!("message {}", self.id.short())))
    }

    /// Every state the message takes from its sending on (the handle listened from before
    /// the message was stored, so the first is the one it was stored in), ending after the
    /// last: [`SendState::Sent`], a failure that retrying will not mend, or its cancellation
    /// (the stream then ends without one). A reader that falls behind the client's event
    /// buffer is given the stored state in place of the ones it missed.
    /// The stream is `Unpin`: `next()` works on it as it is.
    pub fn states(self) -> impl Stream<Item = SendState> + Send + Unpin + 'static {
        let Self {
            client, id, events, ..
        } = self;
        Box::pin(futures::stream::unfold(Some(events), move |events| {
            let client = client.clone();
            async move {
                let mut events = events?;
                loop {
                    let state = match events.recv().await {
                        Ok(ClientEvent::SendStateChanged { id: of, state, .. }) if of == id => {
                            state
                        }
                        Ok(ClientEvent::MessageDeleted { id: of, .. }) if of == id => return None,
                        Ok(_) => continue,
                        Err(broadcast::error::RecvError::Lagged(_)) => {
                            client.message(&id).ok().flatten()?.state
                        }
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    let more = (!is_final(&state)).then_some(events);
                    return Some((state, more));
                }
            }
        }))
    }

    /// Cancels the message while it is still queued (see [`QpqClient::cancel`]).
    pub fn cancel(&self) -> SdkResult<()> {
        self.client.cancel(&self.id)
    }

    /// Edits the message (for everyone who has it, and in the queue if not sent yet).
    pub fn edit(&self, body: &str) -> SdkResult<()> {
        self.client.edit(&self.id, body)
    }
}

/// A state after which the message's sending is over.
fn is_final(state: &SendState) -> bool {
    matches!(
        state,
        SendState::Sent
            | SendState::Failed {
                recoverable: false,
                ..
            }
    )
}
