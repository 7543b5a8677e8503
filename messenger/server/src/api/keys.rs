//! Keys: MLS key packages (consumed once, with a last-resort fallback) and signed hybrid key
//! bundles, every answer with its key-transparency proof.

use qpq_core::bundle::KeyBundle;
use qpq_proto::v1::{self, keys_server::Keys};
use qrpc::{RequestContext, Status};

use crate::api::Api;
use crate::api::validate;
use crate::session::caller;
use crate::store::{DeviceId, Store};
use crate::util::sha256;

/// Largest key package accepted.
const MAX_KEY_PACKAGE_BYTES: usize = 16 * 1024;
/// Devices one batch fetch may name.
const MAX_BATCH_FETCH: usize = 256;

impl<S: Store> Api<S> {
    async fn proof_for(&self, device: &DeviceId) -> Result<Option<v1::KtProof>, Status> {
        match self.state.store.bundle(device.clone()).await? {
            Some(row) => Ok(Some(self.state.kt_proof(&row, device).await?)),
            None => Ok(None),
        }
    }

    async fn fetch_bundle(
        &self,
        device: DeviceId,
    ) -> Result<Option<v1::FetchHybridKeyResponse>, Status> {
        let Some(row) = self.state.store.bundle(device.clone()).await? else {
            return Ok(None);
        };
        Ok(Some(v1::FetchHybridKeyResponse {
            proof: Some(self.state.kt_proof(&row, &device).await?),
            key_bundle: row.bundle.into(),
        }))
    }

    /// Takes one of `me`'s key publishes (each may add a key-transparency leaf).
    /// Takes one of `device`'s key packages for `requester` (a local user, or `user@domain`
    /// of another server), within the requester's limits.
    pub(crate) async fn take_key_package_for(
        &self,
        requester: &str,
        device: DeviceId,
    ) -> Result<v1::FetchKeyPackageResponse, Status> {
        if requester != device.user {
            // One-time packages are scarce: nobody may drain another user's supply.
            let l = &self.state.limiters;
            l.check(
                &l.key_packages_per_user,
                &requester.to_owned(),
                1,
                "key-package fetches",
            )?;
            l.check(
                &l.key_packages_per_pair,
                &(requester.to_owned(), device.user.clone()),
                1,
                "key-package fetches for this user",
            )?;
        }
        let (key_package, last_resort) =
            self.state
                .store
                .take_key_package(device.clone())
                .await?
                .ok_or_else(|| Status::not_found("the device has no key packages"))?;
        Ok(v1::FetchKeyPackageResponse {
            key_package: key_package.into(),
            last_resort,
            proof: self.proof_for(&device).await?,
        })
    }

    /// A device's key bundle with its proof (`NotFound` when it has none).
    pub(crate) async fn bundle_of(
        &self,
        device: DeviceId,
    ) -> Result<v1::FetchHybridKeyResponse, Status> {
        self.fetch_bundle(device)
            .await?
            .ok_or_else(|| Status::not_found("the device has no key bundle"))
    }

    fn check_key_publish(&self, me: &DeviceId) -> Result<(), Status> {
        let l = &self.state.limiters;
        l.check(
            &l.key_publishes_per_device,
            &(me.user.clone(), me.device.clone()),
            1,
            "key publishes for this device",
        )
    }

    /// The identity key `me` published with its key bundle.
    async fn published_identity(&self, me: &DeviceId) -> Result<[u8; 32], Status> {
        match self.state.store.bundle(me.clone()).await? {
            Some(row) => Ok(KeyBundle::decode(&row.bundle)
                .map_err(|_| Status::internal("stored key bundle is corrupt"))?
                .identity
                .to_bytes()),
            None => Err(Status::failed_precondition(
                "publish the device's key bundle (UploadHybridKey) before its key packages",
            )),
        }
    }

    /// Re-publishes the device's binding after its last-resort package changed.
    async fn rebind(&self, me: &DeviceId) -> Result<(), Status> {
        if let Some(row) = self.state.store.bundle(me.clone()).await? {
            let bundle = KeyBundle::decode(&row.bundle)
                .map_err(|_| Status::internal("stored key bundle is corrupt"))?;
            self.state
                .publish_binding(
                    me,
                    row.bundle,
                    bundle.identity.to_bytes(),
                    bundle.hybrid.hash(),
                    row.delivery_token_hash,
                )
                .await?;
        }
        Ok(())
    }
}

impl<S: Store> Keys for Api<S> {
    async fn upload_key_package(
        &self,
        ctx: RequestContext,
        request: v1::UploadKeyPackageRequest,
    ) -> Result<v1::UploadKeyPackageResponse, Status> {
        let me = caller(&ctx)?;
        self.check_write(&me)?;
        let max = self.state.limits.max_key_packages as usize;
        if request.key_packages.is_empty() || request.key_packages.len() > max {
            return Err(Status::invalid_argument(format!(
                "key_packages: 1 to {max} entries"
            )));
        }
        if request.last_resort && request.key_packages.len() != 1 {
            return Err(Status::invalid_argument(
                "key_packages: exactly one last-resort package",
            ));
        }
        let expected_name =
            qpq_core::identity::DeviceName::new(&me.user, &self.state.domain, &me.device)
                .map_err(|_| Status::internal("device name out of range"))?
                .to_string();
        // The leaf of every package must sign with the identity key the device published, so
        // that members can check it against the key-transparency log.
        let mut identity = None;
        for kp in &request.key_packages {
            validate::max_len("key_packages[]", kp.len(), MAX_KEY_PACKAGE_BYTES)?;
            let info = qpq_core::mls::inspect_key_package(kp)
                .map_err(|e| Status::invalid_argument(format!("key_packages[]: {e}")))?;
            // The credential must name the uploading device, so nobody can publish key
            // packages that impersonate someone else inside MLS groups.
            if info.name != expected_name.as_bytes() {
                return Err(Status::permission_denied(format!(
                    "key_packages[]: credential must be \"{expected_name}\""
                )));
            }
            let identity = match identity {
                Some(key) => key,
                None => *identity.insert(self.published_identity(&me).await?),
            };
            if info.signature_key != identity {
                return Err(Status::permission_denied(
                    "key_packages[]: the leaf must sign with the device's published identity key",
                ));
            }
            if info.last_resort != request.last_resort {
                return Err(Status::invalid_argument(
                    "key_packages[]: last-resort flag does not match the request",
                ));
            }
        }
        let packages: Vec<Vec<u8>> = request.key_packages.iter().map(|b| b.to_vec()).collect();
        if request.last_resort {
            self.check_key_publish(&me)?;
            let package = packages.into_iter().next().unwrap_or_default();
            self.state
                .store
                .set_last_resort_key_package(me.clone(), package)
                .await?;
            self.rebind(&me).await?;
            let stored = self.state.store.key_package_count(me).await?;
            return Ok(v1::UploadKeyPackageResponse { stored });
        }
        let stored = self
            .state
            .store
            .add_key_packages(me, packages, self.state.limits.max_key_packages)
            .await?;
        Ok(v1::UploadKeyPackageResponse { stored })
    }

