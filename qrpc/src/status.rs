//! RPC status codes and the error a call ends with.

use std::fmt;

use bytes::Bytes;
use prost::Message;

/// A call's outcome, numbered as in gRPC so that users already know the codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum Code {
    /// Success.
    Ok = 0,
    /// The call was cancelled, usually by the caller.
    Cancelled = 1,
    /// Unknown error, including a status code this version does not know.
    Unknown = 2,
    /// The client sent an invalid argument or an undecodable message.
    InvalidArgument = 3,
    /// The deadline expired before the call completed.
    DeadlineExceeded = 4,
    /// A requested entity was not found.
    NotFound = 5,
    /// The entity a client tried to create already exists.
    AlreadyExists = 6,
    /// The caller is authenticated but may not do this.
    PermissionDenied = 7,
    /// A resource (quota, rate, size limit) is exhausted.
    ResourceExhausted = 8,
    /// The system is not in a state required for the operation.
    FailedPrecondition = 9,
    /// The operation was aborted, typically by a concurrency conflict.
    Aborted = 10,
    /// The operation went past the valid range.
    OutOfRange = 11,
    /// The method is not implemented by this server.
    Unimplemented = 12,
    /// An internal invariant broke on the server.
    Internal = 13,
    /// The service is currently unavailable; retrying may help.
    Unavailable = 14,
    /// Unrecoverable data loss or corruption.
    DataLoss = 15,
    /// The request lacks valid authentication.
    Unauthenticated = 16,
}

impl Code {
    /// Maps a wire value to a code; values this version does not know become [`Code::Unknown`].
    pub fn from_u8(value: u8) -> Self {
        match value {
            0 => Self::Ok,
            1 => Self::Cancelled,
            3 => Self::InvalidArgument,
            4 => Self::DeadlineExceeded,
            5 => Self::NotFound,
            6 => Self::AlreadyExists,
            7 => Self::PermissionDenied,
            8 => Self::ResourceExhausted,
            9 => Self::FailedPrecondition,
            10 => Self::Aborted,
            11 => Self::OutOfRange,
            12 => Self::Unimplemented,
            13 => Self::Internal,
            14 => Self::Unavailable,
            15 => Self::DataLoss,
            16 => Self::Unauthenticated,
            _ => Self::Unknown,
        }
    }

