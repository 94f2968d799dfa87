//! Outbound webhooks: the rules eventsd applies before and while it POSTs events to HTTP
//! endpoints.
//!
//! This tree owns the pieces of delivery that do not depend on where endpoint state is kept:
//! - [`target`]: which endpoint URLs are accepted (`url` validation) and which addresses a
//!   delivery may connect to (the connect-time check against DNS rebinding);
//! - [`schedule`]: the `--delivery-retry-schedule` format and the jittered delay of each attempt;
//! - [`sign`]: the Standard Webhooks headers of one attempt, signed with every active secret.
//!
//! Nothing here performs I/O or keeps state; each function is pure and never panics.

pub mod client;
pub mod dispatch;
pub mod endpoints;
pub mod kv_state;
pub mod schedule;
pub mod sharing;
pub mod sign;
pub mod state;
pub mod target;
