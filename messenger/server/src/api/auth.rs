//! OPAQUE registration and login, logout, and session resumption: the `Auth` service.

use std::collections::HashMap;
use std::sync::Arc;

use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration,
};
use qpq_proto::v1::{self, auth_server::Auth};
use qrpc::{RequestContext, Status};

use crate::api::Api;
use crate::api::validate;
use crate::session::{EndReason, SessionInfo, caller};
use crate::store::{DeviceId, Session, Store, StoreError};
use crate::util::sha256;

use qpq_proto::auth_flows::OpaqueSuite;

/// Logins between their two flights, per connection.
#[derive(Default)]
struct PendingLogins(HashMap<[u8; 16], PendingLogin>);

struct PendingLogin {
    state: ServerLogin<OpaqueSuite>,
    device: DeviceId,
    started_ms: u64,
}

/// A connection may have this many logins in flight; older ones are dropped.
const MAX_PENDING_LOGINS: usize = 4;
/// A login's second flight must arrive within this time.
const LOGIN_TIMEOUT_MS: u64 = 60_000;

fn malformed(what: &'static str) -> impl Fn(opaque_ke::errors::ProtocolError) -> Status {
    move |_| Status::invalid_argument(format!("{what}: not a valid OPAQUE message"))
}

/// Login, registration and resume attempts made on one connection.
#[derive(Default)]
struct AuthAttempts(u32);

impl<S: Store> Api<S> {
    /// Binds `info` to the caller's connection, then checks that its row still exists: a
    /// revocation or logout that ended the session meanwhile (on any node, whose poke found
    /// nothing to end here yet) must not leave it bound. Runs as a task of its own, so a caller
    /// that resets its stream in between cannot skip the check; a failed check unbinds.
    async fn bind_checked(&self, ctx: &RequestContext, info: SessionInfo) -> Result<(), Status> {
        let state = std::sync::Arc::clone(&self.state);
        let peer = ctx.peer().clone();
        let checked = tokio::spawn(async move {
            let (token_hash, device) = (info.token_hash, info.device.clone());
            state.sessions.bind(&peer, info);
            match state.store.session(token_hash.to_vec()).await {
                Ok(Some(_)) => Ok(()),
                Ok(None) => {
                    let reason = match state.store.device_exists(device).await {
                        Ok(false) => EndReason::Revoked,
                        _ => EndReason::LoggedOut,
                    };
                    state
                        .sessions
                        .end_token(token_hash, reason, Some(peer.id()));
                    Err(Status::unauthenticated("session expired or unknown"))
                }
                Err(e) => {
                    state.sessions.end_connection(&peer);
                    Err(e.into())
                }
            }
        });
        checked
            .await
            .map_err(|_| Status::internal("the session check failed"))?
    }
}

impl<S: Store> Api<S> {
    /// Counts one authentication attempt against the connection's lifetime allowance.
    fn count_attempt(&self, ctx: &RequestContext) -> Result<(), Status> {
        let max = self.state.limits.auth_attempts_per_connection;
        ctx.peer().with_extensions(|e| {
            if e.get::<AuthAttempts>().is_none() {
                e.insert(AuthAttempts::default());
            }
            match e.get_mut::<AuthAttempts>() {
                Some(a) if a.0 < max => {
                    a.0 += 1;
                    Ok(())
                }
                _ => Err(Status::resource_exhausted(
                    "too many authentication attempts on this connection; reconnect to try again",
                )),
            }
        })
    }

    /// The per-IP limit on registration and login starts. Keyed by IP even on a logged-in
    /// connection, so sessions and devices do not multiply an attacker's attempts.
    fn check_login_ip(&self, ctx: &RequestContext) -> Result<(), Status> {
        let l = &self.state.limiters;
        l.check(
            &l.logins_per_ip,
            &ctx.remote_address().ip(),
            1,
            "login or registration attempts from this address",
        )
    }
}

impl<S: Store> Auth for Api<S> {
    async fn register_start(
        &self,
        ctx: RequestContext,
        request: v1::RegisterStartRequest,
    ) -> Result<v1::RegisterStartResponse, Status> {
        validate::user(&request.user)?;
        self.check_login_ip(&ctx)?;
        self.count_attempt(&ctx)?;
        let message =
            RegistrationRequest::<OpaqueSuite>::deserialize(&request.registration_request)
                .map_err(malformed("registration_request"))?;
        let start = ServerRegistration::<OpaqueSuite>::start(
            &self.state.opaque,
            message,
            request.user.as_bytes(),
        )
        .map_err(|_| Status::invalid_argument("registration_request rejected"))?;
        Ok(v1::RegisterStartResponse {
            registration_response: start.message.serialize().to_vec().into(),
        })
    }

