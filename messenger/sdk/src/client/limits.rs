//! [`ClientLimits`] and [`InvitationPolicy`]: what a client accepts and how much it keeps.

use std::time::Duration;

/// Limits and timings of a client. Every field has a default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientLimits {
    /// Longest text message, in bytes (default 64 KiB).
    pub max_text_bytes: usize,
    /// Largest attachment, in bytes (default 100 MiB, the server's default blob limit).
    pub max_attachment_bytes: u64,
    /// Attempts an upload or download makes, resuming where it stopped (default 8).
    pub transfer_attempts: u32,
    /// Most member devices a conversation may have (default 100).
    pub max_conversation_devices: usize,
    /// One-time key packages published at the first login (default 20).
    pub key_packages: usize,
    /// How long one long-poll waits on the server (default 20 s).
    pub fetch_wait: Duration,
    /// First retry delay of the outbox and the receiver; doubles up to `max_backoff`
    /// (default 200 ms).
    pub initial_backoff: Duration,
    /// Longest retry delay (default 10 s).
    pub max_backoff: Duration,
    /// Events buffered for a slow subscriber before it misses some (default 1024).
    pub event_buffer: usize,
    /// Undelivered outgoing items (messages, edits, reactions, ...) the outbox holds at most;
    /// a send beyond it fails with [`SdkError::OutboxFull`](crate::SdkError::OutboxFull) (default 10,000).
    pub max_outbox: u64,
    /// Group messages per conversation kept while they wait for the commit before them
    /// (default 1,000); beyond it one is reported as undecryptable.
    pub max_parked: u64,
    /// Group messages from one sender (in every conversation, its invitation not arrived
    /// or its commit not yet processed) kept while they wait (default 200): anyone who knows
    /// a conversation's id can send to it, so one sender cannot fill the parking.
    pub max_parked_per_sender: u64,
    /// Group messages kept waiting in all (default 2,000), whoever sealed them: a sealed
    /// sender is any key its author made, so this bounds what the parking can hold.
    pub max_parked_total: u64,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_text_bytes: 64 * 1024,
            max_attachment_bytes: 100 * 1024 * 1024,
            transfer_attempts: 8,
            max_conversation_devices: 100,
            key_packages: 20,
            fetch_wait: Duration::from_secs(20),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
            event_buffer: 1024,
            max_outbox: 10_000,
            max_parked: 1_000,
            max_parked_per_sender: 200,
            max_parked_total: 2_000,
        }
    }
}

/// Which invitations a client joins at once; the others become message requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvitationPolicy {
    /// From this user's other devices and from users it already has a conversation with
    /// (default). An invitation from anyone else is a message request
    /// ([`ClientEvent::MessageRequest`](crate::ClientEvent::MessageRequest)) that the user accepts or declines.
    #[default]
    FromKnown,
    /// Every invitation (scripted users, tests): nobody is asked.
    FromAnyone,
}
