//! Event filters shared by ListEvents and SubscribeEvents: types (exact or trailing wildcard),
//! livemode and (ListEvents, the HTTP views) the producer's `source`.

use crate::error::Error;
use crate::event::{validate_label, validate_type};
use crate::store::StoredEvent;

/// Most type patterns one request may carry.
pub const MAX_TYPE_PATTERNS: usize = 100;

/// One type pattern: an exact name, or a prefix from a trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

impl Pattern {
    fn matches(&self, t: &str) -> bool {
        match self {
            Pattern::Exact(e) => e == t,
            Pattern::Prefix(p) => t.starts_with(p.as_str()),
        }
    }
}

/// Which events a list or subscription carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    patterns: Vec<Pattern>,
    /// Only live (`Some(true)`) or test (`Some(false)`) events; `None` for both.
    pub livemode: Option<bool>,
    /// Only events whose `source` is exactly this; `None` for every source.
    pub source: Option<String>,
}

impl Filter {
    /// Validates `types` (each an exact name or `prefix*`) and takes `livemode` as given.
    pub fn new(types: &[String], livemode: Option<bool>) -> Result<Self, Error> {
        if types.len() > MAX_TYPE_PATTERNS {
            return Err(Error::invalid(
                "types",
                format!(
                    "holds {} patterns, more than the {MAX_TYPE_PATTERNS} allowed",
                    types.len()
                ),
            ));
        }
        let mut patterns = Vec::with_capacity(types.len());
        for (i, t) in types.iter().enumerate() {
            let field = || format!("types[{i}]");
            let pattern = match t.strip_suffix('*') {
                Some(prefix) => {
                    if !prefix.is_empty() {
                        validate_type(prefix).map_err(|r| Error::invalid(field(), r))?;
                    }
                    Pattern::Prefix(prefix.to_string())
                }
                None => {
                    validate_type(t).map_err(|r| {
                        Error::invalid(
                            field(),
                            format!("{r} (a wildcard `*` may only end a pattern)"),
                        )
                    })?;
                    Pattern::Exact(t.clone())
                }
            };
            patterns.push(pattern);
        }
        Ok(Filter { patterns, livemode, source: None })
    }

    /// Narrows the filter to one producer: `source` must equal the event's exactly. An
    /// empty source means every source (as an unset proto3 string reads); otherwise it must
    /// be a valid `source` label.
    pub fn with_source(mut self, source: &str) -> Result<Self, Error> {
        if source.is_empty() {
            return Ok(self);
        }
        validate_label(source).map_err(|r| Error::invalid("source", r))?;
        self.source = Some(source.to_string());
        Ok(self)
    }

    /// Whether events from this producer pass the source filter.
    pub fn matches_source(&self, source: &str) -> bool {
        self.source.as_deref().is_none_or(|s| s == source)
    }

    /// True when no type pattern narrows the filter.
    pub fn all_types(&self) -> bool {
        self.patterns.is_empty()
            || self.patterns.iter().any(|p| matches!(p, Pattern::Prefix(x) if x.is_empty()))
    }

    /// Whether events of this type pass the type patterns.
    pub fn matches_type(&self, t: &str) -> bool {
        self.all_types() || self.patterns.iter().any(|p| p.matches(t))
    }

    /// Whether this mode passes the livemode filter.
    pub fn matches_mode(&self, livemode: bool) -> bool {
        self.livemode.is_none_or(|m| m == livemode)
    }

    /// Whether the event passes every filter.
    pub fn matches(&self, event: &StoredEvent) -> bool {
        self.matches_mode(event.livemode())
            && self.matches_type(event.event_type())
            && self.matches_source(event.source())
    }

    /// The patterns as the client wrote them, for page tokens.
    pub fn type_patterns(&self) -> Vec<String> {
        self.patterns
            .iter()
            .map(|p| match p {
                Pattern::Exact(e) => e.clone(),
                Pattern::Prefix(p) => format!("{p}*"),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exact_and_wildcard_patterns_match_as_documented() {
        let f = Filter::new(&types(&["charge.*", "refund.create"]), None).unwrap();
        assert!(f.matches_type("charge.create"));
        assert!(f.matches_type("charge.capture"));
        assert!(f.matches_type("refund.create"));
        assert!(!f.matches_type("refund.update"));
        assert!(!f.matches_type("charges"));
        assert!(Filter::new(&types(&["*"]), None).unwrap().all_types());
    }

    #[test]
    fn a_wildcard_inside_a_pattern_is_rejected_naming_the_entry() {
        let err = Filter::new(&types(&["ok", "char*ge"]), None).unwrap_err();
        assert!(err.to_string().contains("types[1]"), "{err}");
    }
}
