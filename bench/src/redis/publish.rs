//! XADD of the ~1 KiB charge as JSON text with 1, 32 and 128 publishers, one connection each
//! (a Redis client without pipelining has one call in flight per connection), with the same
//! bounds and fsync probe as eventsd's publish figures.

use super::resp::{Connection, Reply};
use super::server::RedisServer;
use crate::bench::Context;
use crate::error::Result;
use crate::load::{self, count_of, Around, Limit, Op};
use crate::payload::Payload;
use crate::publish::CONCURRENCY;
use crate::report::Figure;

/// The stream the publish figures add to.
const STREAM_KEY: &str = "events";

/// One XADD publisher on its own connection.
struct XaddPublisher {
    connection: Connection,
    payload: Payload,
}

impl Op for XaddPublisher {
    async fn call(&mut self) -> Result<u64, String> {
        let event = self.payload.next_json();
        let args: [&[u8]; 5] = [b"XADD", STREAM_KEY.as_bytes(), b"*", b"event", event.as_bytes()];
        match self.connection.command(&args).await {
            Ok(Reply::Bulk(Some(_))) => Ok(1),
            Ok(other) => Err(format!("XADD answered {other:?}")),
            Err(err) => Err(format!("XADD failed: {err}")),
        }
    }
}

/// The XADD figures, by publisher count.
pub async fn run(ctx: &Context, server: &RedisServer) -> Result<Vec<(usize, Figure)>> {
    let mut figures = Vec::new();
    for publishers in CONCURRENCY {
        let mut workers = Vec::with_capacity(publishers);
        for _ in 0..publishers {
            workers.push(XaddPublisher {
                connection: Connection::open(server.port).await?,
                payload: Payload::new(&ctx.template),
            });
        }
        let limit = Limit { calls: ctx.settings.publish_events, time: ctx.settings.duration };
        let around =
            Around { probe_dir: Some(ctx.root()), server_pid: Some(server.pid()), http: None };
        let case = format!("XADD, {}", count_of(publishers, "connection"));
        let (figure, _) = load::run_figure(workers, limit, around, "redis", case).await?;
        figures.push((publishers, figure));
    }
    Ok(figures)
}
