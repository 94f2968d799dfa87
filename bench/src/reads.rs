//! `get` and `list`, and the fill they (and `memory`, `startup`) read.
//!
//! The fill stores N events with PublishEvents batches of 1,000 from 4 concurrent callers:
//! ids `bench_<n>` (prefixed with a run tag on an `--addr` server, so reruns do not collide),
//! ten types of which `charge.*` is 20%, live and test mixed, and `created` spread evenly over
//! 30 days ending an hour ago, so a time range selects a known slice. Its rate is a figure too.
//!
//! The fill prints its progress every 10 s (a 10M fill takes minutes), sums the encoded sizes
//! of the stored events as the server returns them (for disk per event), and reads the
//! server's RSS right after it ends.
//!
//! `get`: 32 callers, random GetEvent over the filled ids. `list`: ListEvents pages of 100
//! with the exact total: newest first, without and with a type filter, over a time range that
//! holds 1% of the events in the middle, from a random `created` (oldest first from a random
//! time within the filled range, each call its own), and at a deep offset; 32 callers (8 for
//! the deep offset). Every response is checked (the id asked for; page length, total and for
//! the random start the first id where the bench knows them): a wrong answer is an error in
//! the figure, not a fast one. Responses are decoded for ids, sequences and totals only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventsd::proto::{ListEventsRequest, Order, PublishEventRequest, PublishEventsRequest};
use prost_types::Timestamp;

use crate::bench::{Compared, Context, Store};
use crate::cli::Settings;
use crate::client::{status_text, Client, Page, Pool};
use crate::error::Result;
use crate::load::{self, Limit, Op};
use crate::payload::{self, Rng, Template, FILL_TYPES};
use crate::report::{Figure, Section};
use crate::server::Rss;

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
/// How often a long fill prints its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// What the fill stored: enough to name any event and predict any listing.
#[derive(Debug, Clone)]
pub struct Filled {
    /// Events stored, ids `{prefix}0` to `{prefix}{events - 1}`.
    pub events: u64,
    /// The summed encoded sizes of the stored events, as the server returned them.
    pub encoded_bytes: u64,
    /// The server's memory right after the fill.
    pub rss_after_fill: Option<Rss>,
    prefix: String,
    /// `created` of event 0, in ns since the epoch.
    first_nanos: i128,
    /// `created` step between consecutive events, in ns.
    step_nanos: i128,
}

impl Filled {
    /// What a fill of `events` will store: ids with `prefix`, `created` over 30 days.
    pub fn plan(events: u64, prefix: String) -> Self {
        let now = payload::now();
        let now_nanos = i128::from(now.seconds) * 1_000_000_000 + i128::from(now.nanos);
        let span = SPAN.as_nanos() as i128;
        Filled {
            events,
            encoded_bytes: 0,
            rss_after_fill: None,
            prefix,
            first_nanos: now_nanos - span - 3_600 * 1_000_000_000,
            step_nanos: span / i128::from(events.max(1)),
        }
    }

    fn id(&self, n: u64) -> String {
        format!("{}{n}", self.prefix)
    }

    /// `created` of event `n`, in ns since the epoch.
    pub fn created_nanos(&self, n: u64) -> i128 {
        self.first_nanos + self.step_nanos * i128::from(n)
    }

    /// `created` of event `n`.
    pub fn created(&self, n: u64) -> Timestamp {
        let at = self.created_nanos(n);
        Timestamp {
            seconds: at.div_euclid(1_000_000_000) as i64,
            nanos: at.rem_euclid(1_000_000_000) as i32,
        }
    }

    /// The gap between the `created` of two consecutive events, in ns.
    pub fn step_nanos(&self) -> i128 {
        self.step_nanos
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
    client: Client,
    template: Template,
    plan: Arc<Filled>,
    next_batch: Arc<AtomicU64>,
    tally: Arc<FillTally>,
}

/// What the fill callers have stored so far, shared with the progress printer.
#[derive(Default)]
struct FillTally {
    events: AtomicU64,
    encoded_bytes: AtomicU64,
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
        let bytes: usize = response.events.iter().map(Vec::len).sum();
        self.tally.encoded_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        self.tally.events.fetch_add(response.events.len() as u64, Ordering::Relaxed);
        Ok(response.events.len() as u64)
    }
}

