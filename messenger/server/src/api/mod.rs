//! The RPC handlers: one file per service of `proto/qpq/v1`, and the guard every protected
//! call passes. Everything here sits on [`AppState`]; nothing below this module imports it.
//!
//! | module | what it serves |
//! |---|---|
//! | [`auth`] | OPAQUE registration and login, logout, session resumption |
//! | [`guard`] | the session check of every protected call |
//! | [`delivery`] | per-device queues, push notifications, long-poll fetch |
//! | [`keys`] | MLS key packages and hybrid key bundles with key-transparency proofs |
//! | [`directory`] | user lookups and channels |
//! | [`blob`] | resumable, content-addressed attachments with quotas |
//! | [`device`] | device management and P2P rendezvous |

pub mod auth;
pub mod blob;
pub mod delivery;
pub mod device;
pub mod directory;
pub mod guard;
pub mod keys;
pub(crate) mod validate;

use std::sync::Arc;

use qrpc::Status;

use crate::state::AppState;
use crate::store::{DeviceId, Store};

pub use guard::SessionAuth;

/// The messenger's RPC handlers. One value implements every generated service trait (each in
/// the module of its service); clones share the state.
pub struct Api<S> {
    pub(crate) state: Arc<AppState<S>>,
}

impl<S> Api<S> {
    /// Handlers over shared state.
    pub fn new(state: Arc<AppState<S>>) -> Self {
        Self { state }
    }
}

impl<S> Clone for Api<S> {
    fn clone(&self) -> Self {
        Self {
            state: Arc::clone(&self.state),
        }
    }
}

impl<S: Store> Api<S> {
    /// Takes one cell of `me`'s user-wide allowance of write calls.
    pub(crate) fn check_write(&self, me: &DeviceId) -> Result<(), Status> {
        let l = &self.state.limiters;
        l.check(&l.writes_per_user, &me.user, 1, "write calls")
    }
}
