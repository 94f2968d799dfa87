//! ListEvents for every transport: defaults, validation, paging and the opaque page token.
//!
//! The token pins a listing to the view of its first page: it carries that page's durable
//! sequence (later commits stay out), the effective from/to/order/filters (a later request
//! that changes them is INVALID_ARGUMENT), the position after the last event returned, the
//! first page's total, and how many events came before the next page. It is protobuf, then
//! an HMAC-SHA256 of it under a 32-byte secret kept with the store ([`PageTokens`]), in
//! unpadded base64url. Anything that does not decode and verify — forged, altered, issued
//! before tokens were keyed, or by a server with another store — is INVALID_ARGUMENT naming
//! `page_token`. A verified token is still checked: its times must be valid and in order, its
//! position inside its view, and its snapshot is never taken beyond the durable point, so not
//! even a leaked secret lets a listing read an event before it is durable.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use hmac::{Hmac, Mac};
use prost::Message;
use prost_types::Timestamp;
use sha2::Sha256;

use crate::auth::Principal;
use crate::error::Error;
use crate::event::{time, Filter};
use crate::proto::{wire, ListEventsRequest, Order, WireEvent};
use crate::store::{Direction, EventStore, ListPage, ListQuery, Position, Resume, StoredEvent};

/// Page size when the request says 0.
pub const DEFAULT_LIMIT: i32 = 20;
/// Largest page; larger requests are reduced to it.
pub const MAX_LIMIT: i32 = 100;
/// Version 1 tokens carried an unkeyed check value; they are refused.
const TOKEN_VERSION: u32 = 2;
/// Length of the HMAC-SHA256 tag at the end of a token.
const TAG_LEN: usize = 32;
/// The secret's file in an embedded store's data folder (outside sled, so a reindex keeps it).
pub const KEY_FILE: &str = "page-token.key";

/// The secret that signs page tokens; cheap to clone. Every instance over one store holds the
/// same secret, so any of them accepts any of their tokens.
#[derive(Clone)]
pub struct PageTokens {
    key: Arc<[u8; 32]>,
}

impl std::fmt::Debug for PageTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokens(<secret>)")
    }
}

impl PageTokens {
    /// Tokens signed with this secret.
    pub fn new(key: [u8; 32]) -> Self {
        PageTokens { key: Arc::new(key) }
    }

    /// A new random secret (getrandom).
    pub fn random_key() -> Result<[u8; 32], Error> {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| Error::Startup(format!("cannot draw a page-token secret: {e}")))?;
        Ok(key)
    }

    /// The secret in `dir`/[`KEY_FILE`], created (0600, synced) at first start.
    pub fn in_dir(dir: &Path) -> Result<Self, Error> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(KEY_FILE);
        let shown = path.display();
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Startup(format!("cannot create {}: {e}", dir.display())))?;
        let created =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
        match created {
            Ok(mut file) => {
                let key = Self::random_key()?;
                file.write_all(&key)
                    .and_then(|()| file.sync_all())
                    .and_then(|()| std::fs::File::open(dir)?.sync_all())
                    .map_err(|e| Error::Startup(format!("cannot write {shown}: {e}")))?;
                tracing::info!(path = %shown, "page-token secret created");
                return Ok(Self::new(key));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::Startup(format!("cannot create {shown}: {e}"))),
        }
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::Startup(format!("cannot read {shown}: {e}")))?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| {
            Error::Startup(format!("{shown} must hold exactly 32 bytes; remove it to make a new one (open page tokens then stop working)"))
        })?;
        Ok(Self::new(key))
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes a key of any length, so this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.key[..]).expect("HMAC accepts any key length")
    }

    fn encode(&self, token: &PageToken) -> String {
        let mut bytes = token.encode_to_vec();
        let tag = self.mac().chain_update(&bytes).finalize().into_bytes();
        bytes.extend_from_slice(&tag);
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    fn decode(&self, text: &str) -> Result<PageToken, Error> {
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text)
            .map_err(|_| bad_token())?;
        let split = bytes.len().checked_sub(TAG_LEN).ok_or_else(bad_token)?;
        let (body, tag) = bytes.split_at(split);
        // verify_slice compares in constant time.
        self.mac().chain_update(body).verify_slice(tag).map_err(|_| bad_token())?;
        let token = PageToken::decode(body).map_err(|_| bad_token())?;
        if token.version != TOKEN_VERSION {
            return Err(bad_token());
        }
        Ok(token)
    }
}

/// One ListEvents page as `caller`, for the gRPC and HTTP surfaces alike: validation and
/// defaults, the caller's mode, the snapshot clamp, then the store.
pub async fn list_page(
    store: &dyn EventStore,
    tokens: &PageTokens,
    caller: &Principal,
    request: ListEventsRequest,
) -> Result<Listing, Error> {
    let mut page_request = PageRequest::new(request, time::now(), tokens)?;
    page_request.restrict_to(caller)?;
    if let Some(resume) = &mut page_request.query.resume {
        // A verified token's snapshot was durable somewhere; on a shared store this instance
        // may lag behind it, so the clamp asks the store for its newest point only then.
        if resume.snapshot > *store.durable().borrow() {
            resume.snapshot = resume.snapshot.min(store.newest().await?);
        }
    }
    let page = store.list(page_request.query.clone()).await?;
    Ok(page_request.respond(page))
}

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
    #[prost(string, tag = "14")]
    source: String,
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
    /// Signs the next page's token.
    tokens: PageTokens,
}

