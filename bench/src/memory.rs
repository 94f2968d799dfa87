//! `memory`: the store server's resident memory (VmRSS from /proc, mapped files included, with
//! its anonymous and file parts) idle with an empty store, right after the fill (read by the
//! fill itself), when this scenario starts, with many idle subscribers open, and after they
//! are closed.
//!
//! Idle subscribers subscribe from now and are read up to `caught_up`, then left open. They
//! go at most 500 streams to a channel; if a channel stops accepting streams (a server may cap
//! concurrent streams per connection, and an HTTP/2 client then queues new streams instead of
//! failing), the open times out and the rest go on new channels. Per-subscriber memory is
//! (RSS with them − RSS before) / subscribers. RSS after closing shows whether the server gave
//! the memory back (the allocator may keep it; that is not a leak by itself).

use std::time::{Duration, Instant};

use eventsd::proto::SubscribeEventsRequest;
use tokio::task::JoinSet;
use tonic::transport::Channel;
use tonic::Streaming;

use crate::bench::Context;
use crate::client::{self, StreamItem};
use crate::error::{Context as _, Result};
use crate::report::{Figure, Section};
use crate::{metrics, reads};

/// Most subscription streams per channel.
const STREAMS_PER_CHANNEL: usize = 500;
/// How long one stream may take to open and reach `caught_up` before its channel counts as
/// full.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// Most rounds of new channels before giving up.
const MAX_ROUNDS: usize = 20;
/// The server's gauge of open subscriptions (from /metrics, when it has one).
const SUBSCRIBERS: &str = "eventsd_subscribers";

/// Idle subscribers held open: dropping this closes them.
struct Idle {
    streams: Vec<Streaming<StreamItem>>,
    channels: Vec<Channel>,
    /// Channels that stopped accepting streams before their share was open.
    full_channels: usize,
}

/// Runs the memory scenario.
pub async fn run(ctx: &mut Context) -> Result<Section> {
    let mut section = Section::default();
    if ctx.external.is_some() {
        section.note(
            "skipped: --addr server (the bench can only read the memory of a server it spawned)",
        );
        return Ok(section);
    }
    section.figures.extend(reads::ensure_filled(ctx).await?);
    let subscribers = ctx.settings.idle_subscribers;
    let settle = ctx.settings.settle;
    let store = ctx.store().await?;
    let filled_events = store.filled.as_ref().map_or(0, |f| f.events);

    let idle = store.idle_rss_kib.ok_or("the idle RSS was not read")?;
    section.figures.push(rss_figure("idle after start, empty store", idle));
    if let Some(rss) = store.filled.as_ref().and_then(|f| f.rss_after_fill) {
        let mut figure =
            Figure::new("memory", format!("right after the fill of {filled_events} events"));
        rss.apply(&mut figure);
        section
            .figures
            .push(figure.with("rss_kib", rss.total_kib).with("store_events", filled_events));
    }
    let mut figure = Figure::new("memory", "when this scenario starts");
    let now = store.target.rss()?;
    now.apply(&mut figure);
    section.figures.push(figure.with("rss_kib", now.total_kib));

    eprintln!("[memory] opening {subscribers} idle subscribers");
    let before = store.target.rss_kib()?;
    let started = Instant::now();
    let open = open_idle(&store.target.addr, subscribers).await?;
    let took = started.elapsed();
    tokio::time::sleep(settle).await;
    let with_subs = store.target.rss_kib()?;
    let per_sub = with_subs.saturating_sub(before) as f64 / subscribers.max(1) as f64;
    let server_count = metrics::value(store.target.http, SUBSCRIBERS).await;
    let mut figure = rss_figure(&format!("{subscribers} idle subscribers"), with_subs)
        .with("per_subscriber_kib", (per_sub * 10.0).round() / 10.0)
        .with("channels", open.channels.len() as u64);
    if let Some(count) = server_count {
        figure.set("server_subscribers", count as u64);
    }
    if open.full_channels > 0 {
        figure.set("full_channels", open.full_channels as u64);
    }
    figure.ops = open.streams.len() as u64;
    figure.seconds = took.as_secs_f64();
    section.figures.push(figure);

    drop(open);
    tokio::time::sleep(settle).await;
    let after = store.target.rss_kib()?;
    let mut figure = rss_figure("after closing them", after)
        .with("released_kib", with_subs.saturating_sub(after));
    if let Some(count) = metrics::value(store.target.http, SUBSCRIBERS).await {
        figure.set("server_subscribers", count as u64);
    }
    section.figures.push(figure);
    section.note(format!(
        "RSS = VmRSS of the server process; subscribers from now, at most \
         {STREAMS_PER_CHANNEL} per channel, each read to caught_up; for the subscribers row, \
         ops = subscriptions opened and ops/s = opens per second; RSS read {settle:?} after \
         opening or closing"
    ));
    Ok(section)
}

fn rss_figure(case: &str, rss_kib: u64) -> Figure {
    Figure::new("memory", case)
        .with("rss_kib", rss_kib)
        .with("rss_mib", (rss_kib as f64 / 102.4).round() / 10.0)
}

/// Opens `total` idle subscribers, channel by channel, in parallel across channels.
async fn open_idle(addr: &str, total: usize) -> Result<Idle> {
    let mut idle =
        Idle { streams: Vec::with_capacity(total), channels: Vec::new(), full_channels: 0 };
    for _ in 0..MAX_ROUNDS {
        let remaining = total - idle.streams.len();
        if remaining == 0 {
            return Ok(idle);
        }
        let mut round = JoinSet::new();
        for share in shares(remaining, STREAMS_PER_CHANNEL) {
            let channel = client::channel(addr).await?;
            idle.channels.push(channel.clone());
            round.spawn(open_on_channel(channel, share));
        }
        let mut opened_this_round = 0;
        while let Some(joined) = round.join_next().await {
            let (streams, full) = joined.context("a subscriber-opening task panicked")??;
            opened_this_round += streams.len();
            idle.full_channels += usize::from(full);
            idle.streams.extend(streams);
        }
        if opened_this_round == 0 {
            return Err(format!(
                "no channel accepted another stream after {} subscribers",
                idle.streams.len()
            )
            .into());
        }
    }
    Err(format!("only {} of {total} subscribers opened in {MAX_ROUNDS} rounds", idle.streams.len())
        .into())
}

/// Splits `total` into shares of at most `per`.
fn shares(total: usize, per: usize) -> Vec<usize> {
    let mut out = vec![per; total / per];
    if !total.is_multiple_of(per) {
        out.push(total % per);
    }
    out
}

/// Opens up to `n` subscribers on one channel. Returns them, and whether the channel stopped
/// accepting streams (an open timed out) before all were open.
async fn open_on_channel(channel: Channel, n: usize) -> Result<(Vec<Streaming<StreamItem>>, bool)> {
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let open = async {
            let mut stream = client::subscribe(channel.clone(), SubscribeEventsRequest::default())
                .await
                .context("cannot subscribe")?;
            client::caught_up(&mut stream).await?;
            Ok::<_, crate::error::Error>(stream)
        };
        match tokio::time::timeout(OPEN_TIMEOUT, open).await {
            Ok(Ok(stream)) => streams.push(stream),
            Ok(Err(err)) if streams.is_empty() => return Err(err),
            Ok(Err(_)) | Err(_) => return Ok((streams, true)),
        }
    }
    Ok((streams, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_total_in_bounded_parts() {
        assert_eq!(shares(1_200, 500), vec![500, 500, 200]);
        assert_eq!(shares(100, 500), vec![100]);
        assert!(shares(0, 500).is_empty());
    }
}
