//! The client calls a home server answers for its users about users of other servers: it asks
//! the user's server over federation and hands the answer back unchanged (the client checks
//! the other server's key-transparency proofs itself), and it witnesses that server's log.

use std::sync::Arc;
use std::time::Duration;

use qpq_core::identity::IdentityPublic;
use qpq_core::kt::{ConsistencyProof, Cosignature, SignedTreeHead};
use qpq_proto::v1;
use qrpc::{Code, Status};

use crate::api::Api;
use crate::federation::Federation;
use crate::store::{DeviceId, Store, WitnessedHead};

/// How long a call to a peer for a user may take.
const PEER_CALL: Duration = Duration::from_secs(10);

/// `request` with the deadline of a call to a peer.
fn timed<T>(request: T) -> qrpc::Request<T> {
    qrpc::Request::new(request).with_timeout(PEER_CALL)
}

/// A peer's refusal or failure, named: the caller learns which server said it.
fn from_peer(domain: &str, status: Status) -> Status {
    let code = match status.code() {
        // A peer's internal trouble is not this server's: the call may succeed later.
        Code::Internal | Code::Unknown | Code::DataLoss => Code::Unavailable,
        other => other,
    };
    Status::new(code, format!("{domain}: {}", status.message()))
}

/// Why a peer's log head is refused.
fn kt_refused(domain: &str, why: &str) -> Status {
    Status::failed_precondition(format!(
        "key transparency: {domain}'s log {why}; this server does not cosign it"
    ))
}

impl<S: Store> Api<S> {
    /// Federation, when this server federates (`FailedPrecondition` otherwise).
    pub(crate) fn federation(&self) -> Result<&Arc<Federation>, Status> {
        self.state.federation.as_ref().ok_or_else(|| {
            Status::failed_precondition("this server does not federate with other servers")
        })
    }

    fn device_ref(device: &DeviceId) -> v1::DeviceRef {
        v1::DeviceRef {
            user: device.user.clone(),
            device: device.device.clone(),
        }
    }

    /// Takes a key package of `device` (a user of `domain`) for `me`.
    pub(crate) async fn remote_key_package(
        &self,
        me: &DeviceId,
        domain: &str,
        device: DeviceId,
    ) -> Result<v1::FetchKeyPackageResponse, Status> {
        let fed = self.federation()?;
        fed.check_lookup(&me.user, 1)?;
        let l = &self.state.limiters;
        l.check(&l.key_packages_per_user, &me.user, 1, "key-package fetches")?;
        l.check(
            &l.key_packages_per_pair,
            &(me.user.clone(), format!("{}@{domain}", device.user)),
            1,
            "key-package fetches for this user",
        )?;
        let client = fed.client(domain).await?;
        client
            .proxy_fetch_key_package(timed(v1::ProxyFetchKeyPackageRequest {
                origin: fed.domain.clone(),
                device: Some(Self::device_ref(&device)),
                requester: me.user.clone(),
            }))
            .await
            .map_err(|e| from_peer(domain, e))
    }

    /// The key bundle of `device` (a user of `domain`), with `domain`'s proof, for `me`.
    pub(crate) async fn remote_bundle(
        &self,
        me: &DeviceId,
        domain: &str,
        device: DeviceId,
    ) -> Result<v1::FetchHybridKeyResponse, Status> {
        let fed = self.federation()?;
        fed.check_lookup(&me.user, 1)?;
        let client = fed.client(domain).await?;
        client
            .proxy_fetch_hybrid_key(timed(v1::ProxyFetchHybridKeyRequest {
                origin: fed.domain.clone(),
                device: Some(Self::device_ref(&device)),
            }))
            .await
            .map_err(|e| from_peer(domain, e))
    }

    /// The devices of `user`, a user of `domain`, for `me`.
    pub(crate) async fn remote_user(
        &self,
        me: &DeviceId,
        domain: &str,
        user: &str,
    ) -> Result<v1::ResolveUserResponse, Status> {
        let fed = self.federation()?;
        fed.check_lookup(&me.user, 1)?;
        let client = fed.client(domain).await?;
        client
            .proxy_resolve_user(timed(v1::ProxyResolveUserRequest {
                origin: fed.domain.clone(),
                user: user.to_owned(),
            }))
            .await
            .map_err(|e| from_peer(domain, e))
    }

