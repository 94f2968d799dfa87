//! Security: who may call what, and what a caller learns.
//!
//! The heart of this file is a generated matrix. Thirteen keys (each of the scopes publish,
//! read, subscribe and admin in each of the modes test, live and all, plus one key configured
//! by its SHA-256 only) are sent both as `authorization: Bearer <key>` and as HTTP Basic with
//! the key as the user name; with no key, an unknown key and a malformed header besides, that
//! is 29 credentials. Each meets every RPC and HTTP route that takes an API key, and the answer
//! is compared with [`expected`], a small model of the rules in `src/auth`: no valid key is
//! UNAUTHENTICATED / 401, a missing scope or a write in the other mode is
//! PERMISSION_DENIED / 403, an event of the other mode is NOT_FOUND / 404, and lists, totals
//! and subscriptions hold exactly the events of the key's mode. Every error message is also
//! checked for every configured key: none may appear.
//!
//! The read routes are GetEvent, ListEvents, SubscribeEvents (as events and as CloudEvents),
//! `GET /events[/{id}]`, `GET /api/v1/events[/{id}]`, `GET /cloudevents[/{id}]`,
//! `GET /stream/events` (SSE) and `GET /whoami`; the write routes PublishEvent, PublishEvents
//! and `POST /events`.
//!
//! Around the matrix: the routes that need no key (health, reflection, `/healthz`, webhooks),
//! page tokens across modes, secrets in errors and `Debug` output, a key reload on SIGHUP in
//! the real binary, the refusal of an open non-loopback listener, and `--no-reflection`.
//! TLS and mutual TLS are in `tls.rs`.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use eventsd::auth::{KeyFile, KeyRing};
use eventsd::ingest::webhook::signature::{sign, Provider};
use eventsd::proto::subscribe_events_response::Item;
use eventsd::proto::{
    Event, Format, GetEventRequest, ListEventsRequest, PublishEventRequest, PublishEventsRequest,
    SubscribeEventsRequest,
};
use eventsd::{Listeners, ServeConfig};
use serde_json::{json, Value as Json};
use sha2::{Digest, Sha256};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::{v1, v1alpha};

use crate::helpers::{spawn_app_with, TestApp};
use crate::support::{
    at, channel, event, from_beginning, history, next_item, open_sse, Client, Subscription,
    HANG_GUARD, T0,
};

const SERVICE: &str = "events.v1.EventService";

// ---- The keys ----

/// What a key may do (the key file's `scopes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scope {
    Publish,
    Read,
    Subscribe,
    Admin,
}

impl Scope {
    const ALL: [Scope; 4] = [Scope::Publish, Scope::Read, Scope::Subscribe, Scope::Admin];

    fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Read => "read",
            Scope::Subscribe => "subscribe",
            Scope::Admin => "admin",
        }
    }
}

/// Which events a key sees and writes (the key file's `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Test,
    Live,
    All,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Test, Mode::Live, Mode::All];

    fn as_str(self) -> &'static str {
        match self {
            Mode::Test => "test",
            Mode::Live => "live",
            Mode::All => "all",
        }
    }

    fn allows(self, livemode: bool) -> bool {
        match self {
            Mode::Test => !livemode,
            Mode::Live => livemode,
            Mode::All => true,
        }
    }
}

/// One configured key.
#[derive(Debug)]
struct Key {
    name: String,
    secret: String,
    scopes: Vec<Scope>,
    mode: Mode,
    /// Written to the file as `sha256 = "<hex>"` instead of `key = "<secret>"`.
    by_hash: bool,
}

impl Key {
    fn new(scopes: &[Scope], mode: Mode) -> Key {
        let scope_names: Vec<&str> = scopes.iter().map(|s| s.as_str()).collect();
        let name = format!("{}-{}", scope_names.join("+"), mode.as_str());
        // Distinct, and none a substring of another, so a leak check can name the key.
        let secret = format!("sk_{}_{}_Zq7WmX4p", mode.as_str(), scope_names.join("_"));
        Key { name, secret, scopes: scopes.to_vec(), mode, by_hash: false }
    }

    fn may(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// The key's entry in the key file.
    fn toml(&self) -> String {
        let scopes: Vec<String> = self.scopes.iter().map(|s| format!("{:?}", s.as_str())).collect();
        let credential = if self.by_hash {
            format!("sha256 = \"{}\"", sha256_hex(&self.secret))
        } else {
            format!("key = {:?}", self.secret)
        };
        format!(
            "[[key]]\nname = {:?}\n{credential}\nscopes = [{}]\nmode = {:?}\n\n",
            self.name,
            scopes.join(", "),
            self.mode.as_str()
        )
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Every single-scope key in every mode (12), then a publish+read+subscribe live key that the
/// file holds by its SHA-256 only.
fn all_keys() -> Vec<Key> {
    let mut keys = Vec::new();
    for scope in Scope::ALL {
        for mode in Mode::ALL {
            keys.push(Key::new(&[scope], mode));
        }
    }
    let mut hashed = Key::new(&[Scope::Publish, Scope::Read, Scope::Subscribe], Mode::Live);
    hashed.by_hash = true;
    keys.push(hashed);
    keys
}

fn key_file_text(keys: &[&Key]) -> String {
    keys.iter().map(|k| k.toml()).collect()
}

/// The key with exactly these scopes and this mode.
fn key<'a>(keys: &'a [Key], scopes: &[Scope], mode: Mode) -> &'a Key {
    keys.iter()
        .find(|k| k.scopes == scopes && k.mode == mode)
        .unwrap_or_else(|| panic!("no {scopes:?} {mode:?} key"))
}

/// A key file in a temporary folder (kept alive by the returned `TempDir`).
fn write_key_file(keys: &[&Key]) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, key_file_text(keys)).expect("write the key file");
    (dir, path)
}

/// A server whose key file holds every key of `all_keys`.
async fn app_with_keys(keys: &[Key]) -> (TestApp, TempDir) {
    let (dir, path) = write_key_file(&keys.iter().collect::<Vec<_>>());
    let app = spawn_app_with(|c| c.api_keys = Some(path)).await;
    (app, dir)
}

// ---- Credentials ----

/// What a caller sends in `authorization`.
#[derive(Clone, Copy)]
enum Credential<'a> {
    Missing,
    /// A well-formed Bearer header with a key the file does not hold.
    Unknown,
    /// A real key under an unknown scheme: still no credential.
    Malformed(&'a Key),
    Bearer(&'a Key),
    /// `Basic base64(<key>:)`, as `curl -u <key>:` sends it.
    Basic(&'a Key),
}

impl Credential<'_> {
    fn header(&self) -> Option<String> {
        match self {
            Credential::Missing => None,
            Credential::Unknown => Some("Bearer sk_test_not_in_the_file_Zq7WmX4p".into()),
            Credential::Malformed(k) => Some(format!("Token {}", k.secret)),
            Credential::Bearer(k) => Some(format!("Bearer {}", k.secret)),
            Credential::Basic(k) => Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{}:", k.secret))
            )),
        }
    }

    /// The key the server should recognise.
    fn key(&self) -> Option<&Key> {
        match self {
            Credential::Bearer(k) | Credential::Basic(k) => Some(k),
            _ => None,
        }
    }
}

impl fmt::Debug for Credential<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Missing => write!(f, "no key"),
            Credential::Unknown => write!(f, "an unknown key"),
            Credential::Malformed(k) => write!(f, "`Token` with key {}", k.name),
            Credential::Bearer(k) => write!(f, "Bearer key {}", k.name),
            Credential::Basic(k) => write!(f, "Basic key {}", k.name),
        }
    }
}

