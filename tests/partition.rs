//! Network partitions under a 3-node JetStream cluster, with each node and each eventsd
//! instance on a host of its own (a network namespace, `tests/cluster/net.rs`), so a host can
//! be cut off the network while the others go on: its TCP connections hang, as in a real
//! partition, instead of being reset as after a kill.
//!
//! - **A node cut off while publishing**: eight publishers publish through two instances,
//!   each retrying a failed call with the same ids; the node instance A is connected to, made
//!   the stream leader, is cut off and healed, then the node instance B is connected to.
//!   Publishing must go on during each cut (a new leader, a new connection), and afterwards
//!   the stream holds sequences exactly 1..=N, every acknowledged event byte for byte, and no
//!   id twice, on both instances.
//! - **An instance cut off from the majority**: instance A runs on node n1's host, connected to
//!   n1 alone, and n1 leads the stream; the host is cut off from n2 and n3 while publishers
//!   publish through A and through instance B (on the majority's side). For the length of the
//!   cut, A is probed with publishes, first ListEvents pages, GetEvent of the newest id any
//!   publisher was acknowledged, and SubscribeEvents catch-ups. Each call must answer within
//!   `--request-timeout` (plus a margin): UNAVAILABLE, or data that is current — a page whose
//!   total, or a catch-up whose `caught_up`, counts every event acknowledged before the call
//!   began; a GetEvent that finds the id. Never stale data presented as current. Each kind must
//!   turn UNAVAILABLE within the request timeout of the cut and stay so while the cut lasts.
//!   After healing, A serves again, and nothing acknowledged is lost or stored twice.
//!
//! They need nats-server 2.15.1 (`scripts/nats-server.sh`), root (CAP_NET_ADMIN) and `ip`, and
//! run only with `EVENTSD_NATS_TESTS=1`; otherwise each prints that it was skipped. With it,
//! a machine that cannot make the namespaces fails the tests. The namespaces are deleted even
//! when a test fails. Figures (acknowledged events, pauses, time to UNAVAILABLE, time to serve
//! again) are printed with `--nocapture`. Every wait and every load loop is bounded.

mod child;
mod cluster;
mod publishers;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use child::{dump, Client, Server};
use cluster::net::{Host, Net};
use cluster::{enabled, Cluster};
use eventsd::proto::subscribe_events_request::Start;
use eventsd::proto::subscribe_events_response::Item;
use eventsd::proto::{GetEventRequest, ListEventsRequest, SubscribeEventsRequest};
use publishers::{lost_or_doubled, request, until_acked, Acked, PHASE_LIMIT};
use tonic::Code;

/// The stream every instance of a test shares.
const STREAM: &str = "EVENTSD";

/// Every instance's `--request-timeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(4);

/// What a call to a cut-off instance may take beyond [`REQUEST_TIMEOUT`] (the test's own
/// scheduling and the control link).
const MARGIN: Duration = Duration::from_secs(1);

/// How long the instance stays cut off while it is probed.
const CUT_FOR: Duration = Duration::from_secs(15);

/// Pause between two probes of one kind.
const PROBE_PAUSE: Duration = Duration::from_millis(200);

/// Most probes of one kind during a cut.
const MOST_PROBES: usize = 200;

/// Most events one publisher publishes (it stops when told first, which is what ends every
/// phase): a bound far above what the phases' time limits let through, so no phase waits on
/// publishers that have run out (4 publishers once did, at 80,000, during a 15 s cut).
const MOST_EVENTS: usize = 200_000;

/// Events acknowledged during each cut of the node test, and after the last.
const STEP: u64 = 400;

/// The hosts, or a failure: with `EVENTSD_NATS_TESTS=1` a partition test never skips.
fn network(names: &[&str]) -> Net {
    Net::create(names).unwrap_or_else(|why| {
        panic!("cannot make the network namespaces the partition tests need: {why}")
    })
}

/// The three node hosts of `net`.
fn node_hosts(net: &Net) -> Vec<Host> {
    ["n1", "n2", "n3"].iter().map(|n| net.host(n).clone()).collect()
}

