//! Proves the NATS cluster harness in `tests/cluster`: start three nodes, create an R3 stream,
//! crash the meta leader and the stream's leader, watch new leaders get elected, restart the
//! nodes and wait for the cluster to heal. Runs only with `EVENTSD_NATS_TESTS=1` (it installs
//! and starts nats-server); otherwise it prints a skip line and passes.

mod cluster;

use std::time::Instant;

use cluster::{Cluster, NODES};

const STREAM: &str = "SMOKE";

fn enabled() -> bool {
    if std::env::var("EVENTSD_NATS_TESTS").as_deref() == Ok("1") {
        return true;
    }
    println!("skipped: set EVENTSD_NATS_TESTS=1 to run the NATS cluster tests");
    false
}

#[test]
fn a_cluster_survives_a_crash_and_a_restart_of_each_leader() {
    if !enabled() {
        return;
    }
    let started = Instant::now();
    let cluster = Cluster::start(false);
    println!(
        "ready in {:?}: {} (folder {})",
        started.elapsed(),
        cluster.url(),
        cluster.dir().display()
    );
    assert_eq!(cluster.url().split(',').count(), NODES);

    let meta = cluster.meta_leader().expect("a ready cluster has a meta leader");
    println!("meta leader: node {meta}");

    let config = serde_json::json!({
        "name": STREAM, "subjects": [format!("{STREAM}.>")], "num_replicas": 3, "storage": "file",
    });
    let created = cluster
        .request(meta, &format!("$JS.API.STREAM.CREATE.{STREAM}"), config.to_string().as_bytes())
        .expect("create the stream");
    assert!(created.get("error").is_none(), "stream create failed: {created}");
    let from_api = created["cluster"]["leader"].as_str().and_then(Cluster::node_index);
    let leader = cluster.wait_stream_leader(STREAM);
    println!("stream leader: node {leader} (the create response said {from_api:?})");

    // A crash of the meta leader: the other two elect a new one.
    let crashed = Instant::now();
    cluster.kill(meta);
    assert!(!cluster.is_running(meta));
    cluster.wait_ready();
    let new_meta = cluster.meta_leader().expect("a meta leader after the crash");
    assert_ne!(new_meta, meta, "a killed node cannot lead");
    println!("new meta leader: node {new_meta} after {:?}", crashed.elapsed());

    let restarted = Instant::now();
    cluster.restart(meta);
    cluster.wait_ready();
    assert!((0..NODES).all(|i| cluster.is_running(i)));
    println!("node {meta} back and the cluster ready after {:?}", restarted.elapsed());

    // A crash of the stream's leader: a new stream leader among the other two.
    let leader = cluster.wait_stream_leader(STREAM);
    let crashed = Instant::now();
    cluster.kill(leader);
    let new_leader = cluster.wait_stream_leader(STREAM);
    assert_ne!(new_leader, leader, "a killed node cannot lead");
    println!("new stream leader: node {new_leader} after {:?}", crashed.elapsed());
    let info = cluster
        .request(new_leader, &format!("$JS.API.STREAM.INFO.{STREAM}"), b"")
        .expect("stream info");
    assert_eq!(info["cluster"]["leader"].as_str(), Some(Cluster::node_name(new_leader).as_str()));

    cluster.restart(leader);
    cluster.wait_ready();
    println!("all nodes back; total {:?}", started.elapsed());

    // A clean stop and restart, too.
    cluster.stop(0);
    cluster.restart(0);
    cluster.wait_ready();
}
