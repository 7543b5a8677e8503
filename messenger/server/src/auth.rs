//! OPAQUE registration and login, sessions bound to connections, and the authenticator that
//! guards every protected method.

use std::collections::HashMap;
use std::sync::Arc;

use opaque_ke::{
    CredentialFinalization, CredentialRequest, RegistrationRequest, RegistrationUpload,
    ServerLogin, ServerLoginParameters, ServerRegistration,
};
use qpq_proto::v1::{self, auth_server::Auth, server_event_push::Event};
use qrpc::middleware::Authenticator;
use qrpc::{RequestContext, Status};

use crate::state::{Api, AppState, SessionInfo, now_ms, sha256};
use crate::store::{DeviceId, Session, Store, StoreError};
use crate::validate;

/// OPAQUE: Ristretto255 OPRF, 3DH with SHA-512, Argon2id as the key-stretching function.
pub struct OpaqueSuite;

impl opaque_ke::CipherSuite for OpaqueSuite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2_010::Sha512>;
    type Ksf = opaque_ke::argon2::Argon2<'static>;
}

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

/// Binds a session to the connection.
fn bind(ctx: &RequestContext, info: SessionInfo) {
    let identity = info.device.identity();
    ctx.connection().with_extensions(|e| e.insert(info));
    ctx.connection().bind_identity(identity);
}

impl<S: Store> Auth for Api<S> {
    async fn register_start(
        &self,
        _ctx: RequestContext,
        request: v1::RegisterStartRequest,
    ) -> Result<v1::RegisterStartResponse, Status> {
        validate::user(&request.user)?;
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
        _ctx: RequestContext,
        request: v1::RegisterFinishRequest,
    ) -> Result<v1::RegisterFinishResponse, Status> {
        validate::user(&request.user)?;
        let upload = RegistrationUpload::<OpaqueSuite>::deserialize(&request.registration_upload)
            .map_err(malformed("registration_upload"))?;
        let record = ServerRegistration::finish(upload);
        match self
            .state
            .store
            .create_user(request.user, record.serialize().to_vec(), now_ms())
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
        let now = now_ms();
        ctx.connection().with_extensions(|e| {
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
            .connection()
            .with_extensions(|e| {
                e.get_mut::<PendingLogins>()
                    .and_then(|p| p.0.remove(&login_id))
            })
            .filter(|p| now_ms().saturating_sub(p.started_ms) < LOGIN_TIMEOUT_MS)
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
            // added by a logged-in device (RegisterDevice).
            match self
                .state
                .store
                .register_device(device.clone(), String::new(), now_ms(), true)
                .await
            {
                Ok(()) => self.state.unrevoke(&device),
                Err(StoreError::NotFound) => {
                    return Err(Status::permission_denied(
                        "unknown device: register it from one of your logged-in devices first",
                    ));
                }
                Err(e) => return Err(e.into()),
            }
        }
        let token: [u8; 32] = rand::random();
        let expires_at_ms =
            now_ms().saturating_add(self.state.limits.session_ttl_secs.saturating_mul(1000));
        self.state
            .store
            .create_session(
                sha256(&token).to_vec(),
                Session {
                    device: device.clone(),
                    expires_at_ms,
                },
            )
            .await?;
        bind(
            &ctx,
            SessionInfo {
                device,
                expires_at_ms,
            },
        );
        Ok(v1::LoginFinishResponse {
            session_token: token.to_vec().into(),
            expires_at_ms,
        })
    }

    async fn resume_session(
        &self,
        ctx: RequestContext,
        request: v1::ResumeSessionRequest,
    ) -> Result<v1::ResumeSessionResponse, Status> {
        validate::exact_len("session_token", &request.session_token, 32)?;
        let session = self
            .state
            .store
            .session(sha256(&request.session_token).to_vec())
            .await?
            .filter(|s| s.expires_at_ms > now_ms() && !self.state.is_revoked(&s.device))
            .ok_or_else(|| Status::unauthenticated("session expired or unknown"))?;
        bind(
            &ctx,
            SessionInfo {
                device: session.device.clone(),
                expires_at_ms: session.expires_at_ms,
            },
        );
        Ok(v1::ResumeSessionResponse {
            user: session.device.user,
            device: session.device.device,
            expires_at_ms: session.expires_at_ms,
        })
    }
}

/// Lets a call through when the connection holds a live session; otherwise ends the session
/// (pushing `SessionExpired` if there was one) and refuses with `Unauthenticated`.
pub struct SessionAuth<S> {
    state: Arc<AppState<S>>,
}

impl<S> SessionAuth<S> {
    /// Over shared state.
    pub fn new(state: Arc<AppState<S>>) -> Self {
        Self { state }
    }
}

impl<S: Store> Authenticator for SessionAuth<S> {
    fn authenticate(&self, ctx: &RequestContext) -> Result<(), Status> {
        let conn = ctx.connection();
        let Some(info) = conn.with_extensions(|e| e.get::<SessionInfo>().cloned()) else {
            return Err(Status::unauthenticated("log in first"));
        };
        let reason = if self.state.is_revoked(&info.device) {
            "device_revoked"
        } else if info.expires_at_ms <= now_ms() {
            "expired"
        } else {
            return Ok(());
        };
        conn.with_extensions(|e| e.remove::<SessionInfo>());
        conn.clear_identity();
        let event = Event::SessionExpired(v1::SessionExpired {
            reason: reason.into(),
        });
        let _ = qrpc::TypedPushSender::new(conn.push().clone()).try_send(&event);
        Err(Status::unauthenticated(format!("session ended: {reason}")))
    }
}

/// The device a protected call runs as. The auth layer guarantees the session exists.
pub fn caller(ctx: &RequestContext) -> Result<DeviceId, Status> {
    ctx.connection()
        .with_extensions(|e| e.get::<SessionInfo>().map(|s| s.device.clone()))
        .ok_or_else(|| Status::unauthenticated("log in first"))
}
