//! The `Federation` service: what peer servers call, on the federation protocol only. Every
//! call first checks that the connection's certificate key is a listed peer's and that the
//! request's `origin` is that peer; users in requests are this server's (recipients,
//! targets) or the origin's (senders, requesters), never a third server's.

use qpq_proto::v1::{self, federation_server::Federation as FederationService};
use qrpc::{RequestContext, Status};

use crate::api::{Api, validate};
use crate::store::{NewMessage, Store};

/// Messages one relay batch may carry.
pub const MAX_RELAY_BATCH: usize = 50;

impl<S: Store> Api<S> {
    /// The authenticated peer of this call; traffic from it also wakes its outbox (it is
    /// reachable again).
    async fn peer_of(
        &self,
        ctx: &RequestContext,
        origin: &str,
        lookup: bool,
    ) -> Result<String, Status> {
        let fed = self.federation()?;
        let domain = fed.authenticate(ctx.peer(), origin, lookup)?;
        // Plugins decide on a peer once per connection (its first call).
        #[derive(Clone)]
        struct PluginsAccepted;
        if ctx
            .peer()
            .with_extensions(|e| e.get::<PluginsAccepted>().is_none())
        {
            self.state
                .plugins
                .check(|| crate::plugins::Event::FederationPeer {
                    domain: domain.clone(),
                })
                .await?;
            ctx.peer().with_extensions(|e| e.insert(PluginsAccepted));
        }
        if fed.should_wake(&domain) {
            self.state.store.outbox_wake(domain.clone()).await?;
            fed.wake.notify_one();
        }
        Ok(domain)
    }

    /// Checks one relayed message from `origin` and makes it a queue entry.
    fn relayed_message(&self, origin: &str, m: &v1::RelayedMessage) -> Result<NewMessage, Status> {
        let recipient = validate::device_ref(m.recipient.as_ref())?;
        validate::user(&m.sender_user)?;
        validate::device(&m.sender_device)?;
        validate::message(
            &m.message_id,
            &m.payload,
            self.state.limits.max_message_bytes,
        )?;
        Ok(NewMessage {
            recipient,
            sender: format!("{}@{origin}/{}", m.sender_user, m.sender_device),
            sender_user: None,
            stranger: false,
            message_id: m.message_id.to_vec(),
            payload: m.payload.to_vec(),
        })
    }

