//! `redis`: Redis 7 with every write fsynced, as the yardstick of issue #13, in the same run.
//!
//! When `redis-server` is on PATH, the bench starts it as a child ([`server`]) with
//! `--save '' --appendonly yes --appendfsync always` and measures, each as a table row and a
//! JSON line with Redis's and the bench's CPU per operation:
//! - XADD with 1, 32 and 128 publishers ([`publish`]), beside eventsd's PublishEvent;
//! - fan-out to 100 subscribers, one XREAD BLOCK loop each ([`fanout`]), beside eventsd's;
//! - a stream filled like eventsd's store, then the newest page (XREVRANGE) and a page from a
//!   random id (XRANGE) ([`pages`]), beside eventsd's newest page and page from a random
//!   `created`.
//!
//! Without redis-server the group says so and is skipped (CI installs nothing for it). Either
//! way it ends with the table of issue #13's targets: eventsd's figures from this run, Redis's
//! beside them, the ratio, and whether the target and the floor are met.

mod fanout;
mod pages;
mod publish;
mod resp;
mod server;

use crate::bench::{Compared, Context};
use crate::error::{Context as _, Result};
use crate::report::{format_ms, Figure, Section, Table};

/// Runs the Redis comparison (or explains how to enable it) and prints the targets table.
pub async fn run(ctx: &mut Context) -> Result<Section> {
    let mut section = Section::default();
    let mut redis = Redis::default();
    match server::find_on_path("redis-server") {
        None => section.note(
            "skipped: redis-server is not on PATH. To compare, install it \
             (Debian/Ubuntu: `apt-get install redis-server`) and run \
             `eventsd-bench publish fanout list redis`",
        ),
        Some(bin) => {
            measure(ctx, &bin, &mut section, &mut redis).await?;
            section.note(format!(
                "{} with --appendonly yes --appendfsync always --save ''; one connection per \
                 publisher, subscriber or reader; the same ~1 KiB charge as JSON text; runs \
                 stop at the same counts and time caps as eventsd's",
                server::version(&bin)
            ));
        }
    }
    section.tables.push(targets(&ctx.baseline, &redis));
    section.note(
        "targets and floors are issue #13's; a verdict means something only for a release \
         build at --scale full (GetEvent, RSS and start-up targets are for 10M stored: \
         --scale huge; rows of groups not run show -)",
    );
    Ok(section)
}

/// Redis's figures that the targets table compares with.
#[derive(Default)]
struct Redis {
    publish: Vec<(usize, Figure)>,
    fanout: Option<Figure>,
    newest: Option<Figure>,
    random: Option<Figure>,
}

async fn measure(
    ctx: &Context,
    bin: &std::path::Path,
    section: &mut Section,
    redis: &mut Redis,
) -> Result<()> {
    let dir = tempfile::Builder::new()
        .prefix("redis-")
        .tempdir_in(ctx.root())
        .context("cannot create the redis folder")?;
    let server = server::start(bin, dir.path(), ctx.root()).await?;

    redis.publish = publish::run(ctx, &server).await?;
    for (publishers, figure) in &redis.publish {
        let mut figure = figure.clone();
        if let (Some(ours), Some(theirs)) = (
            ctx.baseline.get(&Compared::Publish(*publishers)).and_then(Figure::ops_per_sec),
            figure.ops_per_sec(),
        ) {
            figure.set("eventsd_ops_per_sec", ours.round());
            figure.set("eventsd_over_redis", (ours / theirs * 100.0).round() / 100.0);
        }
        section.figures.push(figure);
    }

    eprintln!("[redis] fan-out to {} subscribers", fanout::SUBSCRIBERS);
    let figure = fanout::run(ctx, &server).await?;
    section.figures.push(figure.clone());
    section.note(format!("fan-out: {}", crate::fanout::notes(&ctx.settings)));
    redis.fanout = Some(figure);

    let pages = pages::run(ctx, &server).await?;
    section.figures.push(pages.fill);
    section.figures.push(pages.newest.clone());
    section.figures.push(pages.random.clone());
    redis.newest = Some(pages.newest);
    redis.random = Some(pages.random);
    if ctx.settings.store_events > pages::FILL_CAP {
        section.note(format!(
            "the Redis stream holds {} events, not {}: Redis keeps it all in memory, and an \
             XRANGE seek in its radix tree barely depends on the length",
            pages::FILL_CAP,
            ctx.settings.store_events
        ));
    }
    Ok(())
}

