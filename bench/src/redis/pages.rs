//! Redis pages beside eventsd's listings: a stream filled like eventsd's store, then
//! `XREVRANGE + - COUNT 100` (the newest page) and `XRANGE <random id> + COUNT 100` (a page
//! from a random point), 32 callers on a connection each, as eventsd's 32 list callers.
//!
//! The fill mirrors eventsd's: event n holds the same charge as JSON text and has the id
//! `<created in ms>-<n>`, with `created` spread over 30 days as in eventsd's fill, so an id is
//! a time, as it is in Redis. It is pipelined (1,000 XADDs per write) on one connection (the
//! ids must arrive in order), with `appendfsync no` for its duration (the fill prepares the
//! reads and is not a durable figure; with `always`, Redis fsyncs once per ~16 KiB it reads
//! from a pipelining client, so a 1M fill would take minutes), and capped at [`FILL_CAP`]
//! events: Redis keeps the whole stream in memory, and XRANGE seeks a radix tree, whose cost
//! barely changes from 1M to 10M.
//! Each page is checked: its length and its first id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::resp::{encode, Connection, Reply};
use super::server::RedisServer;
use crate::bench::Context;
use crate::error::Result;
use crate::load::{self, count_of, Around, Limit, Op};
use crate::payload::{Rng, Template};
use crate::reads::Filled;
use crate::report::Figure;

/// Most events the Redis stream is filled with.
pub const FILL_CAP: u64 = 1_000_000;
/// The filled stream.
const KEY: &str = "store";
/// XADDs per pipelined write.
const FILL_CHUNK: u64 = 1_000;
/// Concurrent page readers, each on its own connection.
const READERS: usize = 32;
/// Entries per page.
const PAGE: u64 = 100;

/// The stream id of filled event `n`: its `created` in ms, then `n`.
fn id_of(plan: &Filled, n: u64) -> String {
    format!("{}-{n}", plan.created_nanos(n).div_euclid(1_000_000))
}

/// The pipelined fill: each call sends the next chunk of XADDs and reads their replies.
struct FillChunk {
    connection: Connection,
    template: Template,
    plan: Arc<Filled>,
    next: Arc<AtomicU64>,
    out: Vec<u8>,
}

impl Op for FillChunk {
    async fn call(&mut self) -> Result<u64, String> {
        let first = self.next.fetch_add(FILL_CHUNK, Ordering::Relaxed);
        let last = (first + FILL_CHUNK).min(self.plan.events);
        self.out.clear();
        for n in first..last {
            let (id, event) = (id_of(&self.plan, n), self.template.indexed_json(n));
            let args: [&[u8]; 5] =
                [b"XADD", KEY.as_bytes(), id.as_bytes(), b"event", event.as_bytes()];
            encode(&mut self.out, &args);
        }
        self.connection.send(&self.out).await.map_err(|e| format!("XADD: {e}"))?;
        for _ in first..last {
            match self.connection.reply().await {
                Ok(Reply::Bulk(Some(_))) => {}
                Ok(other) => return Err(format!("XADD answered {other:?}")),
                Err(err) => return Err(format!("XADD failed: {err}")),
            }
        }
        Ok(last.saturating_sub(first))
    }
}

/// What a page reader asks.
#[derive(Clone, Copy)]
enum Ask {
    Newest,
    RandomId,
}

/// One page reader on its own connection.
struct PageReader {
    connection: Connection,
    ask: Ask,
    plan: Arc<Filled>,
    rng: Rng,
}