fn credentials(keys: &[Key]) -> Vec<Credential<'_>> {
    let admin = key(keys, &[Scope::Admin], Mode::All);
    let mut all = vec![Credential::Missing, Credential::Unknown, Credential::Malformed(admin)];
    for k in keys {
        all.push(Credential::Bearer(k));
        all.push(Credential::Basic(k));
    }
    all
}

/// A gRPC request carrying the credential.
fn authorized<T>(message: T, credential: Credential<'_>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = credential.header() {
        request
            .metadata_mut()
            .insert("authorization", value.parse().expect("an ASCII header value"));
    }
    request
}

fn bearer<T>(message: T, k: &Key) -> Request<T> {
    authorized(message, Credential::Bearer(k))
}

// ---- Operations and the model ----

/// Everything that takes an API key.
#[derive(Clone, Copy, Debug)]
enum Op {
    PublishEvent {
        livemode: bool,
    },
    PublishEvents {
        livemodes: &'static [bool],
    },
    /// `POST /events`.
    PostEvents {
        livemode: bool,
    },
    /// GetEvent of the seeded test (`live: false`) or live event.
    GetEvent {
        live: bool,
    },
    ListEvents {
        livemode: Option<bool>,
    },
    /// SubscribeEvents from the beginning, read until caught up.
    SubscribeEvents {
        livemode: Option<bool>,
    },
    /// `GET {base}{id}` of the seeded test or live event.
    ViewGet {
        base: &'static str,
        live: bool,
    },
    /// `GET {path}`, with `?livemode=` when given.
    ViewList {
        path: &'static str,
        livemode: Option<bool>,
    },
    /// SubscribeEvents from the beginning with FORMAT_CLOUDEVENT, read until caught up.
    SubscribeCloudEvents {
        livemode: Option<bool>,
    },
    /// `GET /cloudevents?after_sequence=0`, with `&livemode=` when given: a batch, no total.
    CloudEventsPoll {
        livemode: Option<bool>,
    },
    /// `GET /stream/events?from_beginning=true`, with `&livemode=` when given, read until
    /// caught up.
    StreamEvents {
        livemode: Option<bool>,
    },
    /// `GET /whoami`: any valid key, whatever its scopes.
    WhoAmI,
}

const WRITE_OPS: &[Op] = &[
    Op::PublishEvent { livemode: false },
    Op::PublishEvent { livemode: true },
    Op::PublishEvents { livemodes: &[false, false] },
    Op::PublishEvents { livemodes: &[true] },
    Op::PublishEvents { livemodes: &[false, true] },
    Op::PostEvents { livemode: false },
    Op::PostEvents { livemode: true },
];

const READ_OPS: &[Op] = &[
    Op::GetEvent { live: false },
    Op::GetEvent { live: true },
    Op::ListEvents { livemode: None },
    Op::ListEvents { livemode: Some(false) },
    Op::ListEvents { livemode: Some(true) },
    Op::SubscribeEvents { livemode: None },
    Op::SubscribeEvents { livemode: Some(false) },
    Op::SubscribeEvents { livemode: Some(true) },
    Op::SubscribeCloudEvents { livemode: None },
    Op::SubscribeCloudEvents { livemode: Some(true) },
    Op::ViewGet { base: "/events/", live: false },
    Op::ViewGet { base: "/events/", live: true },
    Op::ViewGet { base: "/api/v1/events/", live: false },
    Op::ViewGet { base: "/api/v1/events/", live: true },
    Op::ViewList { path: "/events", livemode: None },
    Op::ViewList { path: "/events", livemode: Some(false) },
    Op::ViewList { path: "/events", livemode: Some(true) },
    Op::ViewList { path: "/api/v1/events", livemode: None },
    Op::ViewList { path: "/api/v1/events", livemode: Some(true) },
    Op::ViewGet { base: "/cloudevents/", live: false },
    Op::ViewGet { base: "/cloudevents/", live: true },
    Op::CloudEventsPoll { livemode: None },
    Op::CloudEventsPoll { livemode: Some(false) },
    Op::CloudEventsPoll { livemode: Some(true) },
    Op::StreamEvents { livemode: None },
    Op::StreamEvents { livemode: Some(false) },
    Op::StreamEvents { livemode: Some(true) },
    Op::WhoAmI,
];

impl Op {
    fn scope(self) -> Scope {
        match self {
            Op::PublishEvent { .. } | Op::PublishEvents { .. } | Op::PostEvents { .. } => {
                Scope::Publish
            }
            Op::SubscribeEvents { .. }
            | Op::SubscribeCloudEvents { .. }
            | Op::StreamEvents { .. } => Scope::Subscribe,
            _ => Scope::Read,
        }
    }
}

/// How a call ended, over gRPC or HTTP.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    Other(String),
}

impl Outcome {
    fn of_code(code: Code) -> Outcome {
        match code {
            Code::Ok => Outcome::Ok,
            Code::Unauthenticated => Outcome::Unauthenticated,
            Code::PermissionDenied => Outcome::PermissionDenied,
            Code::NotFound => Outcome::NotFound,
            other => Outcome::Other(format!("{other:?}")),
        }
    }

    fn of_http(status: u16) -> Outcome {
        match status {
            200 | 201 => Outcome::Ok,
            401 => Outcome::Unauthenticated,
            403 => Outcome::PermissionDenied,
            404 => Outcome::NotFound,
            other => Outcome::Other(format!("HTTP {other}")),
        }
    }

    /// The `code` of the JSON error body that goes with an HTTP error outcome.
    fn http_code(&self) -> Option<&'static str> {
        match self {
            Outcome::Unauthenticated => Some("unauthenticated"),
            Outcome::PermissionDenied => Some("permission_denied"),
            Outcome::NotFound => Some("not_found"),
            _ => None,
        }
    }
}

/// The rules of `src/auth`, restated: authenticate, then the scope, then the mode.
fn expected(op: Op, credential: Credential<'_>) -> Outcome {
    let Some(key) = credential.key() else {
        return Outcome::Unauthenticated;
    };
    if let Op::WhoAmI = op {
        return Outcome::Ok;
    }
    if !key.may(op.scope()) {
        return Outcome::PermissionDenied;
    }
    let allowed = match op {
        Op::PublishEvent { livemode } | Op::PostEvents { livemode } => key.mode.allows(livemode),
        Op::PublishEvents { livemodes } => livemodes.iter().all(|&m| key.mode.allows(m)),
        // An unset livemode is narrowed to the key's mode; the other mode is refused.
        Op::ListEvents { livemode }
        | Op::ViewList { livemode, .. }
        | Op::CloudEventsPoll { livemode }
        | Op::SubscribeEvents { livemode }
        | Op::SubscribeCloudEvents { livemode }
        | Op::StreamEvents { livemode } => livemode.is_none_or(|m| key.mode.allows(m)),
        Op::WhoAmI => true,
        // The other mode's event does not exist for this key.
        Op::GetEvent { live } | Op::ViewGet { live, .. } => {
            return if key.mode.allows(live) { Outcome::Ok } else { Outcome::NotFound };
        }
    };
    if allowed {
        Outcome::Ok
    } else {
        Outcome::PermissionDenied
    }
}

// ---- The seeded store ----

