//! Subjects of the JetStream backend: one subject per event, `<stream>.<id>.<mode>.<type>`.
//!
//! A subject per event is what makes idempotency permanent: a publish carries "the last
//! message on `<stream>.<id>.<mode>.>` must be sequence 0", so an id can be stored once per
//! mode (each mode is its own id namespace), ever, by any instance (JetStream's own duplicate window is two minutes and never compares payloads).
//! Ids and types may contain `.`, the subject token separator, so each is escaped into one
//! token: every byte outside `[A-Za-z0-9_:/-]` becomes `%XX`. The escaping is injective, so
//! distinct ids never share a token.

use std::fmt::Write;

/// `live` or `test`, the mode token.
pub fn mode(livemode: bool) -> &'static str {
    if livemode {
        "live"
    } else {
        "test"
    }
}

/// One subject token holding `value`.
pub fn token(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'/' | b'-') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The subject an event is stored under.
pub fn event(stream: &str, id: &str, livemode: bool, event_type: &str) -> String {
    format!("{stream}.{}.{}.{}", token(id), mode(livemode), token(event_type))
}

/// The filter matching every subject of one id in one mode, whatever its type.
pub fn id_filter(stream: &str, id: &str, livemode: bool) -> String {
    format!("{stream}.{}.{}.>", token(id), mode(livemode))
}

/// The stream's subject space.
pub fn all(stream: &str) -> String {
    format!("{stream}.>")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_are_escaped_so_each_value_is_one_token() {
        assert_eq!(event("EV", "evt.1", true, "charge.create"), "EV.evt%2E1.live.charge%2Ecreate");
        assert_eq!(id_filter("EV", "a:b-c_d", false), "EV.a:b-c_d.test.>");
        assert_eq!(token("100%"), "100%25");
    }

    #[test]
    fn escaping_is_injective_on_the_characters_ids_may_hold() {
        let ids = ["a.b", "a%2Eb", "a..b", "a.", ".a", "a-b"];
        let tokens: std::collections::HashSet<_> = ids.iter().map(|i| token(i)).collect();
        assert_eq!(tokens.len(), ids.len());
        assert!(tokens.iter().all(|t| !t.contains('.') && !t.contains('*') && !t.contains('>')));
    }
}
