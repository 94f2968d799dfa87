//! The bench's events: a realistic Omise-style charge of about 1 KiB (encoded as a
//! `google.protobuf.Struct`), varied per event by id and amount.
//!
//! The Struct is built and padded once ([`Template`]); each publisher clones it and every
//! event only swaps two fields, so building payloads never dominates the loader's CPU. The
//! same object, as JSON text, is what the Redis comparison stores.

use prost::Message;
use prost_types::value::Kind;
use prost_types::{Struct, Timestamp, Value};
use serde_json::{json, Map, Value as Json};

use crate::error::{Context, Result};

/// Target encoded size of `data`.
pub const EVENT_BYTES: usize = 1024;

/// The type of every unary-published event.
pub const CHARGE_CREATE: &str = "charge.create";

/// The ten types of the filled store. The first two match `charge.*` (20% of the events).
pub const FILL_TYPES: [&str; 10] = [
    "charge.create",
    "charge.capture",
    "refund.create",
    "payment.captured",
    "payment.failed",
    "customer.update",
    "transfer.create",
    "dispute.open",
    "source.chargeable",
    "link.create",
];

/// The padded charge, as Struct and as JSON, built once.
#[derive(Clone)]
pub struct Template {
    data: Struct,
    json: Map<String, Json>,
}

impl Template {
    /// Builds the charge and pads `metadata.note` until the Struct encodes to ~1 KiB.
    pub fn new() -> Result<Self> {
        let mut json = charge_object();
        let mut note_len = 0usize;
        for _ in 0..8 {
            let data = to_struct(&json)?;
            let len = data.encoded_len();
            if (EVENT_BYTES - 2..=EVENT_BYTES).contains(&len) {
                return Template::from_parts(data, json);
            }
            note_len = (note_len + EVENT_BYTES).saturating_sub(len);
            json["metadata"]["note"] = Json::String(padding(note_len));
        }
        let data = to_struct(&json)?;
        Template::from_parts(data, json)
    }

    fn from_parts(data: Struct, json: Json) -> Result<Self> {
        let Json::Object(json) = json else {
            return Err("the charge template is not an object".into());
        };
        Ok(Template { data, json })
    }

    /// The encoded size of the padded Struct.
    pub fn encoded_len(&self) -> usize {
        self.data.encoded_len()
    }

    /// Event `n` of the filled store: id `chrg_bench_<n>` and an amount derived from `n`.
    pub fn indexed(&self, n: u64) -> Struct {
        let (id, amount) = indexed_fields(n);
        with_fields(&self.data, &id, amount)
    }

    /// Event `n` of the filled store as JSON text (the Redis fill).
    pub fn indexed_json(&self, n: u64) -> String {
        let (id, amount) = indexed_fields(n);
        json_with_fields(&self.json, id, amount)
    }
}

/// The charge id and amount of filled event `n`.
fn indexed_fields(n: u64) -> (String, u64) {
    (format!("chrg_bench_{n:010}"), 10_000 + (n.wrapping_mul(7_919) % 5_000_000))
}

/// The charge as JSON text with its id and amount replaced.
fn json_with_fields(template: &Map<String, Json>, id: String, amount: u64) -> String {
    let mut object = template.clone();
    object.insert("id".into(), Json::String(id));
    object.insert("amount".into(), Json::from(amount));
    Json::Object(object).to_string()
}

/// One publisher's source of events: the template plus a random stream of ids and amounts.
pub struct Payload {
    template: Template,
    rng: Rng,
}

impl Payload {
    /// A publisher's payload source (clones the template).
    pub fn new(template: &Template) -> Self {
        Payload { template: template.clone(), rng: Rng::seeded() }
    }

    /// The next event's `data`, with a fresh charge id and amount.
    pub fn next_struct(&mut self) -> Struct {
        let (id, amount) = self.next_fields();
        with_fields(&self.template.data, &id, amount)
    }

    /// The next event as JSON text (for the Redis comparison).
    pub fn next_json(&mut self) -> String {
        let (id, amount) = self.next_fields();
        json_with_fields(&self.template.json, id, amount)
    }

