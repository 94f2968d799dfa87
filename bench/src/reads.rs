//! `get` and `list`, and the fill they (and `memory`, `startup`) read.
//!
//! The fill stores N events with PublishEvents batches of 1,000 from 4 concurrent callers:
//! ids `bench_<n>` (prefixed with a run tag on an `--addr` server, so reruns do not collide),
//! ten types of which `charge.*` is 20%, live and test mixed, and `created` spread evenly over
//! 30 days ending an hour ago, so a time range selects a known slice. Its rate is a figure too.
//!
//! `get`: 32 callers, random GetEvent over the filled ids. `list`: ListEvents newest-first
//! pages of 100 with the exact total, without and with a type filter, over a time range that
//! holds 1% of the events in the middle, and at a deep offset; 32 callers (8 for the deep
//! offset). Every response is checked (the id asked for; page length and total where the
//! bench knows them): a wrong answer is an error in the figure, not a fast one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eventsd::proto::event_service_client::EventServiceClient;
use eventsd::proto::{
    GetEventRequest, ListEventsRequest, Order, PublishEventRequest, PublishEventsRequest,
};
use prost_types::Timestamp;
use tonic::transport::Channel;

use crate::bench::{Context, Store};
use crate::cli::Settings;
use crate::client::{status_text, Pool};
use crate::error::Result;
use crate::load::{self, Limit, Op};
use crate::payload::{self, Rng, Template, FILL_TYPES};
use crate::report::{Figure, Section};

/// Events per fill call.
const FILL_BATCH: u64 = 1_000;
/// Concurrent fill callers.
const FILLERS: usize = 4;
/// Channels shared by the readers.
const CHANNELS: usize = 4;
/// Concurrent GetEvent / ListEvents callers.
const READERS: usize = 32;
/// Concurrent callers of the deep-offset listing.
const DEEP_READERS: usize = 8;
/// Page size of every listing.
const PAGE: usize = 100;
/// How far back the fill's `created` times reach.
const SPAN: Duration = Duration::from_secs(30 * 24 * 3_600);

/// What the fill stored: enough to name any event and predict any listing.
#[derive(Debug, Clone)]
pub struct Filled {
    /// Events stored, ids `{prefix}0` to `{prefix}{events - 1}`.
    pub events: u64,
    prefix: String,
    /// `created` of event 0, in ns since the epoch.
    first_nanos: i128,
    /// `created` step between consecutive events, in ns.
    step_nanos: i128,
}

impl Filled {
    fn plan(events: u64, prefix: String) -> Self {
        let now = payload::now();
        let now_nanos = i128::from(now.seconds) * 1_000_000_000 + i128::from(now.nanos);
        let span = SPAN.as_nanos() as i128;
        Filled {
            events,
            prefix,
            first_nanos: now_nanos - span - 3_600 * 1_000_000_000,
            step_nanos: span / i128::from(events.max(1)),
        }
    }

    fn id(&self, n: u64) -> String {
        format!("{}{n}", self.prefix)
    }

    fn created(&self, n: u64) -> Timestamp {
        let at = self.first_nanos + self.step_nanos * i128::from(n);
        Timestamp {
            seconds: at.div_euclid(1_000_000_000) as i64,
            nanos: at.rem_euclid(1_000_000_000) as i32,
        }
    }

    fn event(&self, template: &Template, n: u64) -> PublishEventRequest {
        PublishEventRequest {
            id: self.id(n),
            r#type: FILL_TYPES[(n % FILL_TYPES.len() as u64) as usize].into(),
            data: Some(template.indexed(n)),
            created: Some(self.created(n)),
            livemode: (n / 10).is_multiple_of(2),
            api_version: "2019-05-29".into(),
            source: "omise".into(),
        }
    }

    /// Events whose type matches `charge.*`: those with `n % 10` in {0, 1}.
    fn charge_events(&self) -> u64 {
        let tens = self.events / 10;
        tens * 2 + (self.events % 10).min(2)
    }
}

/// One fill caller: takes the next batch number and stores that batch.
struct Filler {
    client: EventServiceClient<Channel>,
    template: Template,
    plan: Arc<Filled>,
    next_batch: Arc<AtomicU64>,
}

impl Op for Filler {
    async fn call(&mut self) -> Result<u64, String> {
        let batch = self.next_batch.fetch_add(1, Ordering::Relaxed);
        let first = batch * FILL_BATCH;
        let last = (first + FILL_BATCH).min(self.plan.events);
        let events = (first..last).map(|n| self.plan.event(&self.template, n)).collect();
        let response = self
            .client
            .publish_events(PublishEventsRequest { events })
            .await
            .map_err(|s| status_text(&s))?;
        Ok(response.into_inner().events.len() as u64)
    }
}

