//! The send queue: messages are stored and shown at once, then delivered by the outbox, in
//! batches, retried with backoff, also after a restart.

use std::sync::Arc;

use prost::Message as _;
use qpq_proto::v1;
use qrpc::Code;

use crate::error::{SdkError, SdkResult};
use crate::events::ClientEvent;
use crate::model::{Conversation, ConversationId, Message, MessageId, SendState, user_of};
use crate::store::{Delivery, Effect, transact};

use crate::client::Inner;
use crate::client::QpqClient;
use crate::client::backoff;
use crate::client::lock;
use crate::client::now_ms;
use crate::client::retryable;
use crate::sync::effects::event_for;
use crate::sync::effects::other_devices;

pub(crate) mod attachments;
pub(crate) mod handle;

pub(crate) fn delivery_id(item: &MessageId, user: &str, device: &str) -> [u8; 16] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(b"qpq delivery id");
    h.update(item.0);
    h.update(user.as_bytes());
    h.update([0]);
    h.update(device.as_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

pub(crate) fn group_transport(conversation: &ConversationId, mls: Vec<u8>) -> Vec<u8> {
    v1::Transport {
        kind: Some(v1::transport::Kind::Group(v1::GroupMessage {
            conversation_id: conversation.0.to_vec().into(),
            mls: mls.into(),
        })),
    }
    .encode_to_vec()
}

pub(crate) fn invitation(c: &Conversation, welcome: Vec<u8>, channel: Option<&[u8]>) -> Vec<u8> {
    v1::Transport {
        kind: Some(v1::transport::Kind::Invitation(v1::Invitation {
            welcome: welcome.into(),
            conversation_id: c.id.0.to_vec().into(),
            kind: c.kind.code(),
            name: c.name.clone(),
            channel_id: channel.map(<[u8]>::to_vec).unwrap_or_default().into(),
        })),
    }
    .encode_to_vec()
}

pub(crate) fn deliveries_for(
    item: MessageId,
    devices: &[(String, String)],
    transport: &[u8],
) -> Vec<Delivery> {
    devices
        .iter()
        .map(|(u, d)| Delivery {
            item,
            user: u.clone(),
            device: d.clone(),
            message_id: delivery_id(&item, u, d),
            transport: transport.to_vec(),
        })
        .collect()
}

/// The state of a local echo: sent at once when nobody else is in the conversation.
pub(crate) fn echo_state(nobody: bool) -> SendState {
    if nobody {
        SendState::Sent
    } else {
        SendState::Queued
    }
}

/// What one outbox batch left behind.
pub(crate) enum Batch {
    /// Nothing is due.
    Empty,
    /// More may be due: go on.
    More,
}

/// Delivers the outbox whenever it is woken, retrying with backoff while anything is left.
pub(crate) async fn outbox_loop(strong: Arc<Inner>) {
    let mut attempt = 0u32;
    loop {
        let result = match strong.session().await {
            Ok(rpc) => match strong.flush_outbox(&rpc).await {
                // The connection lost its session (a reconnect): resume it and go again.
                Err(SdkError::Server(status)) if status.code() == Code::Unauthenticated => {
                    match strong.resume().await {
                        Ok(rpc) => strong.flush_outbox(&rpc).await,
                        Err(e) => Err(e),
                    }
                }
                other => other,
            },
            Err(e) => Err(e),
        };
        let delay = match result {
            Ok(false) => {
                attempt = 0;
                None
            }
            Ok(true) | Err(_) => {
                if let Err(e) = &result {
                    tracing::debug!(error = %e, "outbox delivery failed; will retry");
                }
                attempt = attempt.saturating_add(1);
                Some(backoff(&strong.limits, attempt))
            }
        };
        let wake = async {
            strong.outbox_wake.notified().await;
        };
        match delay {
            None => wake.await,
            Some(d) => {
                tokio::select! {
                    () = wake => {}
                    () = tokio::time::sleep(d) => {}
                }
            }
        }
    }
}

impl QpqClient {
    /// Encrypts `body` for `conversation` and queues one delivery per member device (other
    /// than this one). Returns the content id and this device's name.
    pub(crate) fn send_content(
        &self,
        conversation: &ConversationId,
        body: v1::content::Body,
        echo: impl FnOnce(MessageId, String, u64, bool) -> Option<Message>,
    ) -> SdkResult<MessageId> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let c = self
            .inner
            .store
            .conversation(conversation)?
            .ok_or_else(|| SdkError::NotFound(format!("conversation {conversation}")))?;
        if !c.members.iter().any(|m| m == user_of(&me)) {
            return Err(SdkError::InvalidArgument(format!(
                "this user is no longer a member of conversation {conversation}"
            )));
        }
        let limit = self.inner.limits.max_outbox;
        if self.inner.store.outbox_len()? >= limit {
            return Err(SdkError::OutboxFull { limit });
        }
        let id = MessageId::random();
        let sent_at_ms = now_ms();
        let content = v1::Content {
            id: id.0.to_vec().into(),
            sent_at_ms,
            body: Some(body),
        }
        .encode_to_vec();
        // Encrypting moves the group's ratchet: the ciphertext is queued in the same
        // transaction, so a crash leaves neither.
        let echo = {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            transact(&*self.inner.store, Some(&keys.mls), |tx| {
                let mut group = keys
                    .mls
                    .group(&conversation.0)?
                    .ok_or_else(|| SdkError::NotFound(format!("conversation {conversation}")))?;
                let ciphertext = group.encrypt(&keys.mls, &content)?;
                let recipients = other_devices(&group, keys);
                let transport = group_transport(conversation, ciphertext);
                let deliveries = deliveries_for(id, &recipients, &transport);
                let echo = echo(id, keys.me.clone(), sent_at_ms, deliveries.is_empty());
                keys.mls.keep(group);
                tx.queue_outgoing(echo.as_ref(), &deliveries)?;
                SdkResult::Ok(echo)
            })?
        };
        if let Some(echo) = echo {
            self.emit(ClientEvent::MessageReceived(Box::new(echo.clone())));
            self.emit(ClientEvent::SendStateChanged {
                id,
                conversation: *conversation,
                state: echo.state,
            });
        }
        self.inner.outbox_wake.notify_one();
        Ok(id)
    }

    /// Sends a text message (optionally a reply). It is stored and shown at once (local echo,
    /// state [`SendState::Queued`]), then delivered by the outbox, which retries until the
    /// server takes it — also after a restart.
    pub(crate) fn send_text(
        &self,
        conversation: &ConversationId,
        body: &str,
        reply_to: Option<MessageId>,
    ) -> SdkResult<MessageId> {
        self.check_text(body)?;
        let conversation = *conversation;
        let text = body.to_owned();
        self.send_content(
            &conversation,
            v1::content::Body::Text(v1::Text {
                body: body.to_owned(),
                reply_to: reply_to.map(|r| r.0.to_vec()).unwrap_or_default().into(),
            }),
            move |id, me, sent_at_ms, nobody| {
                Some(Message {
                    body: text,
                    reply_to,
                    ..Message::new(id, conversation, me, sent_at_ms, true, echo_state(nobody))
                })
            },
        )
    }

    pub(crate) fn check_text(&self, body: &str) -> SdkResult<()> {
        if body.is_empty() || body.len() > self.inner.limits.max_text_bytes {
            return Err(SdkError::InvalidArgument(format!(
                "text: 1 to {} bytes",
                self.inner.limits.max_text_bytes
            )));
        }
        Ok(())
    }

    /// This user's message `id`, or an error naming why it cannot be changed.
    pub(crate) fn own_message(&self, id: &MessageId) -> SdkResult<Message> {
        let m = self.stored_message(id)?;
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        if user_of(&m.sender) != user_of(&me) {
            return Err(SdkError::InvalidArgument(
                "only the author may edit or delete a message".into(),
            ));
        }
        if m.deleted {
            return Err(SdkError::InvalidArgument("the message was deleted".into()));
        }
        Ok(m)
    }

    /// Applies this device's own action locally and reports it.
    pub(crate) fn apply_local(&self, effect: Effect) -> SdkResult<()> {
        if self.inner.store.apply(&effect)?
            && let Some(event) = event_for(&*self.inner.store, &effect)?
        {
            self.emit(event);
        }
        Ok(())
    }

    /// Takes back a message no device has received yet (still queued, for instance while
    /// offline): it is removed from the outbox and the store, reported as
    /// [`ClientEvent::MessageDeleted`]. Once the outbox has started handing it over, this
    /// fails; [`delete`](Self::delete) it instead.
    pub fn cancel(&self, id: &MessageId) -> SdkResult<()> {
        let conversation = self.inner.store.cancel(id)?;
        self.emit(ClientEvent::MessageDeleted {
            id: *id,
            conversation,
        });
        Ok(())
    }
}

