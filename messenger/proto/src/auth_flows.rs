//! The OPAQUE cipher suite both ends use, and the client side of registration and login over
//! the generated Auth client (used by the SDK, tests, benchmarks and tools).

use opaque_ke::{
    ClientLogin, ClientLoginFinishParameters, ClientRegistration,
    ClientRegistrationFinishParameters, CredentialResponse, RegistrationResponse,
};
use qrpc::Status;
use zeroize::Zeroizing;

use crate::v1::{self, auth_client::AuthClient};

/// OPAQUE: Ristretto255 OPRF, 3DH with SHA-512, Argon2id as the key-stretching function.
/// Part of the protocol: a server and its clients must use the same suite.
pub struct OpaqueSuite;

impl opaque_ke::CipherSuite for OpaqueSuite {
    type OprfCs = opaque_ke::Ristretto255;
    type KeyExchange = opaque_ke::TripleDh<opaque_ke::Ristretto255, sha2_010::Sha512>;
    type Ksf = opaque_ke::argon2::Argon2<'static>;
}

fn bad_server_message(_: opaque_ke::errors::ProtocolError) -> Status {
    Status::internal("server sent an invalid OPAQUE message")
}

/// Registers `user` with `password`.
pub async fn register(client: &qrpc::Client, user: &str, password: &str) -> Result<(), Status> {
    register_with_invite(client, user, password, None).await
}

/// Registers `user` with `password`, presenting `invite` to a server that admits
/// registrations by invitation.
pub async fn register_with_invite(
    client: &qrpc::Client,
    user: &str,
    password: &str,
    invite: Option<&str>,
) -> Result<(), Status> {
    let auth = AuthClient::new(client.clone());
    let mut rng = rand_core_06::OsRng;
    let password = Zeroizing::new(password.as_bytes().to_vec());
    let start = ClientRegistration::<OpaqueSuite>::start(&mut rng, &password)
        .map_err(bad_server_message)?;
    let response = auth
        .register_start(&v1::RegisterStartRequest {
            user: user.into(),
            registration_request: start.message.serialize().to_vec().into(),
        })
        .await?;
    let finish = start
        .state
        .finish(
            &mut rng,
            &password,
            RegistrationResponse::deserialize(&response.registration_response)
                .map_err(bad_server_message)?,
            ClientRegistrationFinishParameters::default(),
        )
        .map_err(bad_server_message)?;
    auth.register_finish(&v1::RegisterFinishRequest {
        user: user.into(),
        registration_upload: finish.message.serialize().to_vec().into(),
        invite: invite.map(str::to_owned),
    })
    .await?;
    Ok(())
}

/// Logs `user`'s `device` in on this client's connection. A wrong password fails with
/// `Unauthenticated` (detected by the client side of OPAQUE, or by the server).
pub async fn login(
    client: &qrpc::Client,
    user: &str,
    device: &str,
    password: &str,
) -> Result<v1::LoginFinishResponse, Status> {
    let auth = AuthClient::new(client.clone());
    let mut rng = rand_core_06::OsRng;
    let password = Zeroizing::new(password.as_bytes().to_vec());
    let start =
        ClientLogin::<OpaqueSuite>::start(&mut rng, &password).map_err(bad_server_message)?;
    let response = auth
        .login_start(&v1::LoginStartRequest {
            user: user.into(),
            device: device.into(),
            credential_request: start.message.serialize().to_vec().into(),
        })
        .await?;
    let finish = start
        .state
        .finish(
            &mut rng,
            &password,
            CredentialResponse::deserialize(&response.credential_response)
                .map_err(bad_server_message)?,
            ClientLoginFinishParameters::default(),
        )
        .map_err(|_| Status::unauthenticated("login failed"))?;
    auth.login_finish(&v1::LoginFinishRequest {
        login_id: response.login_id,
        credential_finalization: finish.message.serialize().to_vec().into(),
    })
    .await
}