/// An eventsd instance on `host`, over the NATS servers `urls`, serving on its control
/// address; its log is `dir/<name>.log`.
async fn instance(host: &Host, dir: &Path, name: &str, urls: &str) -> Server {
    let timeout = format!("{}s", REQUEST_TIMEOUT.as_secs());
    // The test reaches it over its host's control link, not loopback: no keys asked.
    let args = [
        "--store",
        urls,
        "--nats-stream",
        STREAM,
        "--request-timeout",
        &timeout,
        "--allow-unauthenticated",
    ]
    .map(String::from);
    let grpc = SocketAddr::from((host.control_ip, 50051));
    let http = SocketAddr::from((host.control_ip, 8080));
    let data = dir.join(format!("{name}-data"));
    let log = dir.join(format!("{name}.log"));
    match Server::start_at(&data, &log, &args, (grpc, http), |c| host.enter(c)).await {
        Ok((server, took)) => {
            println!("instance {name} on host {} serving after {took:?}", host.name);
            server
        }
        Err(why) => panic!("instance {name} did not start: {why}"),
    }
}

/// The whole stream read on `server`, once it serves it: right after a heal or an election the
/// stream's leader may not have heard from a quorum yet, and the instance says UNAVAILABLE.
async fn read_back(server: &Server) -> (Vec<eventsd::proto::Event>, u64) {
    let started = Instant::now();
    let mut client = server.client().await;
    loop {
        match dump(&mut client).await {
            Ok(read) => {
                println!("read back on {} after {:?}", server.grpc, started.elapsed());
                return read;
            }
            Err(status) if status.code() == Code::Unavailable => {
                assert!(started.elapsed() < PHASE_LIMIT, "{} unavailable: {status}", server.grpc);
                tokio::time::sleep(PROBE_PAUSE).await;
            }
            Err(status) => panic!("read back on {}: {status}", server.grpc),
        }
    }
}