/// Fills the shared store unless it already is; returns the fill's figure when it ran now.
pub async fn ensure_filled(ctx: &mut Context) -> Result<Option<Figure>> {
    let settings = ctx.settings.clone();
    let template = ctx.template.clone();
    let prefix = match ctx.external {
        Some(_) => format!("bench_{}_", Rng::seeded().base36(6)),
        None => "bench_".to_string(),
    };
    let store = ctx.store().await?;
    if store.filled.is_some() {
        return Ok(None);
    }
    let result = fill(store, &settings, &template, prefix).await;
    if result.is_err() {
        // A half-filled store would make every later figure wrong: the next scenario that
        // needs the store starts a fresh server instead.
        ctx.store = None;
    }
    result.map(Some)
}

/// Fills `store` with `settings.store_events` events and records what it holds.
async fn fill(
    store: &mut Store,
    settings: &Settings,
    template: &Template,
    prefix: String,
) -> Result<Figure> {
    eprintln!("[fill] {} events", settings.store_events);
    let plan = Arc::new(Filled::plan(settings.store_events, prefix));
    let pool = Pool::connect(&store.target.addr, FILLERS).await?;
    let next_batch = Arc::new(AtomicU64::new(0));
    let workers = (0..FILLERS)
        .map(|i| Filler {
            client: pool.client(i),
            template: template.clone(),
            plan: plan.clone(),
            next_batch: next_batch.clone(),
        })
        .collect();
    let limit = Limit { calls: plan.events.div_ceil(FILL_BATCH), time: settings.fill_cap };
    let around = store.target.around(true);
    let case = format!("PublishEvents x{FILL_BATCH}, {FILLERS} callers, caller ids");
    let (mut figure, outcome) = load::run_figure(workers, limit, around, "fill", case).await?;
    figure.set("batches", outcome.calls);
    if let Some(bytes) = store.target.data_bytes() {
        figure.set("store_mib", (bytes as f64 / 1_048_576.0).round());
    }
    if let Ok(rss) = store.target.rss_kib() {
        figure.set("rss_mib", (rss as f64 / 1_024.0).round());
    }
    if outcome.errors > 0 || outcome.units == 0 {
        return Err(format!(
            "the fill failed after {} events: {}",
            outcome.units,
            outcome.first_error.unwrap_or_else(|| "no event stored".into())
        )
        .into());
    }
    // A time cap may stop the fill early; the batches taken are 0..k, so the stored events
    // are exactly 0..units.
    let mut filled = (*plan).clone();
    filled.events = outcome.units;
    if filled.events < plan.events {
        figure.set("stopped_early_of", plan.events);
    }
    store.filled = Some(filled);
    Ok(figure)
}

/// One GetEvent caller.
struct Getter {
    client: EventServiceClient<Channel>,
    filled: Arc<Filled>,
    rng: Rng,
}

impl Op for Getter {
    async fn call(&mut self) -> Result<u64, String> {
        let id = self.filled.id(self.rng.below(self.filled.events));
        let event = self
            .client
            .get_event(GetEventRequest { id: id.clone(), livemode: None })
            .await
            .map_err(|s| format!("{id}: {}", status_text(&s)))?
            .into_inner();
        if event.id != id {
            return Err(format!("asked for {id}, got {}", event.id));
        }
        Ok(1)
    }
}

/// Runs the get scenario (filling first if needed).
pub async fn run_get(ctx: &mut Context) -> Result<Section> {
    let mut section = Section::default();
    section.figures.extend(ensure_filled(ctx).await?);
    let settings = ctx.settings.clone();
    let store = ctx.store().await?;
    let filled = Arc::new(store.filled.clone().ok_or("the store is not filled")?);
    let pool = Pool::connect(&store.target.addr, CHANNELS).await?;
    let workers = (0..READERS)
        .map(|i| Getter { client: pool.client(i), filled: filled.clone(), rng: Rng::seeded() })
        .collect();
    let limit = Limit { calls: settings.read_calls, time: settings.duration };
    let around = store.target.around(false);
    let case = format!("GetEvent random id, {READERS} callers");
    let (figure, _) = load::run_figure(workers, limit, around, "get", case).await?;
    section.figures.push(figure.with("store_events", filled.events));
    section.note(format!(
        "{READERS} callers on {CHANNELS} shared channels; ids uniformly random over the {} \
         filled events; each run stops at {} calls or {:?}",
        filled.events, settings.read_calls, settings.duration
    ));
    Ok(section)
}