impl Inner {
    /// Seals and hands every pending delivery to the server once. Returns whether anything is
    /// left to retry.
    pub(crate) async fn flush_outbox(self: &Arc<Self>, rpc: &qrpc::Client) -> SdkResult<bool> {
        loop {
            match self.flush_batch(rpc).await? {
                // What is left waits out a retry delay.
                Batch::Empty => return Ok(self.store.outbox_len()? > 0),
                Batch::More => {}
            }
        }
    }

    /// One delivery failed for now: it waits out its own delay while the ones behind it go
    /// on, and its message says it is retrying.
    pub(crate) fn retry_later(self: &Arc<Self>, d: &Delivery, reason: &str) -> SdkResult<()> {
        let now = now_ms();
        let retry_at = |attempts: u32| {
            let delay = backoff(&self.limits, attempts.saturating_sub(1));
            now.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
        };
        self.store
            .delivery_failed(&d.item, &d.user, &d.device, &retry_at)?;
        self.set_state(
            &d.item,
            SendState::Failed {
                recoverable: true,
                reason: format!("{}/{}: {reason}; retrying", d.user, d.device),
            },
        )
    }

    /// One delivery can never succeed: it fails alone, with the reason in its message.
    pub(crate) fn fail_delivery(self: &Arc<Self>, d: &Delivery, reason: &str) -> SdkResult<()> {
        self.set_state(
            &d.item,
            SendState::Failed {
                recoverable: false,
                reason: format!("{}/{}: {reason}", d.user, d.device),
            },
        )?;
        self.store
            .delivery_done(&d.item, &d.user, &d.device, false)?;
        Ok(())
    }