    async fn register_finish(
        &self,
        ctx: RequestContext,
        request: v1::RegisterFinishRequest,
    ) -> Result<v1::RegisterFinishResponse, Status> {
        validate::user(&request.user)?;
        let upload = RegistrationUpload::<OpaqueSuite>::deserialize(&request.registration_upload)
            .map_err(malformed("registration_upload"))?;
        // Creating accounts is limited like logging in: per IP and per connection.
        self.check_login_ip(&ctx)?;
        self.count_attempt(&ctx)?;
        if let Some(invite) = &request.invite {
            validate::max_len("invite", invite.len(), 128)?;
        }
        self.state
            .plugins
            .check(|| crate::plugins::Event::Registration {
                user: request.user.clone(),
                invite: request.invite.clone(),
                remote_address: ctx.remote_address().ip().to_string(),
            })
            .await?;
        let record = ServerRegistration::finish(upload);
        match self
            .state
            .store
            .create_user(
                request.user,
                record.serialize().to_vec(),
                self.state.now_ms(),
            )
            .await
        {
            Ok(()) => Ok(v1::RegisterFinishResponse {}),
            Err(StoreError::AlreadyExists) => Err(Status::already_exists("user name taken")),
            Err(e) => Err(e.into()),
        }
    }

    async fn login_start(
        &self,
        ctx: RequestContext,
        request: v1::LoginStartRequest,
    ) -> Result<v1::LoginStartResponse, Status> {
        validate::user(&request.user)?;
        validate::device(&request.device)?;
        let message = CredentialRequest::<OpaqueSuite>::deserialize(&request.credential_request)
            .map_err(malformed("credential_request"))?;
        self.check_login_ip(&ctx)?;
        self.count_attempt(&ctx)?;
        let l = &self.state.limiters;
        l.check(
            &l.logins_per_account,
            &request.user,
            1,
            "login attempts for this account",
        )?;
        self.state
            .plugins
            .check(|| crate::plugins::Event::Login {
                user: request.user.clone(),
                remote_address: ctx.remote_address().ip().to_string(),
            })
            .await?;
        // An unknown user runs the same computation against a fake record, so the response
        // does not reveal whether the name exists.
        let record = match self.state.store.password_file(request.user.clone()).await? {
            Some(bytes) => Some(
                ServerRegistration::<OpaqueSuite>::deserialize(&bytes)
                    .map_err(|_| Status::internal("stored password file is corrupt"))?,
            ),
            None => None,
        };
        let mut rng = rand_core_06::OsRng;
        let start = ServerLogin::start(
            &mut rng,
            &self.state.opaque,
            record,
            message,
            request.user.as_bytes(),
            ServerLoginParameters::default(),
        )
        .map_err(|_| Status::invalid_argument("credential_request rejected"))?;
        let login_id: [u8; 16] = rand::random();
        let now = self.state.now_ms();
        ctx.peer().with_extensions(|e| {
            if e.get::<PendingLogins>().is_none() {
                e.insert(PendingLogins::default());
            }
            if let Some(pending) = e.get_mut::<PendingLogins>() {
                pending
                    .0
                    .retain(|_, p| now.saturating_sub(p.started_ms) < LOGIN_TIMEOUT_MS);
                if pending.0.len() >= MAX_PENDING_LOGINS
                    && let Some(oldest) = pending
                        .0
                        .iter()
                        .min_by_key(|(_, p)| p.started_ms)
                        .map(|(k, _)| *k)
                {
                    pending.0.remove(&oldest);
                }
                pending.0.insert(
                    login_id,
                    PendingLogin {
                        state: start.state,
                        device: DeviceId::new(&request.user, &request.device),
                        started_ms: now,
                    },
                );
            }
        });
        Ok(v1::LoginStartResponse {
            login_id: login_id.to_vec().into(),
            credential_response: start.message.serialize().to_vec().into(),
        })
    }