/// One ListEvents caller repeating one request and checking the answer.
struct Lister {
    client: EventServiceClient<Channel>,
    request: ListEventsRequest,
    expect: Option<Expect>,
}

/// What a listing must return, when the bench knows.
#[derive(Debug, Clone, Copy)]
struct Expect {
    total: i64,
    page_len: usize,
}

impl Op for Lister {
    async fn call(&mut self) -> Result<u64, String> {
        let page = self
            .client
            .list_events(self.request.clone())
            .await
            .map_err(|s| status_text(&s))?
            .into_inner();
        if let Some(expect) = self.expect {
            if page.total != expect.total || page.data.len() != expect.page_len {
                return Err(format!(
                    "expected total {} and {} events, got total {} and {} events",
                    expect.total,
                    expect.page_len,
                    page.total,
                    page.data.len()
                ));
            }
        }
        Ok(1)
    }
}

/// One listing case: its name, request, callers and expected answer.
struct Case {
    name: String,
    request: ListEventsRequest,
    callers: usize,
    total: u64,
}

fn list_cases(filled: &Filled) -> Vec<Case> {
    let n = filled.events;
    let newest = ListEventsRequest {
        order: Order::ReverseChronological as i32,
        limit: PAGE as i32,
        ..Default::default()
    };
    let slice = (n / 100).max(1);
    let first = (n / 2).saturating_sub(slice / 2);
    let last = (first + slice - 1).min(n.saturating_sub(1));
    let deep = (n / 2).min(100_000);
    vec![
        Case { name: "newest page".into(), request: newest.clone(), callers: READERS, total: n },
        Case {
            name: "newest page, types [charge.*]".into(),
            request: ListEventsRequest { types: vec!["charge.*".into()], ..newest.clone() },
            callers: READERS,
            total: filled.charge_events(),
        },
        Case {
            name: "time range holding 1%".into(),
            request: ListEventsRequest {
                from: Some(filled.created(first)),
                to: Some(filled.created(last)),
                ..newest.clone()
            },
            callers: READERS,
            total: last - first + 1,
        },
        Case {
            name: format!("deep offset {deep}"),
            request: ListEventsRequest { offset: deep as i32, ..newest },
            callers: DEEP_READERS,
            total: n,
        },
    ]
}

/// Runs the list scenario (filling first if needed).
pub async fn run_list(ctx: &mut Context) -> Result<Section> {
    let mut section = Section::default();
    section.figures.extend(ensure_filled(ctx).await?);
    let settings = ctx.settings.clone();
    let store = ctx.store().await?;
    let filled = store.filled.clone().ok_or("the store is not filled")?;
    // Only a store the bench filled alone has totals the bench can predict.
    let predictable = store.target.is_spawned();
    let pool = Pool::connect(&store.target.addr, CHANNELS).await?;
    for case in list_cases(&filled) {
        let offset = case.request.offset.max(0) as u64;
        let expect = predictable.then(|| Expect {
            total: case.total as i64,
            page_len: case.total.saturating_sub(offset).min(PAGE as u64) as usize,
        });
        let workers = (0..case.callers)
            .map(|i| Lister { client: pool.client(i), request: case.request.clone(), expect })
            .collect();
        let limit = Limit { calls: settings.read_calls, time: settings.duration };
        let around = store.target.around(false);
        let name = format!("{}, {} callers", case.name, case.callers);
        let (figure, _) = load::run_figure(workers, limit, around, "list", name).await?;
        section.figures.push(figure.with("total", case.total).with("checked", predictable));
    }
    section.note(format!(
        "ops = pages of {PAGE}, newest first, each with its exact total; store of {} events \
         (10 types, charge.* = 20%, created over 30 days); {CHANNELS} shared channels",
        filled.events
    ));
    if !predictable {
        section.note("external server: totals and page lengths are not checked");
    }
    Ok(section)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fill_plan_spreads_created_evenly_and_counts_charges() {
        let filled = Filled::plan(2_000, "bench_".into());
        assert_eq!(filled.id(7), "bench_7");
        let (a, b) = (filled.created(0), filled.created(1_999));
        let spread = b.seconds - a.seconds;
        assert!((29 * 86_400..=30 * 86_400).contains(&spread), "{spread}");
        assert_eq!(filled.charge_events(), 400);
        assert_eq!(Filled::plan(13, "x".into()).charge_events(), 4);
    }

    #[test]
    fn the_time_range_case_selects_one_percent() {
        let filled = Filled::plan(1_000_000, "bench_".into());
        let cases = list_cases(&filled);
        assert_eq!(cases[2].total, 10_000);
        assert_eq!(cases[3].request.offset, 100_000);
    }
}
