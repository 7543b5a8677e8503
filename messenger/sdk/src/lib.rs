//! # qpq-sdk — the quicproquo client library
//!
//! One [`QpqClient`] is one account on one device, with its own encrypted local store
//! (SQLCipher; the key is a passphrase stretched with Argon2id, or a raw key). It speaks to a
//! qpq-server only through the clients qrpc-build generated, and does its cryptography only
//! through qpq-core: MLS (X-Wing ciphersuite) for conversations, sealed-sender envelopes to
//! each member device's hybrid key, OPAQUE for the password.
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr, fingerprint: [u8; 32]) -> Result<(), qpq_sdk::SdkError> {
//! let alice = qpq_sdk::QpqClient::builder()
//!     .server(addr)
//!     .pin(fingerprint)
//!     .data_dir("/tmp/alice")
//!     .passphrase("correct horse battery staple")
//!     .build()?;
//! let mut events = alice.subscribe();
//! alice.register("alice", "password").await?;
//! alice.login("alice", "laptop", "password").await?;
//! let dm = alice.create_dm("bob").await?;
//! let sent = alice.conversation(&dm.id)?.send_text("hello Bob", None)?;
//! println!("queued as {}", sent.id().short());
//! while let Ok(event) = events.recv().await {
//!     println!("{event:?}");
//! }
//! # Ok(()) }
//! ```
//!
//! Sending never needs a connection: a message is stored and shown at once, and the outbox
//! delivers it when the server can be reached, retrying with backoff, also after a restart.
//! Receiving commits each page of messages with the receive cursor in one transaction before
//! the server is told to drop them, so a restart neither loses nor repeats a message.
//!
//! The crate is laid out along its concerns: `client` (the client, its builder and limits,
//! connection and session), `authentication`, `conversation` ([`ConversationHandle`]),
//! `send_queue` (the outbox and [`SendHandle`], attachments), `sync` (the receive path),
//! `encryption` (devices, safety numbers, key transparency) and `store` (SQLCipher and memory).

/// The SDK guide (`docs/sdk-guide.md`), compiled (and its first example run) as doc-tests.
#[doc = include_str!("../../../docs/sdk-guide.md")]
#[cfg(doctest)]
pub mod guide {}

mod authentication;
mod client;
mod conversation;
mod encryption;
mod error;
mod events;
mod faults;
mod model;
mod parallel;
mod send_queue;
mod store;
mod sync;

pub use client::QpqClient;
pub use client::builder::QpqClientBuilder;
pub use client::limits::{ClientLimits, InvitationPolicy};
pub use conversation::handle::{ConversationHandle, UNREAD_WINDOW};
pub use error::{SdkError, SdkResult};
pub use events::{ClientEvent, ConnectionState};
#[cfg(feature = "testing")]
pub use faults::CrashPoint;
pub use model::{
    AttachmentInfo, Conversation, ConversationId, ConversationKind, Device, Message, MessageId,
    Progress, SendState,
};
pub use send_queue::attachments::attachment_file_name;
pub use send_queue::handle::SendHandle;
