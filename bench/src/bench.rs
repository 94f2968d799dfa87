//! The run: resolve the server, make the work folder, run the chosen scenarios in order, and
//! print each one's table as soon as it is done.
//!
//! Servers: `publish` and `fanout` each get a fresh server (empty store), so their figures do
//! not depend on what ran before. `get`, `list`, `memory` and `startup` share one "store"
//! server, filled once by whichever of them runs first, because filling a million events is
//! the slow part. With `--addr` every scenario uses that server, and `memory` and `startup`
//! (which need the process) are skipped. A failed scenario is reported and the next one runs.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::SystemTime;

use tempfile::TempDir;

use crate::cli::{Cli, Scenario, Settings};
use crate::error::{Context as _, Result};
use crate::payload::Template;
use crate::reads::Filled;
use crate::report::{Figure, Report, Section};
use crate::server::{ServerSpec, Target};
use crate::{fanout, memory, outbound, publish, reads, redis, startup};

/// How the run ended.
pub enum Verdict {
    /// Every chosen scenario ran (skips included).
    AllRan,
    /// At least one scenario failed.
    SomeFailed,
}

/// An eventsd figure with a Redis counterpart, as the comparison table names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Compared {
    /// Durable unary publish with this many publishers (Redis: XADD, one connection each).
    Publish(usize),
    /// PublishEvents batches of 100 (Redis has no counterpart; listed for the target).
    Batches,
    /// Fan-out to this many subscribers (Redis: one XREAD BLOCK loop per subscriber).
    Fanout(usize),
    /// GetEvent, 32 callers, at the filled size (no Redis counterpart).
    Get,
    /// Newest page of 100 with its total (Redis: XREVRANGE + - COUNT 100).
    NewestPage,
    /// A page of 100 from a random `created` with its total (Redis: XRANGE from a random id).
    RandomPage,
    /// A page of 100 at offset 100,000 (no Redis counterpart).
    DeepPage,
    /// The fill of the store, with the RSS read right after it.
    Fill,
    /// Disk per event of the cleanly stopped store.
    Disk,
    /// Restart after SIGTERM, straight after the fill.
    StartAfterTerm,
    /// Restart after kill -9, idle.
    StartAfterKill,
}

/// What the scenarios share.
pub struct Context {
    /// Counts and caps of this invocation.
    pub settings: Settings,
    /// The server to spawn; `None` with `--addr`.
    pub spec: Option<ServerSpec>,
    /// The `--addr` server, if any.
    pub external: Option<String>,
    /// The charge every publisher sends.
    pub template: Template,
    /// eventsd's figures that the Redis group puts beside its own.
    pub baseline: BTreeMap<Compared, Figure>,
    /// The filled-store server of get, list, memory and startup.
    pub store: Option<Store>,
    // Dropped last: every server's data folder lives inside it.
    root: TempDir,
}

/// The server that get, list, memory and startup share.
pub struct Store {
    /// The server.
    pub target: Target,
    /// Its RSS right after start, with an empty store.
    pub idle_rss_kib: Option<u64>,
    /// What the fill stored, once it has run.
    pub filled: Option<Filled>,
}

impl Context {
    /// The bench's work folder (data folders, logs, probes).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A server with an empty store (or the `--addr` server).
    pub async fn fresh_target(&self, label: &str) -> Result<Target> {
        match (&self.external, &self.spec) {
            (Some(addr), _) => Ok(Target::external(addr)),
            (None, Some(spec)) => Target::spawn(spec, self.root.path(), label).await,
            (None, None) => Err("neither a server binary nor --addr".into()),
        }
    }

    /// The shared store server, started on first use (its idle RSS is read then).
    pub async fn store(&mut self) -> Result<&mut Store> {
        if self.store.is_none() {
            let target = self.fresh_target("store").await?;
            let idle_rss_kib = if target.is_spawned() {
                tokio::time::sleep(self.settings.settle).await;
                Some(target.rss_kib()?)
            } else {
                None
            };
            self.store = Some(Store { target, idle_rss_kib, filled: None });
        }
        self.store.as_mut().ok_or_else(|| "the store server vanished".into())
    }
}

/// Runs the chosen scenarios.
pub async fn run(cli: Cli) -> Result<Verdict> {
    let settings = Settings::new(cli.scale, cli.duration, cli.store_events);
    let spec = match &cli.addr {
        Some(_) => None,
        None => Some(ServerSpec::resolve(
            cli.server_bin.clone(),
            cli.server_args.clone(),
            settings.startup_timeout,
        )?),
    };
    let work_dir = cli.work_dir.clone().unwrap_or_else(std::env::temp_dir);
    let root = tempfile::Builder::new()
        .prefix("eventsd-bench-")
        .tempdir_in(&work_dir)
        .context(format!("cannot create a work folder in {}", work_dir.display()))?;
    let mut report = Report::open(cli.json.as_deref(), stamp(&settings))?;
    let mut ctx = Context {
        settings,
        spec,
        external: cli.addr.clone(),
        template: Template::new()?,
        baseline: BTreeMap::new(),
        store: None,
        root,
    };
    print_header(&ctx, &cli);

    let mut verdict = Verdict::AllRan;
    for scenario in Scenario::selection(&cli.scenarios) {
        eprintln!("[{}] running…", scenario.name());
        let title = title(scenario);
        match run_one(scenario, &mut ctx).await {
            Ok(section) => report.emit(title, &section)?,
            Err(err) => {
                println!("\n== {title}\n  FAILED: {err}");
                verdict = Verdict::SomeFailed;
            }
        }
    }
    Ok(verdict)
}