    /// `domain`'s latest log head, witnessed by this server (checked against the last head
    /// of it this server cosigned, and cosigned), with a consistency proof from `since_size`
    /// as `domain` gives it.
    pub(crate) async fn remote_kt_head(
        &self,
        me: &DeviceId,
        domain: &str,
        since_size: u64,
    ) -> Result<v1::KtHeadResponse, Status> {
        let fed = self.federation()?;
        // A witnessed head takes up to two calls to the peer.
        fed.check_lookup(&me.user, 2)?;
        if !fed.is_peer(domain) {
            return Err(Status::failed_precondition(format!(
                "{domain} is not a server this one federates with"
            )));
        }
        // The log may grow between the witness's look and the client's: three tries.
        for _ in 0..3 {
            let (witnessed, cosignature, log_key) = self.witness(fed, domain).await?;
            let mut answer = self.peer_head(fed, domain, since_size).await?;
            // The proof is for the witnessed tree (same size and root); the head handed on
            // is the one witnessed, byte for byte, so the cosignature covers it even if the
            // peer signed that tree again meanwhile.
            if SignedTreeHead::decode(&answer.tree_head).is_ok_and(|h| witnessed.is(&h)) {
                answer.tree_head = witnessed.encode().into();
                answer.domain = domain.to_owned();
                answer.log_key = log_key.into();
                answer.cosignature = cosignature.encode().into();
                return Ok(answer);
            }
        }
        Err(Status::unavailable(format!(
            "{domain}'s key-transparency log kept growing; try again"
        )))
    }

    async fn peer_head(
        &self,
        fed: &Federation,
        domain: &str,
        since_size: u64,
    ) -> Result<v1::KtHeadResponse, Status> {
        let client = fed.client(domain).await?;
        client
            .federation_kt_head(timed(v1::FederationKtHeadRequest {
                origin: fed.domain.clone(),
                since_size,
            }))
            .await
            .map_err(|e| from_peer(domain, e))
    }

    /// Fetches `domain`'s latest head, checks it against the last one this server witnessed
    /// (same log key, never smaller, consistent), records it and cosigns it.
    pub(crate) async fn witness(
        &self,
        fed: &Federation,
        domain: &str,
    ) -> Result<(SignedTreeHead, Cosignature, Vec<u8>), Status> {
        for _ in 0..3 {
            let stored = self.state.store.witnessed_head(domain.to_owned()).await?;
            let since = stored.as_ref().map_or(0, |w| w.tree_size);
            let answer = self.peer_head(fed, domain, since).await?;
            if answer.domain != domain {
                return Err(kt_refused(domain, "is for another domain"));
            }
            let log_key_bytes = match &stored {
                Some(w) if w.log_key.as_slice() != answer.log_key.as_ref() => {
                    return Err(kt_refused(domain, "is signed with another key than before"));
                }
                Some(w) => w.log_key.clone(),
                None => answer.log_key.to_vec(),
            };
            let log_key = <[u8; 32]>::try_from(log_key_bytes.as_slice())
                .ok()
                .and_then(|k| IdentityPublic::from_bytes(&k).ok())
                .ok_or_else(|| kt_refused(domain, "has a malformed key"))?;
            let head = SignedTreeHead::decode(&answer.tree_head)
                .and_then(|h| h.verify(&log_key))
                .map_err(|_| kt_refused(domain, "head is not signed by its key"))?;
            if let Some(w) = &stored {
                let old = SignedTreeHead::decode(&w.head)
                    .map_err(|_| Status::internal("a witnessed head is corrupt"))?;
                if head.tree_size() < old.tree_size {
                    return Err(kt_refused(domain, "shrank (a rollback)"));
                }
                if head.tree_size() == old.tree_size {
                    if head.root() != &old.root {
                        return Err(kt_refused(
                            domain,
                            "showed two different heads of one size (a split view)",
                        ));
                    }
                } else {
                    let proof = ConsistencyProof::decode(&answer.consistency_proof)
                        .map_err(|_| kt_refused(domain, "sent a malformed consistency proof"))?;
                    if proof.old_size != old.tree_size || proof.new_size != head.tree_size() {
                        return Err(kt_refused(domain, "sent a proof for other heads"));
                    }
                    proof.verify(&old.root, head.root()).map_err(|_| {
                        kt_refused(
                            domain,
                            "head does not extend the one witnessed before (a split view)",
                        )
                    })?;
                }
            }
            let recorded = self
                .state
                .store
                .witness_head(
                    domain.to_owned(),
                    stored.as_ref().map(|w| w.tree_size),
                    WitnessedHead {
                        log_key: log_key_bytes.clone(),
                        tree_size: head.tree_size(),
                        head: head.encode(),
                    },
                )
                .await?;
            if recorded || stored.is_some_and(|w| w.tree_size == head.tree_size()) {
                let cosignature =
                    Cosignature::sign(&self.state.kt_key, &self.state.domain, domain, &head);
                return Ok((head, cosignature, log_key_bytes));
            }
            // Another call witnessed a newer head meanwhile: check against that one.
        }
        Err(Status::unavailable(format!(
            "{domain}'s log head is being witnessed by another call; try again"
        )))
    }
}
