//! Live sessions: which connections are logged in as which device, and ending them.
//!
//! "The connection is the session": login or resume binds a [`SessionInfo`] to the QUIC
//! connection. Every live binding is also recorded here by device, so that revoking a device,
//! logging out a token, or reaching a session's expiry ends it on every connection at once:
//! the connection loses its identity (and with it its push registration) and is closed with
//! one of the [`close`] codes. A call already in flight on such a connection is refused by
//! the session check, which every protected call and the logged-in Enqueue path run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use qpq_proto::v1::{self, server_event_push::Event};
use qrpc::{Peer, RequestContext, Status};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store::DeviceId;

/// QUIC connection close codes the messenger uses (qrpc leaves codes from
/// [`qrpc::protocol::close::APPLICATION_MIN`] to applications). The close reason carries the
/// same word as [`EndReason::as_str`].
pub mod close {
    use qrpc::protocol::VarInt;

    /// The session's device was revoked (reason `device_revoked`).
    pub const SESSION_REVOKED: VarInt = VarInt::from_u32(0x101);
    /// The session reached its expiry (reason `expired`).
    pub const SESSION_EXPIRED: VarInt = VarInt::from_u32(0x102);
    /// The session's token was logged out from another connection (reason `logged_out`).
    pub const LOGGED_OUT: VarInt = VarInt::from_u32(0x103);
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// Its device was revoked.
    Revoked,
    /// It expired.
    Expired,
    /// Its token was logged out.
    LoggedOut,
}

impl EndReason {
    /// The word sent in `SessionExpired.reason` and as the close reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Revoked => "device_revoked",
            Self::Expired => "expired",
            Self::LoggedOut => "logged_out",
        }
    }

    /// The reason named by [`as_str`](Self::as_str)'s word.
    pub fn from_word(word: &str) -> Option<Self> {
        match word {
            "device_revoked" => Some(Self::Revoked),
            "expired" => Some(Self::Expired),
            "logged_out" => Some(Self::LoggedOut),
            _ => None,
        }
    }

    /// The connection close code.
    pub fn close_code(self) -> qrpc::protocol::VarInt {
        match self {
            Self::Revoked => close::SESSION_REVOKED,
            Self::Expired => close::SESSION_EXPIRED,
            Self::LoggedOut => close::LOGGED_OUT,
        }
    }
}

/// The session bound to a connection after login or resume.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The logged-in device.
    pub device: DeviceId,
    /// When it expires, ms since the epoch.
    pub expires_at_ms: u64,
    /// SHA-256 of its bearer token (a hash, not the secret).
    pub token_hash: [u8; 32],
    /// Cancelled when the session ends by any route.
    ended: CancellationToken,
    /// What "expired" is measured by: the registry's clock once bound.
    clock: Clock,
}

impl SessionInfo {
    /// A new, live session.
    pub fn new(device: DeviceId, expires_at_ms: u64, token_hash: [u8; 32]) -> Self {
        Self {
            device,
            expires_at_ms,
            token_hash,
            ended: CancellationToken::new(),
            clock: Clock::system(),
        }
    }

    /// Whether the session has neither ended nor expired.
    pub fn is_live(&self) -> bool {
        !self.ended.is_cancelled() && self.expires_at_ms > self.clock.now_ms()
    }
}

struct Live {
    connection: Peer,
    info: SessionInfo,
}

/// Every live session, by device.
pub struct Sessions {
    by_device: Mutex<HashMap<DeviceId, Vec<Live>>>,
    clock: Clock,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("devices", &self.lock().len())
            .finish()
    }
}

impl Sessions {
    /// An empty registry whose sessions expire by `clock`.
    pub fn new(clock: Clock) -> Self {
        Self {
            by_device: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<DeviceId, Vec<Live>>> {
        // Every critical section leaves the map consistent; a panic cannot half-apply one.
        self.by_device.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Binds `info` to the call's connection, replacing any session it had, atomically with
    /// respect to every other bind and end: the identity, the push registration and this
    /// registry always agree. Starts the watch that ends the session at its expiry.
    pub fn bind(self: &Arc<Self>, connection: &Peer, mut info: SessionInfo) {
        info.clock = self.clock.clone();
        {
            let mut map = self.lock();
            // Identity, push registration and session record change in one step.
            let previous =
                connection.bind_identity_with(info.device.identity(), |e| e.insert(info.clone()));
            if let Some(previous) = previous {
                previous.ended.cancel();
                remove_connection(&mut map, &previous.device, connection.id());
            }
            map.entry(info.device.clone()).or_default().push(Live {
                connection: connection.clone(),
                info: info.clone(),
            });
        }
        let sessions = Arc::clone(self);
        let connection = connection.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = connection.closed() => sessions.forget(&info.device, connection.id()),
                () = sessions.clock.sleep_until(info.expires_at_ms) => {
                    sessions.end_where(EndReason::Expired, None, |l| {
                        l.connection.id() == connection.id() && l.info.token_hash == info.token_hash
                    });
                }
                () = info.ended.cancelled() => {}
            }
        });
    }

