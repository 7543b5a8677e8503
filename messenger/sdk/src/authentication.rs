//! Registering, logging in and out, resuming a session, and the device's published keys.

use std::sync::Arc;

use qpq_core::bundle::KeyBundle;
use qpq_core::identity::{DeviceName, IdentityKey};
use qpq_core::kem::HybridSecretKey;
use qpq_core::mls::{MlsMember, Suite};
use qpq_core::sealed::ReplayGuard;
use qpq_proto::v1;
use qrpc::Code;
use zeroize::Zeroizing;

use crate::error::{SdkError, SdkResult};
use crate::store::StoredAccount;

use crate::client::Inner;
use crate::client::Keys;
use crate::client::QpqClient;
use crate::client::lock;
use crate::send_queue::outbox_loop;
use crate::sync::REPLAY_WINDOW_MS;
use crate::sync::receive_loop;

impl QpqClient {
    /// Creates an account on the server. Does not log in.
    pub async fn register(&self, user: &str, password: &str) -> SdkResult<()> {
        self.register_with_invite(user, password, None).await
    }

    /// Creates an account on a server that registers by invitation, presenting `invite`
    /// (the server's plugins decide). Does not log in.
    pub async fn register_with_invite(
        &self,
        user: &str,
        password: &str,
        invite: Option<&str>,
    ) -> SdkResult<()> {
        let rpc = self.rpc().await?;
        qpq_proto::auth_flows::register_with_invite(&rpc, user, password, invite).await?;
        Ok(())
    }

    /// Logs `device` of `user` in. The first login on this store creates the device's keys
    /// and publishes them; later logins reuse them. Starts receiving and sending.
    pub async fn login(&self, user: &str, device: &str, password: &str) -> SdkResult<()> {
        let existing = self.inner.store.account()?;
        if let Some(a) = &existing
            && (a.user != user || a.device != device)
        {
            return Err(SdkError::OtherAccount(format!("{}/{}", a.user, a.device)));
        }
        let rpc = self.rpc().await?;
        let session = qpq_proto::auth_flows::login(&rpc, user, device, password).await?;
        self.inner.session_bound(&rpc);
        let first = existing.is_none();
        if first && session.domain.is_empty() {
            return Err(SdkError::Invalid(
                "the server did not name its domain (a server older than this client)".into(),
            ));
        }
        if first {
            self.inner.store.create_account(&StoredAccount {
                user: user.into(),
                device: device.into(),
                identity_secret: IdentityKey::generate().to_secret_bytes(),
                hybrid_seed: HybridSecretKey::generate().to_seed(),
                delivery_token: Zeroizing::new(rand::random()),
                session_token: None,
            })?;
        }
        self.inner
            .store
            .set_session_token(Some(&session.session_token))?;
        self.load_keys(first.then_some(session.domain.as_str()))?;
        self.publish_keys(&rpc).await?;
        self.start_tasks();
        Ok(())
    }

    /// Resumes the stored session (after a restart): works offline too, then connects and
    /// catches up in the background. Fails with [`SdkError::NotLoggedIn`] if this store never
    /// logged in.
    pub async fn connect(&self) -> SdkResult<()> {
        let account = self.inner.store.account()?.ok_or(SdkError::NotLoggedIn)?;
        if account.session_token.is_none() {
            return Err(SdkError::NotLoggedIn);
        }
        self.load_keys(None)?;
        self.start_tasks();
        Ok(())
    }

    /// Ends the session on the server and stops the background tasks. The store keeps the
    /// conversations and keys; log in again to continue.
    ///
    /// The session is resumed first if the connection was made anew (a reconnect leaves the
    /// new connection without it), so the server really ends it; the local token is cleared
    /// whatever the server answers. A server that cannot be reached is reported after the
    /// token is gone: the session then ends on the server when it expires.
    pub async fn logout(&self) -> SdkResult<()> {
        self.stop_tasks();
        let ended = match self.inner.session().await {
            Ok(rpc) => match v1::auth_client::AuthClient::new(rpc)
                .logout(&v1::LogoutRequest {})
                .await
            {
                Ok(_) => Ok(()),
                // Nothing to end: the server no longer knows the session.
                Err(status) if status.code() == Code::Unauthenticated => Ok(()),
                Err(status) => Err(status.into()),
            },
            Err(SdkError::Server(status)) if status.code() == Code::Unauthenticated => Ok(()),
            Err(e) => Err(e),
        };
        self.inner.store.set_session_token(None)?;
        ended
    }

