//! `redis`: the same publish load against Redis with every write fsynced, as a yardstick.
//!
//! When `redis-server` is on PATH, the bench starts it as a child on a free loopback port with
//! `--save '' --appendonly yes --appendfsync always` in its own folder (beside the eventsd data
//! folders, so the same disk), and runs XADD of the same ~1 KiB charge (one field `event`
//! holding the JSON text) with 1, 32 and 128 publishers, one connection each: a Redis client
//! without pipelining has one call in flight per connection. Same bounds, same fsync probe.
//! When `publish` ran in the same invocation, a table puts eventsd/redis side by side.
//!
//! The client is a minimal RESP2 implementation (commands as arrays of bulk strings, one reply
//! read per command) over a TCP_NODELAY socket; no Redis crate is needed for one command.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::bench::Context;
use crate::error::{Context as _, Result};
use crate::load::{self, count_of, Around, Limit, Op};
use crate::payload::Payload;
use crate::publish::CONCURRENCY;
use crate::report::{Section, Table};

/// How long redis-server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// The stream every event is added to.
const STREAM_KEY: &str = "events";

/// A redis-server child; dropping it kills the process.
struct RedisServer {
    child: Child,
    port: u16,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One RESP2 reply.
#[derive(Debug, PartialEq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A RESP2 connection: one command, one reply.
struct Connection {
    stream: BufReader<TcpStream>,
    out: Vec<u8>,
    line: Vec<u8>,
}

impl Connection {
    async fn open(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))
            .await
            .context(format!("cannot connect to redis on port {port}"))?;
        stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
        Ok(Connection { stream: BufReader::new(stream), out: Vec::new(), line: Vec::new() })
    }

    /// Sends one command and reads its reply.
    async fn command(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.out.clear();
        encode(&mut self.out, args);
        self.stream.get_mut().write_all(&self.out).await?;
        self.reply().await
    }

    /// Reads one reply; arrays are read element by element without recursion.
    async fn reply(&mut self) -> std::io::Result<Reply> {
        // Open arrays: (elements still to read, elements read so far).
        let mut open: Vec<(usize, Vec<Reply>)> = Vec::new();
        loop {
            let mut value = match self.header().await? {
                Header::Done(reply) => reply,
                Header::Array(0) => Reply::Array(Some(Vec::new())),
                Header::Array(n) => {
                    open.push((n, Vec::with_capacity(n)));
                    continue;
                }
            };
            loop {
                let Some((left, items)) = open.last_mut() else {
                    return Ok(value);
                };
                items.push(value);
                *left -= 1;
                if *left > 0 {
                    break;
                }
                let (_, items) = open.pop().unwrap_or_default();
                value = Reply::Array(Some(items));
            }
        }
    }

    async fn header(&mut self) -> std::io::Result<Header> {
        self.line.clear();
        let n = self.stream.read_until(b'\n', &mut self.line).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "redis closed the connection",
            ));
        }
        let text = String::from_utf8_lossy(self.line.strip_suffix(b"\r\n").unwrap_or(&self.line))
            .into_owned();
        let (kind, rest) = text.split_at(text.len().min(1));
        let number = || rest.parse::<i64>().map_err(|_| invalid(&text));
        Ok(match kind {
            "+" => Header::Done(Reply::Simple(rest.to_string())),
            "-" => Header::Done(Reply::Error(rest.to_string())),
            ":" => Header::Done(Reply::Integer(number()?)),
            "$" => match number()? {
                n if n < 0 => Header::Done(Reply::Bulk(None)),
                n => {
                    let mut body = vec![0; n as usize + 2];
                    self.stream.read_exact(&mut body).await?;
                    body.truncate(n as usize);
                    Header::Done(Reply::Bulk(Some(body)))
                }
            },
            "*" => match number()? {
                n if n < 0 => Header::Done(Reply::Array(None)),
                n => Header::Array(n as usize),
            },
            _ => return Err(invalid(&text)),
        })
    }
}

/// What a reply's first line says.
enum Header {
    Done(Reply),
    Array(usize),
}

fn invalid(line: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not a RESP2 reply: {line:?}"))
}

/// Encodes a command as a RESP2 array of bulk strings: `*N\r\n$len\r\narg\r\n…`.
fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

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

