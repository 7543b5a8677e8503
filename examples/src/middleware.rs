//! Middleware around the chat room: only `Join` is public, and each member may post three times
//! a minute. Everything is audited.

use std::net::SocketAddr;
use std::num::NonZeroU32;

use qrpc::Code;
use qrpc::middleware::{AuditLayer, AuthLayer, AuthPolicy, Quota, RateLimitLayer, RequireIdentity};
use qrpc::tls::SelfSigned;

use crate::chat::ChatRoom;
use crate::proto::chat::v1::room_server::{JOIN, POST, RoomServer};
use crate::proto::chat::v1::{JoinRequest, PostRequest};

/// Starts the guarded chat server on `addr`.
pub fn serve(
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, [u8; 32], tokio::task::JoinHandle<()>)> {
    let cert = SelfSigned::generate(&["localhost"])?;
    let three = NonZeroU32::new(3).ok_or_else(|| anyhow::anyhow!("zero quota"))?;
    let builder = qrpc::Server::builder()
        .tls(cert.server_tls())
        .layer(AuditLayer::new())
        .layer(AuthLayer::new(
            RequireIdentity,
            AuthPolicy::new().public(JOIN.id),
        ))
        .layer(
            RateLimitLayer::builder()
                .per_method(POST.id, Quota::per_minute(three))
                .build(),
        );
    let room = ChatRoom::new(builder.push_registry());
    let server = builder.add_service(RoomServer::new(room)).bind(addr)?;
    let local = server.local_addr()?;
    Ok((local, cert.fingerprint(), tokio::spawn(server.serve())))
}

/// Posts before joining, then four times after; returns the status code of each post.
pub async fn run() -> anyhow::Result<Vec<Code>> {
    let (addr, fingerprint, server) = serve(crate::loopback())?;
    let (client, _events) = crate::chat::connect(addr, fingerprint).await?;
    let hi = PostRequest { text: "hi".into() };
    let post = || client.post(&hi);
    let code = |r: Result<(), qrpc::Status>| r.err().map_or(Code::Ok, |s| s.code());
    let mut codes = vec![code(post().await)];
    client
        .join(&JoinRequest {
            name: "carol".into(),
        })
        .await?;
    for _ in 0..4 {
        codes.push(code(post().await));
    }
    server.abort();
    Ok(codes)
}
