//! The read side of the HTTP listener: stored events read back in the shapes of the Omise
//! and KOMOJU Events APIs (so a client written for either provider can read eventsd as is),
//! the live stream as Server-Sent Events, and who the caller is.
//!
//! - `GET /events`, `GET /events/{id}`: the Omise list and event shapes ([`omise`]).
//! - `GET /api/v1/events`, `GET /api/v1/events/{id}`: the KOMOJU shapes ([`komoju`]).
//! - `GET /cloudevents`, `GET /cloudevents/{id}`: CloudEvents 1.0 JSON ([`cloudevents`]).
//! - `GET /stream/events`: SubscribeEvents as Server-Sent Events ([`stream`]).
//! - `GET /whoami`: the caller's key name, scopes and mode ([`whoami`]).
//!
//! The views are adapters over the service layer ([`crate::service`]): get and list run there,
//! as they do for gRPC; query parameters, path ids and the output shapes are the views' own.
//!
//! What the views promise:
//! - A listing means exactly what ListEvents means: the query parameters become a
//!   `ListEventsRequest` validated by [`crate::service::list::PageRequest`], so defaults, the limit cap, the type,
//!   livemode and source filters, the exact `total` and the (created, sequence) order are
//!   ListEvents' own.
//!   Paging is by offset (or KOMOJU page) rather than page token, so unlike a token listing, a
//!   later page may see events committed after the first one.
//! - Like every read, a view shows only durable events.
//! - The views read with the same API keys as gRPC ([`KeyRing`]): `authorization: Bearer <key>`
//!   or HTTP Basic with the key as the user name (as `curl -u sk_…:` sends it to Omise and
//!   KOMOJU). A key needs the `read` scope, and a test or live key sees only its own mode: an
//!   event of the other mode is 404 and lists and totals are narrowed, exactly as over gRPC.
//!   Without a key file every caller reads everything (eventsd then serves loopback only).
//! - A bad parameter is 422 with a message naming it; an unknown id is 404. Both use the JSON
//!   error body of [`Error`]'s `IntoResponse` (`{"object":"error","code","message"}`).
//! - The Omise and KOMOJU views print times (`created`, `from`, `to`, `created_at`) as the
//!   providers do, `YYYY-MM-DDTHH:MM:SSZ`: UTC, whole seconds, any fraction dropped (gRPC,
//!   `POST /events` and CloudEvents keep the nanoseconds). Whole numbers in
//!   `data` print as integers, so a provider payload stored through eventsd reads back equal.
//! - Unknown query parameters are ignored, as the providers' APIs ignore them.

pub mod cloudevents;
pub mod endpoints;
pub mod komoju;
pub mod omise;
pub mod stream;
pub mod whoami;

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::Query;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use prost_types::Timestamp;

use crate::auth::{KeyRing, Principal, Scope};
use crate::error::Error;
use crate::event::time;
use crate::fanout::Fanout;
use crate::proto::ListEventsRequest;
use crate::service::list::{Listing, PageTokens};
use crate::service::{self, IdIn};
use crate::store::{EventStore, StoredEvent};

/// What the view handlers share: cheap-to-clone handles.
#[derive(Clone)]
pub struct ViewsState {
    /// The event store.
    pub store: Arc<dyn EventStore>,
    /// The API keys (the same ring as gRPC, so a SIGHUP reload applies here too).
    pub keys: KeyRing,
    /// Signs and checks page tokens (the same secret as gRPC's).
    pub tokens: PageTokens,
    /// Subscriptions, shared with gRPC SubscribeEvents (one `--max-subscribers` cap).
    pub fanout: Fanout,
    /// Recent events' SSE messages, written once for every stream.
    pub messages: stream::MessageCache,
}

/// The read-only view routes, to merge into the HTTP router.
pub fn router(state: ViewsState) -> Router {
    Router::new()
        .route("/events", get(omise::list))
        .route("/events/{id}", get(omise::get))
        .route("/api/v1/events", get(komoju::list))
        .route("/api/v1/events/{id}", get(komoju::get))
        .route("/cloudevents", get(cloudevents::poll))
        .route("/cloudevents/{id}", get(cloudevents::get))
        .route("/stream/events", get(stream::events))
        .route("/whoami", get(whoami::whoami))
        .with_state(state)
}

/// The caller, authenticated from the `authorization` header, with the `read` scope. Handlers
/// call it first, so a caller without a valid key learns nothing, not even which parameters
/// are wrong.
fn reader(state: &ViewsState, headers: &HeaderMap) -> Result<Principal, Error> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let caller = state.keys.authenticate(authorization)?;
    caller.require(Scope::Read)?;
    Ok(caller)
}

