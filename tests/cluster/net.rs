//! Network namespaces as test hosts, so a test can cut a host off the network and heal it.
//!
//! [`Net::create`] makes one namespace per named host and one hub namespace holding a bridge.
//! Each host has two links:
//! - `eth0`, a veth to the hub's bridge, with `10.77.0.<10+i>/24`: the network the hosts talk
//!   to each other over (NATS routes, eventsd to its nodes). [`Net::cut`] sets the hub's end
//!   of a host's veth down, so that host can reach no other host (its TCP connections hang, as
//!   in a real partition: no reset, no close); [`Net::heal`] sets it up again.
//! - `ctl`, a point-to-point veth to this test process's namespace (host address
//!   `10.78.<slot>.<10+i>`, ours `10.78.<slot>.1`): how the test reaches the host's monitoring
//!   port, client port or gRPC listener. A cut leaves it up, so the test can watch a host that
//!   the others cannot reach. No host has a default route and this namespace does not forward,
//!   so no traffic between hosts crosses it.
//!
//! [`Host::enter`] makes a command start inside a host's namespace (`setns(2)` between fork
//! and exec). Names carry this process's id (`evp<pid>-<host>`, `evp<pid>-hub`, our ends of
//! the control veths `evp<pid>c<i>`), so parallel runs do not clash; the slot of the control
//! subnet comes from the pid too, and is skipped while another live run holds it. The
//! namespaces are deleted on drop, even when the test panics, and [`Net::create`] first
//! deletes those left by test processes that no longer run (after killing whatever still runs
//! inside them: only this module creates such names). Everything is done with `ip` (iproute2);
//! the caller needs CAP_NET_ADMIN (root).

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

/// The prefix of every name this module creates.
const PREFIX: &str = "evp";

/// One host: a network namespace with an address on the shared network and a control link.
#[derive(Clone, Debug)]
pub struct Host {
    /// The name the test gave it (`n1`, `a`, …).
    pub name: String,
    /// Its namespace's name.
    pub netns: String,
    /// Its address on the network shared with the other hosts.
    pub ip: Ipv4Addr,
    /// Its address on the control link, reachable from the test process.
    pub control_ip: Ipv4Addr,
}

impl Host {
    /// Makes `command` start inside this host's namespace. The namespace file is opened now
    /// (close-on-exec), and the child joins it between fork and exec.
    pub fn enter(&self, command: &mut Command) {
        let path = format!("/run/netns/{}", self.netns);
        let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        // SAFETY: between fork and exec the closure makes one async-signal-safe system call
        // (setns) on a descriptor the closure owns, and allocates nothing.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// The hosts of one test, and the hub that connects them; see the module documentation.
pub struct Net {
    hub: String,
    hosts: Vec<Host>,
    /// Namespaces made so far (deleted on drop, even if creation failed half-way).
    made: Vec<String>,
    /// Our ends of the control links made so far (deleted on drop, at once: a deleted
    /// namespace's links go some time later, and the next test may want these names).
    links: Vec<String>,
}

impl Net {
    /// Creates a host per name, all connected. `Err` says which `ip` command failed (no
    /// permission, no veth support…); what was made is deleted again.
    pub fn create(names: &[&str]) -> Result<Net, String> {
        sweep_stale();
        let pid = std::process::id();
        let slot = free_slot(pid)?;
        let hub = format!("{PREFIX}{pid}-hub");
        let hosts: Vec<Host> = names
            .iter()
            .enumerate()
            .map(|(i, name)| Host {
                name: name.to_string(),
                netns: format!("{PREFIX}{pid}-{name}"),
                ip: Ipv4Addr::new(10, 77, 0, 10 + i as u8),
                control_ip: Ipv4Addr::new(10, 78, slot, 10 + i as u8),
            })
            .collect();
        let mut net =
            Net { hub: hub.clone(), hosts: hosts.clone(), made: Vec::new(), links: Vec::new() };
        ip(&["netns", "add", &hub])?;
        net.made.push(hub.clone());
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "set", "br0", "up"])?;
        let ours = Ipv4Addr::new(10, 78, slot, 1).to_string();
        for (i, host) in hosts.iter().enumerate() {
            let ns = host.netns.as_str();
            ip(&["netns", "add", ns])?;
            net.made.push(host.netns.clone());
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            // The shared network: eth0 in the host, named after the host in the hub.
            let link = &host.name;
            ip(&[
                "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", link, "netns",
                &hub,
            ])?;
            ip(&["-n", &hub, "link", "set", "dev", link, "master", "br0", "up"])?;
            let cidr = format!("{}/24", host.ip);
            ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            // The control link: point to point between this namespace and the host.
            let root_end = format!("{PREFIX}{pid}c{i}");
            ip(&["link", "add", &root_end, "type", "veth", "peer", "name", "ctl", "netns", ns])?;
            net.links.push(root_end.clone());
            let theirs = host.control_ip.to_string();
            ip(&["addr", "add", &ours, "peer", &format!("{theirs}/32"), "dev", &root_end])?;
            ip(&["link", "set", &root_end, "up"])?;
            ip(&["-n", ns, "addr", "add", &theirs, "peer", &format!("{ours}/32"), "dev", "ctl"])?;
            ip(&["-n", ns, "link", "set", "ctl", "up"])?;
        }
        Ok(net)
    }

