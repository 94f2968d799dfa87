//! The API key file: parsing, validation and constant-time lookup.

use std::path::Path;

use serde::Deserialize;

use crate::error::Error;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// PublishEvent, PublishEvents, `POST /events`.
    Publish,
    /// GetEvent, ListEvents and the HTTP read routes.
    Read,
    /// SubscribeEvents.
    Subscribe,
    /// Everything.
    Admin,
}

impl Scope {
    /// The name used in the key file and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Publish => "publish",
            Scope::Read => "read",
            Scope::Subscribe => "subscribe",
            Scope::Admin => "admin",
        }
    }
}

/// Which events a key may see and write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Only `livemode = false`.
    Test,
    /// Only `livemode = true`.
    Live,
    /// Both.
    All,
}

impl Mode {
    /// The name used in the key file and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Test => "test",
            Mode::Live => "live",
            Mode::All => "all",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    key: Vec<RawKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    name: String,
    key: Option<String>,
    sha256: Option<String>,
    scopes: Vec<Scope>,
    mode: Mode,
}

/// One configured key; only its SHA-256 is kept in memory.
pub(super) struct Entry {
    pub name: String,
    digest: [u8; 32],
    pub scopes: Vec<Scope>,
    pub mode: Mode,
}

/// A parsed key file.
#[derive(Default)]
pub struct KeyFile {
    entries: Vec<Entry>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("KeyFile").field("names", &names).finish_non_exhaustive()
    }
}

impl KeyFile {
    /// Reads and validates a key file; errors name the entry, never a key.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Startup(format!("cannot read API key file {}: {e}", path.display()))
        })?;
        Self::parse(&text)
            .map_err(|e| Error::Startup(format!("API key file {}: {e}", path.display())))
    }

    /// Parses key file text.
    pub fn parse(text: &str) -> Result<Self, String> {
        // toml's messages can quote the offending line, which may hold a key: keep only the
        // position and the kind of problem.
        let raw: RawFile = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => format!("invalid TOML near byte {}", span.start),
            None => "invalid TOML".to_string(),
        })?;
        let mut entries = Vec::with_capacity(raw.key.len());
        for (i, k) in raw.key.into_iter().enumerate() {
            let at = format!("key #{} ({:?})", i + 1, k.name);
            if k.name.trim().is_empty() {
                return Err(format!("key #{}: name is empty", i + 1));
            }
            if entries.iter().any(|e: &Entry| e.name == k.name) {
                return Err(format!("{at}: the name is used twice"));
            }
            if k.scopes.is_empty() {
                return Err(format!("{at}: scopes is empty"));
            }
            let digest = match (k.key, k.sha256) {
                (Some(key), None) if !key.is_empty() => sha2::Sha256::digest(key.as_bytes()).into(),
                (None, Some(hex)) => parse_hex_digest(&hex)
                    .ok_or_else(|| format!("{at}: sha256 must be 64 hex digits"))?,
                _ => return Err(format!("{at}: give exactly one of `key` or `sha256`")),
            };
            entries.push(Entry { name: k.name, digest, scopes: k.scopes, mode: k.mode });
        }
        Ok(KeyFile { entries })
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the file holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry whose digest equals `digest`. Every entry is compared, each in constant time,
    /// so timing reveals neither which key matched nor how much of one did.
    pub(super) fn find(&self, digest: &[u8; 32]) -> Option<&Entry> {
        let mut found = None;
        for entry in &self.entries {
            let diff = entry.digest.iter().zip(digest).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if std::hint::black_box(diff) == 0 {
                found = Some(entry);
            }
        }
        found
    }
}

use sha2::Digest;

fn parse_hex_digest(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_by_value_and_by_hash_and_errors_never_show_a_key() {
        let hash = "a".repeat(64);
        let text = format!(
            "[[key]]\nname = \"pub\"\nkey = \"sk_test_secret\"\nscopes = [\"publish\"]\nmode = \"test\"\n\
             [[key]]\nname = \"ops\"\nsha256 = \"{hash}\"\nscopes = [\"admin\"]\nmode = \"all\"\n"
        );
        let file = KeyFile::parse(&text).unwrap();
        assert_eq!(file.len(), 2);
        let digest: [u8; 32] = sha2::Sha256::digest(b"sk_test_secret").into();
        assert_eq!(file.find(&digest).map(|e| e.name.as_str()), Some("pub"));

        let bad = "[[key]]\nname = \"x\"\nkey = \"sk_live_do_not_print\"\nscopes = [\"nope\"]\nmode = \"test\"\n";
        let err = KeyFile::parse(bad).unwrap_err();
        assert!(!err.contains("sk_live_do_not_print"), "{err}");
    }
}