/// How a target is judged.
#[derive(Clone, Copy)]
enum Goal {
    /// eventsd / Redis throughput at least `target` (and `floor`), and p99 at most `p99_ms`.
    Ratio { target: f64, floor: Option<f64>, p99_ms: Option<f64> },
    /// eventsd's p50 at most Redis's p50 plus this many ms.
    P50Within(f64),
    /// eventsd's throughput at least `target` (and `floor`) per second.
    Rate { target: f64, floor: Option<f64> },
    /// The figure's `extra[key]` at most `target` (and `floor`).
    AtMost { key: &'static str, target: f64, floor: Option<f64> },
    /// No target: printed for the ratio.
    None,
}

/// One row of the targets table.
struct Row {
    workload: String,
    ours: Option<Figure>,
    theirs: Option<Figure>,
    goal: Goal,
    target: &'static str,
}

fn targets(baseline: &std::collections::BTreeMap<Compared, Figure>, redis: &Redis) -> Table {
    let ours = |c: Compared| baseline.get(&c).cloned();
    let publish = |n: usize| redis.publish.iter().find(|(p, _)| *p == n).map(|(_, f)| f.clone());
    let rows = vec![
        Row {
            workload: "durable publish, 1 publisher (p50)".into(),
            ours: ours(Compared::Publish(1)),
            theirs: publish(1),
            goal: Goal::P50Within(0.1),
            target: "p50 <= Redis p50 + 0.1 ms",
        },
        Row {
            workload: "durable publish, 32 publishers".into(),
            ours: ours(Compared::Publish(32)),
            theirs: publish(32),
            goal: Goal::Ratio { target: 1.5, floor: Some(1.0), p99_ms: Some(5.0) },
            target: ">= 1.5x Redis, p99 <= 5 ms (floor 1.0x)",
        },
        Row {
            workload: "durable publish, 128 publishers".into(),
            ours: ours(Compared::Publish(128)),
            theirs: publish(128),
            goal: Goal::None,
            target: "-",
        },
        Row {
            workload: "PublishEvents, 100 per call".into(),
            ours: ours(Compared::Batches),
            theirs: None,
            goal: Goal::Rate { target: 100_000.0, floor: Some(40_000.0) },
            target: ">= 100,000/s (floor 40,000/s)",
        },
        Row {
            workload: "fan-out to 100 subscribers (deliveries)".into(),
            ours: ours(Compared::Fanout(100)),
            theirs: redis.fanout.clone(),
            goal: Goal::Ratio { target: 1.5, floor: Some(1.0), p99_ms: None },
            target: ">= 1.5x Redis (floor 1.0x)",
        },
        Row {
            workload: stored("GetEvent, 32 callers", &ours(Compared::Get)),
            ours: ours(Compared::Get),
            theirs: None,
            goal: Goal::Rate { target: 30_000.0, floor: Some(15_000.0) },
            target: ">= 30,000/s at 10M (floor 15,000/s)",
        },
        Row {
            workload: "newest page of 100 with total (vs XREVRANGE)".into(),
            ours: ours(Compared::NewestPage),
            theirs: redis.newest.clone(),
            goal: Goal::Ratio { target: 1.5, floor: Some(1.0), p99_ms: None },
            target: ">= 1.5x Redis (floor 1.0x)",
        },
        Row {
            workload: "page from a random created with total (vs XRANGE)".into(),
            ours: ours(Compared::RandomPage),
            theirs: redis.random.clone(),
            goal: Goal::Ratio { target: 1.0, floor: Some(0.5), p99_ms: None },
            target: ">= 1.0x Redis (floor 0.5x)",
        },
        Row {
            workload: ours(Compared::DeepPage).map_or("page at offset 100,000".into(), |f| f.case),
            ours: ours(Compared::DeepPage),
            theirs: None,
            goal: Goal::Rate { target: 1_000.0, floor: None },
            target: ">= 1,000 pages/s at offset 100,000",
        },
        Row {
            workload: stored("RSS right after the fill", &ours(Compared::Fill)),
            ours: ours(Compared::Fill),
            theirs: None,
            goal: Goal::AtMost { key: "rss_mib", target: 256.0, floor: Some(512.0) },
            target: "<= 256 MiB at 10M (floor 512 MiB)",
        },
        Row {
            workload: "start-up after SIGTERM straight after the fill".into(),
            ours: ours(Compared::StartAfterTerm),
            theirs: None,
            goal: Goal::AtMost { key: "restart_ms", target: 1_000.0, floor: Some(3_000.0) },
            target: "<= 1 s at 10M (floor 3 s)",
        },
        Row {
            workload: "start-up after kill -9".into(),
            ours: ours(Compared::StartAfterKill),
            theirs: None,
            goal: Goal::AtMost { key: "restart_ms", target: 1_000.0, floor: Some(1_000.0) },
            target: "<= 1 s at 10M (floor 1 s)",
        },
        Row {
            workload: "disk per event / encoded event".into(),
            ours: ours(Compared::Disk),
            theirs: None,
            goal: Goal::AtMost { key: "disk_over_encoded", target: 1.3, floor: None },
            target: "<= 1.3x",
        },
    ];
    Table {
        title: "issue #13 targets: eventsd and Redis in this run".into(),
        header: ["workload", "eventsd", "redis", "eventsd/redis", "target", "verdict"]
            .map(String::from)
            .to_vec(),
        rows: rows.iter().map(Row::cells).collect(),
    }
}

/// "GetEvent, 32 callers, 2000 stored".
fn stored(what: &str, figure: &Option<Figure>) -> String {
    match figure.as_ref().and_then(|f| f.extra.get("store_events")) {
        Some(events) => format!("{what}, {events} stored"),
        None => what.to_string(),
    }
}

impl Row {
    fn cells(&self) -> Vec<String> {
        let rate = |f: &Option<Figure>| f.as_ref().and_then(Figure::ops_per_sec);
        let (ours, theirs) = (rate(&self.ours), rate(&self.theirs));
        let ratio = match (ours, theirs) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        };
        vec![
            self.workload.clone(),
            describe(&self.ours, self.goal),
            describe(&self.theirs, self.goal),
            ratio.map_or("-".into(), |r| format!("{r:.2}x")),
            self.target.to_string(),
            self.verdict(ours, ratio).to_string(),
        ]
    }

