//! The bench's one error type: a boxed error whose message says what was being done.
//!
//! The bench is a command-line tool, not a library: every failure ends up printed for a person,
//! so errors are text with context rather than an enum to match on.

use std::fmt::Display;

/// Any error, with the context added on its way up.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The bench's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds a description of what was being done to an error.
pub trait Context<T> {
    /// Prefixes the error with `what`.
    fn context(self, what: impl Display) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Display) -> Result<T> {
        self.map_err(|err| format!("{what}: {err}").into())
    }
}
