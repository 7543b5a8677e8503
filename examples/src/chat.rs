//! A chat room with push events: members join under a name, and every post reaches every
//! member's connection as a typed push event.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Mutex;

use qrpc::tls::{ClientTls, SelfSigned};
use qrpc::{PeerIdentity, PushRegistry, RequestContext, Status};

use crate::proto::chat::v1::Typing;
use crate::proto::chat::v1::room_client::RoomClient;
use crate::proto::chat::v1::room_event_push::{Event, Events};
use crate::proto::chat::v1::room_server::{Room, RoomServer};
use crate::proto::chat::v1::typing_event_push::Event as TypingEvent;
use crate::proto::chat::v1::{JoinRequest, Joined, MemberList, PostRequest, Posted};

/// The room: its members and the server's push registry.
#[derive(Debug)]
pub struct ChatRoom {
    registry: PushRegistry,
    members: Mutex<BTreeSet<String>>,
}

impl ChatRoom {
    /// A room that reaches members through `registry` (from `Server::push_registry`).
    pub fn new(registry: PushRegistry) -> Self {
        Self {
            registry,
            members: Mutex::new(BTreeSet::new()),
        }
    }

    fn online_members(&self) -> Vec<String> {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        members.retain(|name| self.registry.is_online(&PeerIdentity::new(name.as_str())));
        members.iter().cloned().collect()
    }

    fn broadcast(&self, event: &Event) {
        for name in self.online_members() {
            // Push is a notification: a member whose queue is full misses this one.
            let _ = self
                .registry
                .try_send_event(&PeerIdentity::new(name), event);
        }
    }

    fn member(ctx: &RequestContext) -> Result<PeerIdentity, Status> {
        ctx.identity()
            .ok_or_else(|| Status::unauthenticated("join the room first"))
    }
}

impl Room for ChatRoom {
    async fn join(&self, ctx: RequestContext, request: JoinRequest) -> Result<(), Status> {
        let name = request.name.trim().to_owned();
        if name.is_empty() || name.len() > 32 {
            return Err(Status::invalid_argument("a name has 1 to 32 characters"));
        }
        if self.online_members().contains(&name) {
            return Err(Status::already_exists("that name is taken"));
        }
        ctx.peer().bind_identity(PeerIdentity::new(name.as_str()));
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone());
        self.broadcast(&Event::Joined(Joined { name }));
        Ok(())
    }

    async fn post(&self, ctx: RequestContext, request: PostRequest) -> Result<(), Status> {
        let from = Self::member(&ctx)?;
        if request.text.len() > 4096 {
            return Err(Status::invalid_argument("a post has at most 4096 bytes"));
        }
        self.broadcast(&Event::Posted(Posted {
            from: from.as_str().to_owned(),
            text: request.text,
        }));
        Ok(())
    }

    async fn members(&self, ctx: RequestContext, _request: ()) -> Result<MemberList, Status> {
        Self::member(&ctx)?;
        Ok(MemberList {
            names: self.online_members(),
        })
    }

    async fn typing(&self, ctx: RequestContext, _request: ()) -> Result<(), Status> {
        let name = Self::member(&ctx)?;
        let event = TypingEvent::Typing(Typing {
            name: name.as_str().to_owned(),
        });
        for member in self.online_members() {
            // Droppable: a datagram where the member's connection takes them.
            let _ = self
                .registry
                .try_send_event(&PeerIdentity::new(member), &event);
        }
        Ok(())
    }
}

/// Starts the chat server on `addr`.
pub fn serve(
    addr: SocketAddr,
) -> anyhow::Result<(SocketAddr, [u8; 32], tokio::task::JoinHandle<()>)> {
    let cert = SelfSigned::generate(&["localhost"])?;
    let builder = qrpc::Server::builder().tls(cert.server_tls());
    let room = ChatRoom::new(builder.push_registry());
    let server = builder.add_service(RoomServer::new(room)).bind(addr)?;
    let local = server.local_addr()?;
    Ok((local, cert.fingerprint(), tokio::spawn(server.serve())))
}

/// A member's connection: the typed client and its push events.
pub async fn connect(
    addr: SocketAddr,
    fingerprint: [u8; 32],
) -> anyhow::Result<(RoomClient, Events)> {
    let client = qrpc::Client::connect(addr, ClientTls::pinned(fingerprint)).await?;
    let events = client
        .push_events()
        .map(Events::new)
        .ok_or_else(|| anyhow::anyhow!("push events already taken"))?;
    Ok((RoomClient::new(client), events))
}

/// Two members join; alice posts; returns the events bob received, in order, and the members.
pub async fn run() -> anyhow::Result<(Vec<Event>, Vec<String>)> {
    let (addr, fingerprint, server) = serve(crate::loopback())?;
    let (bob, mut bob_events) = connect(addr, fingerprint).await?;
    let (alice, _alice_events) = connect(addr, fingerprint).await?;
    bob.join(&JoinRequest { name: "bob".into() }).await?;
    alice
        .join(&JoinRequest {
            name: "alice".into(),
        })
        .await?;
    alice
        .post(&PostRequest {
            text: "hello, bob".into(),
        })
        .await?;
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(std::time::Duration::from_secs(5), bob_events.recv()).await {
            Ok(Some(event)) => seen.push(event?),
            Ok(None) => anyhow::bail!("bob's connection closed"),
            Err(_) => anyhow::bail!("bob saw only {} of 3 events", seen.len()),
        }
    }
    let members = bob.members(&()).await?.names;
    server.abort();
    Ok((seen, members))
}
