//! Outbound webhooks: the rules eventsd applies before and while it POSTs events to HTTP
//! endpoints.
//!
//! This tree owns the pieces of delivery that do not depend on where endpoint state is kept:
//! - [`target`]: which endpoint URLs are accepted (`url` validation) and which addresses a
//!   delivery may connect to (the connect-time check against DNS rebinding);
//! - [`schedule`]: the `--delivery-retry-schedule` format and the jittered delay of each attempt;
//! - [`sign`]: the Standard Webhooks headers of one attempt, signed with every active secret.
//!
//! Those three perform no I/O, keep no state, and never panic. The rest does:
//! - [`state`]: endpoints, cursors and delivery records, in sled or (on JetStream) in
//!   [`kv_state`], a KV bucket every instance shares;
//! - [`dispatch`]: one worker per endpoint, the same for both backends;
//! - [`sharing`]: on JetStream, the per-endpoint leases that let one instance at a time run an
//!   endpoint's worker, and the routing of control requests to that instance;
//! - [`client`] sends, [`endpoints`] validates and serves the API's operations.

pub mod client;
pub mod dispatch;
pub mod endpoints;
pub mod kv_state;
pub mod schedule;
pub mod sharing;
pub mod sign;
pub mod state;
pub mod target;