impl Op for PageReader {
    async fn call(&mut self) -> Result<u64, String> {
        let n = self.plan.events;
        let (start, expect_len, expect_first) = match self.ask {
            Ask::Newest => ("+".to_string(), n.min(PAGE), id_of(&self.plan, n - 1)),
            Ask::RandomId => {
                let k = self.rng.below(n);
                let id = id_of(&self.plan, k);
                (id.clone(), (n - k).min(PAGE), id)
            }
        };
        let args: [&[u8]; 6] = match self.ask {
            Ask::Newest => [b"XREVRANGE", KEY.as_bytes(), b"+", b"-", b"COUNT", b"100"],
            Ask::RandomId => [b"XRANGE", KEY.as_bytes(), start.as_bytes(), b"+", b"COUNT", b"100"],
        };
        let reply = self.connection.command(&args).await.map_err(|e| format!("XRANGE: {e}"))?;
        let entries = reply.into_array().ok_or("XRANGE: not an array")?;
        let first = entries
            .first()
            .and_then(|entry| match entry {
                Reply::Array(Some(parts)) => parts.first()?.as_bulk(),
                _ => None,
            })
            .map(|id| String::from_utf8_lossy(id).into_owned());
        if entries.len() as u64 != expect_len || first.as_deref() != Some(expect_first.as_str()) {
            return Err(format!(
                "expected {expect_len} entries from {expect_first}, got {} from {first:?}",
                entries.len()
            ));
        }
        Ok(1)
    }
}

/// The fill figure and the two page figures (newest, random id).
pub struct Pages {
    /// The fill.
    pub fill: Figure,
    /// XREVRANGE + - COUNT 100.
    pub newest: Figure,
    /// XRANGE <random id> + COUNT 100.
    pub random: Figure,
}

/// Fills the stream and measures both pages.
pub async fn run(ctx: &Context, server: &RedisServer) -> Result<Pages> {
    let settings = &ctx.settings;
    let events = settings.store_events.clamp(1, FILL_CAP);
    eprintln!("[redis] filling a stream with {events} events");
    let plan = Arc::new(Filled::plan(events, String::new()));
    let around = Around { probe_dir: None, server_pid: Some(server.pid()), http: None };
    let mut admin = Connection::open(server.port).await?;
    set_appendfsync(&mut admin, "no").await?;
    let filler = FillChunk {
        connection: Connection::open(server.port).await?,
        template: ctx.template.clone(),
        plan: plan.clone(),
        next: Arc::new(AtomicU64::new(0)),
        out: Vec::new(),
    };
    let limit = Limit { calls: events.div_ceil(FILL_CHUNK), time: settings.fill_cap };
    let case = format!("fill: XADD pipelined x{FILL_CHUNK}, 1 connection");
    let filled = load::run_figure(vec![filler], limit, around, "redis", case).await;
    set_appendfsync(&mut admin, "always").await?;
    let (fill, outcome) = filled?;
    if outcome.errors > 0 || outcome.units != events {
        return Err(format!(
            "the Redis fill stored {} of {events} events: {}",
            outcome.units,
            outcome.first_error.unwrap_or_else(|| "stopped by its time cap".into())
        )
        .into());
    }
    let fill = fill.with("store_events", events).with("appendfsync", "no");

    let mut figures = Vec::new();
    for (ask, name) in [
        (Ask::Newest, "XREVRANGE + - COUNT 100"),
        (Ask::RandomId, "XRANGE <random id> + COUNT 100"),
    ] {
        let mut workers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            workers.push(PageReader {
                connection: Connection::open(server.port).await?,
                ask,
                plan: plan.clone(),
                rng: Rng::seeded(),
            });
        }
        let limit = Limit { calls: settings.read_calls, time: settings.duration };
        let case = format!("{name}, {}", count_of(READERS, "connection"));
        let (figure, _) = load::run_figure(workers, limit, around, "redis", case).await?;
        figures.push(figure.with("store_events", events));
    }
    let random = figures.pop().ok_or("no XRANGE figure")?;
    let newest = figures.pop().ok_or("no XREVRANGE figure")?;
    Ok(Pages { fill, newest, random })
}

/// `CONFIG SET appendfsync <mode>`.
async fn set_appendfsync(connection: &mut Connection, mode: &str) -> Result<()> {
    let args: [&[u8]; 4] = [b"CONFIG", b"SET", b"appendfsync", mode.as_bytes()];
    match connection.command(&args).await {
        Ok(Reply::Simple(ok)) if ok == "OK" => Ok(()),
        other => Err(format!("CONFIG SET appendfsync {mode} answered {other:?}").into()),
    }
}
