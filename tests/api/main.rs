//! Integration tests: one binary, the real server started through `helpers::spawn_app`.

mod bad_input;
mod cli;
mod cloudevents;
mod console;
mod errors;
mod hardening;
mod helpers;
mod http_events;
mod list;
mod metrics;
mod nesting;
mod outbound;
mod persistence;
mod publish;
mod reflection_health;
mod retention;
mod security;
mod stream;
mod subscribe;
mod support;
mod tls;
mod views;
mod webhooks;
mod wire;
