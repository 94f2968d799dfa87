//! The one error type of eventsd and its mapping to gRPC status codes, in one place.
//!
//! Every variant that a client can cause carries a message naming the field at fault. Internal
//! causes (storage, corruption) are logged in full where they are mapped, and the client gets
//! a generic message: storage paths and sled internals never leave the process.

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
    /// The server is shutting down or the store is closed.
    #[error("eventsd is shutting down")]
    ShuttingDown,
    /// An earlier storage error disabled writes until the store is reopened.
    #[error("writes are disabled after a storage error; reads still work")]
    WritesDisabled,
    /// The store failed; the write was not acknowledged.
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
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

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let code = match &err {
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::NotFound { .. } => Code::NotFound,
            Error::OutOfRange { .. } => Code::OutOfRange,
            Error::AlreadyExists { .. } => Code::AlreadyExists,
            Error::ShuttingDown | Error::WritesDisabled => Code::Unavailable,
            Error::Storage(_) | Error::Corrupt(_) | Error::Startup(_) | Error::Io(_) => {
                tracing::error!(error = %err, "internal error");
                return Status::internal("internal storage error (details are in the server log)");
            }
        };
        Status::new(code, err.to_string())
    }
}
