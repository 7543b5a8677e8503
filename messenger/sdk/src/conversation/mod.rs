//! Conversations: creating them, their members, message requests, and what a member does
//! in one (edit, react, read, rename, typing, leave).

use qpq_core::identity::DeviceName;
use qpq_proto::v1;
use qrpc::Code;

use crate::error::{SdkError, SdkResult};
use crate::events::ClientEvent;
use crate::model::{Conversation, ConversationId, ConversationKind, Message, MessageId, user_of};
use crate::store::{Effect, transact};

pub(crate) mod handle;

use crate::client::QpqClient;
use crate::client::lock;
use crate::client::now_ms;
use crate::encryption::device_name;
use crate::send_queue::deliveries_for;
use crate::send_queue::group_transport;
use crate::send_queue::invitation;
use crate::sync::effects::events_for;
use crate::sync::effects::other_devices;

pub(crate) fn check_name(name: &str) -> SdkResult<()> {
    if name.is_empty() || name.len() > 64 {
        return Err(SdkError::InvalidArgument("name: 1 to 64 bytes".into()));
    }
    Ok(())
}

impl QpqClient {
    /// Every conversation, newest first (message requests are not among them).
    pub fn conversations(&self) -> SdkResult<Vec<Conversation>> {
        self.inner.store.conversations()
    }

    /// Message requests: invitations from users this one has no conversation with, newest
    /// first, each with its inviter. Their messages are stored but not announced until the
    /// request is accepted.
    pub fn requests(&self) -> SdkResult<Vec<(Conversation, String)>> {
        self.inner.store.requests()
    }

    /// How many message requests wait for an answer (what [`requests`](Self::requests)
    /// lists), without loading them.
    pub fn request_count(&self) -> SdkResult<u64> {
        self.inner.store.request_count()
    }

    /// Accepts a message request: the conversation joins the list
    /// ([`ClientEvent::ConversationCreated`]), what arrived in it so far is announced
    /// ([`ClientEvent::MessageReceived`]), and this user becomes a member of its server
    /// channel. `NotFound` if it is no request.
    pub(crate) async fn accept_request(&self, id: &ConversationId) -> SdkResult<Conversation> {
        let not_found = || SdkError::NotFound(format!("message request {id}"));
        if !self.inner.store.is_request(id)? {
            return Err(not_found());
        }
        let c = self.inner.store.conversation(id)?.ok_or_else(not_found)?;
        self.answer_channel(id, true).await?;
        self.inner.store.accept_request(id)?;
        self.emit(ClientEvent::ConversationCreated(c.clone()));
        // What arrived while it was a request is announced now.
        for m in self.inner.store.messages(id, None, 1000)? {
            if !m.outgoing {
                self.emit(ClientEvent::MessageReceived(Box::new(m)));
            }
        }
        Ok(c)
    }

    /// Declines a message request: its conversation, messages and group keys are deleted,
    /// and the server channel invitation is declined. `NotFound` if it is no request.
    pub(crate) async fn decline_request(&self, id: &ConversationId) -> SdkResult<()> {
        if !self.inner.store.is_request(id)? {
            return Err(SdkError::NotFound(format!("message request {id}")));
        }
        self.answer_channel(id, false).await?;
        {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            if let Some(group) = keys.mls.group(&id.0)? {
                group.delete(&keys.mls)?;
            }
        }
        self.inner.store.decline_request(id)?;
        Ok(())
    }

    /// Answers the server channel invitation of conversation `id`, if it has a channel. An
    /// invitation already answered (or withdrawn) is not an error.
    pub(crate) async fn answer_channel(&self, id: &ConversationId, accept: bool) -> SdkResult<()> {
        let Some(channel_id) = self.inner.store.channel(id)? else {
            return Ok(());
        };
        let rpc = self.inner.session().await?;
        match v1::channel_client::ChannelClient::new(rpc.clone())
            .answer_invitation(&v1::AnswerInvitationRequest {
                channel_id: channel_id.clone().into(),
                accept,
                mls_group_id: id.0.to_vec().into(),
            })
            .await
        {
            Ok(_) => Ok(()),
            Err(status) if status.code() == Code::NotFound => Ok(()),
            Err(status) => Err(status.into()),
        }
    }

