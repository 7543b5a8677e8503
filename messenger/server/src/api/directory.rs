//! The directory (users) and channels.

use qpq_proto::v1::{self, channel_server::Channel, server_event_push::Event, user_server::User};
use qrpc::{RequestContext, Status};

use crate::api::Api;
use crate::api::validate;
use crate::session::caller;
use crate::store::{Store, StoreError};

/// Members one channel may be created with.
const MAX_CHANNEL_MEMBERS: usize = 1000;

impl<S: Store> User for Api<S> {
    async fn resolve_user(
        &self,
        ctx: RequestContext,
        request: v1::ResolveUserRequest,
    ) -> Result<v1::ResolveUserResponse, Status> {
        let address = validate::address(&request.user, &self.state.domain)?;
        match address.domain {
            Some(domain) => {
                self.remote_user(&crate::session::caller(&ctx)?, &domain, &address.device)
                    .await
            }
            None => self.local_user(address.device).await,
        }
    }

    async fn resolve_identity(
        &self,
        _ctx: RequestContext,
        request: v1::ResolveIdentityRequest,
    ) -> Result<v1::ResolveIdentityResponse, Status> {
        validate::exact_len("identity_key", &request.identity_key, 32)?;
        let device = self
            .state
            .store
            .resolve_identity(request.identity_key.to_vec())
            .await?
            .ok_or_else(|| Status::not_found("no device has this identity key"))?;
        Ok(v1::ResolveIdentityResponse {
            user: device.user,
            device: device.device,
        })
    }
}

impl<S: Store> Api<S> {
    /// A local user's devices with identity keys (`NotFound` when there is no such user).
    pub(crate) async fn local_user(&self, user: String) -> Result<v1::ResolveUserResponse, Status> {
        if !self.state.store.user_exists(user.clone()).await? {
            return Err(Status::not_found("no such user"));
        }
        let devices = self.state.store.user_identities(user).await?;
        Ok(v1::ResolveUserResponse {
            devices: devices
                .into_iter()
                .map(|(device, key)| v1::DeviceIdentity {
                    device,
                    identity_key: key.into(),
                })
                .collect(),
        })
    }

    /// Bounds invitations: per call, and per inviting user per minute.
    fn check_invites(&self, user: &str, n: usize) -> Result<(), Status> {
        let per_call = self.state.limits.max_channel_invites_per_call as usize;
        if n > per_call {
            return Err(Status::invalid_argument(format!(
                "at most {per_call} users may be invited in one call"
            )));
        }
        let l = &self.state.limiters;
        l.check(
            &l.channel_invites_per_user,
            &user.to_owned(),
            u32::try_from(n).unwrap_or(u32::MAX),
            "channel invitations",
        )
    }
}

impl<S: Store> Channel for Api<S> {
    async fn create_channel(
        &self,
        ctx: RequestContext,
        request: v1::CreateChannelRequest,
    ) -> Result<v1::CreateChannelResponse, Status> {
        let me = caller(&ctx)?;
        self.check_write(&me)?;
        if request.name.is_empty() || request.name.len() > 64 {
            return Err(Status::invalid_argument("name: 1 to 64 bytes"));
        }
        validate::max_len("mls_group_id", request.mls_group_id.len(), 256)?;
        self.check_invites(&me.user, request.members.len())?;
        for member in &request.members {
            validate::user(member)?;
        }
        self.state
            .plugins
            .check(|| crate::plugins::Event::ChannelCreated {
                creator: me.user.clone(),
                channel: crate::util::hex(&request.mls_group_id),
                members: request.members.clone(),
            })
            .await?;
        let owned = self.state.store.channels_owned(me.user.clone()).await?;
        let max_owned = self.state.limits.max_channels_per_user;
        if owned >= u64::from(max_owned) {
            return Err(Status::resource_exhausted(format!(
                "a user may own at most {max_owned} channels"
            )));
        }
        let id: [u8; 16] = rand::random();
        let mut members = request.members.clone();
        members.sort();
        members.dedup();
        members.retain(|m| *m != me.user);
        match self
            .state
            .store
            .create_channel(
                id.to_vec(),
                request.name,
                me.user.clone(),
                members.clone(),
                request.mls_group_id.to_vec(),
                self.state.now_ms(),
            )
            .await
        {
            Ok(()) => {}
            Err(StoreError::NotFound) => return Err(Status::not_found("a member does not exist")),
            Err(e) => return Err(e.into()),
        }
        let event = Event::Channel(v1::ChannelUpdate {
            channel_id: id.to_vec().into(),
            change: "created".into(),
        });
        members.push(me.user);
        members.dedup();
        for member in &members {
            self.state.push_to_user(member, &event).await;
        }
        self.state.channels_changed().await;
        Ok(v1::CreateChannelResponse {
            channel_id: id.to_vec().into(),
        })
    }