/// Three test events and two live ones, published by the admin/all key with explicit ids and
/// created times, so reads can be checked by id.
const SEED: [(&str, bool); 5] = [
    ("evnt_test_sec0001", false),
    ("evnt_sec0002", true),
    ("evnt_test_sec0003", false),
    ("evnt_test_sec0004", false),
    ("evnt_sec0005", true),
];

fn seeded_id(live: bool) -> &'static str {
    SEED.iter().find(|(_, l)| *l == live).map(|(id, _)| *id).expect("a seeded event")
}

async fn seed(client: &mut Client, admin: &Key) {
    let events = SEED
        .iter()
        .enumerate()
        .map(|(i, (id, livemode))| PublishEventRequest {
            id: (*id).into(),
            livemode: *livemode,
            created: Some(at(T0 + i as i64)),
            ..event("charge.create")
        })
        .collect();
    client
        .publish_events(bearer(PublishEventsRequest { events }, admin))
        .await
        .expect("seed the store as admin");
}

/// The ids a read with this key (and optional livemode filter) should return.
fn visible(mode: Mode, livemode: Option<bool>) -> BTreeSet<String> {
    SEED.iter()
        .filter(|(_, live)| mode.allows(*live) && livemode.is_none_or(|m| m == *live))
        .map(|(id, _)| id.to_string())
        .collect()
}

// ---- Running an operation ----

/// What a call returned.
#[derive(Debug)]
struct Seen {
    outcome: Outcome,
    /// Ids returned on success: the event read or published, or a listing's data.
    ids: BTreeSet<String>,
    /// A listing's `total`.
    total: Option<i64>,
    /// The `livemode` of each event published.
    livemodes: Vec<bool>,
    /// The error message (gRPC) or body (HTTP).
    message: String,
}

impl Seen {
    fn failed(status: Status) -> Seen {
        Seen {
            outcome: Outcome::of_code(status.code()),
            ids: BTreeSet::new(),
            total: None,
            livemodes: Vec::new(),
            message: status.message().to_string(),
        }
    }

    fn events(events: &[Event], total: Option<i64>) -> Seen {
        Seen {
            outcome: Outcome::Ok,
            ids: events.iter().map(|e| e.id.clone()).collect(),
            total,
            livemodes: events.iter().map(|e| e.livemode).collect(),
            message: String::new(),
        }
    }
}

fn grpc_seen<T>(result: Result<tonic::Response<T>, Status>, ok: impl FnOnce(T) -> Seen) -> Seen {
    match result {
        Ok(response) => ok(response.into_inner()),
        Err(status) => Seen::failed(status),
    }
}

async fn run_op(app: &TestApp, op: Op, credential: Credential<'_>) -> Seen {
    let mut client = app.client.clone();
    let call = async {
        match op {
            Op::PublishEvent { livemode } => {
                let request = PublishEventRequest { livemode, ..event("security.publish") };
                let result = client.publish_event(authorized(request, credential)).await;
                grpc_seen(result, |e| Seen::events(&[e], None))
            }
            Op::PublishEvents { livemodes } => {
                let events = livemodes
                    .iter()
                    .map(|&livemode| PublishEventRequest { livemode, ..event("security.batch") })
                    .collect();
                let request = PublishEventsRequest { events };
                let result = client.publish_events(authorized(request, credential)).await;
                grpc_seen(result, |r| Seen::events(&r.events, None))
            }
            Op::GetEvent { live } => {
                let request = GetEventRequest { id: seeded_id(live).into(), livemode: None };
                let result = client.get_event(authorized(request, credential)).await;
                grpc_seen(result, |e| Seen::events(&[e], None))
            }
            Op::ListEvents { livemode } => {
                let request = ListEventsRequest { livemode, limit: 100, ..Default::default() };
                let result = client.list_events(authorized(request, credential)).await;
                grpc_seen(result, |page| Seen::events(&page.data, Some(page.total)))
            }
            Op::SubscribeEvents { livemode } => {
                let request = SubscribeEventsRequest { livemode, ..from_beginning() };
                match client.subscribe_events(authorized(request, credential)).await {
                    Ok(response) => {
                        let mut stream = response.into_inner();
                        let (events, _) = history(&mut stream, 100).await;
                        Seen::events(&events, None)
                    }
                    Err(status) => Seen::failed(status),
                }
            }
            Op::PostEvents { livemode } => {
                let body = json!({
                    "type": "security.post",
                    "livemode": livemode,
                    "data": {"object": "charge", "amount": 100},
                });
                let reply = http(app, "POST", "/events", credential, Some(body)).await;
                http_seen(reply, single)
            }
            Op::ViewGet { base, live } => {
                let path = format!("{base}{}", seeded_id(live));
                let reply = http(app, "GET", &path, credential, None).await;
                http_seen(reply, single)
            }
            Op::ViewList { path, livemode } => {
                let path = match livemode {
                    Some(m) => format!("{path}?livemode={m}"),
                    None => path.to_string(),
                };
                let reply = http(app, "GET", &path, credential, None).await;
                http_seen(reply, |body| {
                    let data = body["data"].as_array().cloned().unwrap_or_default();
                    Seen {
                        outcome: Outcome::Ok,
                        ids: data.iter().map(|e| e["id"].as_str().unwrap_or("?").into()).collect(),
                        total: body["total"].as_i64(),
                        livemodes: data.iter().filter_map(|e| e["livemode"].as_bool()).collect(),
                        message: String::new(),
                    }
                })
            }
            Op::SubscribeCloudEvents { livemode } => {
                let request = SubscribeEventsRequest {
                    livemode,
                    format: Format::Cloudevent as i32,
                    ..from_beginning()
                };
                match client.subscribe_events(authorized(request, credential)).await {
                    Ok(response) => cloud_event_history(response.into_inner()).await,
                    Err(status) => Seen::failed(status),
                }
            }
            Op::CloudEventsPoll { livemode } => {
                let path = match livemode {
                    Some(m) => format!("/cloudevents?after_sequence=0&livemode={m}"),
                    None => "/cloudevents?after_sequence=0".to_string(),
                };
                let reply = http(app, "GET", &path, credential, None).await;
                http_seen(reply, |body| {
                    let batch = body.as_array().cloned().unwrap_or_default();
                    Seen {
                        outcome: Outcome::Ok,
                        ids: batch.iter().map(|e| e["id"].as_str().unwrap_or("?").into()).collect(),
                        total: None,
                        livemodes: batch.iter().filter_map(|e| e["livemode"].as_bool()).collect(),
                        message: String::new(),
                    }
                })
            }
            Op::StreamEvents { livemode } => {
                let query = match livemode {
                    Some(m) => format!("?from_beginning=true&livemode={m}"),
                    None => "?from_beginning=true".to_string(),
                };
                let header = credential.header();
                let headers: Vec<(&str, &str)> =
                    header.as_deref().map(|h| ("authorization", h)).into_iter().collect();
                match open_sse(&app.http, &query, &headers).await {
                    Ok(mut stream) => {
                        let (events, _) = stream.history(100).await;
                        Seen {
                            outcome: Outcome::Ok,
                            ids: events
                                .iter()
                                .map(|(_, e)| e["id"].as_str().unwrap_or("?").into())
                                .collect(),
                            total: None,
                            livemodes: events
                                .iter()
                                .filter_map(|(_, e)| e["livemode"].as_bool())
                                .collect(),
                            message: String::new(),
                        }
                    }
                    Err((status, body)) => {
                        http_seen(HttpReply { status, text: body.to_string() }, single)
                    }
                }
            }
            Op::WhoAmI => {
                let reply = http(app, "GET", "/whoami", credential, None).await;
                http_seen(reply, |body| Seen {
                    outcome: Outcome::Ok,
                    ids: body["name"].as_str().map(str::to_string).into_iter().collect(),
                    total: None,
                    livemodes: Vec::new(),
                    message: body.to_string(),
                })
            }
        }
    };
    tokio::time::timeout(HANG_GUARD, call).await.expect("hang guard: one matrix call")
}