async fn run_one(scenario: Scenario, ctx: &mut Context) -> Result<Section> {
    match scenario {
        Scenario::Publish => publish::run(ctx).await,
        Scenario::Fanout => fanout::run(ctx).await,
        Scenario::Get => reads::run_get(ctx).await,
        Scenario::List => reads::run_list(ctx).await,
        Scenario::Memory => memory::run(ctx).await,
        Scenario::Startup => startup::run(ctx).await,
        Scenario::Outbound => outbound::run(ctx).await,
        Scenario::Redis => redis::run(ctx).await,
    }
}

/// What every JSON line says about its run.
fn stamp(settings: &Settings) -> serde_json::Map<String, serde_json::Value> {
    let started =
        SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut stamp = serde_json::Map::new();
    stamp.insert("scale".into(), settings.scale_name().into());
    stamp.insert("run_started_unix".into(), started.into());
    stamp
}

fn title(scenario: Scenario) -> &'static str {
    match scenario {
        Scenario::Publish => "publish: unary PublishEvent, then PublishEvents batches of 100",
        Scenario::Fanout => "fanout: publish-to-receive latency with N subscribers, 8 publishers",
        Scenario::Get => "get: fill the store, then random GetEvent",
        Scenario::List => "list: ListEvents pages of 100 with the exact total",
        Scenario::Memory => "memory: server RSS (VmRSS, mapped files included)",
        Scenario::Startup => "startup: disk per event, then restart to serving",
        Scenario::Outbound => "outbound: webhook deliveries to N endpoints, commit → 200",
        Scenario::Redis => "redis: appendfsync always, beside eventsd's figures",
    }
}

fn print_header(ctx: &Context, cli: &Cli) {
    let s = &ctx.settings;
    println!(
        "eventsd-bench, scale {} (each run capped at {:?}; store of {} events)",
        s.scale_name(),
        s.duration,
        s.store_events
    );
    match (&ctx.external, &ctx.spec) {
        (Some(addr), _) => println!("server: {addr} (external; memory and startup skipped)"),
        (None, Some(spec)) => {
            println!(
                "server: {} (built {}), spawned per scenario group on free loopback ports{}",
                spec.bin.display(),
                age(&spec.bin),
                if spec.args.is_empty() {
                    String::new()
                } else {
                    format!(", extra flags {:?}", spec.args)
                }
            );
            if spec.bin.components().any(|c| c.as_os_str() == "debug") {
                println!(
                    "WARNING: a debug build of eventsd; its figures say nothing about speed \
                     (build with --release)"
                );
            }
        }
        (None, None) => {}
    }
    println!(
        "work folder: {} ({}); machine: {} CPUs",
        ctx.root().display(),
        filesystem_of(ctx.root()),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!(
        "event: {} B encoded Struct (an Omise-style charge); fsync columns: p50 of 1 KiB \
         write+fdatasync just before/after each durable figure",
        ctx.template.encoded_len()
    );
    if let Some(path) = &cli.json {
        println!("JSON lines appended to {}", path.display());
    }
}

/// How long ago a file was modified, for spotting a stale server binary.
fn age(path: &Path) -> String {
    let modified = std::fs::metadata(path).and_then(|m| m.modified());
    match modified.ok().and_then(|t| SystemTime::now().duration_since(t).ok()) {
        Some(ago) if ago.as_secs() < 120 => format!("{} s ago", ago.as_secs()),
        Some(ago) if ago.as_secs() < 7_200 => format!("{} min ago", ago.as_secs() / 60),
        Some(ago) => format!("{} h ago", ago.as_secs() / 3_600),
        None => "at an unknown time".into(),
    }
}

/// The filesystem type of the mount holding `path` (tmpfs would make fsync figures
/// meaningless), from /proc/self/mounts.
fn filesystem_of(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "filesystem unknown".into();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, mount, fs) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount).then(|| (mount.len(), fs.to_string()))
        })
        .max()
        .map_or("filesystem unknown".into(), |(_, fs)| {
            if fs == "tmpfs" {
                "tmpfs: fsync figures are meaningless here, use --work-dir".into()
            } else {
                fs
            }
        })
}