/// Longest the bench waits for the index to hold the whole fill before it gives up.
const INDEX_CATCH_UP_LIMIT: Duration = Duration::from_secs(1800);

/// Prints the fill's progress every [`PROGRESS_EVERY`] until `done` fires.
async fn print_progress(
    tally: Arc<FillTally>,
    total: u64,
    done: tokio::sync::oneshot::Receiver<()>,
) {
    let started = Instant::now();
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    tokio::pin!(done);
    loop {
        tokio::select! {
            _ = &mut done => return,
            _ = ticks.tick() => {
                let stored = tally.events.load(Ordering::Relaxed);
                let secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "[fill] {stored} of {total} events ({:.0}%), {:.0}/s, {:.0} s",
                    stored as f64 * 100.0 / total.max(1) as f64,
                    stored as f64 / secs.max(1e-9),
                    secs
                );
            }
        }
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
    if let Ok(figure) = &result {
        ctx.baseline.insert(Compared::Fill, figure.clone());
    }
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
    let tally = Arc::new(FillTally::default());
    let workers = (0..FILLERS)
        .map(|i| Filler {
            client: pool.client(i),
            template: template.clone(),
            plan: plan.clone(),
            next_batch: next_batch.clone(),
            tally: tally.clone(),
        })
        .collect();
    let limit = Limit { calls: plan.events.div_ceil(FILL_BATCH), time: settings.fill_cap };
    let around = store.target.around(true);
    let case = format!("PublishEvents x{FILL_BATCH}, {FILLERS} callers, caller ids");
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let progress = tokio::spawn(print_progress(tally.clone(), plan.events, done_rx));
    let result = load::run_figure(workers, limit, around, "fill", case).await;
    let _ = done_tx.send(());
    let _ = progress.await;
    let (mut figure, outcome) = result?;
    // Read first, before anything else touches the server.
    let rss = store.target.rss().ok();
    figure.set("batches", outcome.calls);
    // The index is applied behind the log; the read figures are of a store whose index holds
    // the whole fill, so wait for a listing to answer (it waits for the index itself, then
    // says UNAVAILABLE) and report how long the index took to catch up.
    let fill_ended = Instant::now();
    let mut client = pool.client(0);
    let newest = ListEventsRequest { limit: 1, ..Default::default() };
    loop {
        match client.list_events(newest.clone()).await {
            Ok(_) => break,
            Err(status) if status.code() == tonic::Code::Unavailable => {
                if fill_ended.elapsed() > INDEX_CATCH_UP_LIMIT {
                    return Err(format!(
                        "the index did not catch up with the fill within {INDEX_CATCH_UP_LIMIT:?}"
                    )
                    .into());
                }
            }
            Err(status) => return Err(status_text(&status).into()),
        }
    }
    figure.set("index_caught_up_s", (fill_ended.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    if let Some(rss) = rss {
        rss.apply(&mut figure);
    }
    if let Some(bytes) = store.target.data_bytes() {
        figure.set("store_mib", (bytes as f64 / 1_048_576.0).round());
    }
    let encoded_bytes = tally.encoded_bytes.load(Ordering::Relaxed);
    figure.set("encoded_bytes", encoded_bytes);
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
    filled.encoded_bytes = encoded_bytes;
    filled.rss_after_fill = rss;
    figure.set("store_events", filled.events);
    if filled.events < plan.events {
        figure.set("stopped_early_of", plan.events);
    }
    store.filled = Some(filled);
    Ok(figure)
}

/// One GetEvent caller.
struct Getter {
    client: Client,
    filled: Arc<Filled>,
    rng: Rng,
}

impl Op for Getter {
    async fn call(&mut self) -> Result<u64, String> {
        let id = self.filled.id(self.rng.below(self.filled.events));
        let event =
            self.client.get_event(&id).await.map_err(|s| format!("{id}: {}", status_text(&s)))?;
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
    let store = ctx.store.as_ref().ok_or("the store server vanished")?;
    let filled = Arc::new(store.filled.clone().ok_or("the store is not filled")?);
    let pool = Pool::connect(&store.target.addr, CHANNELS).await?;
    let workers = (0..READERS)
        .map(|i| Getter { client: pool.client(i), filled: filled.clone(), rng: Rng::seeded() })
        .collect();
    let limit = Limit { calls: settings.read_calls, time: settings.duration };
    let around = store.target.around(false);
    let case = format!("GetEvent random id, {READERS} callers");
    let (figure, _) = load::run_figure(workers, limit, around, "get", case).await?;
    let figure = figure.with("store_events", filled.events);
    ctx.baseline.insert(Compared::Get, figure.clone());
    section.figures.push(figure);
    section.note(format!(
        "{READERS} callers on {CHANNELS} shared channels; ids uniformly random over the {} \
         filled events; each run stops at {} calls or {:?}",
        filled.events, settings.read_calls, settings.duration
    ));
    Ok(section)
}

/// One ListEvents caller: asks its case's request (or a fresh random start) and checks the
/// answer.
struct Lister {
    client: Client,
    ask: Ask,
    filled: Arc<Filled>,
    rng: Rng,
    /// Whether the answer is checked (only a store the bench filled alone is predictable).
    check: bool,
}

/// What a listing case asks on every call.
#[derive(Debug, Clone)]
enum Ask {
    /// The same request, with the answer known in advance.
    Fixed(ListEventsRequest, Expect),
    /// A page of 100, oldest first, from a random time within the filled range.
    RandomFrom,
}

/// What a listing must return.
#[derive(Debug, Clone, PartialEq)]
struct Expect {
    total: i64,
    page_len: usize,
    /// The id of the page's first event, when the bench knows it.
    first_id: Option<String>,
}

impl Expect {
    fn check(&self, page: &Page) -> Result<(), String> {
        let first = page.data.first().map(|e| e.id.as_str());
        let first_ok = self.first_id.is_none() || first == self.first_id.as_deref();
        if page.total == self.total && page.data.len() == self.page_len && first_ok {
            return Ok(());
        }
        Err(format!(
            "expected total {}, {} events, first {:?}; got total {}, {} events, first {:?}",
            self.total,
            self.page_len,
            self.first_id,
            page.total,
            page.data.len(),
            first
        ))
    }
}

impl Lister {
    fn next(&mut self) -> (ListEventsRequest, Expect) {
        match &self.ask {
            Ask::Fixed(request, expect) => (request.clone(), expect.clone()),
            Ask::RandomFrom => random_from(&self.filled, &mut self.rng),
        }
    }
}

/// A random time in (created(k-1), created(k)] for a random k: the page starts at event k
/// and the total is every event from k on.
fn random_from(filled: &Filled, rng: &mut Rng) -> (ListEventsRequest, Expect) {
    let n = filled.events;
    let k = rng.below(n);
    let before = if k == 0 { 0 } else { rng.below(filled.step_nanos().max(1) as u64) };
    let at = filled.created_nanos(k) - i128::from(before);
    let from = Timestamp {
        seconds: at.div_euclid(1_000_000_000) as i64,
        nanos: at.rem_euclid(1_000_000_000) as i32,
    };
    let request = ListEventsRequest {
        from: Some(from),
        order: Order::Chronological as i32,
        limit: PAGE as i32,
        ..Default::default()
    };
    let total = n - k;
    let expect = Expect {
        total: total as i64,
        page_len: total.min(PAGE as u64) as usize,
        first_id: Some(filled.id(k)),
    };
    (request, expect)
}

impl Op for Lister {
    async fn call(&mut self) -> Result<u64, String> {
        let (request, expect) = self.next();
        let page = self.client.list_events(request).await.map_err(|s| status_text(&s))?;
        if self.check {
            expect.check(&page)?;
        }
        Ok(1)
    }
}

/// One listing case: its name, what it asks, its callers, and the comparison it feeds.
struct Case {
    name: String,
    ask: Ask,
    callers: usize,
    compared: Option<Compared>,
}

/// A fixed request whose matching events number `total`.
fn fixed(request: ListEventsRequest, total: u64) -> Ask {
    let offset = request.offset.max(0) as u64;
    let page_len = total.saturating_sub(offset).min(PAGE as u64) as usize;
    Ask::Fixed(request, Expect { total: total as i64, page_len, first_id: None })
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
    // The newest event is the last one filled: `created` grows with n.
    let newest_expect = Expect {
        total: n as i64,
        page_len: n.min(PAGE as u64) as usize,
        first_id: n.checked_sub(1).map(|last| filled.id(last)),
    };
    vec![
        Case {
            name: "newest page".into(),
            ask: Ask::Fixed(newest.clone(), newest_expect),
            callers: READERS,
            compared: Some(Compared::NewestPage),
        },
        Case {
            name: "newest page, types [charge.*]".into(),
            ask: fixed(
                ListEventsRequest { types: vec!["charge.*".into()], ..newest.clone() },
                filled.charge_events(),
            ),
            callers: READERS,
            compared: None,
        },
        Case {
            name: "time range holding 1%".into(),
            ask: fixed(
                ListEventsRequest {
                    from: Some(filled.created(first)),
                    to: Some(filled.created(last)),
                    ..newest.clone()
                },
                last - first + 1,
            ),
            callers: READERS,
            compared: None,
        },
        Case {
            name: "from a random created, oldest first".into(),
            ask: Ask::RandomFrom,
            callers: READERS,
            compared: Some(Compared::RandomPage),
        },
        Case {
            name: format!("deep offset {deep}"),
            ask: fixed(ListEventsRequest { offset: deep as i32, ..newest }, n),
            callers: DEEP_READERS,
            compared: Some(Compared::DeepPage),
        },
    ]
}

/// Runs the list scenario (filling first if needed).
pub async fn run_list(ctx: &mut Context) -> Result<Section> {
    let mut section = Section::default();
    section.figures.extend(ensure_filled(ctx).await?);
    let settings = ctx.settings.clone();
    let store = ctx.store.as_ref().ok_or("the store server vanished")?;
    let filled = Arc::new(store.filled.clone().ok_or("the store is not filled")?);
    // Only a store the bench filled alone has totals the bench can predict.
    let predictable = store.target.is_spawned();
    let pool = Pool::connect(&store.target.addr, CHANNELS).await?;
    for case in list_cases(&filled) {
        let workers = (0..case.callers)
            .map(|i| Lister {
                client: pool.client(i),
                ask: case.ask.clone(),
                filled: filled.clone(),
                rng: Rng::seeded(),
                check: predictable,
            })
            .collect();
        let limit = Limit { calls: settings.read_calls, time: settings.duration };
        let around = store.target.around(false);
        let name = format!("{}, {} callers", case.name, case.callers);
        let (mut figure, _) = load::run_figure(workers, limit, around, "list", name).await?;
        match &case.ask {
            Ask::Fixed(_, expect) => figure.set("total", expect.total),
            Ask::RandomFrom => figure.set("total", "from k on (random k)"),
        }
        figure.set("checked", predictable);
        if let Some(compared) = case.compared {
            ctx.baseline.insert(compared, figure.clone());
        }
        section.figures.push(figure);
    }
    section.note(format!(
        "ops = pages of {PAGE}, each with its exact total (newest first, except the random \
         start); store of {} events (10 types, charge.* = 20%, created over 30 days); \
         {CHANNELS} shared channels; responses decoded for id, sequence and total only",
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
        let Ask::Fixed(_, expect) = &cases[2].ask else { panic!("a fixed case") };
        assert_eq!(expect.total, 10_000);
        let Ask::Fixed(request, expect) = &cases[4].ask else { panic!("a fixed case") };
        assert_eq!((request.offset, expect.page_len), (100_000, 100));
    }

    #[test]
    fn a_random_start_expects_the_first_event_at_or_after_it() {
        let filled = Filled::plan(1_000, "bench_".into());
        let mut rng = Rng::seeded();
        for _ in 0..200 {
            let (request, expect) = random_from(&filled, &mut rng);
            let from = request.from.unwrap();
            let at = i128::from(from.seconds) * 1_000_000_000 + i128::from(from.nanos);
            let k = (filled.events as i64 - expect.total) as u64;
            assert!(filled.created_nanos(k) >= at);
            assert!(k == 0 || filled.created_nanos(k - 1) < at);
            assert_eq!(expect.first_id, Some(filled.id(k)));
            assert_eq!(expect.page_len as u64, expect.total.min(100) as u64);
        }
    }
}