    /// Searches this device's decrypted messages (full-text, every word must match), best
    /// matches first. The index lives in the encrypted store; nothing leaves the device.
    pub fn search(&self, query: &str) -> SdkResult<Vec<Message>> {
        self.inner.store.search(query, 50)
    }

    /// The newest `limit` messages of a conversation, oldest first.
    pub(crate) fn messages(
        &self,
        conversation: &ConversationId,
        limit: u32,
    ) -> SdkResult<Vec<Message>> {
        self.inner.store.messages(conversation, None, limit)
    }

    /// The `limit` messages of a conversation just older than `before`, oldest first (paging
    /// back through history: pass the first message of the previous page).
    pub(crate) fn messages_before(
        &self,
        conversation: &ConversationId,
        before: &MessageId,
        limit: u32,
    ) -> SdkResult<Vec<Message>> {
        self.inner.store.messages(conversation, Some(before), limit)
    }

    /// Changes the text of one of this user's messages, on every member's device.
    pub fn edit(&self, id: &MessageId, body: &str) -> SdkResult<()> {
        self.check_text(body)?;
        let m = self.own_message(id)?;
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        self.send_content(
            &m.conversation,
            v1::content::Body::Edit(v1::Edit {
                target: id.0.to_vec().into(),
                body: body.to_owned(),
            }),
            |_, _, _, _| None,
        )?;
        self.apply_local(Effect::Edit {
            conversation: m.conversation,
            target: *id,
            author: user_of(&me).to_owned(),
            body: body.to_owned(),
        })
    }

    /// Withdraws one of this user's messages from every member's device.
    pub fn delete(&self, id: &MessageId) -> SdkResult<()> {
        let m = self.own_message(id)?;
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        self.send_content(
            &m.conversation,
            v1::content::Body::Delete(v1::Delete {
                target: id.0.to_vec().into(),
            }),
            |_, _, _, _| None,
        )?;
        self.apply_local(Effect::Delete {
            conversation: m.conversation,
            target: *id,
            author: user_of(&me).to_owned(),
        })
    }

    /// Adds (or with `remove`, takes back) this user's reaction to a message.
    pub fn react(&self, id: &MessageId, emoji: &str, remove: bool) -> SdkResult<()> {
        if emoji.is_empty() || emoji.len() > crate::sync::effects::MAX_EMOJI_BYTES {
            return Err(SdkError::InvalidArgument(format!(
                "emoji: 1 to {} bytes",
                crate::sync::effects::MAX_EMOJI_BYTES
            )));
        }
        let m = self.stored_message(id)?;
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        self.send_content(
            &m.conversation,
            v1::content::Body::Reaction(v1::Reaction {
                target: id.0.to_vec().into(),
                emoji: emoji.to_owned(),
                remove,
            }),
            |_, _, _, _| None,
        )?;
        self.apply_local(Effect::Reaction {
            conversation: m.conversation,
            target: *id,
            user: user_of(&me).to_owned(),
            emoji: emoji.to_owned(),
            remove,
        })
    }