    /// The wire value of the code.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// A short, stable description of the code.
    pub fn description(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Cancelled => "cancelled",
            Self::Unknown => "unknown",
            Self::InvalidArgument => "invalid argument",
            Self::DeadlineExceeded => "deadline exceeded",
            Self::NotFound => "not found",
            Self::AlreadyExists => "already exists",
            Self::PermissionDenied => "permission denied",
            Self::ResourceExhausted => "resource exhausted",
            Self::FailedPrecondition => "failed precondition",
            Self::Aborted => "aborted",
            Self::OutOfRange => "out of range",
            Self::Unimplemented => "unimplemented",
            Self::Internal => "internal",
            Self::Unavailable => "unavailable",
            Self::DataLoss => "data loss",
            Self::Unauthenticated => "unauthenticated",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// The protobuf payload of a non-OK response frame: `qrpc.v1.ErrorStatus`
/// (`proto/qrpc/v1/status.proto`).
#[derive(Clone, PartialEq, Message)]
pub(crate) struct ErrorStatus {
    /// Human-readable message. Never carries secrets or user payloads.
    #[prost(string, tag = "1")]
    pub message: String,
    /// Application-defined, machine-readable details.
    #[prost(bytes = "bytes", tag = "2")]
    pub details: Bytes,
}

/// The error a call ends with: a [`Code`], a message and optional binary details.
///
/// Messages travel to the peer and may be logged: they must never carry secrets or payloads.
#[derive(Clone, PartialEq, Eq)]
pub struct Status(Box<Inner>);

#[derive(Clone, PartialEq, Eq)]
struct Inner {
    code: Code,
    message: String,
    details: Bytes,
}

macro_rules! constructors {
    ($($(#[$doc:meta])* $name:ident => $code:ident,)*) => {
        $(
            $(#[$doc])*
            pub fn $name(message: impl Into<String>) -> Self {
                Self::new(Code::$code, message)
            }
        )*
    };
}

impl Status {
    /// A status with a code and message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            code,
            message: message.into(),
            details: Bytes::new(),
        }))
    }

    /// A status with machine-readable details attached.
    pub fn with_details(code: Code, message: impl Into<String>, details: Bytes) -> Self {
        Self(Box::new(Inner {
            code,
            message: message.into(),
            details,
        }))
    }

    constructors! {
        /// [`Code::Cancelled`].
        cancelled => Cancelled,
        /// [`Code::Unknown`].
        unknown => Unknown,
        /// [`Code::InvalidArgument`].
        invalid_argument => InvalidArgument,
        /// [`Code::DeadlineExceeded`].
        deadline_exceeded => DeadlineExceeded,
        /// [`Code::NotFound`].
        not_found => NotFound,
        /// [`Code::AlreadyExists`].
        already_exists => AlreadyExists,
        /// [`Code::PermissionDenied`].
        permission_denied => PermissionDenied,
        /// [`Code::ResourceExhausted`].
        resource_exhausted => ResourceExhausted,
        /// [`Code::FailedPrecondition`].
        failed_precondition => FailedPrecondition,
        /// [`Code::Aborted`].
        aborted => Aborted,
        /// [`Code::OutOfRange`].
        out_of_range => OutOfRange,
        /// [`Code::Unimplemented`].
        unimplemented => Unimplemented,
        /// [`Code::Internal`].
        internal => Internal,
        /// [`Code::Unavailable`].
        unavailable => Unavailable,
        /// [`Code::DataLoss`].
        data_loss => DataLoss,
        /// [`Code::Unauthenticated`].
        unauthenticated => Unauthenticated,
    }

    /// The status code.
    pub fn code(&self) -> Code {
        self.0.code
    }

    /// The human-readable message.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// Machine-readable details (empty when none were attached).
    pub fn details(&self) -> &Bytes {
        &self.0.details
    }

    /// Encodes the `ErrorStatus` payload of a non-OK response frame.
    pub(crate) fn to_payload(&self) -> Bytes {
        ErrorStatus {
            message: self.0.message.clone(),
            details: self.0.details.clone(),
        }
        .encode_to_vec()
        .into()
    }

    /// Rebuilds a status from a non-OK response frame.
    ///
    /// An undecodable payload still yields the code, with a message saying the payload was bad.
    pub(crate) fn from_wire(code: u8, payload: &[u8]) -> Self {
        let code = Code::from_u8(code);
        match ErrorStatus::decode(payload) {
            Ok(es) => Self::with_details(code, es.message, es.details),
            Err(_) => Self::new(code, "peer sent an undecodable error status"),
        }
    }

    /// Maps an error from a tower middleware stack to a status.
    ///
    /// A [`Status`] passes through; tower's timeout becomes `DeadlineExceeded`, load shedding
    /// `Unavailable`, and anything else `Internal` (without the error's text, which may carry
    /// internal detail).
    pub fn from_error(err: tower::BoxError) -> Self {
        let code = Self::code_of(err.as_ref());
        match err.downcast::<Status>() {
            Ok(status) => *status,
            Err(err) => match code {
                Code::DeadlineExceeded => Self::deadline_exceeded("request timed out"),
                Code::Unavailable => Self::unavailable("server overloaded"),
                _ => {
                    tracing::debug!(error = %err, "middleware error mapped to internal status");
                    Self::internal("middleware failure")
                }
            },
        }
    }

    /// The code [`Status::from_error`] would give `err`, without consuming it.
    pub fn code_of(err: &(dyn std::error::Error + Send + Sync + 'static)) -> Code {
        if let Some(status) = err.downcast_ref::<Status>() {
            status.code()
        } else if err.is::<tower::timeout::error::Elapsed>() {
            Code::DeadlineExceeded
        } else if err.is::<tower::load_shed::error::Overloaded>() {
            Code::Unavailable
        } else {
            Code::Internal
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Status")
            .field("code", &self.0.code)
            .field("message", &self.0.message)
            .field("details_len", &self.0.details.len())
            .finish()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.message)
    }
}

impl std::error::Error for Status {}

impl From<prost::DecodeError> for Status {
    fn from(err: prost::DecodeError) -> Self {
        Self::invalid_argument(format!("undecodable message: {err}"))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_values_map_to_unknown() {
        for v in 0..=16u8 {
            assert_eq!(Code::from_u8(v).as_u8(), v);
        }
        assert_eq!(Code::from_u8(17), Code::Unknown);
        assert_eq!(Code::from_u8(255), Code::Unknown);
    }

    #[test]
    fn wire_round_trip() {
        let st = Status::with_details(Code::NotFound, "no such user", Bytes::from_static(b"\x01"));
        let back = Status::from_wire(st.code().as_u8(), &st.to_payload());
        assert_eq!(back, st);
    }

    #[test]
    fn undecodable_error_payload_keeps_the_code() {
        let st = Status::from_wire(7, &[0xff, 0xff, 0xff]);
        assert_eq!(st.code(), Code::PermissionDenied);
    }

    #[test]
    fn middleware_errors_map_to_codes() {
        let st = Status::from_error(Box::new(Status::aborted("x")));
        assert_eq!(st.code(), Code::Aborted);
        let st = Status::from_error(Box::new(tower::timeout::error::Elapsed::new()));
        assert_eq!(st.code(), Code::DeadlineExceeded);
        let st = Status::from_error("boom".into());
        assert_eq!(st.code(), Code::Internal);
        assert!(!st.message().contains("boom"));
    }
}