    /// One `BatchEnqueue`: at most 100 deliveries and about `BATCH_BYTES` of envelopes (a
    /// request frame is bounded by the server), oldest first.
    pub(crate) async fn flush_batch(self: &Arc<Self>, rpc: &qrpc::Client) -> SdkResult<Batch> {
        /// Envelope bytes one call carries at most (the server's frame limit is 4 MiB).
        const BATCH_BYTES: usize = 2 * 1024 * 1024;
        let page = if self
            .one_at_a_time
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            1
        } else {
            100
        };
        let pending = self.store.pending_deliveries(page, now_ms())?;
        if pending.is_empty() {
            return Ok(Batch::Empty);
        }
        let keys_client = v1::keys_client::KeysClient::new(rpc.clone());
        let mut claimed: Vec<MessageId> = Vec::new();
        // Each delivery with the key it is sealed to...
        let mut to_seal = Vec::with_capacity(pending.len());
        // What the call will carry, estimated before anything is claimed or sealed: an item
        // that will not fit stays cancellable and unsealed until the next call.
        let mut estimated = 0usize;
        for d in &pending {
            let estimate = sealed_size_bound(d.transport.len());
            if !to_seal.is_empty() && estimated + estimate > BATCH_BYTES {
                break;
            }
            // Claim each item once: from here it cannot be cancelled, and one cancelled in
            // the meantime is skipped.
            if !claimed.contains(&d.item) {
                let (still_pending, changed) = self.store.claim(&d.item)?;
                if let Some(conversation) = changed {
                    let _ = self.events.send(ClientEvent::SendStateChanged {
                        id: d.item,
                        conversation,
                        state: SendState::Sending,
                    });
                }
                if !still_pending {
                    continue;
                }
                claimed.push(d.item);
            }
            match self.peer_key(&keys_client, &d.user, &d.device).await {
                Ok(key) => {
                    estimated += estimate;
                    to_seal.push((d, key));
                }
                // A key that does not verify is never used: this copy fails for good.
                Err(SdkError::KeyTransparency(reason) | SdkError::Invalid(reason)) => {
                    self.fail_delivery(d, &reason)?;
                }
                // The device or its keys are gone (revoked, never published): nothing will
                // ever reach it.
                Err(SdkError::Server(status)) if !retryable(&status) => {
                    self.fail_delivery(d, &format!("no keys to seal to ({status})"))?;
                }
                Err(e) => return Err(e),
            }
        }
        // ... sealed on all cores (an X-Wing encapsulation and a signature each).
        let sealed = {
            let keys = lock(&self.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            let (identity, now) = (&keys.identity, now_ms());
            crate::parallel::map(&to_seal, 16, |(d, key)| {
                qpq_core::sealed::seal(identity, key, now, &d.transport).map_err(SdkError::Sealing)
            })
        };
        let mut requests = Vec::with_capacity(to_seal.len());
        let mut included = Vec::with_capacity(to_seal.len());
        let mut batch_bytes = 0usize;
        for ((d, _), sealed) in to_seal.iter().zip(sealed) {
            let sealed =
                sealed.unwrap_or_else(|| Err(SdkError::Crypto("sealing failed".into())))?;
            if !requests.is_empty() && batch_bytes + sealed.len() > BATCH_BYTES {
                break;
            }
            batch_bytes += sealed.len();
            included.push(*d);
            requests.push(v1::EnqueueRequest {
                recipient: Some(v1::DeviceRef {
                    user: d.user.clone(),
                    device: d.device.clone(),
                }),
                message_id: d.message_id.to_vec().into(),
                payload: sealed.into(),
                delivery_token: Default::default(),
            });
        }
        if requests.is_empty() {
            // Everything in this page failed for good; look at the next one.
            return Ok(Batch::More);
        }
        let results = match v1::delivery_client::DeliveryClient::new(rpc.clone())
            .batch_enqueue(&v1::BatchEnqueueRequest { messages: requests })
            .await
        {
            Ok(answer) => answer.results,
            // The server refused the whole call (one item it cannot take at all): nothing of
            // it was stored. Send one at a time until the item that cannot go has failed on
            // its own.
            Err(status) if !retryable(&status) && status.code() != Code::ResourceExhausted => {
                if let [d] = included.as_slice() {
                    self.fail_delivery(d, &status.to_string())?;
                    self.one_at_a_time
                        .store(false, std::sync::atomic::Ordering::Relaxed);
                } else {
                    self.one_at_a_time
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
                return Ok(Batch::More);
            }
            Err(status) => {
                // The call's outcome is unknown: its items may be in their queues (so they can
                // no longer be cancelled) and are sent again (the server drops repeats).
                for d in &included {
                    self.store.mark_accepted(&d.item)?;
                    self.set_state(
                        &d.item,
                        SendState::Failed {
                            recoverable: true,
                            reason: format!("server: {status}; retrying"),
                        },
                    )?;
                }
                return Err(status.into());
            }
        };
        self.sealed_bytes_sent
            .fetch_add(batch_bytes as u64, std::sync::atomic::Ordering::Relaxed);
        for (d, r) in included.into_iter().zip(results) {
            let refused = Code::from_u8(u8::try_from(r.code).unwrap_or(u8::MAX));
            if refused == Code::Ok && r.relayed {
                // In the home server's relay outbox: a failure to relay it comes back later,
                // by this wire id.
                self.store.note_relayed(&d.message_id, &d.item, now_ms())?;
            }
            let done = match refused {
                Code::Ok => true,
                // The device is gone (revoked): nothing will ever reach it.
                Code::NotFound => true,
                Code::ResourceExhausted | Code::Unavailable => {
                    self.retry_later(d, &r.error)?;
                    false
                }
                _ => {
                    self.fail_delivery(d, &r.error)?;
                    false
                }
            };
            if done
                && self
                    .store
                    .delivery_done(&d.item, &d.user, &d.device, refused == Code::Ok)?
            {
                self.set_state(&d.item, SendState::Sent)?;
            }
        }
        Ok(Batch::More)
    }

    /// Applies the relay failures the home server reports for this user's messages to users
    /// of other servers: each message whose delivery to a device failed says so (which
    /// device, why, whether sending again may help).
    pub(crate) async fn check_relay_failures(self: &Arc<Self>) -> SdkResult<()> {
        const PAGE: u32 = 100;
        let rpc = self.session().await?;
        let client = v1::delivery_client::DeliveryClient::new(rpc);
        loop {
            let after_id = self.store.relay_failures_seen()?;
            let page = client
                .relay_failures(&v1::RelayFailuresRequest {
                    after_id,
                    limit: PAGE,
                })
                .await?;
            let Some(last) = page.failures.last().map(|f| f.id) else {
                return Ok(());
            };
            for f in &page.failures {
                let Some(item) = self.store.relayed_item(&f.message_id)? else {
                    continue;
                };
                let recipient = f
                    .recipient
                    .as_ref()
                    .map(|r| format!("{}/{}", r.user, r.device))
                    .unwrap_or_default();
                let again = if f.retryable {
                    "; sending it again may work"
                } else {
                    ""
                };
                self.set_state(
                    &item,
                    SendState::Failed {
                        recoverable: false,
                        reason: format!("{recipient}: not delivered: {}{again}", f.reason),
                    },
                )?;
            }
            self.store.set_relay_failures_seen(last)?;
            if page.failures.len() < PAGE as usize {
                return Ok(());
            }
        }
    }

    pub(crate) fn set_state(self: &Arc<Self>, item: &MessageId, state: SendState) -> SdkResult<()> {
        if let Some(conversation) = self.store.set_state(item, &state)? {
            let _ = self.events.send(ClientEvent::SendStateChanged {
                id: *item,
                conversation,
                state,
            });
        }
        Ok(())
    }
}

/// At most how large a sealed envelope of `transport_len` payload bytes is: the payload padded
/// (Padmé adds at most an eighth), the hybrid KEM ciphertext, the signature and headers.
fn sealed_size_bound(transport_len: usize) -> usize {
    transport_len
        .saturating_add(transport_len / 8)
        .saturating_add(4096)
}

#[cfg(test)]
mod tests {
    #[test]
    #[allow(clippy::unwrap_used)]
    fn the_size_bound_holds_for_real_envelopes() {
        let identity = qpq_core::identity::IdentityKey::generate();
        let recipient = qpq_core::kem::HybridSecretKey::generate();
        for len in [0usize, 1, 100, 1_500, 65_536, 1 << 20] {
            let payload = vec![7u8; len];
            let sealed =
                qpq_core::sealed::seal(&identity, &recipient.public(), 1, &payload).unwrap();
            assert!(
                sealed.len() <= super::sealed_size_bound(len),
                "{len}: {}",
                sealed.len()
            );
        }
    }
}