    fn verdict(&self, ours: Option<f64>, ratio: Option<f64>) -> &'static str {
        let p = |f: &Option<Figure>, pick: fn(&crate::report::Latency) -> f64| {
            f.as_ref().and_then(|f| f.latency.as_ref().map(pick))
        };
        let judge = |value: f64, target: f64, floor: Option<f64>, extra_ok: bool| {
            if value >= target && extra_ok {
                "met"
            } else if floor.is_some_and(|floor| value >= floor) {
                "floor met, target missed"
            } else {
                "missed"
            }
        };
        match self.goal {
            Goal::None => "-",
            Goal::P50Within(ms) => {
                match (p(&self.ours, |l| l.p50_ms), p(&self.theirs, |l| l.p50_ms)) {
                    (Some(a), Some(b)) if a <= b + ms => "met",
                    (Some(_), Some(_)) => "missed",
                    _ => "-",
                }
            }
            Goal::Ratio { target, floor, p99_ms } => match ratio {
                Some(r) => {
                    let p99_ok = match (p99_ms, p(&self.ours, |l| l.p99_ms)) {
                        (Some(limit), Some(p99)) => p99 <= limit,
                        _ => true,
                    };
                    judge(r, target, floor, p99_ok)
                }
                None => "-",
            },
            Goal::Rate { target, floor } => match ours {
                Some(rate) => judge(rate, target, floor, true),
                None => "-",
            },
            // Judged on the negated value: at most x is at least -x.
            Goal::AtMost { key, target, floor } => match extra(&self.ours, key) {
                Some(value) => judge(-value, -target, floor.map(|f| -f), true),
                None => "-",
            },
        }
    }
}