    async fn fetch_key_package(
        &self,
        ctx: RequestContext,
        request: v1::FetchKeyPackageRequest,
    ) -> Result<v1::FetchKeyPackageResponse, Status> {
        let me = caller(&ctx)?;
        let target = validate::target(request.device.as_ref(), &self.state.domain)?;
        match target.domain {
            Some(domain) => self.remote_key_package(&me, &domain, target.device).await,
            None => self.take_key_package_for(&me.user, target.device).await,
        }
    }

    async fn upload_hybrid_key(
        &self,
        ctx: RequestContext,
        request: v1::UploadHybridKeyRequest,
    ) -> Result<v1::UploadHybridKeyResponse, Status> {
        let me = caller(&ctx)?;
        let bundle = KeyBundle::decode(&request.key_bundle)
            .map_err(|e| Status::invalid_argument(format!("key_bundle: {e}")))?;
        if !bundle.is_for(&me.user, &me.device) {
            return Err(Status::permission_denied(format!(
                "key_bundle: signed for {}/{}, not for this device",
                bundle.user, bundle.device
            )));
        }
        self.check_write(&me)?;
        let previous = self.state.store.bundle(me.clone()).await?;
        if let Some(row) = &previous
            && row.identity_key != bundle.identity.to_bytes()
        {
            return Err(Status::permission_denied(
                "key_bundle: a device's identity key never changes; register a new device",
            ));
        }
        self.check_key_publish(&me)?;
        let token_hash = match request.delivery_token.len() {
            0 => None,
            32 => Some(sha256(&request.delivery_token).to_vec()),
            n => {
                return Err(Status::invalid_argument(format!(
                    "delivery_token: must be 32 bytes, got {n}"
                )));
            }
        };
        let (index, key_package_hash) = self
            .state
            .publish_binding(
                &me,
                request.key_bundle.to_vec(),
                bundle.identity.to_bytes(),
                bundle.hybrid.hash(),
                token_hash,
            )
            .await
            .map_err(|e| {
                if e.code() == qrpc::Code::AlreadyExists {
                    Status::permission_denied(
                        "key_bundle: this identity key already belongs to another device",
                    )
                } else {
                    e
                }
            })?;
        Ok(v1::UploadHybridKeyResponse {
            proof: Some(
                self.state
                    .kt_proof_at(index, key_package_hash.to_vec())
                    .await?,
            ),
        })
    }

    async fn fetch_hybrid_key(
        &self,
        ctx: RequestContext,
        request: v1::FetchHybridKeyRequest,
    ) -> Result<v1::FetchHybridKeyResponse, Status> {
        let target = validate::target(request.device.as_ref(), &self.state.domain)?;
        match target.domain {
            Some(domain) => {
                self.remote_bundle(&caller(&ctx)?, &domain, target.device)
                    .await
            }
            None => self.bundle_of(target.device).await,
        }
    }

    async fn kt_head(
        &self,
        ctx: RequestContext,
        request: v1::KtHeadRequest,
    ) -> Result<v1::KtHeadResponse, Status> {
        if request.domain.is_empty() || request.domain == self.state.domain {
            return self.state.kt_head(request.since_size).await;
        }
        self.remote_kt_head(&caller(&ctx)?, &request.domain, request.since_size)
            .await
    }

    async fn batch_fetch_hybrid_keys(
        &self,
        ctx: RequestContext,
        request: v1::BatchFetchHybridKeysRequest,
    ) -> Result<v1::BatchFetchHybridKeysResponse, Status> {
        if request.devices.is_empty() || request.devices.len() > MAX_BATCH_FETCH {
            return Err(Status::invalid_argument(format!(
                "devices: 1 to {MAX_BATCH_FETCH} entries"
            )));
        }
        let mut response = v1::BatchFetchHybridKeysResponse::default();
        for r in &request.devices {
            let target = validate::target(Some(r), &self.state.domain)?;
            let found = match target.domain {
                Some(domain) => match self
                    .remote_bundle(&caller(&ctx)?, &domain, target.device)
                    .await
                {
                    Ok(bundle) => Some(bundle),
                    Err(e) if e.code() == qrpc::Code::NotFound => None,
                    Err(e) => return Err(e),
                },
                None => self.fetch_bundle(target.device).await?,
            };
            match found {
                Some(bundle) => response.bundles.push(bundle),
                None => response.missing.push(r.clone()),
            }
        }
        Ok(response)
    }
}
