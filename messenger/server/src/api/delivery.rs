//! Delivery: per-device queues, push on arrival, long-polling fetch.

use std::time::Duration;

use qpq_proto::v1::{self, delivery_server::Delivery};
use qrpc::{RequestContext, Status};
use subtle::ConstantTimeEq;

use crate::api::Api;
use crate::api::validate;
use crate::session::{caller, live_session};
use crate::store::{
    DeviceId, Enqueued, NewMessage, OutboxMessage, Store, StoreError, StoredMessage,
};
use crate::util::sha256;

/// Messages one batch enqueue may carry.
const MAX_BATCH: usize = 100;

fn envelope(m: StoredMessage) -> v1::Envelope {
    v1::Envelope {
        seq: m.seq,
        message_id: m.message_id.into(),
        payload: m.payload.into(),
        received_at_ms: m.received_at_ms,
    }
}

/// The domain of a recipient of another server (`user@domain`), `None` for a local one.
fn remote_domain(m: &NewMessage) -> Option<&str> {
    m.recipient.user.split_once('@').map(|(_, d)| d)
}

/// Counts a `FetchWait` against its connection's allowance while it waits.
struct FetchWaitSlot(std::sync::Arc<std::sync::atomic::AtomicU32>);

impl Drop for FetchWaitSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

#[derive(Default)]
struct FetchWaits(std::sync::Arc<std::sync::atomic::AtomicU32>);

pub(crate) fn enqueue_response(result: Result<Enqueued, StoreError>) -> v1::EnqueueResponse {
    match result {
        Ok(o) => v1::EnqueueResponse {
            seq: o.seq,
            duplicate: o.duplicate,
            code: 0,
            error: String::new(),
            relayed: false,
        },
        Err(e) => {
            let status = Status::from(e);
            v1::EnqueueResponse {
                seq: 0,
                duplicate: false,
                code: u32::from(status.code() as u8),
                error: status.message().to_owned(),
                relayed: false,
            }
        }
    }
}

impl<S: Store> Api<S> {
    /// Checks one message; the sender fields are filled in by [`Api::attribute`]. A recipient
    /// of another server is named `user@domain` (see [`remote_domain`]).
    fn new_message(&self, request: &v1::EnqueueRequest) -> Result<NewMessage, Status> {
        let target = validate::target(request.recipient.as_ref(), &self.state.domain)?;
        let mut recipient = target.device;
        if let Some(domain) = &target.domain {
            recipient.user = format!("{}@{domain}", recipient.user);
        }
        validate::message(
            &request.message_id,
            &request.payload,
            self.state.limits.max_message_bytes,
        )?;
        Ok(NewMessage {
            recipient,
            sender: String::new(),
            sender_user: None,
            stranger: false,
            message_id: request.message_id.to_vec(),
            payload: request.payload.to_vec(),
        })
    }

    /// Puts messages of `me` to users of other servers in the relay outbox (one result each,
    /// in order) and wakes the relay sender.
    async fn relay(
        &self,
        me: &DeviceId,
        messages: Vec<NewMessage>,
    ) -> Result<Vec<v1::EnqueueResponse>, Status> {
        let fed = self.federation()?;
        let mut results = vec![None; messages.len()];
        let mut outbox = Vec::new();
        let mut slots = Vec::new();
        for (i, m) in messages.into_iter().enumerate() {
            let Some((user, domain)) = m.recipient.user.split_once('@') else {
                continue;
            };
            if fed.is_peer(domain) {
                slots.push(i);
                outbox.push(OutboxMessage {
                    destination: domain.to_owned(),
                    sender: me.clone(),
                    recipient: DeviceId::new(user, &m.recipient.device),
                    message_id: m.message_id,
                    payload: m.payload,
                });
            } else {
                let mut refused = enqueue_response(Err(StoreError::Forbidden));
                refused.error = format!("{domain} is not a server this one federates with");
                results[i] = Some(refused);
            }
        }
        let recipients: Vec<String> = outbox
            .iter()
            .map(|m| format!("{}@{}", m.recipient.user, m.destination))
            .collect();
        let outcomes = self
            .state
            .store
            .outbox_push(
                outbox,
                crate::store::QueueLimits {
                    max_messages: fed.config.max_outbox_per_destination,
                    max_bytes: u64::MAX,
                    sender_messages: fed.config.max_outbox_per_sender,
                    sender_bytes: fed.config.max_outbox_bytes_per_sender,
                    stranger_messages: fed.config.max_outbox_per_sender,
                    stranger_bytes: fed.config.max_outbox_bytes_per_sender,
                },
                self.state.now_ms(),
            )
            .await?;
        for ((slot, outcome), recipient) in slots.into_iter().zip(outcomes).zip(recipients) {
            if outcome.is_ok() {
                self.state.wrote_to(&me.user, &recipient).await;
            }
            let mut response = enqueue_response(outcome);
            response.relayed = response.code == 0;
            results[slot] = Some(response);
        }
        fed.wake.notify_one();
        Ok(results.into_iter().flatten().collect())
    }