    async fn login_finish(
        &self,
        ctx: RequestContext,
        request: v1::LoginFinishRequest,
    ) -> Result<v1::LoginFinishResponse, Status> {
        validate::exact_len("login_id", &request.login_id, 16)?;
        let mut login_id = [0u8; 16];
        login_id.copy_from_slice(&request.login_id);
        let finalization =
            CredentialFinalization::<OpaqueSuite>::deserialize(&request.credential_finalization)
                .map_err(malformed("credential_finalization"))?;
        let pending = ctx
            .peer()
            .with_extensions(|e| {
                e.get_mut::<PendingLogins>()
                    .and_then(|p| p.0.remove(&login_id))
            })
            .filter(|p| self.state.now_ms().saturating_sub(p.started_ms) < LOGIN_TIMEOUT_MS)
            .ok_or_else(|| {
                Status::failed_precondition("no login in progress with this id on this connection")
            })?;
        // One message for a wrong password and an unknown user.
        pending
            .state
            .finish(finalization, ServerLoginParameters::default())
            .map_err(|_| Status::unauthenticated("login failed"))?;

        let device = pending.device;
        if !self.state.store.device_exists(device.clone()).await? {
            // A user's first device is registered by logging in with it; later devices must be
            // added by a logged-in device (RegisterDevice). A revoked id never comes back.
            match self
                .state
                .store
                .register_device(
                    device.clone(),
                    String::new(),
                    self.state.now_ms(),
                    true,
                    self.state.limits.max_devices_per_user,
                )
                .await
            {
                Ok(()) => {}
                Err(StoreError::NotFound) => {
                    return Err(Status::permission_denied(
                        "unknown device: register it from one of your logged-in devices first",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let token = zeroize::Zeroizing::new(rand::random::<[u8; 32]>());
        let token_hash = sha256(token.as_slice());
        let expires_at_ms = self
            .state
            .now_ms()
            .saturating_add(self.state.limits.session_ttl_secs.saturating_mul(1000));
        self.state
            .store
            .create_session(
                token_hash.to_vec(),
                Session {
                    device: device.clone(),
                    expires_at_ms,
                },
            )
            .await?;
        self.bind_checked(&ctx, SessionInfo::new(device, expires_at_ms, token_hash))
            .await?;
        Ok(v1::LoginFinishResponse {
            session_token: token.to_vec().into(),
            expires_at_ms,
            domain: self.state.domain.clone(),
        })
    }

    async fn resume_session(
        &self,
        ctx: RequestContext,
        request: v1::ResumeSessionRequest,
    ) -> Result<v1::ResumeSessionResponse, Status> {
        validate::exact_len("session_token", &request.session_token, 32)?;
        let l = &self.state.limiters;
        l.check(
            &l.resumes_per_ip,
            &ctx.remote_address().ip(),
            1,
            "session resumes from this address",
        )?;
        self.count_attempt(&ctx)?;
        let token_hash = sha256(&request.session_token);
        // A revoked device's sessions were deleted with it; a logged-out token was deleted.
        let session = self
            .state
            .store
            .session(token_hash.to_vec())
            .await?
            .filter(|s| s.expires_at_ms > self.state.now_ms())
            .ok_or_else(|| Status::unauthenticated("session expired or unknown"))?;
        self.bind_checked(
            &ctx,
            SessionInfo::new(session.device.clone(), session.expires_at_ms, token_hash),
        )
        .await?;
        Ok(v1::ResumeSessionResponse {
            user: session.device.user,
            device: session.device.device,
            expires_at_ms: session.expires_at_ms,
        })
    }

    async fn logout(
        &self,
        ctx: RequestContext,
        _request: v1::LogoutRequest,
    ) -> Result<v1::LogoutResponse, Status> {
        let me = caller(&ctx)?;
        self.check_write(&me)?;
        let Some(info) = ctx
            .peer()
            .with_extensions(|e| e.get::<SessionInfo>().cloned())
        else {
            return Err(Status::unauthenticated("log in first"));
        };
        // As for revocation: ending the session does not depend on the caller staying.
        let state = Arc::clone(&self.state);
        let this_connection = ctx.peer().id();
        let done = tokio::spawn(async move {
            state.store.delete_session(info.token_hash.to_vec()).await?;
            state
                .end_token_sessions(info.token_hash, EndReason::LoggedOut, Some(this_connection))
                .await;
            Ok::<(), StoreError>(())
        });
        match done.await {
            Ok(result) => result?,
            Err(_) => return Err(Status::internal("the logout task failed")),
        }
        Ok(v1::LogoutResponse {})
    }
}
