//! The SDK's error type.

/// Why an SDK operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdkError {
    /// The local store's key is wrong (wrong passphrase or raw key).
    #[error("the local store cannot be opened with this key (wrong passphrase?)")]
    WrongStoreKey,
    /// The local store's database failed (busy, full, corrupt, I/O); the source is
    /// SQLite's error.
    #[error("local store: {0}")]
    Database(#[source] rusqlite::Error),
    /// The local store refused an operation or holds something it cannot read back.
    #[error("local store: {0}")]
    Store(String),
    /// A file in the data directory could not be read or written.
    #[error("data directory: {0}")]
    Io(#[from] std::io::Error),
    /// The server refused the call or could not be reached.
    #[error("server: {0}")]
    Server(#[from] qrpc::Status),
    /// No connection could be made to the server.
    #[error("cannot connect: {0}")]
    Connect(#[from] qrpc::ClientError),
    /// The operation needs a logged-in account.
    #[error("not logged in: call register/login first")]
    NotLoggedIn,
    /// Another client (in this process or another one) has this data directory open: two
    /// clients on one directory would each receive and acknowledge part of the messages.
    #[error(
        "the data directory {} is in use by another qpq client; close it first or use another directory",
        .0.display()
    )]
    DataDirInUse(std::path::PathBuf),
    /// The local store already holds another account.
    #[error("this data directory belongs to {0}; use another directory for another account")]
    OtherAccount(String),
    /// An MLS operation failed; the source says which and why.
    #[error("group encryption: {0}")]
    Mls(#[source] qpq_core::mls::MlsError),
    /// A sealed-sender envelope could not be made for a recipient.
    #[error("sealing for a recipient: {0}")]
    Sealing(#[source] qpq_core::sealed::SealedError),
    /// Another cryptographic operation failed (key bundles, key derivation).
    #[error("cryptography: {0}")]
    Crypto(String),
    /// The peer or the server sent something that does not decode or verify.
    #[error("invalid data from the network: {0}")]
    Invalid(String),
    /// The server's key-transparency log did not check out (see
    /// [`ClientEvent::KeyTransparencyAlarm`](crate::ClientEvent::KeyTransparencyAlarm)).
    #[error("key transparency: {0}")]
    KeyTransparency(String),
    /// An argument is out of range; the message names it.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No such conversation or message.
    #[error("not found: {0}")]
    NotFound(String),
    /// The outbox holds `limit` undelivered items already (the client is offline for long):
    /// wait until it drains, or raise [`ClientLimits::max_outbox`](crate::ClientLimits).
    #[error("the outbox is full ({limit} undelivered items); try again once it drains")]
    OutboxFull {
        /// The configured limit.
        limit: u64,
    },
    /// The client was configured incompletely; the message says what is missing.
    #[error("configuration: {0}")]
    Config(String),
    /// A test stopped the client at this point as if its process died (the `testing`
    /// feature only).
    #[cfg(feature = "testing")]
    #[error("simulated crash at {0:?}")]
    SimulatedCrash(crate::CrashPoint),
}

impl From<rusqlite::Error> for SdkError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Database(e)
    }
}

impl From<qpq_core::mls::MlsError> for SdkError {
    fn from(e: qpq_core::mls::MlsError) -> Self {
        Self::Mls(e)
    }
}

impl SdkError {
    /// Whether the same operation may succeed if tried again later, unchanged: the server
    /// could not be reached, was busy or rate-limited the call, the connection lost its
    /// session (the next call resumes it), the store was busy, or the outbox is full until it
    /// drains. Wrong input, refusals and broken data are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            // What a transfer retries at once, and a rate limit or quota, which passes.
            Self::Server(status) => {
                crate::client::retryable(status) || status.code() == qrpc::Code::ResourceExhausted
            }
            Self::Connect(_) | Self::OutboxFull { .. } => true,
            Self::Database(e) => matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Self::Io(e) => matches!(
                e.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
            ),
            _ => false,
        }
    }
}

/// Result of SDK operations.
pub type SdkResult<T> = Result<T, SdkError>;

#[cfg(test)]
mod tests {
    use super::SdkError;
    use std::error::Error as _;

    #[test]
    fn errors_keep_their_sources_and_say_whether_to_retry() {
        let busy = SdkError::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            None,
        ));
        assert!(busy.is_retryable(), "{busy}");
        assert!(busy.source().is_some(), "{busy:?}");
        let corrupt = SdkError::from(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CORRUPT),
            None,
        ));
        assert!(!corrupt.is_retryable(), "{corrupt}");
        let mls = SdkError::from(qpq_core::mls::MlsError::NotAMember);
        assert!(mls.source().is_some());
        assert!(!mls.is_retryable());
        assert_eq!(
            mls.to_string(),
            "group encryption: no such member in the group"
        );
        assert!(SdkError::Server(qrpc::Status::unavailable("down")).is_retryable());
        assert!(!SdkError::Server(qrpc::Status::permission_denied("no")).is_retryable());
        assert!(SdkError::OutboxFull { limit: 1 }.is_retryable());
        assert!(!SdkError::InvalidArgument("x".into()).is_retryable());
        assert!(!SdkError::WrongStoreKey.is_retryable());
    }
}
