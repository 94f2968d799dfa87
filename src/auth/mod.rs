//! Authentication and authorisation: API keys with scopes and test/live modes.
//!
//! Keys come from a TOML file (`--api-keys`), each with a name, the key itself or its SHA-256,
//! scopes (`publish`, `read`, `subscribe`, `admin` — admin implies the others) and a mode:
//! a `test` key sees and writes only `livemode=false` events, a `live` key only
//! `livemode=true`, an `all` key both. Without a key file every caller is unrestricted (and
//! the server refuses non-loopback listeners unless told otherwise: see `server.rs`).
//!
//! Promises: presented keys are hashed and compared with every configured key in constant
//! time; keys never appear in logs, errors or `Debug` output; a reload (SIGHUP) that fails to
//! parse keeps the old keys and logs why. A reload is announced ([`KeyRing::changes`]) so
//! that open streams re-check their caller ([`KeyRing::still_grants`]) and end at once when
//! its key is gone, lost the scope or changed mode. A key from a test client learns nothing of live
//! events: GetEvent answers NOT_FOUND, lists, totals and subscriptions are narrowed to its mode.
//! Event ids are one namespace per mode: a test key's publish can neither conflict with nor
//! block a live event of the same id. What modes still share is the sequence (see README).

mod keys;
pub(crate) mod layer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::event::Filter;

pub use keys::{KeyFile, Mode, Scope};

/// Who is calling, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's name (never the key), or `anonymous` without a key file.
    pub name: String,
    scopes: Vec<Scope>,
    /// Which events the caller may see and write.
    pub mode: Mode,
    /// The presented key's digest, so a stream can ask later whether the key still exists.
    credential: Credential,
}

/// The SHA-256 of the key a caller presented (none without a key file); never printed.
#[derive(Clone, PartialEq, Eq)]
struct Credential(Option<[u8; 32]>);

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

impl Principal {
    /// The caller when no key file is configured: every scope, both modes.
    pub fn unrestricted() -> Self {
        Principal {
            name: "anonymous".into(),
            scopes: vec![Scope::Admin],
            mode: Mode::All,
            credential: Credential(None),
        }
    }

    /// The key's scopes as configured (`admin` implies the others).
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }

    /// Whether the key has `scope` (or admin).
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope) || self.scopes.contains(&Scope::Admin)
    }

    /// The sender of a webhook route's deliveries, authenticated by their signature: it may
    /// publish, in either mode (the route decides each delivery's livemode).
    pub fn webhook(source: &str) -> Self {
        Principal {
            name: format!("webhook:{source}"),
            scopes: vec![Scope::Publish],
            mode: Mode::All,
            credential: Credential(None),
        }
    }

    /// PERMISSION_DENIED unless the key has `scope` (or admin).
    pub fn require(&self, scope: Scope) -> Result<(), Error> {
        if self.has(scope) {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "key {:?} lacks the {} scope",
            self.name,
            scope.as_str()
        )))
    }

    /// Whether the caller may see or write an event with this livemode.
    pub fn allows(&self, livemode: bool) -> bool {
        match self.mode {
            Mode::All => true,
            Mode::Live => livemode,
            Mode::Test => !livemode,
        }
    }

    /// PERMISSION_DENIED if the caller may not write an event with this livemode.
    pub fn require_mode(&self, livemode: bool, field: &str) -> Result<(), Error> {
        if self.allows(livemode) {
            return Ok(());
        }
        Err(Error::PermissionDenied(format!(
            "key {:?} is a {} key and cannot write {} events ({field})",
            self.name,
            self.mode.as_str(),
            if livemode { "live" } else { "test" }
        )))
    }

    /// Narrows a filter to the caller's mode: an unset livemode becomes the key's; asking for
    /// the other mode is PERMISSION_DENIED.
    pub fn restrict(&self, filter: &mut Filter) -> Result<(), Error> {
        let own = match self.mode {
            Mode::All => return Ok(()),
            Mode::Live => true,
            Mode::Test => false,
        };
        match filter.livemode {
            None => filter.livemode = Some(own),
            Some(asked) if asked != own => {
                return Err(Error::PermissionDenied(format!(
                    "key {:?} is a {} key and cannot read {} events (livemode)",
                    self.name,
                    self.mode.as_str(),
                    if asked { "live" } else { "test" }
                )))
            }
            Some(_) => {}
        }
        Ok(())
    }
}