    fn next_fields(&mut self) -> (String, u64) {
        let id = format!("chrg_test_{}", self.rng.base36(19));
        let amount = 10_000 + self.rng.below(5_000_000);
        (id, amount)
    }
}

/// The current time as a Timestamp, with nanoseconds.
pub fn now() -> Timestamp {
    let since =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: since.as_secs() as i64, nanos: since.subsec_nanos() as i32 }
}

/// A small, fast xorshift64* generator: random enough for ids, amounts and keys.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the OS, or from the clock if that fails.
    pub fn seeded() -> Self {
        let seed = getrandom::u64().unwrap_or_else(|_| now().nanos as u64 ^ 0x9e37_79b9_7f4a_7c15);
        Rng(seed | 1)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// `len` random lowercase base36 characters.
    pub fn base36(&mut self, len: usize) -> String {
        const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
        (0..len).map(|_| DIGITS[self.below(36) as usize] as char).collect()
    }
}

fn with_fields(data: &Struct, id: &str, amount: u64) -> Struct {
    let mut data = data.clone();
    data.fields.insert("id".into(), Value { kind: Some(Kind::StringValue(id.to_string())) });
    data.fields.insert("amount".into(), Value { kind: Some(Kind::NumberValue(amount as f64)) });
    data
}

fn to_struct(json: &Json) -> Result<Struct> {
    let object = json.as_object().ok_or("the charge template is not an object")?;
    eventsd::event::json::object_to_struct(object)
        .map_err(|e| format!("{}: {}", e.path("data"), e.reason))
        .context("cannot convert the charge template")
}

fn padding(len: usize) -> String {
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit. ".chars().cycle().take(len).collect()
}

/// An Omise charge as its webhooks show it, with placeholder id and amount.
fn charge_object() -> Json {
    let card = card_object();
    json!({
        "card": card,
        "object": "charge",
        "id": "chrg_test_0000000000000000000",
        "location": "/charges/chrg_test_0000000000000000000",
        "livemode": false,
        "amount": 100_000,
        "currency": "THB",
        "description": "Order #A-10023, 2 items",
        "status": "successful",
        "capture": true,
        "authorized": true,
        "reversed": false,
        "paid": true,
        "disputable": true,
        "fee": 3_650,
        "fee_vat": 256,
        "net": 96_094,
        "transaction": "trxn_test_5xuy4w91xq4gpwlnlxx",
        "customer": "cust_test_5xuy4vz0gq3vrmhkcrm",
        "ip": "203.0.113.7",
        "failure_code": null,
        "created_at": "2026-11-23T10:15:42Z",
        "paid_at": "2026-11-23T10:15:44Z",
        "metadata": {
            "order_id": "A-10023",
            "customer_ref": "C-88412",
            "channel": "web",
            "note": ""
        }
    })
}

/// The card of the charge.
fn card_object() -> Json {
    json!({
        "object": "card",
        "id": "card_test_5xuy4vyzj0vijcoxwm2",
        "livemode": false,
        "country": "th",
        "city": "Bangkok",
        "bank": "Bangkok Bank",
        "brand": "Visa",
        "last_digits": "4242",
        "name": "Somchai Prasert",
        "expiration_month": 12,
        "expiration_year": 2030,
        "security_code_check": true
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_encodes_to_about_one_kib_and_varies() {
        let template = Template::new().unwrap();
        assert!(
            (EVENT_BYTES - 2..=EVENT_BYTES).contains(&template.encoded_len()),
            "{}",
            template.encoded_len()
        );
        let mut payload = Payload::new(&template);
        let (a, b) = (payload.next_struct(), payload.next_struct());
        assert_ne!(a.fields["id"], b.fields["id"]);
        assert_eq!(a.encoded_len(), template.encoded_len());
        let text = payload.next_json();
        assert!(serde_json::from_str::<Json>(&text).is_ok());
    }

    #[test]
    fn indexed_events_are_deterministic() {
        let template = Template::new().unwrap();
        assert_eq!(template.indexed(7), template.indexed(7));
        assert_ne!(template.indexed(7), template.indexed(8));
    }
}