    fn forget(&self, device: &DeviceId, connection_id: u64) {
        remove_connection(&mut self.lock(), device, connection_id);
    }

    /// Ends every session of `device` (revocation). The connection `keep_open` (the caller's
    /// own, which still needs its answer) only loses its session; the others are closed.
    pub fn end_device(&self, device: &DeviceId, reason: EndReason, keep_open: Option<u64>) {
        let device = device.clone();
        self.end_where(reason, keep_open, move |l| l.info.device == device);
    }

    /// Ends every session resumed from the token with this hash (logout).
    pub fn end_token(&self, token_hash: [u8; 32], reason: EndReason, keep_open: Option<u64>) {
        self.end_where(reason, keep_open, move |l| l.info.token_hash == token_hash);
    }

    fn end_where(&self, reason: EndReason, keep_open: Option<u64>, pred: impl Fn(&Live) -> bool) {
        let ended: Vec<Live> = {
            let mut map = self.lock();
            let mut ended = Vec::new();
            map.retain(|_, lives| {
                let (gone, kept): (Vec<Live>, Vec<Live>) = lives.drain(..).partition(&pred);
                ended.extend(gone);
                *lives = kept;
                !lives.is_empty()
            });
            for live in &ended {
                live.info.ended.cancel();
                live.connection.with_extensions(|e| {
                    if e.get::<SessionInfo>()
                        .is_some_and(|s| s.token_hash == live.info.token_hash)
                    {
                        e.remove::<SessionInfo>();
                    }
                });
                live.connection.clear_identity();
            }
            ended
        };
        for live in ended {
            tracing::info!(
                connection = live.connection.id(),
                reason = reason.as_str(),
                "session ended"
            );
            if keep_open == Some(live.connection.id()) {
                continue;
            }
            let event = Event::SessionExpired(v1::SessionExpired {
                reason: reason.as_str().into(),
            });
            let _ = qrpc::TypedPushSender::new(live.connection.push().clone()).try_send(&event);
            live.connection
                .close(reason.close_code(), reason.as_str().as_bytes());
        }
    }

    /// Ends the session on one connection without closing it (the caller's own logout).
    pub fn end_connection(&self, connection: &Peer) {
        let mut map = self.lock();
        if let Some(info) = connection.with_extensions(|e| e.remove::<SessionInfo>()) {
            info.ended.cancel();
            remove_connection(&mut map, &info.device, connection.id());
        }
        connection.clear_identity();
    }

    /// Drops records of connections that closed or sessions that ended (the janitor's pass;
    /// the per-session watch normally does this at once).
    pub fn prune(&self) -> usize {
        let mut map = self.lock();
        let before: usize = map.values().map(Vec::len).sum();
        map.retain(|_, lives| {
            lives.retain(|l| !l.connection.is_closed() && !l.info.ended.is_cancelled());
            !lives.is_empty()
        });
        before - map.values().map(Vec::len).sum::<usize>()
    }

    /// The token hash and device of every live session (for the janitor's check against the
    /// store).
    pub fn live_tokens(&self) -> Vec<([u8; 32], DeviceId)> {
        let mut tokens: Vec<([u8; 32], DeviceId)> = self
            .lock()
            .values()
            .flatten()
            .filter(|l| !l.info.ended.is_cancelled())
            .map(|l| (l.info.token_hash, l.info.device.clone()))
            .collect();
        tokens.sort();
        tokens.dedup();
        tokens
    }

    /// Live sessions recorded.
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Whether no session is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn remove_connection(map: &mut HashMap<DeviceId, Vec<Live>>, device: &DeviceId, id: u64) {
    if let Some(lives) = map.get_mut(device) {
        lives.retain(|l| l.connection.id() != id);
        if lives.is_empty() {
            map.remove(device);
        }
    }
}

/// The call's live session, if its connection has one that has neither ended nor expired.
pub fn live_session(ctx: &RequestContext) -> Option<SessionInfo> {
    ctx.peer()
        .with_extensions(|e| e.get::<SessionInfo>().cloned())
        .filter(SessionInfo::is_live)
}

/// The device a protected call runs as; `Unauthenticated` without a live session.
pub fn caller(ctx: &RequestContext) -> Result<DeviceId, Status> {
    live_session(ctx)
        .map(|s| s.device)
        .ok_or_else(|| Status::unauthenticated("log in first"))
}