    /// Marks messages as sent by logged-in `me`, decides which recipients have never talked to
    /// `me`, and takes the sender's rate-limit cells (all messages, and those to strangers).
    async fn attribute(&self, me: &DeviceId, messages: &mut [NewMessage]) -> Result<(), Status> {
        // Users of other servers are judged there (their server applies the stranger rules
        // to senders from here); only local recipients are looked up.
        let mut recipients: Vec<String> = messages
            .iter()
            .map(|m| m.recipient.user.clone())
            .filter(|u| !u.contains('@'))
            .collect();
        recipients.sort();
        recipients.dedup();
        // "Known" is from the recipient's side: it wrote to us or shares a channel with us.
        let known = self.state.known_to(&me.user, &recipients).await?;
        let strangers: std::collections::HashSet<String> = recipients
            .into_iter()
            .zip(known)
            .filter_map(|(r, k)| (!k).then_some(r))
            .collect();
        let sender = format!("{}/{}", me.user, me.device);
        let mut to_strangers = 0u32;
        for m in messages.iter_mut() {
            m.sender.clone_from(&sender);
            m.sender_user = Some(me.user.clone());
            m.stranger = strangers.contains(&m.recipient.user);
            to_strangers += u32::from(m.stranger);
        }
        let l = &self.state.limiters;
        let n = u32::try_from(messages.len()).unwrap_or(u32::MAX);
        l.check(&l.messages_per_user, &me.user, n, "messages")?;
        l.check(
            &l.stranger_messages_per_user,
            &me.user,
            to_strangers,
            "messages to people who have not written to you",
        )
    }

    /// Asks the plugins about each message (sender or sealed, recipient, size); the first
    /// denial refuses the call.
    async fn plugins_allow(&self, messages: &[NewMessage]) -> Result<(), Status> {
        for m in messages {
            self.state
                .plugins
                .check(|| crate::plugins::Event::Enqueue {
                    sender: m.sender_user.clone(),
                    recipient: m.recipient.user.clone(),
                    first_contact: m.stranger,
                    size: m.payload.len() as u64,
                })
                .await?;
        }
        Ok(())
    }

    /// A sealed send (no login) must carry the recipient's delivery token.
    async fn check_sealed(
        &self,
        request: &v1::EnqueueRequest,
        message: &NewMessage,
    ) -> Result<(), Status> {
        let refused = || {
            Status::permission_denied(
                "sealed send refused: log in or present the recipient's delivery token",
            )
        };
        if request.delivery_token.len() != 32 {
            return Err(refused());
        }
        let bundle = self
            .state
            .store
            .bundle(message.recipient.clone())
            .await?
            .ok_or_else(refused)?;
        let expected = bundle.delivery_token_hash.ok_or_else(refused)?;
        let given = sha256(&request.delivery_token);
        if bool::from(given.ct_eq(expected.as_slice())) {
            Ok(())
        } else {
            Err(refused())
        }
    }

