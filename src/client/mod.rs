//! Client subcommands for people at a terminal and in scripts: `publish`, `get` and `list`
//! ([`publish`], [`read`]) print JSON on stdout; `tail` subscribes and prints each event as
//! one JSON line on stdout (notes go to stderr), and resumes by sequence after a dropped
//! connection or a server restart, so it never prints an event twice or skips one.
//!
//! Every subcommand connects through [`connect`], which sends the API key from
//! `EVENTSD_API_KEY` (when set) as `authorization: Bearer <key>` metadata on every call. The key
//! is never a flag, so it stays out of process listings. A failure prints one line on stderr,
//! `eventsd: CODE: message` for a call the server refused (the canonical gRPC code name), or
//! `eventsd: --flag: reason` for unusable input, and the process exits with 1.

mod publish;
mod read;
mod webhooks;

use std::io::Write;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::config::TailArgs;
use crate::event::json::event_to_json;
use crate::proto::event_service_client::EventServiceClient;
use crate::proto::subscribe_events_request::Start;
use crate::proto::subscribe_events_response::Item;
use crate::proto::{Format, SubscribeEventsRequest};

pub use publish::publish;
pub use read::{get, list};
pub use webhooks::{deliveries, endpoints};

/// The environment variable holding the API key.
pub const API_KEY_ENV: &str = "EVENTSD_API_KEY";

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How long a connection attempt may take before it fails as UNAVAILABLE.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// An EventService client whose every call carries the API key, if one is set.
pub type Client = EventServiceClient<InterceptedService<Channel, BearerAuth>>;

/// Why a client subcommand failed.
#[derive(Debug)]
pub enum ClientError {
    /// The server refused the call, or could not be reached (UNAVAILABLE).
    Status(Status),
    /// A flag, its input, or the environment cannot be used.
    Input {
        /// The flag or variable at fault, such as `--data`.
        flag: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Writing to stdout failed.
    Output(std::io::Error),
}

impl ClientError {
    /// Shorthand for [`ClientError::Input`].
    pub fn input(flag: impl Into<String>, reason: impl Into<String>) -> Self {
        ClientError::Input { flag: flag.into(), reason: reason.into() }
    }

    /// True when stdout was closed by its reader (`eventsd list --all | head`): not a failure,
    /// just the end of the output anyone wants.
    fn is_closed_output(&self) -> bool {
        matches!(self, ClientError::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Status(status) => {
                write!(f, "{}: {}", code_name(status.code()), status.message())
            }
            ClientError::Input { flag, reason } => write!(f, "{flag}: {reason}"),
            ClientError::Output(err) => write!(f, "cannot write to stdout: {err}"),
        }
    }
}

impl std::error::Error for ClientError {}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        ClientError::Status(status)
    }
}

/// The canonical name of a gRPC status code, as the gRPC specification spells it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Adds `authorization: Bearer <key>` to every call when a key is set.
#[derive(Clone)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl BearerAuth {
    /// Checks the key once, so a key that cannot be sent fails before any call.
    fn new(key: Option<&str>) -> Result<Self, ClientError> {
        let Some(key) = key else {
            return Ok(BearerAuth { header: None });
        };
        // The message never repeats the key: it is a secret.
        let mut header = MetadataValue::try_from(format!("Bearer {key}")).map_err(|_| {
            ClientError::input(API_KEY_ENV, "holds characters a header value cannot carry")
        })?;
        header.set_sensitive(true);
        Ok(BearerAuth { header: Some(header) })
    }
}

impl std::fmt::Debug for BearerAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let key = if self.header.is_some() { "<redacted>" } else { "none" };
        write!(f, "BearerAuth({key})")
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// The API key from `EVENTSD_API_KEY`; unset or empty means none.
pub fn api_key() -> Result<Option<String>, ClientError> {
    match std::env::var(API_KEY_ENV) {
        Ok(key) if key.is_empty() => Ok(None),
        Ok(key) => Ok(Some(key)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(ClientError::input(API_KEY_ENV, "is not valid UTF-8"))
        }
    }
}

/// Connects to the server at `addr` (`http://host:port`; a bare `host:port` means http) and
/// returns a client that sends `key` with every call. A server that cannot be reached is
/// UNAVAILABLE, naming the address and the cause.
pub async fn connect(addr: &str, key: Option<&str>) -> Result<Client, ClientError> {
    let (channel, auth) = connect_channel(addr, key).await?;
    Ok(EventServiceClient::with_interceptor(channel, auth))
}

/// The connection behind [`connect`], for clients of the other services.
async fn connect_channel(
    addr: &str,
    key: Option<&str>,
) -> Result<(Channel, BearerAuth), ClientError> {
    let auth = BearerAuth::new(key)?;
    let uri = if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") };
    let endpoint = Endpoint::from_shared(uri)
        .map_err(|e| ClientError::input("--addr", format!("{addr:?} is not an address ({e})")))?
        .connect_timeout(CONNECT_TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| {
        Status::unavailable(format!("cannot connect to {addr}: {}", with_causes(&e)))
    })?;
    Ok((channel, auth))
}