    /// Tells the conversation's members that this user has read these messages.
    pub(crate) fn mark_read(
        &self,
        conversation: &ConversationId,
        ids: &[MessageId],
    ) -> SdkResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        self.send_content(
            conversation,
            v1::content::Body::Receipt(v1::Receipt {
                read: ids.iter().map(|id| id.0.to_vec().into()).collect(),
            }),
            |_, _, _, _| None,
        )?;
        self.apply_local(Effect::Receipt {
            conversation: *conversation,
            targets: ids.to_vec(),
            user: user_of(&me).to_owned(),
            at_ms: now_ms(),
        })
    }

    /// Renames a group for every member.
    pub(crate) fn rename(&self, conversation: &ConversationId, name: &str) -> SdkResult<()> {
        check_name(name)?;
        self.send_content(
            conversation,
            v1::content::Body::Rename(v1::Rename {
                name: name.to_owned(),
            }),
            |_, _, _, _| None,
        )?;
        self.apply_local(Effect::Rename {
            conversation: *conversation,
            name: name.to_owned(),
        })
    }

    /// Tells the conversation's other members' live connections that this user is typing.
    /// Nothing is stored; the server rate-limits it (call it at most every few seconds).
    pub(crate) async fn typing(&self, conversation: &ConversationId) -> SdkResult<()> {
        let channel = self
            .inner
            .store
            .channel(conversation)?
            .ok_or_else(|| SdkError::NotFound(format!("conversation {conversation}")))?;
        // A conversation just joined may not have answered its channel invitation yet.
        self.inner.answer_invitations().await;
        v1::channel_client::ChannelClient::new(self.inner.session().await?)
            .typing(&v1::TypingRequest {
                channel_id: channel.into(),
            })
            .await?;
        Ok(())
    }

    /// Keeps the server channel's membership in step with the conversation's.
    pub(crate) async fn update_channel(
        &self,
        conversation: &ConversationId,
        add: Vec<String>,
        remove: Vec<String>,
    ) -> SdkResult<()> {
        // Users of other servers have no place in this server's channel.
        let add: Vec<String> = add.into_iter().filter(|u| !u.contains('@')).collect();
        let remove: Vec<String> = remove.into_iter().filter(|u| !u.contains('@')).collect();
        if add.is_empty() && remove.is_empty() {
            return Ok(());
        }
        if let Some(channel) = self.inner.store.channel(conversation)? {
            self.inner.answer_invitations().await;
            v1::channel_client::ChannelClient::new(self.inner.session().await?)
                .update_channel(&v1::UpdateChannelRequest {
                    channel_id: channel.into(),
                    add,
                    remove,
                })
                .await?;
        }
        Ok(())
    }

    /// Creates a group named `name` with `members` (user names; this user is added): one MLS
    /// group with every device of every member, each invited through its sealed queue.
    pub async fn create_group(&self, name: &str, members: &[&str]) -> SdkResult<Conversation> {
        check_name(name)?;
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let mut users: Vec<String> = members
            .iter()
            .map(|m| self.inner.normalize_user(m))
            .collect::<SdkResult<_>>()?;
        users.push(user_of(&me).to_owned());
        users.sort();
        users.dedup();
        self.create_conversation(ConversationKind::Group, name, users)
            .await
    }

    /// Creates a direct conversation with `user`: an MLS group with every device of theirs and
    /// every other device of this user, each invited through its sealed queue.
    pub async fn create_dm(&self, user: &str) -> SdkResult<Conversation> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let my_user = user_of(&me).to_owned();
        let user = self.inner.normalize_user(user)?;
        if user == my_user {
            return Err(SdkError::InvalidArgument(
                "user: a direct conversation needs another user".into(),
            ));
        }
        let mut users = vec![user, my_user];
        users.sort();
        self.create_conversation(ConversationKind::Direct, "", users)
            .await
    }

    pub(crate) async fn create_conversation(
        &self,
        kind: ConversationKind,
        name: &str,
        users: Vec<String>,
    ) -> SdkResult<Conversation> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let rpc = self.inner.session().await?;
        let devices = self
            .member_devices(&rpc, &users, std::slice::from_ref(&me))
            .await?;
        for u in users.iter().filter(|u| **u != user_of(&me)) {
            if !devices.iter().any(|(du, _)| du == u) {
                return Err(SdkError::NotFound(format!(
                    "{u} has no device with published keys"
                )));
            }
        }
        let packages = self.key_packages(&rpc, &devices).await?;
        let id = ConversationId(rand::random());
        let channel = v1::channel_client::ChannelClient::new(rpc.clone())
            .create_channel(&v1::CreateChannelRequest {
                name: if name.is_empty() { "direct" } else { name }.to_owned(),
                // The channel (typing, endpoints, the known-sender quota) lives on this
                // server: users of other servers are not in it.
                members: users
                    .iter()
                    .filter(|u| **u != user_of(&me) && !u.contains('@'))
                    .cloned()
                    .collect(),
                mls_group_id: id.0.to_vec().into(),
            })
            .await?
            .channel_id
            .to_vec();
        let conversation = Conversation {
            id,
            kind,
            name: name.to_owned(),
            members: users,
        };
        // The group, the conversation and the invitations commit together.
        {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            transact(&*self.inner.store, Some(&keys.mls), |tx| {
                let mut group = keys.mls.create_group(&id.0)?;
                let deliveries = if packages.is_empty() {
                    Vec::new()
                } else {
                    let refs: Vec<&[u8]> = packages.iter().map(Vec::as_slice).collect();
                    let welcome = group.add_members(&keys.mls, &refs)?.1;
                    deliveries_for(
                        MessageId::random(),
                        &devices,
                        &invitation(&conversation, welcome, Some(&channel)),
                    )
                };
                keys.mls.keep(group);
                tx.apply(&Effect::Conversation(
                    conversation.clone(),
                    Some(channel.clone()),
                ))?;
                tx.queue_outgoing(None, &deliveries)?;
                SdkResult::Ok(())
            })?;
        }
        self.emit(ClientEvent::ConversationCreated(conversation.clone()));
        self.inner.outbox_wake.notify_one();
        Ok(conversation)
    }

    /// Adds `user` (every device of theirs) to a conversation: the commit goes to the current
    /// members, the invitation to the new devices.
    pub(crate) async fn invite(&self, conversation: &ConversationId, user: &str) -> SdkResult<()> {
        let mut c = self
            .inner
            .store
            .conversation(conversation)?
            .ok_or_else(|| SdkError::NotFound(format!("conversation {conversation}")))?;
        if c.members.iter().any(|m| m == user) {
            return Err(SdkError::InvalidArgument(format!(
                "{user} is already a member"
            )));
        }
        let rpc = self.inner.session().await?;
        let devices = self.member_devices(&rpc, &[user.to_owned()], &[]).await?;
        if devices.is_empty() {
            return Err(SdkError::NotFound(format!(
                "{user} has no device with published keys"
            )));
        }
        let present = {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            keys.mls
                .group(&conversation.0)?
                .map_or(0, |g| other_devices(&g, keys).len())
        };
        if present + devices.len() > self.inner.limits.max_conversation_devices {
            return Err(SdkError::InvalidArgument(format!(
                "a conversation may have at most {} devices",
                self.inner.limits.max_conversation_devices
            )));
        }
        let before = c.clone();
        c.members.push(user.to_owned());
        c.members.sort();
        // Only the channel's owner brings users into the server channel (typing, endpoints):
        // anyone else's invitation adds them to the conversation only.
        match self
            .update_channel(conversation, vec![user.to_owned()], Vec::new())
            .await
        {
            Ok(()) => {}
            Err(SdkError::Server(status)) if status.code() == Code::PermissionDenied => {
                tracing::debug!(
                    "not the channel's owner: the new member joins the conversation only"
                );
            }
            Err(e) => return Err(e),
        }
        self.add_devices(&c, &devices).await?;
        self.set_members(before, c.members)
    }

    /// Removes `user` (every device of theirs) from a conversation. The removed devices get
    /// the commit too, so they learn it; they cannot read anything sent afterwards.
    pub(crate) async fn remove(&self, conversation: &ConversationId, user: &str) -> SdkResult<()> {
        let mut c = self
            .inner
            .store
            .conversation(conversation)?
            .ok_or_else(|| SdkError::NotFound(format!("conversation {conversation}")))?;
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        if user == user_of(&me) {
            return Err(SdkError::InvalidArgument(
                "remove: use another member's device to remove this user".into(),
            ));
        }
        let gone = user.to_owned();
        self.remove_devices(&c, |(u, _)| *u == gone)?;
        // Only the channel's owner may remove others from the server channel: for anyone
        // else the MLS removal is what counts, and the removed user's client leaves the
        // channel when it learns it.
        match self
            .update_channel(conversation, Vec::new(), vec![user.to_owned()])
            .await
        {
            Ok(()) => {}
            Err(SdkError::Server(status)) if status.code() == Code::PermissionDenied => {
                tracing::debug!("not the channel's owner: the removed user leaves it itself");
            }
            Err(e) => return Err(e),
        }
        let before = c.clone();
        c.members.retain(|m| m != user);
        self.set_members(before, c.members)
    }

    /// Leaves a conversation with every device of this user: the members are told, one of
    /// their devices (the first by name) removes this user's devices from the MLS group, and
    /// this device forgets the group's keys at once, so it cannot read anything sent later.
    /// Sending to the conversation fails from now on; its history stays in the store.
    pub(crate) async fn leave(&self, conversation: &ConversationId) -> SdkResult<()> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let my_user = user_of(&me).to_owned();
        let before = self
            .inner
            .store
            .conversation(conversation)?
            .ok_or_else(|| SdkError::NotFound(format!("conversation {conversation}")))?;
        self.send_content(
            conversation,
            v1::content::Body::Leave(v1::Leave {}),
            |_, _, _, _| None,
        )?;
        let mut members = before.members.clone();
        members.retain(|u| *u != my_user);
        let effect = Effect::Members {
            conversation: *conversation,
            members,
        };
        {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            transact(&*self.inner.store, Some(&keys.mls), |tx| {
                if let Some(group) = keys.mls.group(&conversation.0)? {
                    group.delete(&keys.mls)?;
                }
                tx.apply(&effect)
            })?;
        }
        for event in events_for(&*self.inner.store, &effect, Some(before))? {
            self.emit(event);
        }
        // The server channel (typing, endpoint lookups) is left on a best-effort basis: the
        // members' commit is what takes this user out of the conversation.
        if let Err(e) = self
            .update_channel(conversation, Vec::new(), vec![my_user])
            .await
        {
            tracing::warn!(error = %e, "could not leave the server channel");
        }
        Ok(())
    }

    /// Adds `devices` to conversation `c`: the commit to its current members, the
    /// invitation to the new devices.
    pub(crate) async fn add_devices(
        &self,
        c: &Conversation,
        devices: &[(String, String)],
    ) -> SdkResult<()> {
        let rpc = self.inner.session().await?;
        let packages = self.key_packages(&rpc, devices).await?;
        let channel = self.inner.store.channel(&c.id)?;
        {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            transact(&*self.inner.store, Some(&keys.mls), |tx| {
                let mut group = keys
                    .mls
                    .group(&c.id.0)?
                    .ok_or_else(|| SdkError::NotFound(format!("conversation {}", c.id)))?;
                let existing = other_devices(&group, keys);
                if existing.len() + devices.len() > self.inner.limits.max_conversation_devices {
                    return Err(SdkError::InvalidArgument(format!(
                        "a conversation may have at most {} devices",
                        self.inner.limits.max_conversation_devices
                    )));
                }
                let refs: Vec<&[u8]> = packages.iter().map(Vec::as_slice).collect();
                let (commit, welcome) = group.add_members(&keys.mls, &refs)?;
                let item = MessageId::random();
                let mut deliveries =
                    deliveries_for(item, &existing, &group_transport(&c.id, commit));
                deliveries.extend(deliveries_for(
                    item,
                    devices,
                    &invitation(c, welcome, channel.as_deref()),
                ));
                keys.mls.keep(group);
                tx.queue_outgoing(None, &deliveries)
            })?;
        }
        self.inner.outbox_wake.notify_one();
        Ok(())
    }

    /// Stores a conversation's new member list and reports the change, the same way an
    /// incoming commit is reported (joins, departures, the updated conversation).
    pub(crate) fn set_members(&self, before: Conversation, members: Vec<String>) -> SdkResult<()> {
        let effect = Effect::Members {
            conversation: before.id,
            members,
        };
        if self.inner.store.apply(&effect)? {
            for event in events_for(&*self.inner.store, &effect, Some(before))? {
                self.emit(event);
            }
        }
        Ok(())
    }

    /// Removes the member devices `which` selects from conversation `c`; the commit goes to
    /// every other device, the removed ones included. `NotFound` when none matches.
    pub(crate) fn remove_devices(
        &self,
        c: &Conversation,
        which: impl Fn(&(String, String)) -> bool,
    ) -> SdkResult<()> {
        {
            let keys = lock(&self.inner.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            transact(&*self.inner.store, Some(&keys.mls), |tx| {
                let Some(mut group) = keys.mls.group(&c.id.0)? else {
                    return Err(SdkError::NotFound(format!("conversation {}", c.id)));
                };
                let recipients = other_devices(&group, keys);
                let names: Vec<Vec<u8>> = recipients
                    .iter()
                    .filter(|d| which(d))
                    .map(|(u, d)| device_name(keys, u, d).map(|n| n.encode()))
                    .collect::<SdkResult<_>>()?;
                if names.is_empty() {
                    return Err(SdkError::NotFound("no such member device".into()));
                }
                let refs: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
                let commit = group.remove_members(&keys.mls, &refs)?;
                let deliveries = deliveries_for(
                    MessageId::random(),
                    &recipients,
                    &group_transport(&c.id, commit),
                );
                keys.mls.keep(group);
                tx.queue_outgoing(None, &deliveries)
            })?;
        }
        self.inner.outbox_wake.notify_one();
        Ok(())
    }

    /// Every device of `users` with published keys, except `skip`.
    pub(crate) async fn member_devices(
        &self,
        rpc: &qrpc::Client,
        users: &[String],
        skip: &[String],
    ) -> SdkResult<Vec<(String, String)>> {
        let client = v1::user_client::UserClient::new(rpc.clone());
        let mut devices = Vec::new();
        for u in users {
            let resolved = client
                .resolve_user(&v1::ResolveUserRequest { user: u.clone() })
                .await?;
            for d in resolved.devices {
                if !skip.contains(&format!("{u}/{}", d.device)) {
                    devices.push((u.clone(), d.device));
                }
            }
        }
        if devices.len() > self.inner.limits.max_conversation_devices {
            return Err(SdkError::InvalidArgument(format!(
                "a conversation may have at most {} devices",
                self.inner.limits.max_conversation_devices
            )));
        }
        Ok(devices)
    }

    /// One key package per device, each checked to name its device, after the device's
    /// published keys are checked against the key-transparency log.
    pub(crate) async fn key_packages(
        &self,
        rpc: &qrpc::Client,
        devices: &[(String, String)],
    ) -> SdkResult<Vec<Vec<u8>>> {
        let keys = v1::keys_client::KeysClient::new(rpc.clone());
        for (u, d) in devices {
            self.inner.peer_key(&keys, u, d).await?;
        }
        let domain = self.inner.domain().ok_or(SdkError::NotLoggedIn)?;
        let mut packages = Vec::with_capacity(devices.len());
        for (u, d) in devices {
            // A user of another server (`bob@b.example`) is named under that server's domain.
            let (bare, user_domain) = crate::encryption::user_domain(u, &domain);
            let name = DeviceName::new(bare, user_domain, d)
                .map_err(|_| SdkError::InvalidArgument(format!("{u}/{d}: not a device name")))?;
            let identity = lock(&self.inner.peer_identities)
                .get(&(u.clone(), d.clone()))
                .copied()
                .ok_or_else(|| SdkError::NotFound(format!("{u}/{d}")))?;
            let kp = keys
                .fetch_key_package(&v1::FetchKeyPackageRequest {
                    device: Some(v1::DeviceRef {
                        user: u.clone(),
                        device: d.clone(),
                    }),
                })
                .await?;
            let info = qpq_core::mls::inspect_key_package(&kp.key_package)
                .map_err(|e| SdkError::Invalid(format!("key package of {u}/{d}: {e}")))?;
            if info.name != name.encode() {
                return Err(SdkError::Invalid(format!(
                    "the key package fetched for {u}/{d} names someone else"
                )));
            }
            // Its leaf must sign with the identity key the log holds for the device.
            if info.signature_key != identity.to_bytes() {
                return Err(SdkError::Invalid(format!(
                    "the key package fetched for {u}/{d} is not signed by its identity key"
                )));
            }
            packages.push(kp.key_package.to_vec());
        }
        Ok(packages)
    }
}
