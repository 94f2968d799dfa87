//! ListEvents at the gRPC boundary: defaults, validation, and the opaque page token.
//!
//! The token pins a listing to the view of its first page: it carries that page's durable
//! sequence (later commits stay out), the effective from/to/order/filters (a later request
//! that changes them is INVALID_ARGUMENT), the position after the last event returned, the
//! first page's total, and how many events came before the next page. It is protobuf, then a
//! SHA-256-based check value, in unpadded base64url; anything that does not decode and check
//! is INVALID_ARGUMENT naming `page_token`.

use base64::Engine;
use prost::Message;
use prost_types::Timestamp;
use sha2::{Digest, Sha256};

use crate::auth::Principal;
use crate::error::Error;
use crate::event::{time, Filter};
use crate::proto::{wire, ListEventsRequest, Order, WireEvent};
use crate::store::{Direction, ListPage, ListQuery, Position, Resume, StoredEvent};

/// Page size when the request says 0.
pub const DEFAULT_LIMIT: i32 = 20;
/// Largest page; larger requests are reduced to it.
pub const MAX_LIMIT: i32 = 100;
const TOKEN_VERSION: u32 = 1;
const CHECK_LEN: usize = 8;

/// The page token's contents (never exposed as a schema: clients treat it as opaque).
#[derive(Clone, PartialEq, Message)]
struct PageToken {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(uint64, tag = "2")]
    snapshot: u64,
    #[prost(message, optional, tag = "3")]
    from: Option<Timestamp>,
    #[prost(message, optional, tag = "4")]
    to: Option<Timestamp>,
    #[prost(int32, tag = "5")]
    order: i32,
    #[prost(string, repeated, tag = "6")]
    types: Vec<String>,
    #[prost(bool, optional, tag = "7")]
    livemode: Option<bool>,
    #[prost(message, optional, tag = "8")]
    after_created: Option<Timestamp>,
    #[prost(uint64, tag = "9")]
    after_sequence: u64,
    #[prost(uint64, tag = "10")]
    total: u64,
    #[prost(uint64, tag = "11")]
    position: u64,
    #[prost(int32, tag = "12")]
    first_offset: i32,
    #[prost(uint64, tag = "13")]
    first_kept: u64,
}

/// A validated ListEvents request: the store query plus what the response must echo.
#[derive(Debug)]
pub struct PageRequest {
    /// What to ask the store.
    pub query: ListQuery,
    order: Order,
    limit: i32,
    first_offset: i32,
    /// Events of the listing before this page.
    position: u64,
}

impl PageRequest {
    /// Validates a request, applying Omise's defaults and the page token.
    pub fn new(req: ListEventsRequest, now: Timestamp) -> Result<Self, Error> {
        if req.limit < 0 {
            return Err(Error::invalid(
                "limit",
                format!("must not be negative (got {})", req.limit),
            ));
        }
        if req.offset < 0 {
            return Err(Error::invalid(
                "offset",
                format!("must not be negative (got {})", req.offset),
            ));
        }
        let limit = if req.limit == 0 { DEFAULT_LIMIT } else { req.limit.min(MAX_LIMIT) };
        let requested_order = Order::try_from(req.order)
            .map_err(|_| Error::invalid("order", format!("unknown value {}", req.order)))?;
        for (field, ts) in [("from", &req.from), ("to", &req.to)] {
            if let Some(ts) = ts {
                time::validate(ts).map_err(|r| Error::invalid(field, r))?;
            }
        }
        let filter = Filter::new(&req.types, req.livemode)?;

        if req.page_token.is_empty() {
            let from = req.from.unwrap_or_else(time::epoch);
            let to = req.to.unwrap_or(now);
            if time::cmp(&from, &to).is_gt() {
                return Err(Error::invalid(
                    "from",
                    format!("{} is after to {}", time::to_rfc3339(&from), time::to_rfc3339(&to)),
                ));
            }
            let order = match requested_order {
                Order::Unspecified => Order::Chronological,
                o => o,
            };
            return Ok(PageRequest {
                query: ListQuery {
                    from,
                    to,
                    direction: direction(order),
                    filter,
                    offset: req.offset as usize,
                    limit: limit as usize,
                    resume: None,
                },
                order,
                limit,
                first_offset: req.offset,
                position: req.offset as u64,
            });
        }

        let token = decode_token(&req.page_token)?;
        let token_order = Order::try_from(token.order).unwrap_or(Order::Chronological);
        let differs = |field: &str| {
            Err(Error::invalid(field, "differs from the listing's first page (page_token)"))
        };
        if req.from.is_some() && req.from != token.from {
            return differs("from");
        }
        if req.to.is_some() && req.to != token.to {
            return differs("to");
        }
        if requested_order != Order::Unspecified && requested_order != token_order {
            return differs("order");
        }
        if !req.types.is_empty() && filter.type_patterns() != token.types {
            return differs("types");
        }
        if req.livemode.is_some() && req.livemode != token.livemode {
            return differs("livemode");
        }
        if req.offset != 0 && req.offset != token.first_offset {
            return Err(Error::invalid(
                "offset",
                "applies to the first page only: send 0 or the first page's offset with page_token",
            ));
        }
        let (Some(from), Some(to), Some(after_created)) =
            (token.from, token.to, token.after_created)
        else {
            return Err(bad_token());
        };
        let token_filter = Filter::new(&token.types, token.livemode).map_err(|_| bad_token())?;
        Ok(PageRequest {
            query: ListQuery {
                from,
                to,
                direction: direction(token_order),
                filter: token_filter,
                offset: 0,
                limit: limit as usize,
                resume: Some(Resume {
                    snapshot: token.snapshot,
                    after: Position { created: after_created, sequence: token.after_sequence },
                    total: token.total,
                    first: token.first_kept,
                }),
            },
            order: token_order,
            limit,
            first_offset: token.first_offset,
            position: token.position,
        })
    }