    /// Queues messages relayed by `origin`: the stranger rules and the per-sender limits
    /// apply to each remote sender as to a local one.
    async fn accept_relayed(
        &self,
        origin: &str,
        messages: &[v1::RelayedMessage],
    ) -> Result<Vec<v1::EnqueueResponse>, Status> {
        let fed = self.federation()?;
        fed.check(
            &fed.messages_per_peer,
            &origin.to_owned(),
            u32::try_from(messages.len()).unwrap_or(u32::MAX),
            "relayed messages from your server",
        )?;
        // A malformed message is refused alone (with why), not with the batch around it.
        let mut refused: Vec<Option<v1::EnqueueResponse>> = vec![None; messages.len()];
        let mut checked = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            match self.relayed_message(origin, m) {
                Ok(message) => checked.push((i, m, message)),
                Err(status) => {
                    refused[i] = Some(v1::EnqueueResponse {
                        code: u32::from(status.code() as u8),
                        error: status.message().to_owned(),
                        ..Default::default()
                    });
                }
            }
        }
        let (slots, (raws, mut queued)): (Vec<usize>, (Vec<&v1::RelayedMessage>, Vec<NewMessage>)) =
            checked.into_iter().map(|(i, raw, m)| (i, (raw, m))).unzip();
        // Each remote sender is held to the per-user limits as a local one is, message by
        // message: what fits is queued, and the rest of that sender's messages (later ones
        // too, to keep its order) come back `ResourceExhausted` for the origin to send again
        // later. One sender over its limit holds back no one else.
        let mut stopped: std::collections::HashMap<String, String> = Default::default();
        let mut recipients_of: std::collections::HashMap<&str, Vec<String>> = Default::default();
        for (m, raw) in queued.iter().zip(&raws) {
            recipients_of
                .entry(raw.sender_user.as_str())
                .or_default()
                .push(m.recipient.user.clone());
        }
        let mut strangers: std::collections::HashSet<(String, String)> = Default::default();
        for (user, recipients) in &mut recipients_of {
            recipients.sort();
            recipients.dedup();
            let sender = format!("{user}@{origin}");
            let known = self.state.known_to(&sender, recipients).await?;
            for (r, k) in recipients.iter().zip(known) {
                if !k {
                    strangers.insert((sender.clone(), r.clone()));
                }
            }
        }
        let l = &self.state.limiters;
        for ((m, raw), &i) in queued.iter_mut().zip(&raws).zip(&slots) {
            let sender = format!("{}@{origin}", raw.sender_user);
            m.stranger = strangers.contains(&(sender.clone(), m.recipient.user.clone()));
            let verdict = match stopped.get(&sender) {
                Some(reason) => Err(reason.clone()),
                None => l
                    .check(&l.messages_per_user, &sender, 1, "messages")
                    .and_then(|()| {
                        l.check(
                            &l.stranger_messages_per_user,
                            &sender,
                            u32::from(m.stranger),
                            "messages to people who have not written to you",
                        )
                    })
                    .and_then(|()| {
                        fed.check(
                            &fed.strangers_per_peer_and_user,
                            &(origin.to_owned(), m.recipient.user.clone()),
                            u32::from(m.stranger),
                            "messages from strangers to this user from your server",
                        )
                    })
                    .map_err(|status| status.message().to_owned()),
            };
            if let Err(reason) = verdict {
                stopped.insert(sender, reason.clone());
                refused[i] = Some(v1::EnqueueResponse {
                    code: u32::from(qrpc::Code::ResourceExhausted as u8),
                    error: reason,
                    ..Default::default()
                });
            }
        }
        let queued: Vec<NewMessage> = queued
            .into_iter()
            .zip(&slots)
            .filter_map(|(m, &i)| refused[i].is_none().then_some(m))
            .collect();
        let recipients: Vec<_> = queued.iter().map(|m| m.recipient.clone()).collect();
        let now = self.state.now_ms();
        // Remembered past the origin's give-up time: a message it relays again after an
        // outage is still recognised.
        let seen_until = now.saturating_add(
            fed.config
                .give_up_secs
                .saturating_mul(1000)
                .saturating_mul(2),
        );
        let outcomes = self
            .state
            .store
            .relay_accept(queued, self.state.queue_limits(), now, seen_until)
            .await?;
        for (recipient, outcome) in recipients.iter().zip(&outcomes) {
            if let Ok(o) = outcome
                && !o.duplicate
            {
                self.state.message_arrived(recipient, o.seq).await;
            }
        }
        let mut outcomes = outcomes.into_iter();
        Ok(refused
            .into_iter()
            .map(|r| match r {
                Some(refusal) => refusal,
                None => outcomes
                    .next()
                    .map(crate::api::delivery::enqueue_response)
                    .unwrap_or_default(),
            })
            .collect())
    }
}

impl<S: Store> FederationService for Api<S> {
    async fn relay_enqueue(
        &self,
        ctx: RequestContext,
        request: v1::RelayEnqueueRequest,
    ) -> Result<v1::EnqueueResponse, Status> {
        let origin = self.peer_of(&ctx, &request.origin, false).await?;
        let message = request
            .message
            .ok_or_else(|| Status::invalid_argument("message: missing"))?;
        let result = self
            .accept_relayed(&origin, std::slice::from_ref(&message))
            .await?
            .pop()
            .ok_or_else(|| Status::internal("no result for the relayed message"))?;
        // One message: its refusal is the call's, as for Enqueue.
        match result.code {
            0 => Ok(result),
            code => Err(Status::new(
                qrpc::Code::from_u8(u8::try_from(code).unwrap_or(2)),
                result.error,
            )),
        }
    }