/// A figure as one cell: `4,718/s, p50 0.32 ms` (p99 where the target is about p99 or a ratio).
fn describe(figure: &Option<Figure>, goal: Goal) -> String {
    if let Goal::AtMost { key, .. } = goal {
        return extra(figure, key).map_or("-".into(), |value| format!("{key}={value}"));
    }
    let Some(figure) = figure else {
        return "-".into();
    };
    let Some(rate) = figure.ops_per_sec() else {
        return "-".into();
    };
    let latency = figure.latency.map(|l| match goal {
        Goal::P50Within(_) => format!(", p50 {} ms", format_ms(l.p50_ms)),
        _ => format!(", p99 {} ms", format_ms(l.p99_ms)),
    });
    format!("{}/s{}", thousands(rate), latency.unwrap_or_default())
}

/// A number of a figure's `extra`.
fn extra(figure: &Option<Figure>, key: &str) -> Option<f64> {
    figure.as_ref()?.extra.get(key)?.as_f64()
}

/// 12345.6 → "12,346".
fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Latency;

    fn figure(ops: u64, p50_ms: f64, p99_ms: f64) -> Figure {
        let mut f = Figure::new("test", "case");
        f.ops = ops;
        f.seconds = 1.0;
        f.latency = Some(Latency { p50_ms, p99_ms, p999_ms: p99_ms });
        f
    }

    #[test]
    fn verdicts_follow_targets_and_floors() {
        let row = |ours: Figure, theirs: Option<Figure>, goal| Row {
            workload: String::new(),
            ours: Some(ours),
            theirs,
            goal,
            target: "",
        };
        let ratio = Goal::Ratio { target: 1.5, floor: Some(1.0), p99_ms: Some(5.0) };
        let redis = Some(figure(1_000, 0.3, 1.0));
        assert_eq!(row(figure(1_600, 1.0, 4.0), redis.clone(), ratio).cells()[5], "met");
        assert_eq!(
            row(figure(1_600, 1.0, 9.0), redis.clone(), ratio).cells()[5],
            "floor met, target missed"
        );
        assert_eq!(row(figure(900, 1.0, 4.0), redis.clone(), ratio).cells()[5], "missed");
        assert_eq!(
            row(figure(900, 0.35, 1.0), redis.clone(), Goal::P50Within(0.1)).cells()[5],
            "met"
        );
        assert_eq!(row(figure(900, 0.5, 1.0), redis, Goal::P50Within(0.1)).cells()[5], "missed");
        let rate = Goal::Rate { target: 100_000.0, floor: Some(40_000.0) };
        assert_eq!(
            row(figure(50_000, 1.0, 1.0), None, rate).cells()[5],
            "floor met, target missed"
        );
        assert_eq!(row(figure(50_000, 1.0, 1.0), None, ratio).cells()[5], "-");
        let at_most = Goal::AtMost { key: "rss_mib", target: 256.0, floor: Some(512.0) };
        let rss = |mib: f64| figure(0, 0.0, 0.0).with("rss_mib", mib);
        assert_eq!(row(rss(200.0), None, at_most).cells()[5], "met");
        assert_eq!(row(rss(400.0), None, at_most).cells()[5], "floor met, target missed");
        assert_eq!(row(rss(1_080.0), None, at_most).cells()[5], "missed");
        assert_eq!(row(rss(200.0), None, at_most).cells()[1], "rss_mib=200");
    }

    #[test]
    fn rates_print_with_thousands_separators() {
        assert_eq!(thousands(4_718.4), "4,718");
        assert_eq!(thousands(153_852.0), "153,852");
        assert_eq!(thousands(69.0), "69");
    }
}