    /// Takes one of the connection's `FetchWait` slots for as long as the guard lives.
    fn fetch_wait_slot(&self, ctx: &RequestContext) -> Result<FetchWaitSlot, Status> {
        let counter = ctx.peer().with_extensions(|e| {
            if e.get::<FetchWaits>().is_none() {
                e.insert(FetchWaits::default());
            }
            e.get::<FetchWaits>()
                .map(|w| std::sync::Arc::clone(&w.0))
                .unwrap_or_default()
        });
        let max = self.state.limits.max_fetch_waits_per_connection;
        let taken = counter.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |n| (n < max).then_some(n + 1),
        );
        match taken {
            Ok(_) => Ok(FetchWaitSlot(counter)),
            Err(_) => Err(Status::resource_exhausted(format!(
                "at most {max} FetchWait calls may wait on one connection"
            ))),
        }
    }

    fn limit(&self, requested: u32) -> u32 {
        match requested {
            0 => self.state.limits.max_fetch,
            n => n.min(self.state.limits.max_fetch),
        }
    }
}

impl<S: Store> Delivery for Api<S> {
    async fn enqueue(
        &self,
        ctx: RequestContext,
        request: v1::EnqueueRequest,
    ) -> Result<v1::EnqueueResponse, Status> {
        let mut message = self.new_message(&request)?;
        match live_session(&ctx) {
            Some(session) => {
                self.attribute(&session.device, std::slice::from_mut(&mut message))
                    .await?;
            }
            None => {
                // Sealed: no sender is known; the delivery token and the per-IP limit gate it,
                // and all sealed senders share one quota in each queue.
                let l = &self.state.limiters;
                l.check(
                    &l.sealed_per_ip,
                    &ctx.remote_address().ip(),
                    1,
                    "sealed sends from this address",
                )?;
                self.check_sealed(&request, &message).await?;
            }
        }
        self.plugins_allow(std::slice::from_ref(&message)).await?;
        if remote_domain(&message).is_some() {
            let Some(session) = live_session(&ctx) else {
                return Err(Status::permission_denied(
                    "sealed sends reach this server's users only; log in to write to users of other servers",
                ));
            };
            return self
                .relay(&session.device, vec![message])
                .await?
                .pop()
                .ok_or_else(|| Status::internal("no result for the message"));
        }
        let recipient = message.recipient.clone();
        let sender_user = message.sender_user.clone();
        let outcome = self
            .state
            .store
            .enqueue(message, self.state.queue_limits(), self.state.now_ms())
            .await?;
        if let Some(sender) = &sender_user {
            self.state.wrote_to(sender, &recipient.user).await;
        }
        if !outcome.duplicate {
            self.state.message_arrived(&recipient, outcome.seq).await;
        }
        Ok(enqueue_response(Ok(outcome)))
    }

    async fn fetch(
        &self,
        ctx: RequestContext,
        request: v1::FetchRequest,
    ) -> Result<v1::FetchResponse, Status> {
        let me = caller(&ctx)?;
        let messages = self
            .state
            .store
            .fetch(me, request.after_seq, self.limit(request.limit))
            .await?;
        Ok(v1::FetchResponse {
            messages: messages.into_iter().map(envelope).collect(),
        })
    }