    /// The host named `name`.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no host named {name}"))
    }

    /// Cuts host `name` off from every other host (its control link stays up).
    pub fn cut(&self, name: &str) {
        let host = self.host(name);
        ip(&["-n", &self.hub, "link", "set", "dev", &host.name, "down"])
            .unwrap_or_else(|e| panic!("cut {name}: {e}"));
    }

    /// Connects host `name` to the others again after [`Net::cut`].
    pub fn heal(&self, name: &str) {
        let host = self.host(name);
        ip(&["-n", &self.hub, "link", "set", "dev", &host.name, "up"])
            .unwrap_or_else(|e| panic!("heal {name}: {e}"));
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for link in &self.links {
            if let Err(why) = ip(&["link", "delete", link]) {
                eprintln!("cleanup: {why}");
            }
        }
        // Deleting a namespace deletes the veths in it, the hub's ends too.
        for ns in self.made.iter().rev() {
            delete_netns(ns);
        }
    }
}

/// Runs `ip ARGS`; `Err` holds the command and its stderr.
fn ip(args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run ip {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(format!("ip {}: {}: {}", args.join(" "), out.status, stderr.trim()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Kills what still runs in namespace `ns` (our own test hosts' processes), then deletes it.
fn delete_netns(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids.split_whitespace().filter_map(|p| p.parse::<libc::pid_t>().ok()) {
            // SAFETY: kill(2) has no memory effects; the pid runs in one of our namespaces.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Err(why) = ip(&["netns", "delete", ns]) {
        eprintln!("cleanup: {why}");
    }
}

/// Deletes the namespaces and control links of test processes that no longer run.
fn sweep_stale() {
    let dead = |name: &str, end: char| {
        let pid = owner(name, end)?;
        (!std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
    };
    if let Ok(list) = ip(&["netns", "list"]) {
        for name in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if let Some(pid) = dead(name, '-') {
                eprintln!("deleting namespace {name}, left by process {pid}, which no longer runs");
                delete_netns(name);
            }
        }
    }
    // `ip -o link` lines read `<index>: <name>@<peer>: …`.
    if let Ok(list) = ip(&["-o", "link", "show"]) {
        for line in list.lines() {
            let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else {
                continue;
            };
            if let Some(pid) = dead(name, 'c') {
                eprintln!("deleting link {name}, left by process {pid}, which no longer runs");
                let _ = ip(&["link", "delete", name]);
            }
        }
    }
}

/// The pid in one of our names: `evp<pid>` followed by `end` (`-` for a namespace, `c` for
/// a control link).
fn owner(name: &str, end: char) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, _) = rest.split_once(end)?;
    pid.parse().ok()
}

/// A control subnet (`10.78.<slot>.0`) no other live run holds: from the pid, skipping taken
/// ones.
fn free_slot(pid: u32) -> Result<u8, String> {
    let addresses = ip(&["-4", "-o", "addr", "show"])?;
    (0..=255u32)
        .map(|k| ((pid + k) % 256) as u8)
        .find(|slot| !addresses.contains(&format!(" 10.78.{slot}.1 ")))
        .ok_or_else(|| "every control subnet 10.78.*.0 is taken".to_string())
}
