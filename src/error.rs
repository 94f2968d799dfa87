//! The one error type of eventsd and its one classification ([`Error::class`]): for every
//! variant the gRPC code, the HTTP status and a stable name, used by every transport.
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
    /// A subscription ended by the server's shutdown; it resumes after the sequence given.
    #[error("eventsd is shutting down; resume with after_sequence={after_sequence}")]
    StreamShutDown {
        /// Every matching event up to this sequence was sent.
        after_sequence: u64,
    },
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
    /// Every unary call permit (`--max-in-flight`) is taken: the call is shed, not queued.
    #[error(
        "eventsd is at its limit of {max} calls in flight (--max-in-flight); retry with backoff"
    )]
    Overloaded {
        /// The limit.
        max: usize,
    },
    /// The disk is full; the write was not acknowledged.
    #[error(
        "the disk is full (eventsd keeps 64 MiB free for its index); the write was not stored"
    )]
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
    /// No HTTP route has this path.
    #[error("no route {path}")]
    NoRoute {
        /// The path asked for.
        path: String,
    },
    /// The HTTP route exists, but not for this method.
    #[error("{path} does not take {method}")]
    MethodNotAllowed {
        /// The method used.
        method: String,
        /// The path asked for.
        path: String,
    },
    /// An HTTP body is larger than allowed.
    #[error("request body is larger than the {limit} byte limit")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// An HTTP body did not arrive in time (`--http-body-timeout`).
    #[error("{0}")]
    RequestTimeout(String),
    /// A listing's walk passed its deadline (`--list-deadline`) and was stopped.
    #[error("the listing did not finish within its deadline (--list-deadline); narrow it with from/to, types or a smaller offset")]
    ListDeadline,
    /// An HTTP body is not declared as JSON.
    #[error("content type must be application/json (got {0:?})")]
    UnsupportedMediaType(String),
    /// An HTTP body is not well-formed JSON.
    #[error("body is not valid JSON: {0}")]
    MalformedJson(String),
    /// The server could not start or serve (bind, reflection, transport).
    #[error("{0}")]
    Startup(String),
    /// An I/O error. Made from a `std::io::Error` through `From` (what `?` uses), which
    /// makes a full disk [`Error::DiskFull`] instead.
    #[error("I/O error: {0}")]
    Io(std::io::Error),
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

/// Every `?` on an I/O result goes through the disk-full mapping too.
impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        match err.kind() {
            std::io::ErrorKind::StorageFull => Error::DiskFull,
            _ => Error::Io(err),
        }
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

/// How one error answers on every transport: its gRPC code, its HTTP status and its stable
/// name. The name is the HTTP error body's `code`, the `reason` of the gRPC status's
/// `google.rpc.ErrorInfo` (domain [`DOMAIN`]) and the `code` label of
/// `eventsd_requests_total`. Names never change once released; several variants may share
/// one where a client has nothing different to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Class {
    /// The gRPC status code.
    pub grpc: Code,
    /// The HTTP status.
    pub http: StatusCode,
    /// The stable snake_case name.
    pub name: &'static str,
}

/// The `ErrorInfo.domain` of every eventsd error.
pub const DOMAIN: &str = "eventsd";

/// What a client sees instead of an internal error's text, which may hold storage paths.
const INTERNAL_MESSAGE: &str = "internal error (details are in the server log)";

const fn class(grpc: Code, http: StatusCode, name: &'static str) -> Class {
    Class { grpc, http, name }
}

