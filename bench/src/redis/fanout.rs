//! Redis fan-out: one XREAD BLOCK loop per subscriber, each on its own connection, beside
//! eventsd's fan-out through the same harness ([`crate::fanout::measure`]): same publisher
//! count, same event, same checks, same figure.
//!
//! Every case uses a fresh stream key and every subscriber reads it from `0-0`, so a
//! subscriber is ready as soon as its connection answers PING and can miss nothing. Publishers
//! XADD `t <send time in µs> event <charge JSON>`; subscribers parse only each entry's id (as
//! the number `ms << 20 | seq`, increasing with the id, to check order and completeness) and
//! `t` (for latency). `XREAD COUNT 1000 BLOCK <IDLE>` returns as soon as anything is there.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::resp::{Connection, Reply};
use super::server::RedisServer;
use crate::bench::Context;
use crate::error::Result;
use crate::fanout::{self, Acked, Feed, Seen, IDLE};
use crate::load::{count_of, Around, Op};
use crate::payload::Payload;
use crate::report::Figure;

/// Subscribers of the Redis fan-out (the comparison point).
pub const SUBSCRIBERS: usize = 100;
/// Publishers, as in eventsd's fan-out.
const PUBLISHERS: usize = 8;
/// Most entries one XREAD returns.
const READ_COUNT: &[u8] = b"1000";

/// An XADD publisher that stamps its send time and keeps the acked ids as numbers.
struct StampingXadd {
    connection: Connection,
    payload: Payload,
    key: String,
    acked: Vec<u64>,
}

impl Op for StampingXadd {
    async fn call(&mut self) -> Result<u64, String> {
        let event = self.payload.next_json();
        let sent = micros_now().to_string();
        let args: [&[u8]; 7] =
            [b"XADD", self.key.as_bytes(), b"*", b"t", sent.as_bytes(), b"event", event.as_bytes()];
        match self.connection.command(&args).await {
            Ok(Reply::Bulk(Some(id))) => {
                let key = id_key(&id).ok_or_else(|| format!("XADD gave a strange id {id:?}"))?;
                self.acked.push(key);
                Ok(1)
            }
            Ok(other) => Err(format!("XADD answered {other:?}")),
            Err(err) => Err(format!("XADD failed: {err}")),
        }
    }
}

impl Acked for StampingXadd {
    fn acked(&self) -> &[u64] {
        &self.acked
    }
}

/// One subscriber's XREAD BLOCK loop.
struct XreadFeed {
    connection: Connection,
    key: String,
    last_id: Vec<u8>,
}

impl Feed for XreadFeed {
    async fn read(&mut self, seen: &mut Seen) -> Result<(), String> {
        let block = IDLE.as_millis().to_string();
        let args: [&[u8]; 8] = [
            b"XREAD",
            b"COUNT",
            READ_COUNT,
            b"BLOCK",
            block.as_bytes(),
            b"STREAMS",
            self.key.as_bytes(),
            &self.last_id,
        ];
        let reply = self.connection.command(&args).await.map_err(|e| format!("XREAD: {e}"))?;
        let Some(streams) = reply.into_array() else {
            return Ok(()); // the block timed out
        };
        for stream in streams {
            let mut parts = stream.into_array().ok_or("XREAD: a stream is not an array")?;
            let entries = parts.pop().and_then(Reply::into_array).ok_or("XREAD: no entries")?;
            for entry in entries {
                let (id, sent) = parse_entry(entry).ok_or("XREAD: a malformed entry")?;
                let key = id_key(&id).ok_or("XREAD: a malformed id")?;
                seen.observe(key, sent);
                self.last_id = id;
            }
        }
        Ok(())
    }
}

/// An entry `[id, [field, value, …]]`: its id and its `t` as a time.
fn parse_entry(entry: Reply) -> Option<(Vec<u8>, Option<SystemTime>)> {
    let mut parts = entry.into_array()?.into_iter();
    let id = parts.next()?.as_bulk()?.to_vec();
    let fields = parts.next()?.into_array()?;
    let sent = fields
        .chunks(2)
        .find(|pair| pair[0].as_bulk() == Some(b"t"))
        .and_then(|pair| pair.get(1)?.as_bulk())
        .and_then(|t| std::str::from_utf8(t).ok()?.parse::<u64>().ok())
        .map(|micros| UNIX_EPOCH + Duration::from_micros(micros));
    Some((id, sent))
}

/// A stream id `ms-seq` as one increasing number: `ms << 20 | seq` (ids within one
/// millisecond stay below 2^20 here).
fn id_key(id: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(id).ok()?;
    let (ms, seq) = text.split_once('-')?;
    let (ms, seq): (u64, u64) = (ms.parse().ok()?, seq.parse().ok()?);
    Some((ms << 20) | seq.min((1 << 20) - 1))
}

fn micros_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

async fn open_feed(port: u16, key: String) -> Result<XreadFeed, String> {
    let mut connection = Connection::open(port).await.map_err(|e| e.to_string())?;
    match connection.command(&[b"PING"]).await {
        Ok(Reply::Simple(pong)) if pong == "PONG" => {}
        other => return Err(format!("PING answered {other:?}")),
    }
    Ok(XreadFeed { connection, key, last_id: b"0-0".to_vec() })
}

/// Runs the Redis fan-out case.
pub async fn run(ctx: &Context, server: &RedisServer) -> Result<Figure> {
    let key = format!("fanout-{SUBSCRIBERS}");
    let opens = (0..SUBSCRIBERS).map(|_| open_feed(server.port, key.clone())).collect();
    let mut workers = Vec::with_capacity(PUBLISHERS);
    for _ in 0..PUBLISHERS {
        workers.push(StampingXadd {
            connection: Connection::open(server.port).await?,
            payload: Payload::new(&ctx.template),
            key: key.clone(),
            acked: Vec::new(),
        });
    }
    let around = Around { probe_dir: Some(ctx.root()), server_pid: Some(server.pid()), http: None };
    let case = format!("XREAD BLOCK, {}", count_of(SUBSCRIBERS, "subscriber"));
    fanout::measure(opens, workers, &ctx.settings, around, "redis", case).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_become_increasing_numbers() {
        assert_eq!(id_key(b"5-3"), Some((5 << 20) | 3));
        assert!(id_key(b"1700000000000-1") < id_key(b"1700000000001-0"));
        assert!(id_key(b"1700000000000-1") < id_key(b"1700000000000-2"));
        assert_eq!(id_key(b"nope"), None);
    }

    #[test]
    fn an_entry_gives_its_id_and_send_time() {
        let bulk = |s: &str| Reply::Bulk(Some(s.as_bytes().to_vec()));
        let entry = Reply::Array(Some(vec![
            bulk("7-1"),
            Reply::Array(Some(vec![bulk("t"), bulk("1000000"), bulk("event"), bulk("{}")])),
        ]));
        let (id, sent) = parse_entry(entry).unwrap();
        assert_eq!(id, b"7-1");
        assert_eq!(sent, Some(UNIX_EPOCH + Duration::from_secs(1)));
    }
}