/// Runs the Redis comparison, or explains how to enable it.
pub async fn run(ctx: &mut Context) -> Result<Section> {
    let mut section = Section::default();
    let Some(bin) = find_on_path("redis-server") else {
        section.note(
            "skipped: redis-server is not on PATH. To compare, install it \
             (Debian/Ubuntu: `apt-get install redis-server`) and run `eventsd-bench publish redis`",
        );
        return Ok(section);
    };
    let dir = tempfile::Builder::new()
        .prefix("redis-")
        .tempdir_in(ctx.root())
        .context("cannot create the redis folder")?;
    let server = start(&bin, dir.path(), ctx.root()).await?;
    let settings = ctx.settings.clone();
    let mut rates = Vec::new();
    for publishers in CONCURRENCY {
        let mut workers = Vec::with_capacity(publishers);
        for _ in 0..publishers {
            workers.push(XaddPublisher {
                connection: Connection::open(server.port).await?,
                payload: Payload::new(&ctx.template),
            });
        }
        let limit = Limit { calls: settings.publish_events, time: settings.duration };
        let around =
            Around { probe_dir: Some(ctx.root()), server_pid: Some(server.child.id()), http: None };
        let case = format!("XADD, {}", count_of(publishers, "connection"));
        let (mut figure, _) = load::run_figure(workers, limit, around, "redis", case).await?;
        let redis_rate = figure.ops_per_sec();
        if let (Some(ours), Some(theirs)) = (ctx.publish_rates.get(&publishers), redis_rate) {
            figure.set("eventsd_ops_per_sec", ours.round());
            figure.set("eventsd_over_redis", (ours / theirs * 100.0).round() / 100.0);
        }
        rates.push((publishers, redis_rate));
        section.figures.push(figure);
    }
    drop(server);

    section.note(format!(
        "{} with --appendonly yes --appendfsync always --save ''; one connection per publisher; \
         each XADD carries the same ~1 KiB charge as JSON text; runs stop at {} events or {:?}",
        version(&bin),
        settings.publish_events,
        settings.duration
    ));
    if ctx.publish_rates.is_empty() {
        section.note("run `publish` in the same invocation to print eventsd/redis ratios");
    } else {
        section.tables.push(comparison(&ctx.publish_rates, &rates));
    }
    Ok(section)
}

fn comparison(
    eventsd: &std::collections::BTreeMap<usize, f64>,
    redis: &[(usize, Option<f64>)],
) -> Table {
    let rows = redis
        .iter()
        .map(|(publishers, theirs)| {
            let ours = eventsd.get(publishers).copied();
            let cell = |x: Option<f64>| x.map_or("-".to_string(), |r| format!("{r:.0}"));
            let ratio = match (ours, theirs) {
                (Some(a), Some(b)) if *b > 0.0 => format!("{:.2}", a / b),
                _ => "-".into(),
            };
            vec![publishers.to_string(), cell(ours), cell(*theirs), ratio]
        })
        .collect();
    Table {
        title: "eventsd PublishEvent vs redis XADD (durable, events/s)".into(),
        header: ["publishers", "eventsd ops/s", "redis ops/s", "eventsd/redis"]
            .map(String::from)
            .to_vec(),
        rows,
    }
}

/// Starts redis-server and waits until it answers PING.
async fn start(bin: &Path, dir: &Path, log_dir: &Path) -> Result<RedisServer> {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .context("cannot find a free port")?
        .port();
    let log_path = log_dir.join("redis.log");
    let log = std::fs::File::create(&log_path)
        .context(format!("cannot create {}", log_path.display()))?;
    let child = Command::new(bin)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .context(format!("cannot run {}", bin.display()))?;
    let mut server = RedisServer { child, port };
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Some(status) = server.child.try_wait().context("cannot check redis-server")? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!("redis-server exited ({status}):\n{log}").into());
        }
        if let Ok(mut connection) = Connection::open(port).await {
            if let Ok(Reply::Simple(pong)) = connection.command(&[b"PING"]).await {
                if pong == "PONG" {
                    return Ok(server);
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(format!("redis-server did not answer PING within {START_TIMEOUT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| {
            text.split_whitespace()
                .find(|w| w.starts_with("v="))
                .map(|v| format!("redis {}", &v[2..]))
        })
        .unwrap_or_else(|| "redis".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"XADD", b"events", b"*"]);
        assert_eq!(out, b"*3\r\n$4\r\nXADD\r\n$6\r\nevents\r\n$1\r\n*\r\n");
    }

    #[tokio::test]
    async fn replies_of_every_kind_are_read() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 64];
            let _ = socket.read(&mut buf).await;
            let replies = b"$5\r\n1-0\r\n\r\n*2\r\n:7\r\n*1\r\n+OK\r\n-ERR nope\r\n$-1\r\n";
            socket.write_all(replies).await.unwrap();
        });
        let mut connection = Connection::open(port).await.unwrap();
        let first = connection.command(&[b"PING"]).await.unwrap();
        assert_eq!(first, Reply::Bulk(Some(b"1-0\r\n".to_vec())));
        let nested = Reply::Array(Some(vec![
            Reply::Integer(7),
            Reply::Array(Some(vec![Reply::Simple("OK".into())])),
        ]));
        assert_eq!(connection.reply().await.unwrap(), nested);
        assert_eq!(connection.reply().await.unwrap(), Reply::Error("ERR nope".into()));
        assert_eq!(connection.reply().await.unwrap(), Reply::Bulk(None));
    }
}