/// An error and its chain of causes on one line (tonic's transport error alone says only
/// "transport error"); a cause that repeats the previous one's text is left out.
fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut previous = text.clone();
    let mut source = err.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if line != previous {
            text.push_str(": ");
            text.push_str(&line);
        }
        previous = line;
        source = cause.source();
    }
    text
}

/// Writes one compact JSON value and a newline to stdout. A reader that closed stdout early
/// has taken all it wanted: that is [`ClientError::Output`] here (so a loop can stop) and
/// success for the command as a whole ([`closed_output_is_ok`]).
fn print_json(value: &serde_json::Value) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}").and_then(|()| out.flush()).map_err(ClientError::Output)
}

/// Treats output closed by its reader as the end of a successful command.
fn closed_output_is_ok(result: Result<(), ClientError>) -> Result<(), ClientError> {
    match result {
        Err(e) if e.is_closed_output() => Ok(()),
        other => other,
    }
}

/// Runs `eventsd tail` until interrupted; returns an error only for a request the server
/// rejects or input that cannot work (a reconnect would fail the same way).
pub async fn tail(args: TailArgs) -> Result<(), ClientError> {
    let key = api_key()?;
    let mut start = match (args.from_beginning, args.after) {
        (true, _) => Some(Start::FromBeginning(true)),
        (false, Some(seq)) => Some(Start::AfterSequence(seq)),
        (false, None) => None,
    };
    let mut backoff = Duration::from_millis(250);
    loop {
        match follow(&args, key.as_deref(), start, &mut backoff).await {
            Ok(last) => {
                if let Some(seq) = last {
                    start = Some(Start::AfterSequence(seq));
                }
                eprintln!("eventsd tail: stream ended; reconnecting");
            }
            Err((last, err)) => {
                if let Some(seq) = last {
                    start = Some(Start::AfterSequence(seq));
                }
                if err.is_closed_output() {
                    return Ok(());
                }
                let ClientError::Status(status) = &err else {
                    return Err(err);
                };
                if !matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
                ) {
                    return Err(err);
                }
                eprintln!("eventsd tail: {}; reconnecting in {backoff:?}", status.message());
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Follows one connection; returns the last sequence it can resume after.
async fn follow(
    args: &TailArgs,
    key: Option<&str>,
    start: Option<Start>,
    backoff: &mut Duration,
) -> Result<Option<u64>, (Option<u64>, ClientError)> {
    let mut last = match &start {
        Some(Start::AfterSequence(seq)) => Some(*seq),
        _ => None,
    };
    let mut client = connect(&args.addr, key).await.map_err(|e| (last, e))?;
    let format = if args.cloudevents { Format::Cloudevent } else { Format::Event };
    let request = SubscribeEventsRequest {
        start,
        types: args.types.clone(),
        livemode: args.livemode,
        format: format as i32,
    };
    let mut stream =
        client.subscribe_events(request).await.map_err(|s| (last, s.into()))?.into_inner();
    *backoff = Duration::from_millis(250);
    loop {
        let message = stream.message().await.map_err(|s| (last, s.into()))?;
        let Some(message) = message else {
            return Ok(last);
        };
        match message.item {
            Some(Item::Event(event)) => {
                last = Some(event.sequence);
                print_json(&event_to_json(&event)).map_err(|e| (last, e))?;
            }
            Some(Item::CloudEvent(ce)) => {
                let json = crate::event::cloudevent::proto_to_json(&ce);
                if let Some(seq) = json["sequence"].as_str().and_then(|s| s.parse().ok()) {
                    last = Some(seq);
                }
                print_json(&json).map_err(|e| (last, e))?;
            }
            Some(Item::CaughtUp(c)) => {
                last = Some(last.unwrap_or(0).max(c.sequence));
                eprintln!("eventsd tail: caught up at sequence {}; live", c.sequence);
            }
            Some(Item::Heartbeat(h)) => last = Some(last.unwrap_or(0).max(h.sequence)),
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_print_the_canonical_code_name_or_the_flag() {
        let err = ClientError::from(Status::not_found("event \"x\" not found"));
        assert_eq!(err.to_string(), "NOT_FOUND: event \"x\" not found");
        let err = ClientError::input("--data", "must be a JSON object");
        assert_eq!(err.to_string(), "--data: must be a JSON object");
    }

    #[test]
    fn the_key_is_sent_as_a_bearer_token_and_never_shown() {
        let mut auth = BearerAuth::new(Some("sk_test_1")).unwrap();
        assert!(!format!("{auth:?}").contains("sk_test_1"));
        let request = auth.call(tonic::Request::new(())).unwrap();
        assert_eq!(request.metadata().get("authorization").unwrap(), "Bearer sk_test_1");
        let mut none = BearerAuth::new(None).unwrap();
        assert!(none.call(tonic::Request::new(())).unwrap().metadata().is_empty());
        let err = BearerAuth::new(Some("bad\nkey")).unwrap_err().to_string();
        assert!(err.starts_with(API_KEY_ENV) && !err.contains("bad"), "{err}");
    }
}
