//! Device identities: this user's devices (linking, adopting, revoking), safety numbers, and
//! checking every device's keys against the server's key-transparency log.

use std::sync::Arc;

use qpq_core::bundle::KeyBundle;
use qpq_core::identity::DeviceName;
use qpq_core::kem::HybridPublicKey;
use qpq_core::mls::Leaf;
use qpq_proto::v1;
use qrpc::Code;

use crate::error::{SdkError, SdkResult};
use crate::events::ClientEvent;
use crate::model::{Device, user_of};
use crate::store::Tx;

use crate::client::Inner;
use crate::client::Keys;
use crate::client::QpqClient;
use crate::client::lock;
use crate::sync::Fail;
use crate::sync::Refused;
use crate::sync::effects::other_devices;

/// `(user, device)` of a credential name, the user as seen from `home` (this device's
/// server): bare for its own users, `user@domain` for other servers'. Names are checked
/// against the key-transparency log when their leaf joins a group; this only reads them.
pub(crate) fn split_name(name: &[u8], home: &str) -> Option<(String, String)> {
    let name = DeviceName::parse(name).ok()?;
    Some((
        qualified(name.user(), name.domain(), home),
        name.device().to_owned(),
    ))
}

/// `user` of `domain` as seen from `home`: bare when `domain` is `home`.
pub(crate) fn qualified(user: &str, domain: &str, home: &str) -> String {
    if domain == home {
        user.to_owned()
    } else {
        format!("{user}@{domain}")
    }
}

/// A user as the client names it (`alice`, `bob@b.example`) split into its bare name and its
/// server's domain (`home` for a bare name).
pub(crate) fn user_domain<'a>(user: &'a str, home: &'a str) -> (&'a str, &'a str) {
    match user.split_once('@') {
        Some((user, domain)) if domain != home => (user, domain),
        Some((user, _)) => (user, home),
        None => (user, home),
    }
}

/// The credential name of `user/device` (`user` bare for this device's server, qualified for
/// another's).
pub(crate) fn device_name(keys: &Keys, user: &str, device: &str) -> SdkResult<DeviceName> {
    let (bare, domain) = user_domain(user, keys.name.domain());
    DeviceName::new(bare, domain, device)
        .map_err(|_| SdkError::InvalidArgument(format!("{user}/{device}: not a valid device name")))
}

/// An alarm about `domain`'s log: one about another server's log (`remote`) names it.
fn log_alarm(domain: &str, remote: bool) -> impl Fn(String) -> KtFail + Copy + '_ {
    move |reason| {
        KtFail::Alarm(if remote {
            format!("{domain}'s log: {reason}")
        } else {
            reason
        })
    }
}

/// Why a key answer was not accepted.
pub(crate) enum KtFail {
    /// The log did not check out: an alarm for the user.
    Alarm(String),
    /// The check could not be made (the network, the local store): try again later.
    Other(SdkError),
}

pub(crate) fn monitor_key(bytes: &[u8]) -> Result<qpq_core::identity::IdentityPublic, String> {
    qpq_core::identity::IdentityPublic::from_bytes(bytes).map_err(|e| format!("log key: {e}"))
}

