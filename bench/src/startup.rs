//! `startup`: how long the filled store takes to serve again after a clean stop (SIGTERM),
//! after kill -9 while idle, and after kill -9 while 32 publishers publish at full speed.
//!
//! While the server is cleanly stopped, before the first restart, the bench measures disk per
//! event: `du -sb` of the data folder over the summed encoded sizes of the filled events (as
//! the server returned them). No scenario before this one writes to the store after the fill.
//!
//! Restart time is from spawning the process to gRPC health SERVING. After the kill under
//! load the bench also checks durability: every acked event must be there after the restart
//! (the newest durable sequence is at least the highest acked one, and the most recently acked
//! ids, up to 1,000, are all found by GetEvent).

use std::time::Duration;

use crate::bench::{Compared, Context};
use crate::client::{self, status_text, Client, Pool};
use crate::error::{Context as _, Result};
use crate::load::{self, Limit, Op};
use crate::publish::UnaryPublisher;
use crate::reads;
use crate::report::{Figure, Section};
use crate::server::Target;

/// Publishers running when the server is killed.
const PUBLISHERS: usize = 32;
/// Channels they share.
const CHANNELS: usize = 4;
/// Acked events checked with GetEvent after the restart (the newest ones).
const CHECKED: usize = 1_000;

/// A unary publisher that keeps what was acked.
struct RecordingPublisher {
    inner: UnaryPublisher,
    acked: Vec<(u64, String)>,
}

impl Op for RecordingPublisher {
    async fn call(&mut self) -> Result<u64, String> {
        let event = self.inner.publish().await?;
        self.acked.push((event.sequence, event.id));
        Ok(1)
    }
}

/// Runs the startup scenario.
pub async fn run(ctx: &mut Context) -> Result<Section> {
    let mut section = Section::default();
    if ctx.external.is_some() {
        section.note("skipped: --addr server (the bench can only restart a server it spawned)");
        return Ok(section);
    }
    section.figures.extend(reads::ensure_filled(ctx).await?);
    let settings = ctx.settings.clone();
    let template = ctx.template.clone();
    let store = ctx.store().await?;
    let events = store.filled.as_ref().map_or(0, |f| f.events);
    let encoded_bytes = store.filled.as_ref().map_or(0, |f| f.encoded_bytes);
    let target = &mut store.target;

    eprintln!("[startup] SIGTERM and restart");
    let (stop, clean) = target.stop().await?;
    let disk = disk_figure(target.disk_usage()?, events, encoded_bytes);
    let restart = target.start().await?;
    let after_term = restart_figure("after SIGTERM", restart, target)
        .with("stop_ms", ms(stop))
        .with("clean_exit", clean);

    eprintln!("[startup] kill -9 while idle and restart");
    target.kill().await?;
    let restart = target.start().await?;
    let after_kill = restart_figure("after kill -9, idle", restart, target);
    let compared = [
        (Compared::Disk, disk),
        (Compared::StartAfterTerm, after_term),
        (Compared::StartAfterKill, after_kill),
    ];
    section.figures.extend(compared.iter().map(|(_, figure)| figure.clone()));

    eprintln!("[startup] kill -9 under load and restart");
    let pool = Pool::connect(&target.addr, CHANNELS).await?;
    let workers = (0..PUBLISHERS)
        .map(|i| RecordingPublisher {
            inner: UnaryPublisher::new(pool.client(i), &template),
            acked: Vec::new(),
        })
        .collect();
    // The publishers run until the kill makes every call fail; the time cap is a safety net.
    let limit = Limit { calls: u64::MAX, time: settings.kill_after + Duration::from_secs(30) };
    let publishing = tokio::spawn(load::run(workers, limit));
    tokio::time::sleep(settings.kill_after).await;
    target.kill().await?;
    let outcome = publishing.await.context("the publishers panicked")??;
    drop(pool);
    let restart = target.start().await?;
    let mut acked: Vec<(u64, String)> = outcome.workers.into_iter().flat_map(|w| w.acked).collect();
    acked.sort_unstable();
    let check = check_acked(&target.addr, &acked).await?;
    section.figures.push(
        restart_figure(&format!("after kill -9 under {PUBLISHERS} publishers"), restart, target)
            .with("acked_before_kill", acked.len() as u64)
            .with("durable_after", check.durable)
            .with("checked", check.checked)
            .with("lost", check.lost),
    );

    section.note(format!(
        "store of {events} events (plus what earlier scenarios added); restart = spawn to \
         health SERVING; kill -9 under load came {:?} after the publishers started",
        settings.kill_after
    ));
    ctx.baseline.extend(compared);
    section.note(
        "lost = acked events missing after the restart (the newest acked are checked with \
         GetEvent; any loss breaks the durability promise)",
    );
    Ok(section)
}

/// Disk per event of the cleanly stopped store.
fn disk_figure(du_bytes: u64, events: u64, encoded_bytes: u64) -> Figure {
    let mut figure = Figure::new("startup", "disk per event, cleanly stopped")
        .with("du_sb_bytes", du_bytes)
        .with("encoded_bytes", encoded_bytes)
        .with("store_events", events);
    if events > 0 {
        figure.set("disk_bytes_per_event", (du_bytes as f64 / events as f64).round());
    }
    if encoded_bytes > 0 {
        figure.set(
            "disk_over_encoded",
            (du_bytes as f64 / encoded_bytes as f64 * 1_000.0).round() / 1_000.0,
        );
    }
    figure
}

fn restart_figure(case: &str, restart: Duration, target: &Target) -> Figure {
    let mut figure = Figure::new("startup", case).with("restart_ms", ms(restart));
    figure.seconds = restart.as_secs_f64();
    // Read right after SERVING: the CPU the start-up itself cost.
    if let Some(cpu) = target.cpu_seconds() {
        figure.set("server_cpu_ms_to_serve", (cpu * 1_000.0).round());
    }
    if let Ok(rss) = target.rss() {
        figure.set("rss_kib", rss.total_kib);
        rss.apply(&mut figure);
    }
    figure
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

/// The durability check after a kill.
struct Check {
    durable: u64,
    checked: u64,
    lost: u64,
}

/// Checks that the acked events (sorted by sequence) survived.
async fn check_acked(addr: &str, acked: &[(u64, String)]) -> Result<Check> {
    let durable = client::durable_sequence(addr).await?;
    let channel = client::channel(addr).await?;
    let mut client = Client::new(channel);
    let newest = &acked[acked.len().saturating_sub(CHECKED)..];
    let mut lost = acked.iter().filter(|(seq, _)| *seq > durable).count() as u64;
    for (seq, id) in newest.iter().filter(|(seq, _)| *seq <= durable) {
        match client.get_event(id).await {
            Ok(found) if found.sequence == *seq => {}
            Ok(_) => lost += 1,
            Err(status) if status.code() == tonic::Code::NotFound => lost += 1,
            Err(status) => return Err(format!("GetEvent {id}: {}", status_text(&status)).into()),
        }
    }
    Ok(Check { durable, checked: newest.len() as u64, lost })
}
