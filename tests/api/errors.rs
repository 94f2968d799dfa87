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

use crate::helpers::{spawn_app, TestApp};
use crate::http_events::{get, post, Reply};
use crate::support::{after_sequence, at, event, publish};

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

fn table() -> Vec<Case> {
    let valid = || event("charge.create");
    vec![
        Case {
            name: "a publish without a type",
            grpc: Some(Grpc::Publish(PublishEventRequest { r#type: String::new(), ..valid() })),
            http: vec![publish_json(r#"{"data": {"amount": 1}}"#)],
            class: INVALID_ARGUMENT,
            grpc_names: "type",
            http_names: "type",
        },
        Case {
            name: "a publish with a malformed id",
            grpc: Some(Grpc::Publish(PublishEventRequest { id: MALFORMED_ID.into(), ..valid() })),
            http: vec![publish_json(r#"{"id": "bad id!", "type": "charge.create", "data": {}}"#)],
            class: INVALID_ARGUMENT,
            grpc_names: "id",
            http_names: "id",
        },
        Case {
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
            name: "a malformed id in a request field",
            grpc: Some(Grpc::Get(GetEventRequest { id: MALFORMED_ID.into(), livemode: None })),
            http: vec![],
            class: INVALID_ARGUMENT,
            grpc_names: "id",
            http_names: "id",
        },
        Case {
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
            name: "a negative limit",
            grpc: Some(Grpc::List(ListEventsRequest { limit: -1, ..Default::default() })),
            http: vec![Http::Get("/events?limit=-1"), Http::Get("/cloudevents?limit=-1")],
            class: INVALID_ARGUMENT,
            grpc_names: "limit",
            http_names: "limit",
        },
        Case {
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
            name: "an unknown subscription format",
            grpc: Some(Grpc::Subscribe(SubscribeEventsRequest { format: 9, ..after_sequence(0) })),
            http: vec![],
            class: INVALID_ARGUMENT,
            grpc_names: "format",
            http_names: "format",
        },
        Case {
            name: "a position beyond the newest event",
            grpc: Some(Grpc::Subscribe(after_sequence(1_000))),
            http: vec![],
            class: OUT_OF_RANGE,
            grpc_names: "after_sequence",
            http_names: "after_sequence",
        },
        Case {
            name: "a body that is not JSON",
            grpc: None,
            http: vec![publish_json("{not json")],
            class: MALFORMED_JSON,
            grpc_names: "",
            http_names: "JSON",
        },
        Case {
            name: "a body that is not declared as JSON",
            grpc: None,
            http: vec![Http::Post { path: "/events", content_type: "text/plain", body: "{}" }],
            class: UNSUPPORTED_MEDIA_TYPE,
            grpc_names: "",
            http_names: "content type",
        },
        Case {
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
            name: "a path with no route",
            grpc: None,
            http: vec![Http::Get("/no/such/route")],
            class: NOT_FOUND,
            grpc_names: "",
            http_names: "/no/such/route",
        },
        Case {
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

/// Sends one gRPC call of the table; the error it must end with.
async fn send_grpc(app: &TestApp, call: Grpc) -> Result<(), Status> {
    let mut client = app.client.clone();
    match call {
        Grpc::Publish(request) => client.publish_event(request).await.map(drop),
        Grpc::Get(request) => client.get_event(request).await.map(drop),
        Grpc::List(request) => client.list_events(request).await.map(drop),
        Grpc::Subscribe(request) => client.subscribe_events(request).await.map(drop),
    }
}

/// Sends one HTTP request of the table.
async fn send_http(app: &TestApp, request: &Http) -> (String, Reply) {
    match request {
        Http::Get(path) => (format!("GET {path}"), get(&format!("{}{path}", app.http)).await),
        Http::Post { path, content_type, body } => {
            let url = format!("{}{path}", app.http);
            let reply = post(&url, Some(content_type), &[], body.as_bytes().to_vec()).await;
            (format!("POST {path} ({content_type})"), reply)
        }
    }
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
    let cases = table();

    // Act
    let mut mismatches = Vec::new();
    let mut answers = 0;
    for mut case in cases {
        if let Some(call) = case.grpc.take() {
            answers += 1;
            mismatches.extend(grpc_mismatch(&case, send_grpc(&app, call).await));
        }
        for request in &case.http {
            answers += 1;
            let (described, reply) = send_http(&app, request).await;
            mismatches.extend(http_mismatch(&case, &described, &reply));
        }
    }

    // Assert: every answer matched, and the table did send over both transports.
    assert!(
        mismatches.is_empty(),
        "{} of {answers} answers:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    assert!(answers >= 30, "the table sent only {answers} requests");
}