    async fn relay_batch_enqueue(
        &self,
        ctx: RequestContext,
        request: v1::RelayBatchEnqueueRequest,
    ) -> Result<v1::BatchEnqueueResponse, Status> {
        let origin = self.peer_of(&ctx, &request.origin, false).await?;
        if request.messages.is_empty() || request.messages.len() > MAX_RELAY_BATCH {
            return Err(Status::invalid_argument(format!(
                "messages: 1 to {MAX_RELAY_BATCH} entries"
            )));
        }
        Ok(v1::BatchEnqueueResponse {
            results: self.accept_relayed(&origin, &request.messages).await?,
        })
    }

    async fn proxy_fetch_key_package(
        &self,
        ctx: RequestContext,
        request: v1::ProxyFetchKeyPackageRequest,
    ) -> Result<v1::FetchKeyPackageResponse, Status> {
        let origin = self.peer_of(&ctx, &request.origin, true).await?;
        let device = validate::device_ref(request.device.as_ref())?;
        validate::user(&request.requester)
            .map_err(|_| Status::invalid_argument("requester: not a user name"))?;
        let fed = self.federation()?;
        // However the origin spreads its requests over its users, it drains one local
        // user's packages no faster than this.
        fed.check(
            &fed.key_packages_per_peer_and_user,
            &(origin.clone(), device.user.clone()),
            1,
            "key-package fetches for this user from your server",
        )?;
        self.take_key_package_for(&format!("{}@{origin}", request.requester), device)
            .await
    }

    async fn proxy_fetch_hybrid_key(
        &self,
        ctx: RequestContext,
        request: v1::ProxyFetchHybridKeyRequest,
    ) -> Result<v1::FetchHybridKeyResponse, Status> {
        self.peer_of(&ctx, &request.origin, true).await?;
        let device = validate::device_ref(request.device.as_ref())?;
        self.bundle_of(device).await
    }

    async fn proxy_resolve_user(
        &self,
        ctx: RequestContext,
        request: v1::ProxyResolveUserRequest,
    ) -> Result<v1::ResolveUserResponse, Status> {
        self.peer_of(&ctx, &request.origin, true).await?;
        validate::user(&request.user)?;
        self.local_user(request.user).await
    }

    async fn federation_health(
        &self,
        ctx: RequestContext,
        request: v1::FederationHealthRequest,
    ) -> Result<v1::FederationHealthResponse, Status> {
        // The relay sender's probe: not metered with lookups, so lookups cannot starve it.
        self.peer_of(&ctx, &request.origin, false).await?;
        Ok(v1::FederationHealthResponse {
            status: "ok".into(),
            domain: self.state.domain.clone(),
        })
    }

    async fn federation_kt_head(
        &self,
        ctx: RequestContext,
        request: v1::FederationKtHeadRequest,
    ) -> Result<v1::KtHeadResponse, Status> {
        self.peer_of(&ctx, &request.origin, true).await?;
        self.state.kt_head(request.since_size).await
    }

    async fn federation_cosignature(
        &self,
        ctx: RequestContext,
        request: v1::FederationCosignatureRequest,
    ) -> Result<v1::FederationCosignatureResponse, Status> {
        let origin = self.peer_of(&ctx, &request.origin, true).await?;
        let Some(witnessed) = self.state.store.witnessed_head(origin.clone()).await? else {
            return Ok(v1::FederationCosignatureResponse::default());
        };
        let head = qpq_core::kt::SignedTreeHead::decode(&witnessed.head)
            .ok()
            .and_then(|h| {
                let key = <[u8; 32]>::try_from(witnessed.log_key.as_slice()).ok()?;
                h.verify(&qpq_core::identity::IdentityPublic::from_bytes(&key).ok()?)
                    .ok()
            })
            .ok_or_else(|| Status::internal("a witnessed head is corrupt"))?;
        let cosignature =
            qpq_core::kt::Cosignature::sign(&self.state.kt_key, &self.state.domain, &origin, &head);
        Ok(v1::FederationCosignatureResponse {
            tree_head: witnessed.head.into(),
            cosignature: cosignature.encode().into(),
        })
    }
}