    /// Narrows the listing to what the caller may read. A page token whose listing the
    /// caller's mode would narrow was issued to someone else: its total covers events this
    /// caller may not see, so it is refused.
    pub fn restrict_to(&mut self, caller: &Principal) -> Result<(), Error> {
        let before = self.query.filter.livemode;
        caller.restrict(&mut self.query.filter)?;
        if self.query.resume.is_some() && self.query.filter.livemode != before {
            return Err(Error::PermissionDenied(
                "page_token belongs to a listing this key cannot read".into(),
            ));
        }
        Ok(())
    }

    /// Builds the answer for the page the store returned.
    pub fn respond(self, page: ListPage) -> Listing {
        let next_page_token = match (page.has_more, page.events.last()) {
            (true, Some(last)) => encode_token(&PageToken {
                version: TOKEN_VERSION,
                snapshot: page.snapshot,
                from: Some(self.query.from),
                to: Some(self.query.to),
                order: self.order as i32,
                types: self.query.filter.type_patterns(),
                livemode: self.query.filter.livemode,
                after_created: Some(last.created()),
                after_sequence: last.sequence(),
                total: page.total,
                position: self.position + page.events.len() as u64,
                first_offset: self.first_offset,
                first_kept: page.first,
            }),
            _ => String::new(),
        };
        Listing {
            events: page.events,
            total: i64::try_from(page.total).unwrap_or(i64::MAX),
            from: self.query.from,
            to: self.query.to,
            offset: i32::try_from(self.position).unwrap_or(i32::MAX),
            limit: self.limit,
            order: self.order,
            next_page_token,
        }
    }
}

/// One answered page, for either transport: the stored events and what the response echoes
/// (the fields of `ListEventsResponse`). gRPC sends it as is ([`Listing::into_wire`]); the
/// JSON views render it in their providers' shapes.
#[derive(Debug)]
pub struct Listing {
    /// The page's events, as stored.
    pub events: Vec<StoredEvent>,
    /// Exact count of matching events in the listing's view.
    pub total: i64,
    /// The effective `from`.
    pub from: Timestamp,
    /// The effective `to`.
    pub to: Timestamp,
    /// Events of the listing before this page.
    pub offset: i32,
    /// The effective page size.
    pub limit: i32,
    /// The effective order.
    pub order: Order,
    /// Empty on the last page.
    pub next_page_token: String,
}

impl Listing {
    /// The gRPC response, carrying each event's stored bytes.
    pub fn into_wire(self) -> wire::ListEventsResponse {
        wire::ListEventsResponse {
            data: self.events.iter().map(WireEvent::from).collect(),
            total: self.total,
            from: Some(self.from),
            to: Some(self.to),
            offset: self.offset,
            limit: self.limit,
            order: self.order as i32,
            next_page_token: self.next_page_token,
        }
    }
}

fn direction(order: Order) -> Direction {
    match order {
        Order::ReverseChronological => Direction::ReverseChronological,
        _ => Direction::Chronological,
    }
}

fn bad_token() -> Error {
    Error::invalid("page_token", "is not a token this server issued (use next_page_token as given)")
}

fn check_value(bytes: &[u8]) -> [u8; CHECK_LEN] {
    let digest = Sha256::new_with_prefix(b"eventsd page token").chain_update(bytes).finalize();
    let mut out = [0u8; CHECK_LEN];
    out.copy_from_slice(&digest[..CHECK_LEN]);
    out
}

fn encode_token(token: &PageToken) -> String {
    let mut bytes = token.encode_to_vec();
    let check = check_value(&bytes);
    bytes.extend_from_slice(&check);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn decode_token(text: &str) -> Result<PageToken, Error> {
    let bytes =
        base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_err(|_| bad_token())?;
    let split = bytes.len().checked_sub(CHECK_LEN).ok_or_else(bad_token)?;
    let (body, check) = bytes.split_at(split);
    if check != check_value(body) {
        return Err(bad_token());
    }
    let token = PageToken::decode(body).map_err(|_| bad_token())?;
    if token.version != TOKEN_VERSION {
        return Err(bad_token());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PageToken {
        PageToken {
            version: TOKEN_VERSION,
            snapshot: 42,
            from: Some(time::epoch()),
            to: Some(Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            order: Order::Chronological as i32,
            types: vec!["charge.*".into()],
            livemode: Some(false),
            after_created: Some(Timestamp { seconds: 5, nanos: 6 }),
            after_sequence: 7,
            total: 100,
            position: 20,
            first_offset: 0,
            first_kept: 1,
        }
    }

    #[test]
    fn tokens_round_trip_and_any_flipped_character_is_rejected() {
        let text = encode_token(&sample());
        assert_eq!(decode_token(&text).unwrap(), sample());
        for i in 0..text.len() {
            let mut chars: Vec<char> = text.chars().collect();
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let tampered: String = chars.into_iter().collect();
            if tampered != text {
                assert!(decode_token(&tampered).is_err(), "flip at {i} accepted");
            }
        }
        assert!(decode_token("").is_err());
        assert!(decode_token("!!!").is_err());
    }
}