/// The configured keys, reloadable; cheap to clone.
#[derive(Clone)]
pub struct KeyRing {
    path: Option<PathBuf>,
    keys: Arc<RwLock<Arc<KeyFile>>>,
    /// Counts successful reloads; streams watch it.
    reloads: Arc<watch::Sender<u64>>,
}

impl Default for KeyRing {
    fn default() -> Self {
        KeyRing { path: None, keys: Arc::default(), reloads: Arc::new(watch::Sender::new(0)) }
    }
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("path", &self.path).finish_non_exhaustive()
    }
}

impl KeyRing {
    /// No key file: every caller is unrestricted.
    pub fn disabled() -> Self {
        KeyRing::default()
    }

    /// Loads the key file; an unreadable or invalid file is an error.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let file = KeyFile::read(path)?;
        tracing::info!(path = %path.display(), keys = file.len(), "API keys loaded");
        Ok(KeyRing {
            path: Some(path.to_path_buf()),
            keys: Arc::new(RwLock::new(Arc::new(file))),
            ..KeyRing::default()
        })
    }

    /// Whether a key file is configured.
    pub fn enabled(&self) -> bool {
        self.path.is_some()
    }

    /// Re-reads the key file; on failure keeps the current keys and logs why.
    pub fn reload(&self) {
        let Some(path) = &self.path else { return };
        match KeyFile::read(path) {
            Ok(file) => {
                let count = file.len();
                if let Ok(mut keys) = self.keys.write() {
                    *keys = Arc::new(file);
                }
                self.reloads.send_modify(|n| *n += 1);
                tracing::info!(path = %path.display(), keys = count, "API keys reloaded");
            }
            Err(err) => {
                tracing::error!(path = %path.display(), error = %err, "API key reload failed; keeping the previous keys");
            }
        }
    }

    /// Authenticates an `authorization` header value (Bearer, or Basic with the key as the
    /// user name). Without a key file everyone is [`Principal::unrestricted`].
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Principal, Error> {
        if !self.enabled() {
            return Ok(Principal::unrestricted());
        }
        let Some(header) = authorization else {
            return Err(Error::Unauthenticated(
                "missing API key: send `authorization: Bearer <key>` or Basic with the key as the user name".into(),
            ));
        };
        let presented = presented_key(header).ok_or_else(|| {
            Error::Unauthenticated(
                "malformed authorization header: expected Bearer <key> or Basic <base64 key:>"
                    .into(),
            )
        })?;
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.current()
            .find(&digest)
            .map(|entry| Principal {
                name: entry.name.clone(),
                scopes: entry.scopes.clone(),
                mode: entry.mode,
                credential: Credential(Some(digest)),
            })
            .ok_or_else(|| Error::Unauthenticated("unknown API key".into()))
    }

    /// Changes after every successful reload.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// Whether the keys as they are now still let `caller` do what `scope` allows, with the
    /// same name and mode it was authenticated with: UNAUTHENTICATED once a reload removed
    /// its key, PERMISSION_DENIED once the key lost the scope or changed mode. Without a key
    /// file every caller keeps every right.
    pub fn still_grants(&self, caller: &Principal, scope: Scope) -> Result<(), Error> {
        let Credential(Some(digest)) = &caller.credential else {
            return Ok(());
        };
        let keys = self.current();
        let Some(entry) = keys.find(digest).filter(|e| e.name == caller.name) else {
            return Err(Error::Unauthenticated(format!(
                "key {:?} was removed by a reload of the API keys",
                caller.name
            )));
        };
        if entry.mode != caller.mode {
            return Err(Error::PermissionDenied(format!(
                "key {:?} changed mode in a reload of the API keys",
                caller.name
            )));
        }
        let now = Principal { scopes: entry.scopes.clone(), ..caller.clone() };
        now.require(scope)
    }

    fn current(&self) -> Arc<KeyFile> {
        self.keys.read().map(|k| Arc::clone(&k)).unwrap_or_default()
    }
}

/// The key inside an authorization header value.
fn presented_key(header: &str) -> Option<String> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_string());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(rest).ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let user = text.split_once(':').map_or(text.as_str(), |(user, _)| user);
        return (!user.is_empty()).then(|| user.to_string());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_basic_headers_yield_the_key() {
        assert_eq!(presented_key("Bearer sk_test_1").as_deref(), Some("sk_test_1"));
        let basic = base64::engine::general_purpose::STANDARD.encode("sk_test_1:");
        assert_eq!(presented_key(&format!("Basic {basic}")).as_deref(), Some("sk_test_1"));
        assert_eq!(presented_key("Token abc"), None);
        assert_eq!(presented_key("Bearer "), None);
    }
}