/// The ids of a CloudEvents subscription's history, up to `caught_up` (at most 100 events).
async fn cloud_event_history(mut stream: Subscription) -> Seen {
    let mut ids = BTreeSet::new();
    for _ in 0..=100 {
        match next_item(&mut stream).await {
            Item::CloudEvent(ce) => {
                ids.insert(ce.id);
            }
            Item::CaughtUp(_) => {
                return Seen {
                    outcome: Outcome::Ok,
                    ids,
                    total: None,
                    livemodes: Vec::new(),
                    message: String::new(),
                };
            }
            Item::Heartbeat(_) => {}
            Item::Event(e) => panic!("an Event item on a CloudEvents subscription: {e:?}"),
        }
    }
    panic!("no caught_up within 100 events");
}

/// One event in a JSON body (`POST /events` and the single-event views).
fn single(body: &Json) -> Seen {
    Seen {
        outcome: Outcome::Ok,
        ids: body["id"].as_str().map(|id| id.to_string()).into_iter().collect(),
        total: None,
        livemodes: body["livemode"].as_bool().into_iter().collect(),
        message: String::new(),
    }
}

/// An HTTP exchange: status and body.
struct HttpReply {
    status: u16,
    text: String,
}

fn http_seen(reply: HttpReply, ok: impl FnOnce(&Json) -> Seen) -> Seen {
    let body: Json = serde_json::from_str(&reply.text).unwrap_or(Json::Null);
    let outcome = Outcome::of_http(reply.status);
    if outcome == Outcome::Ok {
        return ok(&body);
    }
    // An error body names its code; a mismatch shows up as an unexpected outcome.
    let outcome = match outcome.http_code() {
        Some(code) if body["code"] != code => {
            Outcome::Other(format!("HTTP {} with error code {}", reply.status, body["code"]))
        }
        _ => outcome,
    };
    Seen { outcome, ids: BTreeSet::new(), total: None, livemodes: Vec::new(), message: reply.text }
}

/// A plain-HTTP client that never goes through a proxy.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().expect("HTTP client")
}

async fn http(
    app: &TestApp,
    method: &str,
    path: &str,
    credential: Credential<'_>,
    body: Option<Json>,
) -> HttpReply {
    let url = format!("{}{path}", app.http);
    let mut request = match method {
        "POST" => http_client().post(url),
        _ => http_client().get(url),
    };
    if let Some(value) = credential.header() {
        request = request.header("authorization", value);
    }
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&body).expect("serialise"));
    }
    let exchange = async {
        let response = request.send().await.expect("send the request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("read the body");
        HttpReply { status, text }
    };
    tokio::time::timeout(HANG_GUARD, exchange).await.expect("hang guard: HTTP request")
}

/// Compares what a call returned with the model; `None` when they agree.
fn mismatch(op: Op, credential: Credential<'_>, seen: &Seen, keys: &[Key]) -> Option<String> {
    let case = format!("{op:?} with {credential:?}");
    let want = expected(op, credential);
    if seen.outcome != want {
        return Some(format!(
            "{case}: expected {want:?}, got {:?}: {}",
            seen.outcome, seen.message
        ));
    }
    if let Some(leaked) = keys.iter().find(|k| seen.message.contains(&k.secret)) {
        return Some(format!("{case}: the error shows key {}: {}", leaked.name, seen.message));
    }
    if want != Outcome::Ok {
        return None;
    }
    let key = credential.key().expect("only a key succeeds");
    let problem = match op {
        Op::PublishEvent { livemode } | Op::PostEvents { livemode } => {
            (seen.livemodes != [livemode]).then(|| format!("stored livemodes {:?}", seen.livemodes))
        }
        Op::PublishEvents { livemodes } => {
            (seen.livemodes != livemodes).then(|| format!("stored livemodes {:?}", seen.livemodes))
        }
        Op::GetEvent { live } | Op::ViewGet { live, .. } => {
            let want: BTreeSet<String> = [seeded_id(live).to_string()].into();
            (seen.ids != want).then(|| format!("returned {:?}", seen.ids))
        }
        Op::ListEvents { livemode } | Op::ViewList { livemode, .. } => {
            let want = visible(key.mode, livemode);
            let total = Some(want.len() as i64);
            (seen.ids != want || seen.total != total).then(|| {
                format!(
                    "returned {:?} with total {:?}; expected {want:?} with total {total:?}",
                    seen.ids, seen.total
                )
            })
        }
        Op::SubscribeEvents { livemode }
        | Op::SubscribeCloudEvents { livemode }
        | Op::CloudEventsPoll { livemode }
        | Op::StreamEvents { livemode } => {
            let want = visible(key.mode, livemode);
            (seen.ids != want).then(|| format!("delivered {:?}, expected {want:?}", seen.ids))
        }
        Op::WhoAmI => {
            let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
            let want = json!({"name": key.name, "scopes": scopes, "mode": key.mode.as_str()});
            let answered: Json = serde_json::from_str(&seen.message).unwrap_or(Json::Null);
            (answered != want).then(|| format!("answered {}, expected {want}", seen.message))
        }
    };
    problem.map(|p| format!("{case}: {p}"))
}

/// Runs every operation with every credential and returns the disagreements with the model.
async fn run_matrix(app: &TestApp, ops: &[Op], keys: &[Key]) -> (usize, Vec<String>) {
    let mut calls = 0;
    let mut failures = Vec::new();
    for credential in credentials(keys) {
        for &op in ops {
            let seen = run_op(app, op, credential).await;
            calls += 1;
            failures.extend(mismatch(op, credential, &seen, keys));
        }
    }
    (calls, failures)
}

// ---- The matrix ----

