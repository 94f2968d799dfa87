//! One error classification on every transport: a table of bad inputs, each sent over gRPC
//! and over HTTP wherever the transport offers the call, each answer checked against the
//! classification the README's error table gives (gRPC code, HTTP status, stable name). The
//! name must be the HTTP body's `code` and the gRPC status's `google.rpc.ErrorInfo.reason`
//! (domain `eventsd`), and the message must name the field at fault.

use eventsd::proto::{
    GetEventRequest, ListEventsRequest, PublishEventRequest, SubscribeEventsRequest,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::hardening::{secured, ADMIN, ATTACKER};
use crate::helpers::{spawn_app, TestApp};
use crate::http_events::Reply;
use crate::support::{after_sequence, at, event, publish, HANG_GUARD};

/// An id no event may have (a space and `!` are outside the id alphabet).
const MALFORMED_ID: &str = "bad id!";

/// The id of the event every table run starts with.
const STORED_ID: &str = "evt_errors_1";

/// What the classification says an error answers.
#[derive(Clone, Copy, Debug)]
struct Class {
    grpc: Code,
    http: u16,
    name: &'static str,
}

const INVALID_ARGUMENT: Class =
    Class { grpc: Code::InvalidArgument, http: 422, name: "invalid_argument" };
const NOT_FOUND: Class = Class { grpc: Code::NotFound, http: 404, name: "not_found" };
const ALREADY_EXISTS: Class =
    Class { grpc: Code::AlreadyExists, http: 409, name: "already_exists" };
const OUT_OF_RANGE: Class = Class { grpc: Code::OutOfRange, http: 400, name: "out_of_range" };
const MALFORMED_JSON: Class =
    Class { grpc: Code::InvalidArgument, http: 400, name: "malformed_json" };
const UNSUPPORTED_MEDIA_TYPE: Class =
    Class { grpc: Code::InvalidArgument, http: 415, name: "unsupported_media_type" };
const METHOD_NOT_ALLOWED: Class =
    Class { grpc: Code::Unimplemented, http: 405, name: "method_not_allowed" };
const UNAUTHENTICATED: Class =
    Class { grpc: Code::Unauthenticated, http: 401, name: "unauthenticated" };
const PERMISSION_DENIED: Class =
    Class { grpc: Code::PermissionDenied, http: 403, name: "permission_denied" };

/// One gRPC call of the table.
enum Grpc {
    Publish(PublishEventRequest),
    Get(GetEventRequest),
    List(ListEventsRequest),
    Subscribe(SubscribeEventsRequest),
}

/// One HTTP request of the table: a GET of `path`, or a POST of `body` as `content_type`.
enum Http {
    Get(&'static str),
    Post { path: &'static str, content_type: &'static str, body: &'static str },
}

/// One row: a bad input, the transports that offer the call, and what the answer must be.
struct Case {
    name: &'static str,
    /// The API key sent on both transports, if any.
    key: Option<&'static str>,
    grpc: Option<Grpc>,
    http: Vec<Http>,
    class: Class,
    /// What the message must contain over gRPC (the field at fault, as the proto names it).
    grpc_names: &'static str,
    /// What the message must contain over HTTP (the field, as the HTTP request names it).
    http_names: &'static str,
}

fn publish_json(body: &'static str) -> Http {
    Http::Post { path: "/events", content_type: "application/json", body }
}

/// The cases for a server with API keys: the key check and the key's scope and mode come
/// before anything else, on every transport.
fn keyed_table() -> Vec<Case> {
    let live = || PublishEventRequest { livemode: true, ..event("charge.create") };
    vec![
        Case {
            key: None,
            name: "a call without a key",
            grpc: Some(Grpc::List(ListEventsRequest::default())),
            http: vec![
                publish_json(r#"{"type": "a.b", "data": {}}"#),
                Http::Get("/events"),
                Http::Get("/api/v1/events/evt_1"),
                Http::Get("/cloudevents"),
            ],
            class: UNAUTHENTICATED,
            grpc_names: "",
            http_names: "",
        },
        Case {
            key: Some("sk_test_not_a_key"),
            name: "a call with an unknown key",
            grpc: Some(Grpc::Get(GetEventRequest { id: "evt_1".into(), livemode: None })),
            http: vec![Http::Get("/events/evt_1")],
            class: UNAUTHENTICATED,
            grpc_names: "",
            http_names: "",
        },
        Case {
            key: Some(ATTACKER),
            name: "a test key publishing a live event",
            grpc: Some(Grpc::Publish(live())),
            http: vec![publish_json(r#"{"type": "a.b", "livemode": true, "data": {}}"#)],
            class: PERMISSION_DENIED,
            grpc_names: "livemode",
            http_names: "livemode",
        },
        Case {
            key: Some(ATTACKER),
            name: "a test key listing live events",
            grpc: Some(Grpc::List(ListEventsRequest {
                livemode: Some(true),
                ..Default::default()
            })),
            http: vec![
                Http::Get("/events?livemode=true"),
                Http::Get("/api/v1/events?livemode=true"),
                Http::Get("/cloudevents?livemode=true"),
            ],
            class: PERMISSION_DENIED,
            grpc_names: "livemode",
            http_names: "livemode",
        },
        Case {
            key: Some(ADMIN),
            name: "a bad input from a key that may do everything",
            grpc: Some(Grpc::Get(GetEventRequest { id: MALFORMED_ID.into(), livemode: None })),
            http: vec![Http::Get("/events?limit=-1")],
            class: INVALID_ARGUMENT,
            grpc_names: "id",
            http_names: "limit",
        },
    ]
}

fn table() -> Vec<Case> {
    let valid = || event("charge.create");
    vec![
        Case {
            key: None,
            name: "a publish without a type",
            grpc: Some(Grpc::Publish(PublishEventRequest { r#type: String::new(), ..valid() })),
            http: vec![publish_json(r#"{"data": {"amount": 1}}"#)],
            class: INVALID_ARGUMENT,
            grpc_names: "type",
            http_names: "type",
        },
        Case {
            key: None,
            name: "a publish with a malformed id",
            grpc: Some(Grpc::Publish(PublishEventRequest { id: MALFORMED_ID.into(), ..valid() })),
            http: vec![publish_json(r#"{"id": "bad id!", "type": "charge.create", "data": {}}"#)],
            class: INVALID_ARGUMENT,
            grpc_names: "id",
            http_names: "id",
        },
        Case {
            key: None,
            name: "a publish of a stored id with another type",
            grpc: Some(Grpc::Publish(PublishEventRequest {
                id: STORED_ID.into(),
                ..event("charge.refund")
            })),
            http: vec![publish_json(
                r#"{"id": "evt_errors_1", "type": "charge.refund", "data": {"object": "charge", "amount": 100000}}"#,
            )],
            class: ALREADY_EXISTS,
            grpc_names: "type",
            http_names: "type",
        },
        Case {
            key: None,
            name: "a malformed id in a request field",
            grpc: Some(Grpc::Get(GetEventRequest { id: MALFORMED_ID.into(), livemode: None })),
            http: vec![],
            class: INVALID_ARGUMENT,
            grpc_names: "id",
            http_names: "id",
        },
        Case {
            key: None,
            name: "a malformed id in a URL path",
            grpc: None,
            http: vec![
                Http::Get("/events/bad%20id!"),
                Http::Get("/api/v1/events/bad%20id!"),
                Http::Get("/cloudevents/bad%20id!"),
            ],
            class: NOT_FOUND,
            grpc_names: "",
            http_names: "bad id!",
        },
        Case {
            key: None,
            name: "an id never stored",
            grpc: Some(Grpc::Get(GetEventRequest { id: "evt_missing".into(), livemode: None })),
            http: vec![
                Http::Get("/events/evt_missing"),
                Http::Get("/api/v1/events/evt_missing"),
                Http::Get("/cloudevents/evt_missing"),
            ],
            class: NOT_FOUND,
            grpc_names: "evt_missing",
            http_names: "evt_missing",
        },
        Case {
            key: None,
            name: "a negative limit",
            grpc: Some(Grpc::List(ListEventsRequest { limit: -1, ..Default::default() })),
            http: vec![Http::Get("/events?limit=-1"), Http::Get("/cloudevents?limit=-1")],
            class: INVALID_ARGUMENT,
            grpc_names: "limit",
            http_names: "limit",
        },
        Case {
            key: None,
            name: "a range that ends before it starts",
            grpc: Some(Grpc::List(ListEventsRequest {
                from: Some(at(2_000_000_000)),
                to: Some(at(1_000_000_000)),
                ..Default::default()
            })),
            http: vec![Http::Get("/events?from=2033-05-18T03:33:20Z&to=2001-09-09T01:46:40Z")],
            class: INVALID_ARGUMENT,
            grpc_names: "from",
            http_names: "from",
        },
        Case {
            key: None,
            name: "a malformed type filter",
            grpc: Some(Grpc::List(ListEventsRequest {
                types: vec!["bad type!".into()],
                ..Default::default()
            })),
            http: vec![
                Http::Get("/events?type=bad%20type!"),
                Http::Get("/api/v1/events?type=bad%20type!"),
                Http::Get("/cloudevents?type=bad%20type!"),
            ],
            class: INVALID_ARGUMENT,
            grpc_names: "types[0]",
            http_names: "type",
        },
        Case {
            key: None,
            name: "a forged page token",
            grpc: Some(Grpc::List(ListEventsRequest {
                page_token: "forged".into(),
                ..Default::default()
            })),
            http: vec![],
            class: INVALID_ARGUMENT,
            grpc_names: "page_token",
            http_names: "page_token",
        },
        Case {
            key: None,
            name: "an unknown subscription format",
            grpc: Some(Grpc::Subscribe(SubscribeEventsRequest { format: 9, ..after_sequence(0) })),
            http: vec![],
            class: INVALID_ARGUMENT,
            grpc_names: "format",
            http_names: "format",
        },
        Case {
            key: None,
            name: "a position beyond the newest event",
            grpc: Some(Grpc::Subscribe(after_sequence(1_000))),
            http: vec![],
            class: OUT_OF_RANGE,
            grpc_names: "after_sequence",
            http_names: "after_sequence",
        },
        Case {
            key: None,
            name: "a body that is not JSON",
            grpc: None,
            http: vec![publish_json("{not json")],
            class: MALFORMED_JSON,
            grpc_names: "",
            http_names: "JSON",
        },
        Case {
            key: None,
            name: "a body that is not declared as JSON",
            grpc: None,
            http: vec![Http::Post { path: "/events", content_type: "text/plain", body: "{}" }],
            class: UNSUPPORTED_MEDIA_TYPE,
            grpc_names: "",
            http_names: "content type",
        },
        Case {
            key: None,
            name: "a webhook route that is not configured",
            grpc: None,
            http: vec![Http::Post {
                path: "/webhooks/nope",
                content_type: "application/json",
                body: "{}",
            }],
            class: NOT_FOUND,
            grpc_names: "",
            http_names: "nope",
        },
        Case {
            key: None,
            name: "a path with no route",
            grpc: None,
            http: vec![Http::Get("/no/such/route")],
            class: NOT_FOUND,
            grpc_names: "",
            http_names: "/no/such/route",
        },
        Case {
            key: None,
            name: "a route asked with a method it does not take",
            grpc: None,
            http: vec![Http::Post {
                path: "/cloudevents",
                content_type: "application/json",
                body: "{}",
            }],
            class: METHOD_NOT_ALLOWED,
            grpc_names: "",
            http_names: "POST",
        },
    ]
}

/// A gRPC request with the case's key, if any, in `authorization`.
fn with_key<T>(message: T, key: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(key) = key {
        let value = format!("Bearer {key}").parse().expect("an ASCII header value");
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Sends one gRPC call of the table; the error it must end with.
async fn send_grpc(app: &TestApp, call: Grpc, key: Option<&str>) -> Result<(), Status> {
    let mut client = app.client.clone();
    match call {
        Grpc::Publish(request) => client.publish_event(with_key(request, key)).await.map(drop),
        Grpc::Get(request) => client.get_event(with_key(request, key)).await.map(drop),
        Grpc::List(request) => client.list_events(with_key(request, key)).await.map(drop),
        Grpc::Subscribe(request) => client.subscribe_events(with_key(request, key)).await.map(drop),
    }
}

/// Sends one HTTP request of the table with the case's key, if any, as a bearer token.
async fn send_http(app: &TestApp, request: &Http, key: Option<&str>) -> (String, Reply) {
    let client = reqwest::Client::builder().no_proxy().build().expect("HTTP client");
    let (described, builder) = match request {
        Http::Get(path) => (format!("GET {path}"), client.get(format!("{}{path}", app.http))),
        Http::Post { path, content_type, body } => (
            format!("POST {path} ({content_type})"),
            client
                .post(format!("{}{path}", app.http))
                .header("content-type", *content_type)
                .body(*body),
        ),
    };
    let builder = match key {
        Some(key) => builder.bearer_auth(key),
        None => builder,
    };
    let exchange = async {
        let response = builder.send().await.expect("send the request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("read the response body");
        let json = serde_json::from_str(&text).unwrap_or(serde_json::Value::Null);
        Reply { status, text, json }
    };
    let reply = tokio::time::timeout(HANG_GUARD, exchange).await.expect("hang guard: HTTP request");
    (described, reply)
}

/// Sends every case over every transport it names; the number of answers and what was wrong.
async fn run_table(app: &TestApp, cases: Vec<Case>) -> (usize, Vec<String>) {
    let mut mismatches = Vec::new();
    let mut answers = 0;
    for mut case in cases {
        if let Some(call) = case.grpc.take() {
            answers += 1;
            mismatches.extend(grpc_mismatch(&case, send_grpc(app, call, case.key).await));
        }
        for request in &case.http {
            answers += 1;
            let (described, reply) = send_http(app, request, case.key).await;
            mismatches.extend(http_mismatch(&case, &described, &reply));
        }
    }
    (answers, mismatches)
}

/// What is wrong with a gRPC answer, if anything.
fn grpc_mismatch(case: &Case, result: Result<(), Status>) -> Option<String> {
    let status = match result {
        Ok(()) => return Some(format!("{}: gRPC answered OK", case.name)),
        Err(status) => status,
    };
    let info = status.get_details_error_info();
    let reason = info.as_ref().map(|i| (i.reason.as_str(), i.domain.as_str()));
    let wrong = status.code() != case.class.grpc
        || reason != Some((case.class.name, "eventsd"))
        || !status.message().contains(case.grpc_names);
    wrong.then(|| {
        format!(
            "{}: gRPC {:?} {:?} {:?}; expected {:?} with ErrorInfo {:?} naming {:?}",
            case.name,
            status.code(),
            reason,
            status.message(),
            case.class.grpc,
            case.class.name,
            case.grpc_names
        )
    })
}

/// What is wrong with an HTTP answer, if anything.
fn http_mismatch(case: &Case, request: &str, reply: &Reply) -> Option<String> {
    let message = reply.json["message"].as_str().unwrap_or_default();
    let wrong = reply.status != case.class.http
        || reply.json["object"] != "error"
        || reply.json["code"] != case.class.name
        || !message.contains(case.http_names);
    wrong.then(|| {
        format!(
            "{}: {request}: HTTP {} {}; expected {} with code {:?} naming {:?}",
            case.name, reply.status, reply.text, case.class.http, case.class.name, case.http_names
        )
    })
}

#[tokio::test]
async fn every_bad_input_gets_the_one_classification_on_every_transport_that_offers_the_call() {
    // Arrange: one stored event, so a conflicting publish has something to conflict with.
    let mut app = spawn_app().await;
    publish(
        &mut app.client,
        PublishEventRequest { id: STORED_ID.into(), ..event("charge.create") },
    )
    .await;

    // Act
    let (answers, mismatches) = run_table(&app, table()).await;

    // Assert: every answer matched, and the table did send over both transports.
    assert!(
        mismatches.is_empty(),
        "{} of {answers} answers:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(answers >= 30, "the table sent only {answers} requests");
}

#[tokio::test]
async fn with_api_keys_refusals_get_the_one_classification_on_every_transport() {
    // Arrange
    let (app, _keys) = secured(|_| {}).await;

    // Act
    let (answers, mismatches) = run_table(&app, keyed_table()).await;

    // Assert
    let report = mismatches.join("\n");
    assert!(mismatches.is_empty(), "{} of {answers} answers:\n{report}", mismatches.len());
    assert!(answers >= 15, "the table sent only {answers} requests");
}
