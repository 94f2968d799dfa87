//! The one error type of eventsd and its mapping to gRPC status codes, in one place.
//!
//! Every variant that a client can cause carries a message naming the field at fault. Internal
//! causes (storage, corruption) are logged in full where they are mapped, and the client gets
//! a generic message: storage paths and sled internals never leave the process.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tonic::{Code, Status};

/// Everything that can go wrong in eventsd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed; `field` names the part at fault.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field path, such as `events[2].data.amount`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No durable event has this id.
    #[error("event {id:?} not found")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// No webhook endpoint or delivery has this id.
    #[error("{kind} {id:?} not found")]
    NoSuch {
        /// What was looked for: `endpoint` or `delivery`.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// An event with this id is stored with different content.
    #[error("event {id:?} already exists with a different {field}")]
    AlreadyExists {
        /// The conflicting id.
        id: String,
        /// The first field that differs.
        field: &'static str,
    },
    /// A position lies outside what the store holds.
    #[error("{field}: {reason}")]
    OutOfRange {
        /// The field at fault.
        field: &'static str,
        /// Why it is out of range.
        reason: String,
    },
    /// A position points before the oldest kept event (retention removed what follows it).
    #[error("{position} points before the oldest kept event; the earliest available sequence is {earliest}")]
    Expired {
        /// The request field holding the position.
        position: &'static str,
        /// The oldest kept sequence.
        earliest: u64,
    },
    /// The server is shutting down or the store is closed.
    #[error("eventsd is shutting down")]
    ShuttingDown,
    /// An earlier storage error disabled writes until the store is reopened.
    #[error("writes are disabled after a storage error; reads still work")]
    WritesDisabled,
    /// The store is being reopened after a storage error.
    #[error("the store is reopening after a storage error; retry shortly")]
    Reopening,
    /// The replicated store cannot answer now (no stream leader, a node failing over, this
    /// instance still catching up); nothing was acknowledged, and a retry is safe.
    #[error("the event store is unavailable: {0}; retry shortly")]
    Unavailable(String),
    /// A server-wide limit on open resources (such as `--max-subscribers`) is reached.
    #[error("{limit} is reached ({max}); retry later")]
    LimitReached {
        /// The flag that sets the limit.
        limit: &'static str,
        /// Its value.
        max: u64,
    },
    /// The disk is full; the write was not acknowledged.
    #[error("the disk is full; the write was not stored")]
    DiskFull,
    /// The store failed; the write was not acknowledged. Made from a `sled::Error` only
    /// through [`Error::from_storage`] (also what `?` uses), so a full disk is never this.
    #[error("storage error: {0}")]
    Storage(sled::Error),
    /// A background task eventsd waited for failed (panicked or was cancelled): a fault of
    /// eventsd, not of the stored data.
    #[error("internal task failed: {0}")]
    Internal(String),
    /// A webhook signature or credential is missing or wrong.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller's key may not do this (scope or mode).
    #[error("{0}")]
    PermissionDenied(String),
    /// No webhook route is configured under this source name.
    #[error("no webhook source named {0:?} is configured")]
    UnknownSource(String),
    /// An HTTP body is larger than allowed.
    #[error("request body is larger than the {limit} byte limit")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// An HTTP body did not arrive in time (`--http-body-timeout`).
    #[error("{0}")]
    RequestTimeout(String),
    /// An HTTP body is not declared as JSON.
    #[error("content type must be application/json (got {0:?})")]
    UnsupportedMediaType(String),
    /// An HTTP body is not well-formed JSON.
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The server could not start or serve (bind, reflection, transport).
    #[error("{0}")]
    Startup(String),
    /// An I/O error outside the store.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// Every `?` on a sled result goes through the disk-full mapping.
impl From<sled::Error> for Error {
    fn from(err: sled::Error) -> Self {
        Error::from_storage(err)
    }
}

impl Error {
    /// A storage error as the client should see it: a full disk is DiskFull.
    pub fn from_storage(err: sled::Error) -> Self {
        match &err {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => Error::DiskFull,
            _ => Error::Storage(err),
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument { field: field.into(), reason: reason.into() }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        if let Error::Expired { earliest, .. } = &err {
            let details = tonic_types::ErrorDetails::with_error_info(
                "EVENTS_EXPIRED",
                "eventsd",
                [("earliest_sequence".to_string(), earliest.to_string())],
            );
            return <Status as tonic_types::StatusExt>::with_error_details(
                Code::OutOfRange,
                err.to_string(),
                details,
            );
        }
        let code = match &err {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound { .. } | Error::NoSuch { .. } => Code::NotFound,
            Error::OutOfRange { .. } | Error::Expired { .. } => Code::OutOfRange,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::UnknownSource(_) => Code::NotFound,
            Error::PayloadTooLarge { .. } => Code::ResourceExhausted,
            Error::RequestTimeout(_) => Code::DeadlineExceeded,
            Error::UnsupportedMediaType(_) | Error::MalformedJson(_) => Code::InvalidArgument,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::ShuttingDown
            | Error::WritesDisabled
            | Error::Reopening
            | Error::Unavailable(_) => Code::Unavailable,
            Error::DiskFull | Error::LimitReached { .. } => Code::ResourceExhausted,
            Error::Storage(_)
            | Error::Internal(_)
            | Error::Corrupt(_)
            | Error::Startup(_)
            | Error::Io(_) => {
                tracing::error!(error = %err, "internal error");
                return Status::internal("internal storage error (details are in the server log)");
            }
        };
        Status::new(code, err.to_string())
    }
}

impl Error {
    /// The short error code (`invalid_argument`, `unauthenticated`, …) used in HTTP error
    /// bodies and metrics labels.
    pub fn code_name(&self) -> &'static str {
        self.http_status().1
    }

    /// The HTTP status and the short error code of the JSON error body.
    fn http_status(&self) -> (StatusCode, &'static str) {
        match self {
            Error::InvalidArgument { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_argument"),
            Error::MalformedJson(_) => (StatusCode::BAD_REQUEST, "malformed_json"),
            Error::OutOfRange { .. } | Error::Expired { .. } => {
                (StatusCode::BAD_REQUEST, "out_of_range")
            }
            Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "unauthenticated"),
            Error::PermissionDenied(_) => (StatusCode::FORBIDDEN, "permission_denied"),
            Error::NotFound { .. } | Error::NoSuch { .. } | Error::UnknownSource(_) => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            Error::AlreadyExists { .. } => (StatusCode::CONFLICT, "already_exists"),
            Error::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Error::RequestTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            Error::UnsupportedMediaType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Error::ShuttingDown
            | Error::WritesDisabled
            | Error::Reopening
            | Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            Error::DiskFull => (StatusCode::INSUFFICIENT_STORAGE, "disk_full"),
            Error::LimitReached { .. } => (StatusCode::SERVICE_UNAVAILABLE, "resource_exhausted"),
            Error::Storage(_)
            | Error::Internal(_)
            | Error::Corrupt(_)
            | Error::Startup(_)
            | Error::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// HTTP errors are JSON in the Omise error shape: `{"object": "error", "code", "message"}`.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = self.http_status();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "internal error");
            "internal storage error (details are in the server log)".to_string()
        } else {
            self.to_string()
        };
        let mut body = serde_json::json!({ "object": "error", "code": code, "message": message });
        // The same machine-readable reason and earliest position gRPC puts in its ErrorInfo.
        if let Error::Expired { earliest, .. } = &self {
            body["reason"] = "EVENTS_EXPIRED".into();
            body["earliest_sequence"] = (*earliest).into();
        }
        (status, axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_through_question_mark_is_disk_full_not_a_storage_error() {
        fn fails() -> Result<(), Error> {
            Err(sled::Error::Io(std::io::Error::from(std::io::ErrorKind::StorageFull)))?
        }
        assert!(matches!(fails(), Err(Error::DiskFull)));
        assert_eq!(Status::from(fails().unwrap_err()).code(), Code::ResourceExhausted);
    }
}