    async fn fetch_wait(
        &self,
        ctx: RequestContext,
        request: v1::FetchWaitRequest,
    ) -> Result<v1::FetchResponse, Status> {
        let me = caller(&ctx)?;
        let limit = self.limit(request.limit);
        let wait = Duration::from_millis(u64::from(
            request.timeout_ms.min(self.state.limits.max_fetch_wait_ms),
        ));
        let deadline = tokio::time::Instant::now() + wait;
        let _slot = self.fetch_wait_slot(&ctx)?;
        // Watch before looking, so an enqueue between the two is not missed. Only arrivals on
        // this device past `after_seq` wake this call, and only they cost a query.
        let mut arrivals = self.state.watch_arrivals(&me);
        arrivals.mark_seen();
        loop {
            self.state
                .fetch_wait_queries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let messages = self
                .state
                .store
                .fetch(me.clone(), request.after_seq, limit)
                .await?;
            if !messages.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(v1::FetchResponse {
                    messages: messages.into_iter().map(envelope).collect(),
                });
            }
            self.state
                .fetch_waits_parked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Answer at once when the server shuts down: the long poll must not hold a
            // graceful shutdown for its whole grace period.
            let woken = tokio::select! {
                woken = tokio::time::timeout_at(deadline, arrivals.wait_past(request.after_seq)) => woken.is_ok(),
                () = ctx.peer().server_shutdown() => false,
            };
            if !woken {
                return Ok(v1::FetchResponse {
                    messages: Vec::new(),
                });
            }
        }
    }

    async fn peek(
        &self,
        ctx: RequestContext,
        _request: v1::PeekRequest,
    ) -> Result<v1::PeekResponse, Status> {
        let depth = self.state.store.peek(caller(&ctx)?).await?;
        Ok(v1::PeekResponse {
            depth: depth.depth,
            first_seq: depth.first_seq,
            last_seq: depth.last_seq,
        })
    }

    async fn ack(
        &self,
        ctx: RequestContext,
        request: v1::AckRequest,
    ) -> Result<v1::AckResponse, Status> {
        let me = caller(&ctx)?;
        self.check_write(&me)?;
        let removed = self.state.store.ack(me, request.up_to_seq).await?;
        Ok(v1::AckResponse { removed })
    }

    async fn batch_enqueue(
        &self,
        ctx: RequestContext,
        request: v1::BatchEnqueueRequest,
    ) -> Result<v1::BatchEnqueueResponse, Status> {
        let me = caller(&ctx)?;
        if request.messages.is_empty() || request.messages.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "messages: 1 to {MAX_BATCH} entries"
            )));
        }
        let mut messages = request
            .messages
            .iter()
            .map(|m| self.new_message(m))
            .collect::<Result<Vec<_>, _>>()?;
        self.attribute(&me, &mut messages).await?;
        self.plugins_allow(&messages).await?;
        // Local recipients' queues and other servers' outboxes; the answers in request order.
        let (remote, local): (Vec<_>, Vec<_>) = messages
            .into_iter()
            .enumerate()
            .partition(|(_, m)| remote_domain(m).is_some());
        let mut results: Vec<Option<v1::EnqueueResponse>> = vec![None; request.messages.len()];
        if !remote.is_empty() {
            let (slots, messages): (Vec<usize>, Vec<NewMessage>) = remote.into_iter().unzip();
            for (slot, response) in slots.into_iter().zip(self.relay(&me, messages).await?) {
                results[slot] = Some(response);
            }
        }
        let (slots, messages): (Vec<usize>, Vec<NewMessage>) = local.into_iter().unzip();
        let recipients: Vec<_> = messages.iter().map(|m| m.recipient.clone()).collect();
        let outcomes = if messages.is_empty() {
            Vec::new()
        } else {
            self.state
                .store
                .batch_enqueue(messages, self.state.queue_limits(), self.state.now_ms())
                .await?
        };
        for ((recipient, outcome), slot) in recipients.iter().zip(outcomes).zip(slots) {
            if outcome.is_ok() {
                self.state.wrote_to(&me.user, &recipient.user).await;
            }
            if let Ok(o) = &outcome
                && !o.duplicate
            {
                self.state.message_arrived(recipient, o.seq).await;
            }
            results[slot] = Some(enqueue_response(outcome));
        }
        Ok(v1::BatchEnqueueResponse {
            results: results.into_iter().flatten().collect(),
        })
    }

    async fn relay_failures(
        &self,
        ctx: RequestContext,
        request: v1::RelayFailuresRequest,
    ) -> Result<v1::RelayFailuresResponse, Status> {
        let me = caller(&ctx)?;
        let limit = match request.limit {
            0 => 100,
            n => n.min(100),
        };
        let failures = self
            .state
            .store
            .relay_failures(me.user, request.after_id, limit)
            .await?;
        Ok(v1::RelayFailuresResponse {
            failures: failures
                .into_iter()
                .map(|f| v1::RelayFailure {
                    id: f.id,
                    message_id: f.message_id.into(),
                    recipient: Some(v1::DeviceRef {
                        user: f.recipient.user,
                        device: f.recipient.device,
                    }),
                    reason: f.reason,
                    failed_at_ms: f.failed_at_ms,
                    retryable: f.retryable,
                })
                .collect(),
        })
    }
}
