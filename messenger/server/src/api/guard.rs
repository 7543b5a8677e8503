//! The guard every protected call passes: the connection must hold a live session.

use std::sync::Arc;

use qrpc::middleware::Authenticator;
use qrpc::{RequestContext, Status};

use crate::session::{EndReason, SessionInfo};
use crate::state::AppState;
use crate::store::Store;

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
        let conn = ctx.peer();
        let Some(info) = conn.with_extensions(|e| e.get::<SessionInfo>().cloned()) else {
            return Err(Status::unauthenticated("log in first"));
        };
        if info.is_live() {
            return Ok(());
        }
        // Ended or expired: the session's watch closes the connection; a call that got here
        // first is refused all the same.
        if info.expires_at_ms <= self.state.now_ms() {
            self.state
                .sessions
                .end_token(info.token_hash, EndReason::Expired, None);
        }
        Err(Status::unauthenticated("session ended"))
    }
}