impl QpqClient {
    /// The safety number between this device and each device of `user` whose keys are in
    /// the server's key-transparency log: `(device, 60 digits in groups of 5)`. Two people
    /// compare them out of band; equal numbers mean no one sits between their devices.
    pub async fn safety_numbers(&self, user: &str) -> SdkResult<Vec<(String, String)>> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let my_key = lock(&self.inner.keys)
            .as_ref()
            .map(|k| k.identity.public())
            .ok_or(SdkError::NotLoggedIn)?;
        let rpc = self.inner.session().await?;
        let keys = v1::keys_client::KeysClient::new(rpc.clone());
        let devices = self
            .member_devices(&rpc, &[user.to_owned()], std::slice::from_ref(&me))
            .await?;
        let mut out = Vec::with_capacity(devices.len());
        for (u, d) in devices {
            // Fetching through the key-transparency check, like every key this client uses.
            self.inner.peer_key(&keys, &u, &d).await?;
            let identity = lock(&self.inner.peer_identities)
                .get(&(u.clone(), d.clone()))
                .cloned()
                .ok_or_else(|| SdkError::NotFound(format!("{u}/{d}")))?;
            let number = qpq_core::identity::SafetyNumber::compute(
                &me,
                &my_key,
                &format!("{u}/{d}"),
                &identity,
            );
            out.push((d, number.grouped()));
        }
        Ok(out)
    }

    /// This user's devices as the server lists them.
    pub async fn devices(&self) -> SdkResult<Vec<Device>> {
        let rpc = self.inner.session().await?;
        let listed = v1::device_client::DeviceClient::new(rpc)
            .list_devices(&v1::ListDevicesRequest {})
            .await?;
        let me = self.whoami().unwrap_or_default();
        Ok(listed
            .devices
            .into_iter()
            .map(|d| Device {
                this_device: me.ends_with(&format!("/{}", d.device)),
                id: d.device,
                label: d.label,
                created_at_ms: d.created_at_ms,
                has_keys: d.has_keys,
            })
            .collect())
    }

    /// Registers a new device of this user (step one of linking): it may then log in with
    /// the account password, and [`adopt_devices`](Self::adopt_devices) brings it into the
    /// conversations.
    pub async fn link_device(&self, device: &str, label: &str) -> SdkResult<()> {
        let rpc = self.inner.session().await?;
        v1::device_client::DeviceClient::new(rpc)
            .register_device(&v1::RegisterDeviceRequest {
                device: device.to_owned(),
                label: label.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Adds every device of this user that has published keys but is missing from a
    /// conversation to it (the linked device's step two). Returns how many conversations
    /// changed.
    pub async fn adopt_devices(&self) -> SdkResult<usize> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let rpc = self.inner.session().await?;
        let mine = self
            .member_devices(&rpc, &[user_of(&me).to_owned()], std::slice::from_ref(&me))
            .await?;
        let mut changed = 0;
        for c in self.inner.store.conversations()? {
            let missing: Vec<(String, String)> = {
                let keys = lock(&self.inner.keys);
                let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
                let Some(group) = keys.mls.group(&c.id.0)? else {
                    continue;
                };
                let present = other_devices(&group, keys);
                keys.mls.keep(group);
                if !c.members.contains(&user_of(&me).to_owned()) {
                    continue;
                }
                mine.iter()
                    .filter(|d| !present.contains(d))
                    .cloned()
                    .collect()
            };
            if missing.is_empty() {
                continue;
            }
            self.add_devices(&c, &missing).await?;
            changed += 1;
        }
        Ok(changed)
    }

    /// Revokes one of this user's devices: the server closes its connections at once and
    /// its id can never be used again, and it is removed from every conversation this device
    /// shares with it (so it cannot read anything sent afterwards).
    pub async fn revoke_device(&self, device: &str) -> SdkResult<()> {
        let me = self.whoami().ok_or(SdkError::NotLoggedIn)?;
        let target = (user_of(&me).to_owned(), device.to_owned());
        let rpc = self.inner.session().await?;
        v1::device_client::DeviceClient::new(rpc)
            .revoke_device(&v1::RevokeDeviceRequest {
                device: device.to_owned(),
            })
            .await?;
        for c in self.inner.store.conversations()? {
            match self.remove_devices(&c, |d| *d == target) {
                Ok(()) | Err(SdkError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

impl Inner {
    /// A user address as this client writes it: bare for a user of its own server (also when
    /// written `name@<home domain>`), `name@domain` for another server's.
    pub(crate) fn normalize_user(&self, user: &str) -> SdkResult<String> {
        let home = self.domain().ok_or(SdkError::NotLoggedIn)?;
        let address = qpq_core::address::Address::parse(user)
            .map_err(|e| SdkError::InvalidArgument(format!("user {user:?}: {e}")))?;
        Ok(address.relative_to(&home))
    }

    /// This device's home server's domain (from its device name), once logged in.
    pub(crate) fn domain(&self) -> Option<String> {
        lock(&self.keys)
            .as_ref()
            .map(|k| k.name.domain().to_owned())
    }

    /// The pinned log key and last verified head of `domain`'s log (this device's server's,
    /// or another server's).
    fn kt_state(&self, domain: &str, home: &str) -> SdkResult<Option<(Vec<u8>, Vec<u8>)>> {
        if domain == home {
            self.store.kt()
        } else {
            self.store.peer_kt(domain)
        }
    }

    /// Brings the pinned view of `domain`'s key-transparency log up to its latest head: pins
    /// the log key on first use, then requires every new head to be signed by it and to
    /// extend the last one (a consistency proof). Another server's log is reached through
    /// this device's server, which witnesses it: its head counts only with the home server's
    /// cosignature, checked with the home log's pinned key. Returns the head now trusted.
    pub(crate) async fn kt_sync(
        &self,
        keys: &v1::keys_client::KeysClient,
        domain: &str,
    ) -> Result<qpq_core::kt::SignedTreeHead, KtFail> {
        use qpq_core::kt::{ConsistencyProof, Cosignature, LogMonitor, SignedTreeHead};
        let home = self.domain().ok_or(KtFail::Other(SdkError::NotLoggedIn))?;
        let remote = domain != home;
        let alarm = log_alarm(domain, remote);
        if remote && self.store.kt().map_err(KtFail::Other)?.is_none() {
            // The home log's key checks the witness's cosignature: pinned first.
            Box::pin(self.kt_sync(keys, &home)).await?;
        }
        let stored = self.kt_state(domain, &home).map_err(KtFail::Other)?;
        let since = match &stored {
            Some((_, head)) => {
                SignedTreeHead::decode(head)
                    .map_err(|e| alarm(format!("stored head: {e}")))?
                    .tree_size
            }
            None => 0,
        };
        let answer = keys
            .kt_head(&v1::KtHeadRequest {
                since_size: since,
                domain: if remote {
                    domain.to_owned()
                } else {
                    String::new()
                },
            })
            .await
            .map_err(|e| {
                // The home server refused to cosign (a split view, a rollback, a changed key).
                if remote && e.code() == Code::FailedPrecondition {
                    alarm(format!(
                        "the home server refused to witness it: {}",
                        e.message()
                    ))
                } else {
                    KtFail::Other(e.into())
                }
            })?;
        if answer.domain != domain {
            return Err(alarm(format!(
                "the log is for domain {:?}, not {domain:?}",
                answer.domain
            )));
        }
        let log_key_bytes = match &stored {
            Some((pinned, _)) => pinned.clone(),
            None => answer.log_key.to_vec(),
        };
        if log_key_bytes.as_slice() != answer.log_key.as_ref() {
            return Err(alarm("the log signing key changed".into()));
        }
        let log_key = monitor_key(&log_key_bytes).map_err(alarm)?;
        let claimed =
            SignedTreeHead::decode(&answer.tree_head).map_err(|e| alarm(format!("head: {e}")))?;
        if remote {
            let home_key = self
                .store
                .kt()
                .map_err(KtFail::Other)?
                .map(|(key, _)| key)
                .ok_or_else(|| alarm("the home log is not pinned".into()))?;
            let home_key = monitor_key(&home_key).map_err(alarm)?;
            Cosignature::decode(&answer.cosignature)
                .map_err(|_| alarm("no witness cosignature from the home server".into()))?
                .verify(&home_key, &home, domain, &claimed)
                .map_err(|_| {
                    alarm("the home server's witness cosignature does not verify".into())
                })?;
        }
        let mut monitor = LogMonitor::new(log_key);
        let head = if let Some((_, old)) = &stored {
            let old =
                SignedTreeHead::decode(old).map_err(|e| alarm(format!("stored head: {e}")))?;
            monitor
                .advance(
                    &old,
                    &ConsistencyProof {
                        old_size: 0,
                        new_size: old.tree_size,
                        path: Vec::new(),
                    },
                )
                .map_err(|e| alarm(format!("stored head: {e}")))?;
            if claimed.tree_size < old.tree_size {
                return Err(alarm("the log shrank (a rollback)".into()));
            }
            if claimed.tree_size == old.tree_size {
                let head = claimed
                    .verify(&log_key)
                    .map_err(|e| alarm(format!("head signature: {e}")))?;
                if head.root() != &old.root {
                    return Err(alarm(
                        "two different logs of the same size (equivocation)".into(),
                    ));
                }
                head
            } else {
                let proof = ConsistencyProof::decode(&answer.consistency_proof)
                    .map_err(|e| alarm(format!("consistency proof: {e}")))?;
                monitor
                    .advance(&claimed, &proof)
                    .map_err(|e| alarm(format!("the new head does not extend the old one: {e}")))?;
                monitor
                    .head()
                    .cloned()
                    .ok_or_else(|| alarm("no head accepted".into()))?
            }
        } else {
            claimed
                .verify(&log_key)
                .map_err(|e| alarm(format!("head signature: {e}")))?
        };
        if remote {
            self.store
                .set_peer_kt(domain, &log_key_bytes, &head.encode())
                .map_err(KtFail::Other)?;
        } else {
            self.store
                .set_kt(&log_key_bytes, &head.encode())
                .map_err(KtFail::Other)?;
        }
        Ok(head)
    }

    /// Proves that `head` (from a key answer about a user of `domain`) is a head of the log
    /// this client pinned for `domain`: signed by the pinned key, and equal to or a prefix of
    /// the latest head, which itself extends the pinned one. The log may grow between a key
    /// answer and the client's sync (any device publishing keys grows it): that is proven
    /// consistent, not an alarm.
    pub(crate) async fn kt_reach(
        &self,
        keys: &v1::keys_client::KeysClient,
        head: &qpq_core::kt::UnverifiedTreeHead,
        domain: &str,
    ) -> Result<(), KtFail> {
        use qpq_core::kt::{ConsistencyProof, SignedTreeHead};
        let home = self.domain().ok_or(KtFail::Other(SdkError::NotLoggedIn))?;
        let remote = domain != home;
        let alarm = log_alarm(domain, remote);
        for _ in 0..3 {
            let latest = self.kt_sync(keys, domain).await?;
            if latest.tree_size() == head.tree_size {
                return if latest.is(head) {
                    Ok(())
                } else {
                    Err(alarm(
                        "two different logs of the same size (equivocation)".into(),
                    ))
                };
            }
            if latest.tree_size() < head.tree_size {
                continue;
            }
            let answer = keys
                .kt_head(&v1::KtHeadRequest {
                    since_size: head.tree_size,
                    domain: if remote {
                        domain.to_owned()
                    } else {
                        String::new()
                    },
                })
                .await
                .map_err(|e| KtFail::Other(e.into()))?;
            let newer = SignedTreeHead::decode(&answer.tree_head)
                .map_err(|e| alarm(format!("head: {e}")))?;
            if !latest.is(&newer) {
                // The log grew again in between: prove against the newest head next round.
                continue;
            }
            // Checked against the pinned key (kt_sync just required the server's to equal it).
            let pinned = self
                .kt_state(domain, &home)
                .map_err(KtFail::Other)?
                .map(|(key, _)| key)
                .unwrap_or_default();
            let log_key = monitor_key(&pinned).map_err(alarm)?;
            let proof = ConsistencyProof::decode(&answer.consistency_proof)
                .map_err(|e| alarm(format!("consistency proof: {e}")))?;
            return qpq_core::kt::verify_prefix(head, &latest, &proof, &log_key).map_err(|e| {
                alarm(format!(
                    "the key answer's head is not part of the pinned log: {e}"
                ))
            });
        }
        // Busy, not wrong: the caller retries later, as after any unavailable server.
        Err(KtFail::Other(SdkError::Server(qrpc::Status::unavailable(
            "the key-transparency log kept growing while a key answer was checked",
        ))))
    }

    /// Checks that `bundle` is the binding the log of `user`'s server holds for
    /// `user/device` at a head consistent with everything seen before (`user` bare for this
    /// device's server, `user@domain` for another).
    pub(crate) async fn kt_check(
        &self,
        keys: v1::keys_client::KeysClient,
        user: &str,
        device: &str,
        bundle: &KeyBundle,
        proof: &v1::KtProof,
    ) -> Result<(), KtFail> {
        use qpq_core::kt::{InclusionProof, KeyBinding, SignedTreeHead};
        let alarm = KtFail::Alarm;
        let home = self.domain().ok_or(KtFail::Other(SdkError::NotLoggedIn))?;
        let (bare, domain) = user_domain(user, &home);
        let head =
            SignedTreeHead::decode(&proof.tree_head).map_err(|e| alarm(format!("head: {e}")))?;
        // The head verified last is enough when it is the same tree (most key fetches);
        // otherwise the answer's head is proven to belong to the pinned log.
        let known = self
            .kt_state(domain, &home)
            .map_err(KtFail::Other)?
            .and_then(|(_, bytes)| SignedTreeHead::decode(&bytes).ok())
            .is_some_and(|h| h.tree_size == head.tree_size && h.root == head.root);
        if !known {
            self.kt_reach(&keys, &head, domain).await?;
        }
        let binding = KeyBinding {
            user: bare.to_owned(),
            domain: domain.to_owned(),
            device: device.to_owned(),
            identity_key: bundle.identity.to_bytes(),
            hybrid_key_hash: bundle.hybrid.hash(),
            key_package_hash: proof
                .key_package_hash
                .as_ref()
                .try_into()
                .map_err(|_| alarm("binding: bad key-package hash".to_owned()))?,
        };
        let inclusion = InclusionProof::decode(&proof.inclusion_proof)
            .map_err(|e| alarm(format!("inclusion proof: {e}")))?;
        if inclusion.tree_size != head.tree_size {
            return Err(alarm("inclusion proof for another head".into()));
        }
        inclusion
            .verify(&binding.leaf_hash(), &head.root)
            .map_err(|_| alarm(format!("{user}/{device}'s keys are not in the log")))
    }

    /// A device's hybrid key, fetched once and checked to be signed for that device.
    pub(crate) async fn peer_key(
        &self,
        keys: &v1::keys_client::KeysClient,
        user: &str,
        device: &str,
    ) -> SdkResult<HybridPublicKey> {
        let key = (user.to_owned(), device.to_owned());
        if let Some(k) = lock(&self.peer_keys).get(&key) {
            return Ok(k.clone());
        }
        let fetched = keys
            .fetch_hybrid_key(&v1::FetchHybridKeyRequest {
                device: Some(v1::DeviceRef {
                    user: user.to_owned(),
                    device: device.to_owned(),
                }),
            })
            .await?;
        let bundle = KeyBundle::decode(&fetched.key_bundle)
            .map_err(|e| SdkError::Invalid(format!("key bundle of {user}/{device}: {e}")))?;
        let home = self.domain().ok_or(SdkError::NotLoggedIn)?;
        // A bundle is signed for the name its own server knows the user by.
        if !bundle.is_for(user_domain(user, &home).0, device) {
            return Err(SdkError::Invalid(format!(
                "the key bundle fetched for {user}/{device} is signed for someone else"
            )));
        }
        let proof = fetched
            .proof
            .ok_or_else(|| SdkError::KeyTransparency("key answer without a proof".into()))?;
        match self
            .kt_check(keys.clone(), user, device, &bundle, &proof)
            .await
        {
            Ok(()) => {}
            Err(KtFail::Alarm(reason)) => {
                self.warn(ClientEvent::KeyTransparencyAlarm {
                    device: format!("{user}/{device}"),
                    reason: reason.clone(),
                });
                return Err(SdkError::KeyTransparency(reason));
            }
            Err(KtFail::Other(e)) => return Err(e),
        }
        if self
            .store
            .note_identity(user, device, &bundle.identity.to_bytes())?
        {
            self.warn(ClientEvent::SafetyNumberChanged {
                user: user.to_owned(),
                device: device.to_owned(),
            });
        }
        lock(&self.peer_identities).insert(key.clone(), bundle.identity);
        lock(&self.peer_keys).insert(key, bundle.hybrid.clone());
        Ok(bundle.hybrid)
    }

    /// Checks every devices' keys of `devices` against the log (fetching what is not cached);
    /// those that cannot be checked go into `refused` with the reason. Fails only when the
    /// check could not be made (the network): the entry is retried later.
    pub(crate) async fn check_devices(
        self: &Arc<Self>,
        devices: &[(String, String)],
        refused: &mut Refused,
    ) -> SdkResult<()> {
        let rpc = self.session().await?;
        let keys = v1::keys_client::KeysClient::new(rpc);
        for (user, device) in devices {
            let reason = match self.peer_key(&keys, user, device).await {
                Ok(_) => continue,
                Err(SdkError::Server(status)) if status.code() == Code::NotFound => {
                    "no keys in the server's key-transparency log".to_owned()
                }
                Err(SdkError::Server(status)) if status.code() == Code::InvalidArgument => {
                    format!("not a device of this server ({})", status.message())
                }
                Err(SdkError::KeyTransparency(reason)) => {
                    format!("keys fail the key-transparency check ({reason})")
                }
                Err(SdkError::Invalid(reason)) => reason,
                Err(e) => return Err(e),
            };
            lock(&self.unverifiable).insert(
                (user.clone(), device.clone()),
                (reason.clone(), std::time::Instant::now()),
            );
            refused.insert((user.clone(), device.clone()), reason);
        }
        Ok(())
    }

    /// Checks one leaf against the log of its server: its name must be a device whose identity
    /// key, as this client checked it in that log, is the key that signs for the leaf.
    /// Returns `(user, device)`.
    pub(crate) fn verify_leaf(
        &self,
        keys: &Keys,
        tx: &mut dyn Tx,
        leaf: &Leaf,
        refused: &Refused,
    ) -> Result<(String, String), Fail> {
        let name = DeviceName::parse(&leaf.name)
            .map_err(|_| Fail::Undecryptable("a member's name is not a qpq device name".into()))?;
        // A member of another server is checked in that server's log, as its own server
        // vouches for it (and this device's server witnesses that log).
        let who = (
            qualified(name.user(), name.domain(), keys.name.domain()),
            name.device().to_owned(),
        );
        let logged = if name == keys.name {
            Some(keys.identity.public().to_bytes().to_vec())
        } else {
            tx.identity(&who.0, &who.1)?
        };
        match logged {
            Some(key) if key == leaf.signature_key => Ok(who),
            Some(_) => Err(Fail::Undecryptable(format!(
                "{}/{} is forged: the key that signs for it is not the one in the \
                 key-transparency log",
                who.0, who.1
            ))),
            None => match refused.get(&who) {
                Some(reason) => Err(Fail::Undecryptable(format!(
                    "{}/{} cannot be verified: {reason}",
                    who.0, who.1
                ))),
                None => Err(Fail::NeedKeys(vec![who])),
            },
        }
    }

    /// Checks every leaf of a group (see [`verify_leaf`](Self::verify_leaf)); collects every
    /// device whose keys must be checked first.
    pub(crate) fn verify_leaves(
        &self,
        keys: &Keys,
        tx: &mut dyn Tx,
        leaves: &[Leaf],
        refused: &Refused,
    ) -> Result<(), Fail> {
        // A group larger than this client takes part in is refused before any of its names
        // costs a key lookup.
        if leaves.len() > self.limits.max_conversation_devices + 1 {
            return Err(Fail::Undecryptable(format!(
                "a group of {} devices, above this client's limit of {}",
                leaves.len(),
                self.limits.max_conversation_devices
            )));
        }
        let mut needed = Vec::new();
        for leaf in leaves {
            match self.verify_leaf(keys, tx, leaf, refused) {
                Ok(_) => {}
                Err(Fail::NeedKeys(devices)) => needed.extend(devices),
                Err(e) => return Err(e),
            }
        }
        if needed.is_empty() {
            Ok(())
        } else {
            Err(Fail::NeedKeys(needed))
        }
    }
}
