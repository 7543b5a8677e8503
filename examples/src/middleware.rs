//! Layers at three places. Server-wide: every call is audited. Per service: the chat room is
//! guarded (only `Join` is public, and each member may post three times a minute) while the
//! echo service next to it stays open. Client-side: the chat client puts a deadline on each of
//! its calls.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use qrpc::middleware::{AuditLayer, AuthLayer, AuthPolicy, Quota, RateLimitLayer, RequireIdentity};
use qrpc::tls::{ClientTls, SelfSigned};
use qrpc::{Code, LayerExt};
use tower::ServiceBuilder;

use crate::chat::ChatRoom;
use crate::echo::EchoService;
use crate::proto::chat::v1::room_client::RoomClient;
use crate::proto::chat::v1::room_server::{JOIN, POST, RoomServer};
use crate::proto::chat::v1::{JoinRequest, PostRequest};
use crate::proto::echo::v1::SayRequest;
use crate::proto::echo::v1::echo_client::EchoClient;
use crate::proto::echo::v1::echo_server::EchoServer;

/// Starts the server on `addr`: an audited server with a guarded chat room and an open echo.
pub fn serve(
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, [u8; 32], tokio::task::JoinHandle<()>)> {
    let cert = SelfSigned::generate(&["localhost"])?;
    let three = NonZeroU32::new(3).ok_or_else(|| anyhow::anyhow!("zero quota"))?;
    let builder = qrpc::Server::builder()
        .tls(cert.server_tls())
        .layer(AuditLayer::new());
    // The room's own layers: policies name methods by their generated constants.
    let guard = ServiceBuilder::new()
        .layer(AuthLayer::new(
            RequireIdentity,
            AuthPolicy::new().public(JOIN),
        ))
        .layer(
            RateLimitLayer::builder()
                .per_method(POST, Quota::per_minute(three))
                .build(),
        )
        .into_inner();
    let room = ChatRoom::new(builder.push_registry());
    let server = builder
        .add_service(guard.named_layer(RoomServer::new(room)))
        .add_service(EchoServer::new(EchoService::default()))
        .bind(addr)?;
    let local = server.local_addr()?;
    Ok((local, cert.fingerprint(), tokio::spawn(server.serve())))
}

/// What [`run`] saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The echo service's answer before joining: the room's guard does not cover it.
    pub echoed: String,
    /// The status code of a post before joining, then of four posts after.
    pub posts: Vec<Code>,
}

/// Echoes and posts before joining, then posts four times after joining.
pub async fn run() -> anyhow::Result<Report> {
    let (addr, fingerprint, server) = serve(crate::loopback())?;
    let client = qrpc::Client::connect(addr, ClientTls::pinned(fingerprint)).await?;
    // A client-side layer on the generated client: every room call gets a 5 s deadline.
    let room = RoomClient::new(
        ServiceBuilder::new()
            .timeout(Duration::from_secs(5))
            .service(client.clone()),
    );
    let echo = EchoClient::new(client);
    let echoed = echo
        .say(&SayRequest {
            text: "open to all".into(),
            ..SayRequest::default()
        })
        .await?
        .text;

    let hi = PostRequest { text: "hi".into() };
    let code = |r: Result<(), qrpc::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let mut posts = vec![code(room.post(&hi).await)];
    room.join(&JoinRequest {
        name: "carol".into(),
    })
    .await?;
    for _ in 0..4 {
        posts.push(code(room.post(&hi).await));
    }
    server.abort();
    Ok(Report { echoed, posts })
}
