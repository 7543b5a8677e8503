//! How a failed command reaches the window: a kind to branch on and a sentence to show.

use serde::Serialize;

/// A command's failure. Serialized as `{ "kind": ..., "message": ..., "retryable": ... }`.
/// Messages come from the SDK's errors, which never carry secrets.
#[derive(Debug, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct CommandError {
    kind: Kind,
    message: String,
    retryable: bool,
}

/// What went wrong, for the window to branch on.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
enum Kind {
    /// The input is wrong; the message says which part.
    Invalid,
    /// No account is open in this window yet.
    SignedOut,
    /// The passphrase does not open the local store.
    WrongPassphrase,
    /// No such conversation or message (any more).
    NotFound,
    /// The SDK or the server refused or failed.
    Failed,
}

impl CommandError {
    /// Wrong input from the window.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Invalid,
            message: message.into(),
            retryable: false,
        }
    }

    /// A command that needs an open account, called before one is.
    pub fn signed_out() -> Self {
        Self {
            kind: Kind::SignedOut,
            message: "sign in first".into(),
            retryable: false,
        }
    }

    /// A local failure (settings file, folders) with its sentence.
    pub fn failed(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Failed,
            message: message.into(),
            retryable: false,
        }
    }
}

impl From<qpq_sdk::SdkError> for CommandError {
    fn from(err: qpq_sdk::SdkError) -> Self {
        let kind = match err {
            qpq_sdk::SdkError::WrongStoreKey => Kind::WrongPassphrase,
            qpq_sdk::SdkError::NotLoggedIn => Kind::SignedOut,
            qpq_sdk::SdkError::InvalidArgument(_) => Kind::Invalid,
            qpq_sdk::SdkError::NotFound(_) => Kind::NotFound,
            _ => Kind::Failed,
        };
        Self {
            kind,
            retryable: err.is_retryable(),
            message: err.to_string(),
        }
    }
}