    async fn update_channel(
        &self,
        ctx: RequestContext,
        request: v1::UpdateChannelRequest,
    ) -> Result<v1::UpdateChannelResponse, Status> {
        let me = caller(&ctx)?;
        validate::exact_len("channel_id", &request.channel_id, 16)?;
        if request.remove.len() > MAX_CHANNEL_MEMBERS {
            return Err(Status::invalid_argument(format!(
                "remove: at most {MAX_CHANNEL_MEMBERS} names"
            )));
        }
        for user in request.add.iter().chain(&request.remove) {
            validate::user(user)?;
        }
        self.check_write(&me)?;
        // The invite cap bounds `add` before any plugin sees it.
        self.check_invites(&me.user, request.add.len())?;
        self.state
            .plugins
            .check(|| crate::plugins::Event::Membership {
                actor: me.user.clone(),
                channel: crate::util::hex(&request.channel_id),
                added: request.add.clone(),
                removed: request.remove.clone(),
            })
            .await?;
        let members = match self
            .state
            .store
            .update_channel(
                request.channel_id.to_vec(),
                me.user.clone(),
                request.add.clone(),
                request.remove.clone(),
                MAX_CHANNEL_MEMBERS,
            )
            .await
        {
            Ok(members) => members,
            // A stranger cannot tell a channel it is not in from no channel at all.
            Err(StoreError::NotFound) => {
                return Err(Status::not_found(
                    "no such channel among yours, or an added user does not exist",
                ));
            }
            Err(StoreError::QuotaExceeded) => {
                return Err(Status::resource_exhausted(format!(
                    "a channel has at most {MAX_CHANNEL_MEMBERS} members"
                )));
            }
            Err(StoreError::Forbidden) => {
                return Err(Status::permission_denied(
                    "only the channel's owner invites or removes others; a member may remove itself",
                ));
            }
            Err(e) => return Err(e.into()),
        };
        let event = Event::Channel(v1::ChannelUpdate {
            channel_id: request.channel_id.clone(),
            change: "members".into(),
        });
        for user in members.iter().chain(&request.remove) {
            self.state.push_to_user(user, &event).await;
        }
        self.state.channels_changed().await;
        Ok(v1::UpdateChannelResponse { members })
    }

    async fn answer_invitation(
        &self,
        ctx: RequestContext,
        request: v1::AnswerInvitationRequest,
    ) -> Result<v1::AnswerInvitationResponse, Status> {
        let me = caller(&ctx)?;
        validate::exact_len("channel_id", &request.channel_id, 16)?;
        self.check_write(&me)?;
        let members = match self
            .state
            .store
            .answer_channel(
                request.channel_id.to_vec(),
                me.user.clone(),
                request.mls_group_id.to_vec(),
                request.accept,
            )
            .await
        {
            Ok(members) => members,
            Err(StoreError::NotFound) => {
                return Err(Status::not_found("no invitation to such a channel"));
            }
            Err(e) => return Err(e.into()),
        };
        if request.accept {
            let event = Event::Channel(v1::ChannelUpdate {
                channel_id: request.channel_id.clone(),
                change: "members".into(),
            });
            for user in &members {
                self.state.push_to_user(user, &event).await;
            }
            self.state.channels_changed().await;
        }
        Ok(v1::AnswerInvitationResponse { members })
    }

    async fn typing(
        &self,
        ctx: RequestContext,
        request: v1::TypingRequest,
    ) -> Result<v1::TypingResponse, Status> {
        let me = caller(&ctx)?;
        validate::exact_len("channel_id", &request.channel_id, 16)?;
        let l = &self.state.limiters;
        l.check(&l.typing_per_user, &me.user, 1, "typing notifications")?;
        let members = self
            .state
            .store
            .channel_members(request.channel_id.to_vec(), me.user.clone())
            .await?
            .ok_or_else(|| Status::not_found("no such channel among yours"))?;
        // Typing is stale once late: an unreliable channel, sent as QUIC datagrams.
        let event = v1::ephemeral_event_push::Event::Typing(v1::TypingNotification {
            channel_id: request.channel_id,
            user: me.user.clone(),
        });
        for user in members.iter().filter(|u| **u != me.user) {
            self.state.push_to_user(user, &event).await;
        }
        Ok(v1::TypingResponse {})
    }
}
