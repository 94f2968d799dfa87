//! The redis-server child: started on a free loopback port with every write fsynced, in its
//! own folder beside the eventsd data folders (so the same disk), killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::resp::{Connection, Reply};
use crate::error::{Context as _, Result};

/// How long redis-server may take to answer PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A redis-server child; dropping it kills the process.
pub struct RedisServer {
    child: Child,
    /// Its loopback port.
    pub port: u16,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl RedisServer {
    /// The server's process id (for its CPU).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts redis-server and waits until it answers PING.
pub async fn start(bin: &Path, dir: &Path, log_dir: &Path) -> Result<RedisServer> {
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

/// The first `name` on PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

/// `redis 7.0.15`, from `redis-server --version`.
pub fn version(bin: &Path) -> String {
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