impl Error {
    /// The one classification: every variant's code, status and name, in one table.
    pub fn class(&self) -> Class {
        use StatusCode as H;
        match self {
            Error::InvalidArgument { .. } => {
                class(Code::InvalidArgument, H::UNPROCESSABLE_ENTITY, "invalid_argument")
            }
            Error::MalformedJson(_) => {
                class(Code::InvalidArgument, H::BAD_REQUEST, "malformed_json")
            }
            Error::UnsupportedMediaType(_) => {
                class(Code::InvalidArgument, H::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            Error::NotFound { .. }
            | Error::NoSuch { .. }
            | Error::UnknownSource(_)
            | Error::NoRoute { .. } => class(Code::NotFound, H::NOT_FOUND, "not_found"),
            Error::MethodNotAllowed { .. } => {
                class(Code::Unimplemented, H::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            Error::AlreadyExists { .. } => {
                class(Code::AlreadyExists, H::CONFLICT, "already_exists")
            }
            Error::OutOfRange { .. } => class(Code::OutOfRange, H::BAD_REQUEST, "out_of_range"),
            Error::Expired { .. } => class(Code::OutOfRange, H::BAD_REQUEST, "events_expired"),
            Error::Unauthenticated(_) => {
                class(Code::Unauthenticated, H::UNAUTHORIZED, "unauthenticated")
            }
            Error::PermissionDenied(_) => {
                class(Code::PermissionDenied, H::FORBIDDEN, "permission_denied")
            }
            Error::PayloadTooLarge { .. } => {
                class(Code::ResourceExhausted, H::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            Error::RequestTimeout(_) => {
                class(Code::DeadlineExceeded, H::REQUEST_TIMEOUT, "request_timeout")
            }
            Error::ListDeadline => {
                class(Code::DeadlineExceeded, H::SERVICE_UNAVAILABLE, "deadline_exceeded")
            }
            Error::ShuttingDown
            | Error::StreamShutDown { .. }
            | Error::WritesDisabled
            | Error::Reopening
            | Error::Unavailable(_) => {
                class(Code::Unavailable, H::SERVICE_UNAVAILABLE, "unavailable")
            }
            Error::LimitReached { .. } | Error::Overloaded { .. } => {
                class(Code::ResourceExhausted, H::SERVICE_UNAVAILABLE, "resource_exhausted")
            }
            Error::DiskFull => class(Code::ResourceExhausted, H::INSUFFICIENT_STORAGE, "disk_full"),
            Error::Storage(_)
            | Error::Internal(_)
            | Error::Corrupt(_)
            | Error::Startup(_)
            | Error::Io(_) => class(Code::Internal, H::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The stable name ([`Class::name`]).
    pub fn code_name(&self) -> &'static str {
        self.class().name
    }

    /// The message a client gets: the error's own text, except for internal errors, which are
    /// logged in full here and answered with a generic line.
    fn client_message(&self) -> String {
        if self.class().grpc == Code::Internal {
            tracing::error!(error = %self, "internal error");
            INTERNAL_MESSAGE.to_string()
        } else {
            self.to_string()
        }
    }

    /// Machine-readable facts for `ErrorInfo.metadata`: the field at fault, the earliest
    /// kept sequence, the position to resume from.
    fn metadata(&self) -> std::collections::HashMap<String, String> {
        let entry = |k: &str, v: String| vec![(k.to_string(), v)];
        match self {
            Error::InvalidArgument { field, .. } => entry("field", field.clone()),
            Error::OutOfRange { field, .. } => entry("field", field.to_string()),
            Error::AlreadyExists { field, .. } => entry("field", field.to_string()),
            Error::Expired { position, earliest } => {
                let mut m = entry("field", position.to_string());
                m.push(("earliest_sequence".to_string(), earliest.to_string()));
                m
            }
            Error::StreamShutDown { after_sequence } => {
                entry("after_sequence", after_sequence.to_string())
            }
            _ => Vec::new(),
        }
        .into_iter()
        .collect()
    }
}

/// Every gRPC status eventsd sends is made here: the class's code, the client message, and
/// an `ErrorInfo` whose reason is the class's name.
impl From<Error> for Status {
    fn from(err: Error) -> Status {
        let class = err.class();
        let details =
            tonic_types::ErrorDetails::with_error_info(class.name, DOMAIN, err.metadata());
        <Status as tonic_types::StatusExt>::with_error_details(
            class.grpc,
            err.client_message(),
            details,
        )
    }
}

/// The name of the error an HTTP response carries, put in its extensions so the request
/// counter reads the same name the body has.
#[derive(Clone, Copy, Debug)]
pub struct ErrorName(pub &'static str);

/// HTTP errors are JSON in the Omise error shape: `{"object": "error", "code", "message"}`,
/// with the class's status and name.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let class = self.class();
        let mut body = serde_json::json!({
            "object": "error",
            "code": class.name,
            "message": self.client_message(),
        });
        // The same machine-readable reason and earliest position gRPC puts in its ErrorInfo.
        if let Error::Expired { earliest, .. } = &self {
            body["reason"] = "EVENTS_EXPIRED".into();
            body["earliest_sequence"] = (*earliest).into();
        }
        let mut response = (class.http, axum::Json(body)).into_response();
        response.extensions_mut().insert(ErrorName(class.name));
        response
    }
}

/// The HTTP router's own answers as classified errors: an unknown path is 404 `not_found`,
/// a known path with another method 405 `method_not_allowed`, both in the JSON error body.
pub fn with_http_fallbacks(router: axum::Router) -> axum::Router {
    router
        .fallback(
            |uri: axum::http::Uri| async move { Error::NoRoute { path: uri.path().to_string() } },
        )
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                Error::MethodNotAllowed { method: method.to_string(), path: uri.path().to_string() }
            },
        )
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
        fn io_fails() -> Result<(), Error> {
            Err(std::io::Error::from(std::io::ErrorKind::StorageFull))?
        }
        assert!(matches!(io_fails(), Err(Error::DiskFull)));
    }

    #[test]
    fn every_status_carries_the_class_name_as_error_info_and_internal_text_stays_inside() {
        use tonic_types::StatusExt;
        let cases = [
            (Error::invalid("id", "is required"), Code::InvalidArgument, 422, "invalid_argument"),
            (Error::DiskFull, Code::ResourceExhausted, 507, "disk_full"),
            (
                Error::Expired { position: "after_sequence", earliest: 8 },
                Code::OutOfRange,
                400,
                "events_expired",
            ),
            (Error::Corrupt("/secret/path".into()), Code::Internal, 500, "internal"),
        ];
        for (err, code, http, name) in cases {
            let class = err.class();
            assert_eq!((class.grpc, class.http.as_u16(), class.name), (code, http, name));
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            assert!(!status.message().contains("/secret"), "{}", status.message());
            let info = status.get_details_error_info().expect("an ErrorInfo");
            assert_eq!((info.reason.as_str(), info.domain.as_str()), (name, DOMAIN));
        }
        let response = Error::DiskFull.into_response();
        assert_eq!(response.status(), 507);
        assert_eq!(response.extensions().get::<ErrorName>().map(|n| n.0), Some("disk_full"));
    }
}
