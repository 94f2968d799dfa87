//! `eventsd get` and `eventsd list`: GetEvent and ListEvents from the terminal.
//!
//! `get` prints the event as one JSON object (the `event_to_json` shape). `list` sends every
//! ListEvents option it was given and prints the page as one JSON object:
//! `{"data":[…],"total","from","to","offset","limit","order","next_page_token"}` (times in
//! RFC 3339, `order` as the proto enum name, `next_page_token` empty on the last page). With
//! `--all` it follows `next_page_token` to the end instead and prints every event as one JSON
//! line, so the whole listing is the consistent view of its first page: no event skipped or
//! repeated, none committed later included.

use serde_json::{json, Value as Json};

use super::{api_key, closed_output_is_ok, connect, print_json, ClientError};
use crate::config::{GetArgs, ListArgs, ListOrder};
use crate::event::json::event_to_json;
use crate::event::time;
use crate::proto::{GetEventRequest, ListEventsRequest, ListEventsResponse, Order};

/// Runs `eventsd get`.
pub async fn get(args: GetArgs) -> Result<(), ClientError> {
    let mut client = connect(&args.connect.addr, api_key()?.as_deref()).await?;
    let event = client
        .get_event(GetEventRequest { id: args.id, livemode: args.livemode })
        .await?
        .into_inner();
    closed_output_is_ok(print_json(&event_to_json(&event)))
}

/// Runs `eventsd list`.
pub async fn list(args: ListArgs) -> Result<(), ClientError> {
    let mut client = connect(&args.connect.addr, api_key()?.as_deref()).await?;
    let limit = args.limit.unwrap_or(0);
    let mut request = ListEventsRequest {
        from: args.from,
        to: args.to,
        offset: args.offset.unwrap_or(0),
        limit,
        order: match args.order {
            None => Order::Unspecified,
            Some(ListOrder::Chronological) => Order::Chronological,
            Some(ListOrder::ReverseChronological) => Order::ReverseChronological,
        } as i32,
        types: args.types,
        livemode: args.livemode,
        page_token: args.page_token.unwrap_or_default(),
        source: args.source.unwrap_or_default(),
    };
    if !args.all {
        let page = client.list_events(request).await?.into_inner();
        return closed_output_is_ok(print_json(&page_json(&page)));
    }
    loop {
        let page = client.list_events(request).await?.into_inner();
        for event in &page.data {
            if let Err(e) = print_json(&event_to_json(event)) {
                return closed_output_is_ok(Err(e));
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(());
        }
        // A token carries the whole query; only the page size may be sent beside it.
        request =
            ListEventsRequest { page_token: page.next_page_token, limit, ..Default::default() };
    }
}

/// A ListEvents page as one JSON object.
fn page_json(page: &ListEventsResponse) -> Json {
    let ts = |t: &Option<prost_types::Timestamp>| {
        t.as_ref().map_or(Json::Null, |t| Json::String(time::to_rfc3339(t)))
    };
    json!({
        "data": page.data.iter().map(event_to_json).collect::<Vec<_>>(),
        "total": page.total,
        "from": ts(&page.from),
        "to": ts(&page.to),
        "offset": page.offset,
        "limit": page.limit,
        "order": page.order().as_str_name(),
        "next_page_token": page.next_page_token,
    })
}
