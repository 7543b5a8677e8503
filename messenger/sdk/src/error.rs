//! The SDK's error type.

/// Why an SDK operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdkError {
    /// The local store's key is wrong (wrong passphrase or raw key).
    #[error("the local store cannot be opened with this key (wrong passphrase?)")]
    WrongStoreKey,
    /// The local store failed.
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
    /// The local store already holds another account.
    #[error("this data directory belongs to {0}; use another directory for another account")]
    OtherAccount(String),
    /// A cryptographic operation failed (MLS, sealing).
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
        Self::Store(e.to_string())
    }
}

impl From<qpq_core::mls::MlsError> for SdkError {
    fn from(e: qpq_core::mls::MlsError) -> Self {
        Self::Crypto(e.to_string())
    }
}

/// Result of SDK operations.
pub type SdkResult<T> = Result<T, SdkError>;