/// The durable event with the id of the URL path in the mode `?livemode=` asks for, if the
/// caller may see it ([`IdIn::Path`]: for a path segment 404 is the answer,
/// whatever is wrong with it, as for an event of a mode the caller's key cannot read).
async fn find(
    state: &ViewsState,
    caller: &Principal,
    event_id: String,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<StoredEvent, Error> {
    let livemode = Params::new(query)?.bool("livemode")?;
    service::get_event(&*state.store, caller, &event_id, livemode, IdIn::Path).await
}

/// Runs one ListEvents page as the caller ([`service::list_events`]), with the type filter
/// named as the HTTP parameter is.
async fn list(
    state: &ViewsState,
    caller: &Principal,
    request: ListEventsRequest,
) -> Result<Listing, Error> {
    service::list_events(&*state.store, &state.tokens, caller, request)
        .await
        .map_err(name_type_param)
}

/// ListEvents names its type filter `types[i]`; over HTTP the parameter is `type`.
fn name_type_param(err: Error) -> Error {
    match err {
        Error::InvalidArgument { field, reason } if field.starts_with("types") => {
            Error::invalid("type", reason)
        }
        other => other,
    }
}

/// A JSON body made by one of the views' writers.
fn json_response(body: Vec<u8>) -> Response {
    let content_type = HeaderValue::from_static("application/json");
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// An event's `data` as JSON text, shared with every other reader of the event (stored events
/// always have data; `{}` stands in otherwise).
fn data_json(event: &StoredEvent) -> Result<Bytes, Error> {
    Ok(event.data_json()?.cloned().unwrap_or_else(|| Bytes::from_static(b"{}")))
}

/// A time as the providers print it: `YYYY-MM-DDTHH:MM:SSZ`, whole seconds in UTC.
fn time_text(ts: &Timestamp) -> String {
    time::to_rfc3339_seconds(ts)
}

/// The query string as name/value pairs, in order, repeats kept.
struct Params(Vec<(String, String)>);

impl Params {
    fn new(query: Result<Query<Vec<(String, String)>>, QueryRejection>) -> Result<Self, Error> {
        query
            .map(|Query(pairs)| Params(pairs))
            .map_err(|rejection| Error::invalid("query", rejection.body_text()))
    }

    /// The value of a parameter that may appear at most once.
    fn one(&self, name: &str) -> Result<Option<&str>, Error> {
        let mut values = self.0.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(Error::invalid(name, "is given more than once"));
        }
        Ok(first)
    }

    /// An integer parameter.
    fn int(&self, name: &str) -> Result<Option<i32>, Error> {
        let Some(text) = self.one(name)? else {
            return Ok(None);
        };
        text.trim()
            .parse()
            .map(Some)
            .map_err(|_| Error::invalid(name, format!("must be an integer (got {text:?})")))
    }

    /// `true` or `false`.
    fn bool(&self, name: &str) -> Result<Option<bool>, Error> {
        match self.one(name)? {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => {
                Err(Error::invalid(name, format!("must be true or false (got {other:?})")))
            }
        }
    }

    /// An ISO 8601 / RFC 3339 time such as `2017-02-03T13:52:54Z` or
    /// `2017-02-03T20:52:54+07:00`.
    fn time(&self, name: &str) -> Result<Option<Timestamp>, Error> {
        let Some(text) = self.one(name)? else {
            return Ok(None);
        };
        // An unescaped `+` in a query string arrives as a space; read it back as the offset
        // sign the caller meant.
        let parsed = chrono::DateTime::parse_from_rfc3339(text)
            .or_else(|e| {
                chrono::DateTime::parse_from_rfc3339(&text.replace(' ', "+")).map_err(|_| e)
            })
            .map_err(|e| {
                Error::invalid(
                    name,
                    format!(
                        "must be an ISO 8601 time such as 2017-02-03T13:52:54Z (got {text:?}: {e})"
                    ),
                )
            })?;
        Ok(Some(time::from_chrono(parsed.to_utc())))
    }

    /// Every value of a repeatable, comma-separated parameter, empty items dropped.
    fn list(&self, name: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The views' shapes as they were built before, through `prost_types` and `json!`: what
    /// the writers must match byte for byte.
    mod before {
        use crate::event::json::{struct_to_object, value_to_json};
        use crate::event::time;
        use crate::proto::Event;
        use serde_json::{json, Map, Value as Json};

        fn ts(t: &Option<prost_types::Timestamp>) -> Json {
            t.as_ref().map_or(Json::Null, |t| Json::String(time::to_rfc3339_seconds(t)))
        }
        fn data(e: &Event) -> Json {
            Json::Object(e.data.as_ref().map(struct_to_object).unwrap_or_default())
        }
        fn label(s: &str) -> Json {
            if s.is_empty() {
                Json::Null
            } else {
                Json::String(s.into())
            }
        }
        fn extras(o: &mut Map<String, Json>, e: &Event) {
            o.insert("received".into(), ts(&e.received));
            o.insert("sequence".into(), Json::from(e.sequence));
            o.insert("source".into(), label(&e.source));
            o.insert("api_version".into(), label(&e.api_version));
        }
        pub fn omise(e: &Event) -> Json {
            let mut o = json!({"object": "event", "id": e.id, "livemode": e.livemode,
                "location": format!("/events/{}", e.id), "key": e.r#type,
                "created": ts(&e.created), "data": data(e)});
            extras(o.as_object_mut().unwrap(), e);
            o
        }
        pub fn komoju(e: &Event) -> Json {
            let mut o = json!({"id": e.id, "type": e.r#type, "resource": "event",
                "data": data(e), "created_at": ts(&e.created)});
            o["livemode"] = Json::Bool(e.livemode);
            extras(o.as_object_mut().unwrap(), e);
            o
        }
        pub fn cloudevent(e: &Event) -> Json {
            let source = if e.source.is_empty() { "eventsd".to_string() } else { e.source.clone() };
            let mut ce = json!({"specversion": "1.0", "id": e.id, "source": source,
                "type": e.r#type, "datacontenttype": "application/json", "data": data(e),
                "livemode": e.livemode, "location": e.location,
                "sequence": e.sequence.to_string()});
            if let Some(created) = &e.created {
                ce["time"] = Json::String(time::to_rfc3339(created));
            }
            let subject = e.data.as_ref().and_then(|d| d.fields.get("id")).map(value_to_json);
            if let Some(Json::String(subject)) = subject {
                ce["subject"] = Json::String(subject);
            }
            if !e.api_version.is_empty() {
                ce["apiversion"] = Json::String(e.api_version.clone());
            }
            ce
        }
    }

    mod writers_match_the_prost_types_path {
        use crate::event::wire_json::strategies::data;
        use crate::proto::Event;
        use crate::store::StoredEvent;
        use proptest::prelude::*;
        use prost_types::Timestamp;

        fn event() -> impl Strategy<Value = Event> {
            let text = "[a-zA-Z0-9_.:\\-]{0,12}|.{0,3}";
            (
                (text, text, text, text),
                (0i64..253_402_300_799, 0i32..1_000_000_000, 0i64..253_402_300_799),
                (any::<bool>(), any::<u64>(), data()),
            )
                .prop_map(
                    |((id, t, api_version, source), (s, n, r), (livemode, sequence, data))| Event {
                        location: format!("/events/{id}"),
                        id,
                        r#type: t,
                        created: Some(Timestamp { seconds: s, nanos: n }),
                        received: Some(Timestamp { seconds: r, nanos: 0 }),
                        livemode,
                        data: Some(data),
                        api_version,
                        sequence,
                        source,
                    },
                )
        }

        fn written(
            f: fn(&StoredEvent, &mut Vec<u8>) -> Result<(), crate::error::Error>,
            e: &StoredEvent,
        ) -> String {
            let mut out = Vec::new();
            f(e, &mut out).unwrap();
            String::from_utf8(out).unwrap()
        }

        proptest! {
            #[test]
            fn for_random_events(event in event()) {
                let stored = StoredEvent::from_event(&event);
                prop_assert_eq!(written(crate::views::omise::write_event, &stored),
                    super::before::omise(&event).to_string());
                prop_assert_eq!(written(crate::views::komoju::write_event, &stored),
                    super::before::komoju(&event).to_string());
                prop_assert_eq!(written(crate::event::cloudevent::write_json, &stored),
                    super::before::cloudevent(&event).to_string());
                prop_assert_eq!(written(crate::event::json::write_stored_event, &stored),
                    crate::event::json::event_to_json(&event).to_string());
            }
        }
    }

    fn params(pairs: &[(&str, &str)]) -> Params {
        Params(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn times_accept_z_offsets_and_a_plus_decoded_as_space() {
        let p = params(&[("a", "2017-02-03T13:52:54Z"), ("b", "2017-02-03T20:52:54 07:00")]);
        assert_eq!(p.time("a").unwrap(), p.time("b").unwrap());
        let err = params(&[("from", "yesterday")]).time("from").unwrap_err();
        assert!(err.to_string().starts_with("from: "), "{err}");
    }

    #[test]
    fn scalar_parameters_may_appear_once_and_lists_split_on_commas() {
        let p = params(&[("limit", "1"), ("limit", "2"), ("type", "a.b,c.*"), ("type", "d")]);
        assert!(p.int("limit").unwrap_err().to_string().starts_with("limit: "));
        assert_eq!(p.list("type"), ["a.b", "c.*", "d"]);
        assert_eq!(
            params(&[("livemode", "yes")]).bool("livemode").unwrap_err().to_string(),
            "livemode: must be true or false (got \"yes\")"
        );
    }

    #[test]
    fn times_print_whole_seconds_with_z_as_the_providers_do() {
        let whole = Timestamp { seconds: 1_486_129_974, nanos: 0 };
        assert_eq!(time_text(&whole), "2017-02-03T13:52:54Z");
        let fractional = Timestamp { seconds: 1_486_129_974, nanos: 999_999_999 };
        assert_eq!(time_text(&fractional), "2017-02-03T13:52:54Z");
        let before_1970 = Timestamp { seconds: -1, nanos: 500_000_000 };
        assert_eq!(time_text(&before_1970), "1969-12-31T23:59:59Z");
    }
}