#[tokio::test]
async fn every_credential_reads_exactly_what_its_scope_and_mode_allow_on_every_read_rpc_and_route()
{
    // Arrange
    let keys = all_keys();
    let (mut app, _keys_dir) = app_with_keys(&keys).await;
    seed(&mut app.client, key(&keys, &[Scope::Admin], Mode::All)).await;

    // Act
    let (calls, failures) = run_matrix(&app, READ_OPS, &keys).await;
    let metrics = http(&app, "GET", "/metrics", Credential::Missing, None).await;

    // Assert
    assert_eq!(calls, credentials(&keys).len() * READ_OPS.len());
    for k in &keys {
        assert!(!metrics.text.contains(&k.secret), "/metrics shows key {}", k.name);
    }
    assert!(
        failures.is_empty(),
        "{} of {calls} calls disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn every_credential_publishes_only_with_the_publish_scope_and_in_its_own_mode() {
    // Arrange
    let keys = all_keys();
    let (app, _keys_dir) = app_with_keys(&keys).await;

    // Act
    let (calls, failures) = run_matrix(&app, WRITE_OPS, &keys).await;

    // Assert
    assert_eq!(calls, credentials(&keys).len() * WRITE_OPS.len());
    assert!(
        failures.is_empty(),
        "{} of {calls} calls disagree:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn the_model_expects_each_kind_of_refusal_somewhere_in_the_matrix() {
    // A guard on the model itself: were `expected` to say Ok everywhere, the matrix would
    // only prove that the server agrees with a wrong model.
    let keys = all_keys();
    let mut seen = BTreeSet::new();
    for credential in credentials(&keys) {
        for &op in READ_OPS.iter().chain(WRITE_OPS) {
            seen.insert(format!("{:?}", expected(op, credential)));
        }
    }
    assert_eq!(
        seen,
        ["NotFound", "Ok", "PermissionDenied", "Unauthenticated"].map(String::from).into()
    );
    let test_reader = Credential::Bearer(key(&keys, &[Scope::Read], Mode::Test));
    assert_eq!(expected(Op::GetEvent { live: true }, test_reader), Outcome::NotFound);
    assert_eq!(
        expected(Op::ListEvents { livemode: Some(true) }, test_reader),
        Outcome::PermissionDenied
    );
    let test_publisher = Credential::Bearer(key(&keys, &[Scope::Publish], Mode::Test));
    assert_eq!(
        expected(Op::PublishEvent { livemode: true }, test_publisher),
        Outcome::PermissionDenied
    );
}

#[tokio::test]
async fn keys_and_scopes_are_checked_before_the_request_is_validated() {
    // A caller without a valid key, or without the scope, must not learn which parameters are
    // wrong: the refusal comes first, validation only for a caller who may make the call.
    let keys = all_keys();
    let (app, _keys_dir) = app_with_keys(&keys).await;
    let publisher = key(&keys, &[Scope::Publish], Mode::All);
    let reader = key(&keys, &[Scope::Read], Mode::All);
    let mut client = app.client.clone();
    let callers = [
        (Credential::Missing, Code::Unauthenticated, Code::Unauthenticated),
        (Credential::Bearer(publisher), Code::InvalidArgument, Code::PermissionDenied),
        (Credential::Bearer(reader), Code::PermissionDenied, Code::InvalidArgument),
    ];

    for (credential, on_publish, on_read) in callers {
        // Act
        let bad_publish = PublishEventRequest { r#type: String::new(), ..event("x") };
        let publish = client.publish_event(authorized(bad_publish, credential)).await;
        let bad_list = ListEventsRequest { limit: -1, ..Default::default() };
        let list = client.list_events(authorized(bad_list, credential)).await;
        let get = client
            .get_event(authorized(
                GetEventRequest { id: "no spaces".into(), livemode: None },
                credential,
            ))
            .await;
        let post = http(&app, "POST", "/events", credential, Some(json!([1, 2]))).await;
        let view = http(&app, "GET", "/events?limit=many", credential, None).await;

        // Assert
        let case = format!("{credential:?}");
        assert_eq!(publish.expect_err(&case).code(), on_publish, "PublishEvent, {case}");
        assert_eq!(list.expect_err(&case).code(), on_read, "ListEvents, {case}");
        assert_eq!(get.expect_err(&case).code(), on_read, "GetEvent, {case}");
        let http_status = |code: Code| match code {
            Code::Unauthenticated => 401,
            Code::PermissionDenied => 403,
            _ => 422,
        };
        assert_eq!(post.status, http_status(on_publish), "POST /events, {case}: {}", post.text);
        assert_eq!(view.status, http_status(on_read), "GET /events, {case}: {}", view.text);
    }
}

// ---- What needs no key ----

#[tokio::test]
async fn health_reflection_and_healthz_answer_without_a_key() {
    // Arrange
    let keys = all_keys();
    let (app, _keys_dir) = app_with_keys(&keys).await;
    let channel = channel(app.addr).await;

    // Act and assert: health.
    let mut health = HealthClient::new(channel.clone());
    for service in ["", SERVICE] {
        let response = health
            .check(HealthCheckRequest { service: service.into() })
            .await
            .expect("health needs no key")
            .into_inner();
        assert_eq!(response.status(), ServingStatus::Serving, "service {service:?}");
    }

    // Reflection v1 and v1alpha.
    let names = reflection_v1_services(channel.clone()).await.expect("reflection v1 needs no key");
    assert!(names.contains(&SERVICE.to_string()), "{names:?}");
    let names =
        reflection_v1alpha_services(channel).await.expect("reflection v1alpha needs no key");
    assert!(names.contains(&SERVICE.to_string()), "{names:?}");

    // `GET /healthz`.
    let reply = http(&app, "GET", "/healthz", Credential::Missing, None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// The service names reflection v1 lists, or the status it failed with.
async fn reflection_v1_services(channel: tonic::transport::Channel) -> Result<Vec<String>, Status> {
    use v1::server_reflection_client::ServerReflectionClient;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let call = async {
        let mut client = ServerReflectionClient::new(channel);
        let mut responses =
            client.server_reflection_info(tokio_stream::iter(vec![request])).await?.into_inner();
        let response = responses.message().await?.ok_or_else(|| Status::unknown("no answer"))?;
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                Ok(list.service.into_iter().map(|s| s.name).collect())
            }
            other => Err(Status::unknown(format!("unexpected answer {other:?}"))),
        }
    };
    tokio::time::timeout(HANG_GUARD, call).await.expect("hang guard: reflection")
}

/// The service names reflection v1alpha lists, or the status it failed with.
async fn reflection_v1alpha_services(
    channel: tonic::transport::Channel,
) -> Result<Vec<String>, Status> {
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let call = async {
        let mut client = ServerReflectionClient::new(channel);
        let mut responses =
            client.server_reflection_info(tokio_stream::iter(vec![request])).await?.into_inner();
        let response = responses.message().await?.ok_or_else(|| Status::unknown("no answer"))?;
        match response.message_response {
            Some(MessageResponse::ListServicesResponse(list)) => {
                Ok(list.service.into_iter().map(|s| s.name).collect())
            }
            other => Err(Status::unknown(format!("unexpected answer {other:?}"))),
        }
    };
    tokio::time::timeout(HANG_GUARD, call).await.expect("hang guard: reflection")
}

const KOMOJU_SECRET: &str = "komoju_webhook_secret_Sec9";
const KOMOJU_BODY: &str = r#"{"id":"sec0komoju0event","type":"payment.captured","resource":"event","created_at":"2024-05-01T10:00:00Z","data":{"id":"sec0payment","resource":"payment","amount":300}}"#;
const SW_BODY: &str =
    r#"{"type":"invoice.paid","timestamp":"2024-05-01T10:00:00Z","data":{"invoice":"in_1"}}"#;

async fn post_webhook(
    app: &TestApp,
    source: &str,
    headers: &[(String, String)],
    body: &str,
) -> HttpReply {
    let mut request = http_client()
        .post(format!("{}/webhooks/{source}", app.http))
        .header("content-type", "application/json")
        .body(body.to_string());
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let exchange = async {
        let response = request.send().await.expect("send the delivery");
        let status = response.status().as_u16();
        HttpReply { status, text: response.text().await.expect("read the body") }
    };
    tokio::time::timeout(HANG_GUARD, exchange).await.expect("hang guard: webhook")
}

#[tokio::test]
async fn webhook_routes_take_no_api_key_and_follow_only_their_signature_rules() {
    // Arrange: keys are configured; a signed KOMOJU route and an unsigned Standard Webhooks
    // route (accepted unsigned because --webhook-unsigned names it).
    let keys = all_keys();
    let (dir, path) = write_key_file(&keys.iter().collect::<Vec<_>>());
    let app = spawn_app_with(|c| {
        c.api_keys = Some(path);
        c.webhook_secrets =
            vec![eventsd::config::parse_webhook_secret(&format!("komoju={KOMOJU_SECRET}"))
                .expect("SOURCE=SECRET")];
        c.webhook_sources = vec!["orders".into()];
        c.webhook_unsigned = vec!["orders".into()];
    })
    .await;
    let signed = sign(Provider::Komoju, KOMOJU_SECRET, None, 0, KOMOJU_BODY.as_bytes())
        .expect("sign the delivery");
    let forged = sign(Provider::Komoju, "not_the_secret", None, 0, KOMOJU_BODY.as_bytes())
        .expect("sign with another secret");
    let admin = Credential::Bearer(key(&keys, &[Scope::Admin], Mode::All));
    let with_key = |headers: &[(String, String)]| {
        let mut headers = headers.to_vec();
        headers.push(("authorization".into(), admin.header().expect("a header")));
        headers
    };

    // Act
    let signed_without_key = post_webhook(&app, "komoju", &signed, KOMOJU_BODY).await;
    let forged_with_admin_key = post_webhook(&app, "komoju", &with_key(&forged), KOMOJU_BODY).await;
    let unsigned_with_admin_key = post_webhook(&app, "komoju", &with_key(&[]), KOMOJU_BODY).await;
    let sw = vec![("webhook-id".to_string(), "msg_sec0standard".to_string())];
    let unsigned_route_without_key = post_webhook(&app, "orders", &sw, SW_BODY).await;

    // Assert: the signature decides; an API key neither is needed nor stands in for one.
    assert_eq!(signed_without_key.status, 201, "{}", signed_without_key.text);
    for reply in [&forged_with_admin_key, &unsigned_with_admin_key] {
        assert_eq!(reply.status, 401, "{}", reply.text);
        assert!(
            !reply.text.contains("API key"),
            "a signature failure, not a key one: {}",
            reply.text
        );
    }
    assert_eq!(unsigned_route_without_key.status, 201, "{}", unsigned_route_without_key.text);
    drop(dir);
}

// ---- Page tokens across modes ----

#[tokio::test]
async fn a_page_token_issued_to_an_all_key_is_refused_to_a_test_key() {
    // Arrange
    let keys = all_keys();
    let (mut app, _keys_dir) = app_with_keys(&keys).await;
    let admin = key(&keys, &[Scope::Admin], Mode::All);
    let all_reader = key(&keys, &[Scope::Read], Mode::All);
    let test_reader = key(&keys, &[Scope::Read], Mode::Test);
    seed(&mut app.client, admin).await;
    let mut client = app.client.clone();
    let both_modes = first_token(&mut client, all_reader, None).await;
    let live_only = first_token(&mut client, all_reader, Some(true)).await;
    let test_only = first_token(&mut client, all_reader, Some(false)).await;
    let own = first_token(&mut client, test_reader, None).await;
    let next = |token: String| {
        bearer(ListEventsRequest { page_token: token, ..Default::default() }, test_reader)
    };

    // Act
    let both_modes = client.list_events(next(both_modes)).await;
    let live_only = client.list_events(next(live_only)).await;
    let test_only = client.list_events(next(test_only)).await;
    let own = client.list_events(next(own)).await;

    // Assert: a token whose total counts live events is refused; one that only ever covered
    // test events carries nothing the test key may not see.
    for (case, result, names) in
        [("both modes", both_modes, "page_token"), ("live only", live_only, "livemode")]
    {
        let status = result.expect_err(case);
        assert_eq!(status.code(), Code::PermissionDenied, "{case}: {}", status.message());
        assert!(status.message().contains(names), "{case}: {}", status.message());
    }
    for (case, result) in [("test only", test_only), ("the test key's own", own)] {
        let page = result.unwrap_or_else(|s| panic!("{case}: {s:?}")).into_inner();
        assert_eq!(page.total, 3, "{case}");
        assert!(page.data.iter().all(|e| !e.livemode), "{case}: {:?}", page.data);
    }
}

/// The `next_page_token` of a one-event first page listed with this key.
async fn first_token(client: &mut Client, reader: &Key, livemode: Option<bool>) -> String {
    let request = ListEventsRequest { limit: 1, livemode, ..Default::default() };
    let case = format!("{} listing livemode {livemode:?}", reader.name);
    let page = client.list_events(bearer(request, reader)).await.expect(&case).into_inner();
    assert!(!page.next_page_token.is_empty(), "{case}: a first page of one has a next page");
    page.next_page_token
}

// ---- Secrets never leak ----

#[tokio::test]
async fn errors_and_debug_output_never_show_a_key() {
    // Arrange
    let keys = all_keys();
    let (app, keys_dir) = app_with_keys(&keys).await;
    let admin = key(&keys, &[Scope::Admin], Mode::All);
    let near_misses = [
        format!("Bearer {}x", admin.secret),
        format!("Bearer {}", &admin.secret[..admin.secret.len() - 1]),
        format!("bearer  {} ", admin.secret.to_uppercase()),
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x{}:", admin.secret))
        ),
        format!("Token {}", admin.secret),
        format!("Basic {}", admin.secret),
    ];
    let mut client = app.client.clone();

    for header in &near_misses {
        // Act: gRPC and HTTP.
        let mut request = Request::new(ListEventsRequest::default());
        request.metadata_mut().insert("authorization", header.parse().expect("ASCII"));
        let status = client.list_events(request).await.expect_err(header);
        let reply = http_client()
            .get(format!("{}/events", app.http))
            .header("authorization", header)
            .send()
            .await
            .expect("send");
        let http_status = reply.status().as_u16();
        let text = reply.text().await.expect("body");

        // Assert: refused, and neither answer repeats what was sent or any real key.
        assert_eq!(status.code(), Code::Unauthenticated, "{header}: {}", status.message());
        assert_eq!(http_status, 401, "{header}: {text}");
        let presented = header.split_whitespace().nth(1).unwrap_or_default();
        for shown in [status.message(), text.as_str()] {
            assert!(!shown.contains(presented), "{header}: {shown}");
            for k in &keys {
                assert!(!shown.contains(&k.secret), "{header} shows {}: {shown}", k.name);
            }
        }
    }

    // The key file's own errors and the key ring's Debug output.
    let ring = KeyRing::load(&keys_dir.path().join("keys.toml")).expect("load the key file");
    let file = KeyFile::parse(&key_file_text(&keys.iter().collect::<Vec<_>>())).expect("parse");
    let broken = format!(
        "[[key]]\nname = \"broken\"\nkey = \"{}\"\nscopes = [\"admin\"]\nmode = \"everything\"\n",
        admin.secret
    );
    let unterminated = format!("[[key]]\nname = \"cut\"\nkey = \"{}\nscopes = []\n", admin.secret);
    let errors = [
        KeyFile::parse(&broken).expect_err("an unknown mode"),
        KeyFile::parse(&unterminated).expect_err("an unterminated string"),
    ];
    let shown =
        [format!("{ring:?}"), format!("{file:?}"), errors.join("\n"), format!("{:?}", app.config)];
    for text in &shown {
        for k in &keys {
            assert!(!text.contains(&k.secret), "shows {}: {text}", k.name);
        }
    }

    // A server that cannot start because of its key file says why without the key.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("keys.toml");
    std::fs::write(&path, &unterminated).expect("write");
    let mut config = ServeConfig::with_data_dir(dir.path().join("data"));
    config.api_keys = Some(path);
    let error = run_on("127.0.0.1:0", config, std::future::pending())
        .await
        .expect_err("an invalid key file stops the start")
        .to_string();
    assert!(error.contains("keys.toml"), "the error names the file: {error}");
    assert!(!error.contains(&admin.secret), "{error}");
}

// ---- SIGHUP ----

/// The `eventsd` binary as a child process with stderr in a file; killed on drop.
struct Daemon {
    child: Child,
    log: PathBuf,
    grpc: SocketAddr,
    http: SocketAddr,
}

/// How often an external process is polled, and how many times at most (30 s in all).
const POLL_INTERVAL: Duration = Duration::from_millis(20);
const POLLS: usize = 1500;

impl Daemon {
    /// Spawns `eventsd serve` on loopback port 0 and waits until gRPC health says SERVING.
    async fn start(dir: &Path, args: &[&str]) -> Daemon {
        let log = dir.join("eventsd.log");
        let stderr = File::create(&log).expect("create the log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_eventsd"));
        command
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        // The test's own environment must not configure the child.
        for (name, _) in std::env::vars().filter(|(n, _)| n.starts_with("EVENTSD_")) {
            command.env_remove(name);
        }
        let child = command.spawn().expect("spawn eventsd");
        let mut daemon =
            Daemon { child, log, grpc: ([0, 0, 0, 0], 0).into(), http: ([0, 0, 0, 0], 0).into() };
        // Port 0: the addresses are known once the server logs them.
        for _ in 0..POLLS {
            if let Some((grpc, http)) = daemon.logged_addresses() {
                daemon.grpc = grpc;
                daemon.http = http;
                break;
            }
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("eventsd exited with {status}:\n{}", daemon.stderr());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        assert_ne!(
            daemon.grpc.port(),
            0,
            "eventsd never logged its addresses:\n{}",
            daemon.stderr()
        );
        for _ in 0..POLLS {
            if daemon.serving().await {
                return daemon;
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!("eventsd never said SERVING:\n{}", daemon.stderr());
    }

    fn stderr(&self) -> String {
        strip_ansi(&std::fs::read_to_string(&self.log).unwrap_or_default())
    }

    /// The gRPC and HTTP addresses of the `eventsd serving` log line.
    fn logged_addresses(&self) -> Option<(SocketAddr, SocketAddr)> {
        let log = self.stderr();
        let line = log.lines().find(|l| l.contains("eventsd serving"))?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.trim_matches(|c| c == '"' || c == ',').parse().ok())
        };
        Some((field("grpc=")?, field("http=")?))
    }

    async fn serving(&self) -> bool {
        let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
        else {
            return false;
        };
        let endpoint =
            endpoint.connect_timeout(Duration::from_secs(2)).timeout(Duration::from_secs(5));
        let Ok(channel) = endpoint.connect().await else { return false };
        let request = HealthCheckRequest { service: SERVICE.into() };
        matches!(
            HealthClient::new(channel).check(request).await,
            Ok(reply) if reply.get_ref().status() == ServingStatus::Serving
        )
    }

    async fn client(&self) -> Client {
        crate::helpers::connect(self.grpc).await
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed: {status}");
    }

    /// SIGTERM, then a bounded wait for the exit; returns everything it wrote to stderr.
    async fn stop(mut self) -> String {
        self.signal("-TERM");
        for _ in 0..POLLS {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "eventsd exited with {status}:\n{}", self.stderr());
                return self.stderr();
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        panic!("eventsd did not exit after SIGTERM:\n{}", self.stderr());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Removes terminal colour sequences (`ESC [ … m`), in case the logger adds them anyway.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a ListEvents call with this key succeeds (`Ok(true)`), is UNAUTHENTICATED
/// (`Ok(false)`), or fails otherwise.
async fn accepted(client: &mut Client, k: &Key) -> Result<bool, Status> {
    let call = client.list_events(bearer(ListEventsRequest::default(), k));
    match tokio::time::timeout(HANG_GUARD, call).await.expect("hang guard: list") {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::Unauthenticated => Ok(false),
        Err(status) => Err(status),
    }
}

/// The HTTP status of `GET /events` with this key.
async fn view_status(daemon: &Daemon, k: &Key) -> u16 {
    let request = http_client()
        .get(format!("http://{}/events", daemon.http))
        .header("authorization", format!("Bearer {}", k.secret))
        .send();
    let response =
        tokio::time::timeout(HANG_GUARD, request).await.expect("hang guard").expect("send");
    response.status().as_u16()
}

#[tokio::test]
async fn sighup_reloads_the_key_file_and_an_invalid_file_keeps_the_previous_keys() {
    // Arrange: the real binary with key A.
    let a = Key { name: "a".into(), ..Key::new(&[Scope::Admin], Mode::All) };
    let b = Key {
        name: "b".into(),
        secret: "sk_live_rotated_b_Zq7WmX4p".into(),
        ..Key::new(&[Scope::Admin], Mode::All)
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let keys_path = dir.path().join("keys.toml");
    std::fs::write(&keys_path, key_file_text(&[&a])).expect("write key A");
    let daemon =
        Daemon::start(dir.path(), &["--api-keys", keys_path.to_str().expect("UTF-8 path")]).await;
    let mut client = daemon.client().await;
    assert!(accepted(&mut client, &a).await.expect("A"), "A works before the reload");
    assert!(!accepted(&mut client, &b).await.expect("B"), "B is unknown before the reload");

    // Act: replace A by B and hang up.
    std::fs::write(&keys_path, key_file_text(&[&b])).expect("write key B");
    daemon.signal("-HUP");

    // Assert: B works once the server has reread the file (polled: it is another process),
    // and from then on A is unknown, over gRPC and HTTP alike.
    let mut reloaded = false;
    for _ in 0..POLLS {
        if accepted(&mut client, &b).await.expect("B after SIGHUP") {
            reloaded = true;
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    assert!(reloaded, "B never worked after SIGHUP:\n{}", daemon.stderr());
    assert!(!accepted(&mut client, &a).await.expect("A"), "A is UNAUTHENTICATED after the reload");
    assert_eq!(view_status(&daemon, &b).await, 200);
    assert_eq!(view_status(&daemon, &a).await, 401);

    // Act: an invalid file, and hang up again.
    std::fs::write(
        &keys_path,
        format!("[[key]]\nname = \"c\"\nkey = \"{}\"\nmode = \"sometimes\"\n", a.secret),
    )
    .expect("write an invalid file");
    daemon.signal("-HUP");

    // Assert: the failure is logged (waited for, so the check below comes after the reload
    // attempt), and B still works.
    let mut logged = false;
    for _ in 0..POLLS {
        if daemon.stderr().contains("reload failed") {
            logged = true;
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    assert!(logged, "no reload failure was logged:\n{}", daemon.stderr());
    assert!(accepted(&mut client, &b).await.expect("B"), "B still works: the old keys are kept");
    assert!(!accepted(&mut client, &a).await.expect("A"), "A is still unknown");

    let stderr = daemon.stop().await;
    assert!(stderr.contains("API keys reloaded"), "{stderr}");
    assert!(stderr.contains("API key reload failed"), "{stderr}");
    for secret in [&a.secret, &b.secret] {
        assert!(!stderr.contains(secret.as_str()), "the log shows a key:\n{stderr}");
    }
}

#[tokio::test]
async fn a_key_removed_by_a_reload_ends_its_sse_and_grpc_streams_without_waiting_for_a_heartbeat() {
    // Arrange: keys A (to be removed) and B (kept), each with an SSE stream and A with a
    // gRPC stream too. Heartbeats are an hour apart, so only the reload can end a stream.
    let a = Key::new(&[Scope::Subscribe], Mode::All);
    let b = Key::new(&[Scope::Admin], Mode::All);
    let dir = tempfile::tempdir().expect("temp dir");
    let keys_path = dir.path().join("keys.toml");
    std::fs::write(&keys_path, key_file_text(&[&a, &b])).expect("write the keys");
    let path = keys_path.to_str().expect("UTF-8 path");
    let daemon =
        Daemon::start(dir.path(), &["--api-keys", path, "--heartbeat-interval", "1h"]).await;
    let http = format!("http://{}", daemon.http);
    let with = |k: &Key| format!("Bearer {}", k.secret);
    let (a_header, b_header) = (with(&a), with(&b));
    let mut a_sse =
        open_sse(&http, "", &[("authorization", a_header.as_str())]).await.expect("A's SSE");
    let mut b_sse =
        open_sse(&http, "", &[("authorization", b_header.as_str())]).await.expect("B's SSE");
    assert_eq!(a_sse.history(0).await.1, 0);
    assert_eq!(b_sse.history(0).await.1, 0);
    let mut client = daemon.client().await;
    let mut a_grpc = client
        .subscribe_events(bearer(SubscribeEventsRequest::default(), &a))
        .await
        .expect("A's gRPC stream")
        .into_inner();
    assert!(matches!(next_item(&mut a_grpc).await, Item::CaughtUp(_)));

    // Act: remove A and hang up.
    std::fs::write(&keys_path, key_file_text(&[&b])).expect("write B only");
    daemon.signal("-HUP");

    // Assert: A's streams end with UNAUTHENTICATED naming the key; B's goes on.
    let (kind, _, data) = a_sse.message().await;
    assert_eq!(kind.as_deref(), Some("error"), "{data}");
    let body: Json = serde_json::from_str(&data).expect("the error is JSON");
    assert_eq!(body["code"], "unauthenticated", "{body}");
    assert!(body["message"].as_str().unwrap_or("").contains(&a.name), "{body}");
    assert_eq!(a_sse.frame().await, None, "the SSE stream ends after its error");
    let ended = tokio::time::timeout(HANG_GUARD, a_grpc.message()).await.expect("hang guard");
    let status = ended.expect_err("A's gRPC stream ends with a status");
    assert_eq!(status.code(), Code::Unauthenticated, "{}", status.message());
    let published = client
        .publish_event(bearer(event("after.reload"), &b))
        .await
        .expect("publish with B")
        .into_inner();
    assert_eq!(b_sse.event().await.0, published.sequence);
    daemon.stop().await;
}

// ---- The safe default ----

/// Runs eventsd on listeners bound to `ip:0` until `shutdown`.
async fn run_on(
    addr: &str,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), eventsd::Error> {
    let (listeners, _) = bind(addr).await;
    tokio::time::timeout(HANG_GUARD, eventsd::run(config, listeners, shutdown))
        .await
        .expect("hang guard: run")
}

/// Listeners on `addr` (port 0), and the gRPC address to reach them on loopback.
async fn bind(addr: &str) -> (Listeners, SocketAddr) {
    let grpc = TcpListener::bind(addr).await.expect("bind gRPC");
    let http = TcpListener::bind(addr).await.expect("bind HTTP");
    let port = grpc.local_addr().expect("gRPC address").port();
    (Listeners { grpc, http }, ([127, 0, 0, 1], port).into())
}

/// Starts eventsd on all interfaces (port 0), checks health over loopback — never a
/// non-loopback address — then stops it through its shutdown future.
async fn starts_on_all_interfaces(config: ServeConfig) {
    let (listeners, loopback) = bind("0.0.0.0:0").await;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(eventsd::run(config, listeners, async {
        let _ = stopped.await;
    }));
    let mut health = HealthClient::new(channel(loopback).await);
    let check = health.check(HealthCheckRequest { service: SERVICE.into() });
    let response =
        tokio::time::timeout(HANG_GUARD, check).await.expect("hang guard").expect("health");
    assert_eq!(response.into_inner().status(), ServingStatus::Serving);
    stop.send(()).expect("the server is running");
    tokio::time::timeout(HANG_GUARD, server)
        .await
        .expect("hang guard: shutdown")
        .expect("server task")
        .expect("a clean stop");
}

#[tokio::test]
async fn an_open_non_loopback_listener_is_refused_unless_keys_or_the_operator_allow_it() {
    // Arrange
    let dir = tempfile::tempdir().expect("temp dir");
    let config = ServeConfig::with_data_dir(dir.path().join("data"));

    // Act
    let refused = run_on("0.0.0.0:0", config.clone(), std::future::pending()).await;

    // Assert: refused at once, naming the way out, before the store is even created.
    let message = refused.expect_err("no keys, no client CA, not allowed").to_string();
    assert!(message.contains("refusing to listen"), "{message}");
    assert!(message.contains("--api-keys"), "{message}");
    assert!(message.contains("--allow-unauthenticated"), "{message}");
    assert!(!config.data_dir.exists(), "the store was opened before the refusal");

    // The operator's explicit choice starts it.
    starts_on_all_interfaces(ServeConfig { allow_unauthenticated: true, ..config.clone() }).await;

    // So does a key file.
    let keys = [Key::new(&[Scope::Read], Mode::Test)];
    let (_keys_dir, path) = write_key_file(&keys.iter().collect::<Vec<_>>());
    let other = tempfile::tempdir().expect("temp dir");
    starts_on_all_interfaces(ServeConfig {
        api_keys: Some(path),
        ..ServeConfig::with_data_dir(other.path().join("data"))
    })
    .await;
}

#[tokio::test]
async fn a_loopback_listener_without_keys_serves_everyone() {
    // The other half of the safe default: on loopback, no keys means no checks.
    let dir = tempfile::tempdir().expect("temp dir");
    let (listeners, loopback) = bind("127.0.0.1:0").await;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(eventsd::run(
        ServeConfig::with_data_dir(dir.path().join("data")),
        listeners,
        async {
            let _ = stopped.await;
        },
    ));
    let mut client = crate::helpers::connect(loopback).await;
    let published = client
        .publish_event(PublishEventRequest { livemode: true, ..event("open.loopback") })
        .await
        .expect("no key needed on loopback without a key file");
    assert!(published.into_inner().livemode);
    stop.send(()).expect("running");
    tokio::time::timeout(HANG_GUARD, server)
        .await
        .expect("hang guard")
        .expect("task")
        .expect("stop");
}

// ---- Reflection can be turned off ----

#[tokio::test]
async fn no_reflection_turns_both_reflection_services_off_and_keeps_health() {
    // Arrange
    let app = spawn_app_with(|c| c.no_reflection = true).await;
    let channel = channel(app.addr).await;

    // Act
    let v1 = reflection_v1_services(channel.clone()).await;
    let v1alpha = reflection_v1alpha_services(channel.clone()).await;
    let health =
        HealthClient::new(channel).check(HealthCheckRequest { service: SERVICE.into() }).await;

    // Assert
    for (case, result) in [("v1", v1), ("v1alpha", v1alpha)] {
        let status = result.expect_err(case);
        assert_eq!(status.code(), Code::Unimplemented, "{case}: {}", status.message());
    }
    assert_eq!(health.expect("health").into_inner().status(), ServingStatus::Serving);
}