    /// Loads the device's keys; `new_domain` is the server's domain on the first login, when
    /// the MLS member is created (its credential names the device under that domain).
    pub(crate) fn load_keys(&self, new_domain: Option<&str>) -> SdkResult<()> {
        let account = self.inner.store.account()?.ok_or(SdkError::NotLoggedIn)?;
        let me = format!("{}/{}", account.user, account.device);
        let identity = IdentityKey::from_secret_bytes(&account.identity_secret);
        let conn = self.inner.store.mls_connection()?;
        let mls = match new_domain {
            Some(domain) => {
                let name = DeviceName::new(&account.user, domain, &account.device)
                    .map_err(|_| SdkError::Invalid(format!("server domain {domain:?}")))?;
                MlsMember::create(conn, &name.encode(), &identity, Suite::XWing)?
            }
            None => MlsMember::load(conn, &identity).map_err(|e| match e {
                qpq_core::mls::MlsError::IdentityMismatch => SdkError::Crypto(
                    "this store was made by a qpq-sdk whose MLS keys were not bound to the \
                     device identity; use a new data directory and log in as a new device"
                        .into(),
                ),
                e => e.into(),
            })?,
        };
        let name = DeviceName::parse(mls.name()).map_err(|_| {
            SdkError::Crypto(
                "this store's MLS member has no versioned device name (made by an older \
                 qpq-sdk); use a new data directory and log in as a new device"
                    .into(),
            )
        })?;
        *lock(&self.inner.keys) = Some(Keys {
            me,
            name,
            identity,
            hybrid: std::sync::Arc::new(HybridSecretKey::from_seed(&account.hybrid_seed)),
            mls,
            replay: ReplayGuard::new(REPLAY_WINDOW_MS),
        });
        Ok(())
    }

    /// Publishes the key bundle (with the delivery token) unless the store records it as
    /// published, then tops up the one-time key packages.
    pub(crate) async fn publish_keys(&self, rpc: &qrpc::Client) -> SdkResult<()> {
        let account = self.inner.store.account()?.ok_or(SdkError::NotLoggedIn)?;
        if !self.inner.store.keys_published()? {
            let bundle = {
                let keys = lock(&self.inner.keys);
                let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
                KeyBundle::new(
                    &keys.identity,
                    keys.hybrid.public(),
                    &account.user,
                    &account.device,
                )
                .map_err(|e| SdkError::Crypto(e.to_string()))?
            };
            v1::keys_client::KeysClient::new(rpc.clone())
                .upload_hybrid_key(&v1::UploadHybridKeyRequest {
                    key_bundle: bundle.encode().into(),
                    delivery_token: account.delivery_token.to_vec().into(),
                })
                .await?;
            self.inner.store.set_keys_published()?;
        }
        self.inner.replenish(rpc).await
    }

    pub(crate) fn start_tasks(&self) {
        self.stop_tasks();
        // A session ended before (revoked, logged out) does not end this one.
        if crate::sync::session_ended(&self.inner) {
            self.inner
                .set_connection(crate::events::ConnectionState::Offline {
                    reason: "starting".into(),
                });
        }
        let receiver = tokio::spawn(receive_loop(Arc::clone(&self.inner)));
        let outbox = tokio::spawn(outbox_loop(Arc::clone(&self.inner)));
        let relay_failures = tokio::spawn(crate::sync::relay_failure_loop(Arc::clone(&self.inner)));
        lock(&self.tasks.handles).extend([receiver, outbox, relay_failures]);
        self.inner.outbox_wake.notify_one();
    }

    pub(crate) fn stop_tasks(&self) {
        self.tasks.stop();
    }
}

impl Inner {
    /// Tops the server's stock of this device's one-time key packages back up to
    /// `limits.key_packages` and rotates the last-resort package. Each invitation this device
    /// accepts used one package; the server's answer corrects the local count.
    pub(crate) async fn replenish(&self, rpc: &qrpc::Client) -> SdkResult<()> {
        let target = self.limits.key_packages;
        let have = usize::try_from(self.store.key_packages()?).unwrap_or(0);
        if have >= target {
            return Ok(());
        }
        let (packages, last_resort) = {
            let keys = lock(&self.keys);
            let keys = keys.as_ref().ok_or(SdkError::NotLoggedIn)?;
            let mut packages = Vec::with_capacity(target - have);
            for _ in have..target {
                packages.push(bytes::Bytes::from(keys.mls.key_package()?));
            }
            (
                packages,
                bytes::Bytes::from(keys.mls.last_resort_key_package()?),
            )
        };
        let keys_client = v1::keys_client::KeysClient::new(rpc.clone());
        let stored = keys_client
            .upload_key_package(&v1::UploadKeyPackageRequest {
                key_packages: packages,
                last_resort: false,
            })
            .await?
            .stored;
        // A fresh last-resort package each time; the server limits how often a device may
        // change it (each change is logged), and the previous one stays valid meanwhile.
        match keys_client
            .upload_key_package(&v1::UploadKeyPackageRequest {
                key_packages: vec![last_resort],
                last_resort: true,
            })
            .await
        {
            Ok(_) => {}
            Err(status) if status.code() == Code::ResourceExhausted && have > 0 => {
                tracing::debug!(%status, "last-resort key package kept for now");
            }
            Err(status) => return Err(status.into()),
        }
        self.store.set_key_packages(u64::from(stored))?;
        Ok(())
    }
}