/// Waits for the publishers, then reads the whole stream back on every instance; they must
/// agree, and hold every acknowledged event once. Returns the stored count.
async fn finish(tasks: Vec<JoinHandle<()>>, acked: &Acked, instances: &[&Server]) -> usize {
    publishers::join(tasks).await;
    let acked_events = acked.events.lock().unwrap().clone();
    let published = acked.count.load(Ordering::Relaxed);
    let mut first: Option<Vec<eventsd::proto::Event>> = None;
    for server in instances {
        let (all, caught_up) = read_back(server).await;
        assert_eq!(caught_up, all.len() as u64, "caught_up on {}", server.grpc);
        assert_eq!(lost_or_doubled(&acked_events, &all, published), Vec::<String>::new());
        match &first {
            None => first = Some(all),
            Some(other) => assert!(*other == all, "the instances hold different streams"),
        }
    }
    first.map_or(0, |all| all.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_cut_off_during_publishing_loses_no_acknowledged_event() {
    if !enabled("a_node_cut_off_during_publishing_loses_no_acknowledged_event") {
        return;
    }
    let net = network(&["n1", "n2", "n3", "a", "b"]);
    let cluster = Cluster::start_in(&node_hosts(&net), false);
    let dir = tempfile::tempdir().expect("temp dir");
    let a = instance(net.host("a"), dir.path(), "a", &cluster.url()).await;
    let b = instance(net.host("b"), dir.path(), "b", &cluster.url()).await;
    let a_node = connected_node(&cluster, net.host("a"));
    lead_from(&cluster, a_node);
    let acked = Arc::new(Acked::default());
    let tasks = publishers::spawn(&[a.grpc, b.grpc], 8, MOST_EVENTS, &acked).await;

    // Cut off the node instance A is connected to, made the stream's leader: the cluster must
    // elect another, and A must find another node. Then the node B is connected to. Each cut
    // lasts until [`STEP`] more events are acknowledged.
    until_acked(&acked, STEP).await;
    for (instance, role) in [("a", "A's node, the stream leader"), ("b", "B's node")] {
        let cut = Cluster::node_name(connected_node(&cluster, net.host(instance)));
        net.cut(&cut);
        let at = acked.count.load(Ordering::Relaxed);
        println!("cut off {cut} ({role}) at {at} acknowledged");
        let took = until_acked(&acked, at + STEP).await;
        println!("  {STEP} more acknowledged {took:?} after the cut");
        net.heal(&cut);
        cluster.wait_ready();
    }
    // And publishing goes on once both are back.
    until_acked(&acked, acked.count.load(Ordering::Relaxed) + STEP).await;
    acked.stop();

    let stored = finish(tasks, &acked, &[&a, &b]).await;
    println!(
        "node cut off: {} acknowledged, {stored} stored on both instances, {} failed calls retried, longest time without an acknowledgement {:?}",
        acked.count.load(Ordering::Relaxed),
        acked.failures.load(Ordering::Relaxed),
        acked.longest_pause(),
    );
    acked.print_failures();
}

/// The kinds of call a cut-off instance is probed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Publish,
    FirstPage,
    GetUnknown,
    GetNewest,
    CatchUp,
}

/// Every kind, in the order the figures are printed.
const KINDS: [Kind; 5] =
    [Kind::Publish, Kind::FirstPage, Kind::GetUnknown, Kind::GetNewest, Kind::CatchUp];

/// How one probe went.
#[derive(Debug)]
struct Probe {
    kind: Kind,
    /// When it started, from the cut.
    at: Duration,
    took: Duration,
    outcome: Outcome,
}

#[derive(Debug)]
enum Outcome {
    /// UNAVAILABLE, with its message.
    Unavailable(String),
    /// Answered with data that counts everything acknowledged before the call.
    Current,
    /// Answered with data that misses something acknowledged before the call.
    Stale(String),
    /// Any other answer.
    Other(String),
}

/// One call of `kind` to `client`, judged against what was acknowledged before it began.
async fn probe(client: &mut Client, kind: Kind, n: usize, acked: &Acked) -> Outcome {
    let (newest_seq, newest_id) = acked.newest().unwrap_or_default();
    let failed = |status: tonic::Status| match status.code() {
        Code::Unavailable => Outcome::Unavailable(status.message().to_owned()),
        _ => Outcome::Other(format!("{:?}: {}", status.code(), status.message())),
    };
    match kind {
        Kind::Publish => {
            match client.publish_event(request(&format!("probe.{n}"), "probe")).await {
                Ok(_) => Outcome::Other("a publish was acknowledged by a minority".into()),
                Err(status) => failed(status),
            }
        }
        Kind::FirstPage => {
            let first_page = ListEventsRequest { limit: 1, ..child::everything() };
            match client.list_events(first_page).await {
                Ok(page) if page.get_ref().total as u64 >= newest_seq => Outcome::Current,
                Ok(page) => Outcome::Stale(format!(
                    "total {} while sequence {newest_seq} was acknowledged",
                    page.get_ref().total
                )),
                Err(status) => failed(status),
            }
        }
        // The newest id any publisher was acknowledged: found, or UNAVAILABLE once it may be
        // one the majority stored after the cut.
        Kind::GetNewest => {
            let get = GetEventRequest { id: newest_id.clone(), livemode: None };
            match client.get_event(get).await {
                Ok(_) => Outcome::Current,
                Err(status) if status.code() == Code::NotFound => {
                    Outcome::Stale(format!("{newest_id} (sequence {newest_seq}) not found"))
                }
                Err(status) => failed(status),
            }
        }
        // An id never published: not found only while the instance can confirm it.
        Kind::GetUnknown => {
            let get = GetEventRequest { id: format!("never.{n}"), livemode: None };
            match client.get_event(get).await {
                Ok(_) => Outcome::Other("found an id never published".into()),
                Err(status) if status.code() == Code::NotFound => Outcome::Current,
                Err(status) => failed(status),
            }
        }
        Kind::CatchUp => {
            let start = Some(Start::FromBeginning(true));
            let call =
                client.subscribe_events(SubscribeEventsRequest { start, ..Default::default() });
            let mut stream = match call.await {
                Ok(stream) => stream.into_inner(),
                Err(status) => return failed(status),
            };
            loop {
                match stream.message().await {
                    Ok(Some(message)) => match message.item {
                        Some(Item::CaughtUp(c)) if c.sequence >= newest_seq => {
                            return Outcome::Current
                        }
                        Some(Item::CaughtUp(c)) => {
                            return Outcome::Stale(format!(
                                "caught_up {} while sequence {newest_seq} was acknowledged",
                                c.sequence
                            ))
                        }
                        _ => continue,
                    },
                    Ok(None) => return Outcome::Other("the stream ended before caught_up".into()),
                    Err(status) => return failed(status),
                }
            }
        }
    }
}

/// Probes `client` with calls of `kind` until `until`, each bounded; one after the other.
async fn probe_until(
    mut client: Client,
    kind: Kind,
    cut: Instant,
    until: Instant,
    acked: Arc<Acked>,
) -> Vec<Probe> {
    let mut probes = Vec::new();
    while Instant::now() < until && probes.len() < MOST_PROBES {
        let started = Instant::now();
        let hang_guard = REQUEST_TIMEOUT + PHASE_LIMIT;
        let outcome =
            tokio::time::timeout(hang_guard, probe(&mut client, kind, probes.len(), &acked))
                .await
                .unwrap_or_else(|_| Outcome::Other(format!("no answer within {hang_guard:?}")));
        probes.push(Probe { kind, at: started - cut, took: started.elapsed(), outcome });
        tokio::time::sleep(PROBE_PAUSE).await;
    }
    probes
}

/// The node the eventsd instance on `host` is connected to (its client connection from the
/// host's address, in the nodes' `/connz`), waited for within [`PHASE_LIMIT`].
fn connected_node(cluster: &Cluster, host: &Host) -> usize {
    let deadline = Instant::now() + PHASE_LIMIT;
    let ip = host.ip.to_string();
    loop {
        for i in 0..cluster::NODES {
            let Ok((200, body)) = cluster.monitor_get(i, "/connz") else { continue };
            let connz: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let connections = connz["connections"].as_array().cloned().unwrap_or_default();
            if connections.iter().any(|c| c["ip"].as_str() == Some(ip.as_str())) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no node has a connection from {ip}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes node `node` the stream's leader (a stepdown naming it preferred), within
/// [`PHASE_LIMIT`].
fn lead_from(cluster: &Cluster, node: usize) {
    let deadline = Instant::now() + PHASE_LIMIT;
    let body = serde_json::json!({ "placement": { "preferred": Cluster::node_name(node) } });
    loop {
        let leader = cluster.wait_stream_leader(STREAM);
        if leader == node {
            return;
        }
        assert!(Instant::now() < deadline, "node {node} did not become the stream leader");
        let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{STREAM}");
        if let Err(why) = cluster.request(leader, &subject, body.to_string().as_bytes()) {
            println!("stepdown: {why}");
        }
        // Until the old leader has stepped down it still names itself; poll for the change.
        let changed = Instant::now() + Duration::from_secs(10);
        while cluster.stream_leader(STREAM) == Some(leader) && Instant::now() < changed {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_cut_off_from_the_majority_answers_unavailable_in_time() {
    if !enabled("an_instance_cut_off_from_the_majority_answers_unavailable_in_time") {
        return;
    }
    let net = network(&["n1", "n2", "n3", "b"]);
    let cluster = Cluster::start_in(&node_hosts(&net), false);
    let dir = tempfile::tempdir().expect("temp dir");
    // A shares n1's host and knows only n1; B knows only the other two.
    let a = instance(net.host("n1"), dir.path(), "a", &cluster.client_url(0)).await;
    let majority = format!("{},{}", cluster.client_url(1), cluster.client_url(2));
    let b = instance(net.host("b"), dir.path(), "b", &majority).await;
    lead_from(&cluster, 0);
    println!("n1 leads the stream");

    let acked = Arc::new(Acked::default());
    let tasks = publishers::spawn(&[a.grpc, b.grpc], 4, MOST_EVENTS, &acked).await;
    until_acked(&acked, 200).await;

    // The cut: n1 and A on one side, n2, n3 and B on the other. Probe A meanwhile.
    let before = acked.count.load(Ordering::Relaxed);
    net.cut("n1");
    let cut = Instant::now();
    let until = cut + CUT_FOR;
    let mut probing = Vec::new();
    for kind in KINDS {
        let client = a.client().await;
        probing.push(tokio::spawn(probe_until(client, kind, cut, until, acked.clone())));
    }
    let mut probes = Vec::new();
    for task in probing {
        probes.extend(
            tokio::time::timeout(PHASE_LIMIT, task).await.expect("probe hang guard").unwrap(),
        );
    }
    let during = acked.count.load(Ordering::Relaxed) - before;
    net.heal("n1");
    let healed = Instant::now();
    cluster.wait_ready();

    // After healing A serves a current first page again; publishing through it resumes.
    let mut on_a = a.client().await;
    let served_again = loop {
        let wanted = acked.newest().map_or(0, |(seq, _)| seq);
        let first_page = ListEventsRequest { limit: 1, ..child::everything() };
        if let Ok(page) = on_a.list_events(first_page).await {
            if page.into_inner().total as u64 >= wanted {
                break healed.elapsed();
            }
        }
        assert!(healed.elapsed() < PHASE_LIMIT, "instance a does not serve after healing");
        tokio::time::sleep(PROBE_PAUSE).await;
    };
    let resumed = acked.count.load(Ordering::Relaxed);
    until_acked(&acked, resumed + 200).await;
    acked.stop();
    let stored = finish(tasks, &acked, &[&a, &b]).await;

    // The figures, then the verdicts.
    println!(
        "instance cut off: {} acknowledged ({during} during the {CUT_FOR:?} cut, through B), {stored} stored on both instances; A served a current first page {served_again:?} after healing",
        acked.count.load(Ordering::Relaxed),
    );
    acked.print_failures();
    let mut problems = Vec::new();
    for kind in KINDS {
        let of_kind: Vec<&Probe> = probes.iter().filter(|p| p.kind == kind).collect();
        let unavailable = of_kind.iter().find_map(|p| match &p.outcome {
            Outcome::Unavailable(why) => Some((p.at + p.took, why.as_str())),
            _ => None,
        });
        let first_unavailable = unavailable.map(|(at, _)| at);
        let served = of_kind.iter().filter(|p| matches!(p.outcome, Outcome::Current)).count();
        let longest = of_kind.iter().map(|p| p.took).max().unwrap_or_default();
        println!(
            "  {kind:?}: {} calls, first UNAVAILABLE {first_unavailable:?} after the cut, {served} served current before it, longest call {longest:?}",
            of_kind.len()
        );
        if let Some((_, why)) = unavailable {
            println!("    first UNAVAILABLE said: {why}");
        }
        // The newest acknowledged id is one the instance holds until the majority stores
        // newer ones: finding it is current at any time, and it has no deadline to turn.
        let must_turn = kind != Kind::GetNewest;
        match first_unavailable {
            Some(at) if at <= REQUEST_TIMEOUT + MARGIN => {}
            _ if !must_turn => {}
            other => problems.push(format!("{kind:?}: first UNAVAILABLE at {other:?}")),
        }
        for p in &of_kind {
            if p.took > REQUEST_TIMEOUT + MARGIN {
                problems.push(format!("{kind:?} at {:?} took {:?}", p.at, p.took));
            }
            match (&p.outcome, first_unavailable) {
                (Outcome::Unavailable(_), _) => {}
                (Outcome::Current, _) if !must_turn => {}
                (Outcome::Current, Some(at)) if p.at + p.took < at => {}
                (Outcome::Current, _) => {
                    problems.push(format!("{kind:?} at {:?}: served after UNAVAILABLE", p.at))
                }
                (Outcome::Stale(why) | Outcome::Other(why), _) => {
                    problems.push(format!("{kind:?} at {:?}: {why}", p.at))
                }
            }
        }
    }
    assert!(during > 0, "nothing was acknowledged through the majority during the cut");
    assert_eq!(problems, Vec::<String>::new());
}