impl PageRequest {
    /// Validates a request, applying Omise's defaults and the page token.
    pub fn new(req: ListEventsRequest, now: Timestamp, tokens: &PageTokens) -> Result<Self, Error> {
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
        let filter = Filter::new(&req.types, req.livemode)?.with_source(&req.source)?;

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
                tokens: tokens.clone(),
            });
        }

        let token = tokens.decode(&req.page_token)?;
        let token_order = match Order::try_from(token.order) {
            Ok(o @ (Order::Chronological | Order::ReverseChronological)) => o,
            _ => return Err(bad_token()),
        };
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
        if !req.source.is_empty() && req.source != token.source {
            return differs("source");
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
        check_view(&token, &from, &to, &after_created)?;
        let token_filter = Filter::new(&token.types, token.livemode)
            .and_then(|f| f.with_source(&token.source))
            .map_err(|_| bad_token())?;
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
            tokens: tokens.clone(),
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
            (true, Some(last)) => self.tokens.encode(&PageToken {
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
                source: self.query.filter.source.clone().unwrap_or_default(),
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

/// A verified token must still describe a possible view: valid times in order, the resume
/// point inside the range and the snapshot, the position within the total.
fn check_view(
    token: &PageToken,
    from: &Timestamp,
    to: &Timestamp,
    after: &Timestamp,
) -> Result<(), Error> {
    let times_valid = [from, to, after].iter().all(|t| time::validate(t).is_ok());
    let ordered = times_valid
        && time::cmp(from, to).is_le()
        && time::cmp(from, after).is_le()
        && time::cmp(after, to).is_le();
    let positioned = token.after_sequence >= 1
        && token.after_sequence <= token.snapshot
        && token.first_kept <= token.after_sequence
        && token.position <= token.total
        && token.total <= token.snapshot
        && token.first_offset >= 0
        && token.position > token.first_offset as u64;
    if ordered && positioned {
        Ok(())
    } else {
        Err(bad_token())
    }
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
            total: 30,
            position: 20,
            first_offset: 0,
            first_kept: 1,
            source: String::new(),
        }
    }

    fn tokens() -> PageTokens {
        PageTokens::new([7; 32])
    }

    #[test]
    fn tokens_round_trip_and_any_flipped_character_is_rejected() {
        let text = tokens().encode(&sample());
        assert_eq!(tokens().decode(&text).unwrap(), sample());
        for i in 0..text.len() {
            let mut chars: Vec<char> = text.chars().collect();
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let tampered: String = chars.into_iter().collect();
            if tampered != text {
                assert!(tokens().decode(&tampered).is_err(), "flip at {i} accepted");
            }
        }
        assert!(tokens().decode("").is_err());
        assert!(tokens().decode("!!!").is_err());
    }

    #[test]
    fn a_token_signed_with_another_secret_or_the_old_unkeyed_check_is_rejected() {
        let other = PageTokens::new([8; 32]).encode(&sample());
        assert!(tokens().decode(&other).is_err());
        // The version 1 format: the body, then 8 bytes of SHA-256("eventsd page token" ‖ body).
        use sha2::Digest;
        let body = PageToken { version: 1, ..sample() }.encode_to_vec();
        let check = Sha256::new_with_prefix(b"eventsd page token").chain_update(&body).finalize();
        let mut old = body.clone();
        old.extend_from_slice(&check[..8]);
        let old = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(old);
        assert!(tokens().decode(&old).is_err());
    }

    #[test]
    fn a_signed_token_describing_an_impossible_view_is_rejected() {
        let (from, to, after) =
            (time::epoch(), sample().to.unwrap(), sample().after_created.unwrap());
        assert!(check_view(&sample(), &from, &to, &after).is_ok());
        let bad = [
            PageToken { after_sequence: 43, ..sample() },
            PageToken { position: 31, ..sample() },
            PageToken { total: 43, ..sample() },
            PageToken { first_offset: -1, ..sample() },
            PageToken { position: 0, ..sample() },
        ];
        for token in bad {
            assert!(check_view(&token, &from, &to, &after).is_err(), "{token:?}");
        }
        let late = Timestamp { seconds: 1_800_000_000, nanos: 0 };
        assert!(check_view(&sample(), &from, &to, &late).is_err(), "resume point after to");
        assert!(check_view(&sample(), &to, &from, &after).is_err(), "from after to");
        let invalid = Timestamp { seconds: 5, nanos: -1 };
        assert!(check_view(&sample(), &from, &to, &invalid).is_err(), "invalid nanos");
    }

    #[test]
    fn the_secret_file_is_created_once_with_mode_0600_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = PageTokens::in_dir(dir.path()).unwrap();
        let again = PageTokens::in_dir(dir.path()).unwrap();
        assert_eq!(first.key, again.key);
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        let err = PageTokens::in_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("32 bytes"), "{err}");
    }
}
