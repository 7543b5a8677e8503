//! Delivery: per-device queues, push on arrival, long-polling fetch.

use std::time::Duration;

use qpq_proto::v1::{self, delivery_server::Delivery};
use qrpc::{RequestContext, Status};
use subtle::ConstantTimeEq;

use crate::auth::caller;
use crate::state::{Api, now_ms, sha256};
use crate::store::{NewMessage, Store, StoredMessage};
use crate::validate;

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

impl<S: Store> Api<S> {
    fn new_message(&self, request: &v1::EnqueueRequest) -> Result<NewMessage, Status> {
        let recipient = validate::device_ref(request.recipient.as_ref())?;
        validate::exact_len("message_id", &request.message_id, 16)?;
        if request.payload.is_empty() {
            return Err(Status::invalid_argument("payload: must not be empty"));
        }
        Ok(NewMessage {
            recipient,
            message_id: request.message_id.to_vec(),
            payload: request.payload.to_vec(),
        })
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
        let message = self.new_message(&request)?;
        if caller(&ctx).is_err() {
            if self
                .state
                .sealed_limiter
                .check_key(&ctx.remote_address().ip())
                .is_err()
            {
                return Err(Status::resource_exhausted(
                    "too many sealed sends from this address",
                ));
            }
            self.check_sealed(&request, &message).await?;
        }
        let recipient = message.recipient.clone();
        let outcome = self
            .state
            .store
            .enqueue(message, self.state.limits.max_queue_depth, now_ms())
            .await?;
        if !outcome.duplicate {
            self.state.message_arrived(&recipient, outcome.seq);
        }
        Ok(v1::EnqueueResponse {
            seq: outcome.seq,
            duplicate: outcome.duplicate,
        })
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
        let waiter = self.state.waiter(&me);
        loop {
            // Register interest before looking, so an enqueue between the two is not missed.
            let notified = waiter.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
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
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
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
        let removed = self
            .state
            .store
            .ack(caller(&ctx)?, request.up_to_seq)
            .await?;
        Ok(v1::AckResponse { removed })
    }

    async fn batch_enqueue(
        &self,
        ctx: RequestContext,
        request: v1::BatchEnqueueRequest,
    ) -> Result<v1::BatchEnqueueResponse, Status> {
        caller(&ctx)?;
        if request.messages.is_empty() || request.messages.len() > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "messages: 1 to {MAX_BATCH} entries"
            )));
        }
        let messages = request
            .messages
            .iter()
            .map(|m| self.new_message(m))
            .collect::<Result<Vec<_>, _>>()?;
        let recipients: Vec<_> = messages.iter().map(|m| m.recipient.clone()).collect();
        let outcomes = self
            .state
            .store
            .batch_enqueue(messages, self.state.limits.max_queue_depth, now_ms())
            .await?;
        for (recipient, outcome) in recipients.iter().zip(&outcomes) {
            if !outcome.duplicate {
                self.state.message_arrived(recipient, outcome.seq);
            }
        }
        Ok(v1::BatchEnqueueResponse {
            results: outcomes
                .into_iter()
                .map(|o| v1::EnqueueResponse {
                    seq: o.seq,
                    duplicate: o.duplicate,
                })
                .collect(),
        })
    }
}
