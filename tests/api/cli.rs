//! The command-line client, run as the real `eventsd` binary against a spawned server:
//! `publish` (from flags, a file and stdin), `get`, `list` (one page, every option, `--all`),
//! `tail` with an API key, and failures: the status code name on stderr and exit code 1
//! (2 for usage errors), input errors naming the flag, nothing stored.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};

use eventsd::proto::{GetEventRequest, PublishEventRequest};
use serde_json::{json, Value as Json};

use crate::helpers::{spawn_app, spawn_app_with, TestApp};
use crate::support::{at, event, publish, stored_total, struct_json, HANG_GUARD, T0};

/// What one run of the binary produced.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Stdout as one JSON value.
    fn json(&self) -> Json {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {}", self.stdout))
    }

    /// Stdout as JSON lines.
    fn lines(&self) -> Vec<Json> {
        self.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
    }

    /// Asserts a clean success.
    fn ok(self, what: &str) -> Self {
        assert_eq!(self.code, Some(0), "{what}: stderr: {}", self.stderr);
        self
    }
}

/// The binary with the app's address and without a key from the test's environment.
fn eventsd(app: &TestApp, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_eventsd"));
    command
        .args(args)
        .env("EVENTSD_ADDR", format!("http://{}", app.addr))
        .env_remove("EVENTSD_API_KEY")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Runs the binary to completion off the async runtime (the server runs on it), feeding
/// `stdin` (closed at once when `None`).
async fn run_command(mut command: Command, stdin: Option<&str>) -> Run {
    let stdin = stdin.map(str::to_string);
    let finished = tokio::task::spawn_blocking(move || {
        let mut child = command.spawn().expect("start eventsd");
        let mut input = child.stdin.take().expect("stdin");
        if let Some(text) = stdin {
            input.write_all(text.as_bytes()).expect("write stdin");
        }
        drop(input);
        child.wait_with_output().expect("wait for eventsd")
    });
    let output: Output = tokio::time::timeout(HANG_GUARD, finished)
        .await
        .expect("hang guard: eventsd exits")
        .expect("the blocking task");
    Run {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

async fn run(app: &TestApp, args: &[&str]) -> Run {
    run_command(eventsd(app, args), None).await
}

fn ids(events: &[Json]) -> Vec<&str> {
    events.iter().map(|e| e["id"].as_str().expect("id")).collect()
}

#[tokio::test]
async fn publish_from_flags_prints_the_stored_event_and_get_prints_it_back() {
    let app = spawn_app().await;
    let args = [
        "publish",
        "--type",
        "charge.capture",
        "--data",
        r#"{"object":"charge","amount":100000,"max":9007199254740992,"f":1.5,"card":{"brand":"Visa"}}"#,
        "--id",
        "evt_cli_1",
        "--created",
        "2024-06-01T09:00:00+09:00",
        "--livemode",
        "--api-version",
        "2024-06-20",
        "--source",
        "payments",
    ];

    let published = run(&app, &args).await.ok("publish");

    let stored = published.json();
    assert_eq!(stored["id"], "evt_cli_1");
    assert_eq!(stored["type"], "charge.capture");
    assert_eq!(stored["created"], "2024-06-01T00:00:00Z");
    assert_eq!(stored["livemode"], true);
    assert_eq!(stored["apiVersion"], "2024-06-20");
    assert_eq!(stored["source"], "payments");
    assert_eq!(stored["sequence"], "1");
    let data = json!({"object":"charge","amount":100000,"max":9007199254740992u64,"f":1.5,"card":{"brand":"Visa"}});
    assert_eq!(stored["data"], data);
    assert!(published.stdout.ends_with('\n') && published.stdout.lines().count() == 1);
    let mut client = app.client.clone();
    let over_grpc = client
        .get_event(GetEventRequest { id: "evt_cli_1".into(), livemode: None })
        .await
        .expect("GetEvent")
        .into_inner();
    assert_eq!(struct_json(over_grpc.data.as_ref().expect("data")), data);

    let got = run(&app, &["get", "evt_cli_1"]).await.ok("get");
    assert_eq!(got.json(), stored);
    // Publishing the same event again is an idempotent repeat: the stored event, unchanged.
    assert_eq!(run(&app, &args).await.ok("repeat").json(), stored);
}

#[tokio::test]
async fn publish_reads_data_from_stdin_or_a_file_when_data_is_not_given() {
    let app = spawn_app().await;

    let from_stdin = run_command(
        eventsd(&app, &["publish", "--type", "refund.create"]),
        Some("{\"object\": \"refund\",\n \"amount\": 5000}\n"),
    )
    .await
    .ok("publish from stdin");
    assert_eq!(from_stdin.json()["data"], json!({"object": "refund", "amount": 5000}));
    assert_eq!(from_stdin.json()["livemode"], false);
    assert!(from_stdin.json()["id"].as_str().is_some_and(|id| id.starts_with("evnt_test_")));

    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("data.json");
    std::fs::write(&file, r#"{"object":"charge","amount":300}"#).expect("write data");
    let path = file.to_str().expect("UTF-8 path");
    let from_file =
        run(&app, &["publish", "--type", "charge.create", "--data-file", path]).await.ok("file");
    assert_eq!(from_file.json()["data"], json!({"object": "charge", "amount": 300}));

    let dash = run_command(
        eventsd(&app, &["publish", "--type", "charge.create", "--data-file", "-"]),
        Some(r#"{"amount": 1}"#),
    )
    .await
    .ok("--data-file -");
    assert_eq!(dash.json()["data"], json!({"amount": 1}));
}

/// Publishes charge and refund events created at T0, T0+1, …, ids `evt_0`, `evt_1`, …
async fn publish_series(app: &TestApp, n: i64) {
    let mut client = app.client.clone();
    for i in 0..n {
        let request = PublishEventRequest {
            id: format!("evt_{i}"),
            created: Some(at(T0 + i)),
            livemode: i == n - 1,
            ..event(if i % 3 == 2 { "refund.create" } else { "charge.create" })
        };
        publish(&mut client, request).await;
    }
}

#[tokio::test]
async fn list_prints_one_page_as_one_object_with_every_option_applied() {
    let app = spawn_app().await;
    publish_series(&app, 8).await; // charges 0 1 3 4 6 (7 is live), refunds 2 5
    let from = "2020-09-13T12:26:41Z"; // T0 + 1
    let to = "2020-09-13T12:26:47Z"; // T0 + 7

    let page = run(
        &app,
        &[
            "list",
            "--from",
            from,
            "--to",
            to,
            "--offset",
            "1",
            "--limit",
            "2",
            "--order",
            "reverse-chronological",
            "--types",
            "charge.*",
            "--livemode",
            "false",
        ],
    )
    .await
    .ok("list")
    .json();

    let keys: Vec<&str> = page.as_object().expect("object").keys().map(String::as_str).collect();
    let mut expected =
        ["data", "total", "from", "to", "offset", "limit", "order", "next_page_token"];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(ids(page["data"].as_array().expect("data")), ["evt_4", "evt_3"]);
    assert_eq!(page["total"], 4); // evt_1, 3, 4, 6
    assert_eq!((page["from"].as_str(), page["to"].as_str()), (Some(from), Some(to)));
    assert_eq!((page["offset"].clone(), page["limit"].clone()), (json!(1), json!(2)));
    assert_eq!(page["order"], "ORDER_REVERSE_CHRONOLOGICAL");
    assert_eq!(page["data"][0]["type"], "charge.create");
    let token = page["next_page_token"].as_str().expect("token").to_string();
    assert!(!token.is_empty());

    let next = run(&app, &["list", "--page-token", &token, "--limit", "5"]).await.ok("next");
    let next = next.json();
    assert_eq!(ids(next["data"].as_array().expect("data")), ["evt_1"]);
    assert_eq!((next["offset"].clone(), next["total"].clone()), (json!(3), json!(4)));
    assert_eq!(next["next_page_token"], "");

    // Several --types flags add up, like a comma list; --livemode true narrows to live.
    let repeated = run(&app, &["list", "--types", "refund.create", "--types", "charge.create"])
        .await
        .ok("repeated --types")
        .json();
    assert_eq!(repeated["total"], 8);
    let live = run(&app, &["list", "--livemode", "true"]).await.ok("live").json();
    assert_eq!(ids(live["data"].as_array().expect("data")), ["evt_7"]);
}

#[tokio::test]
async fn list_all_follows_every_page_and_prints_each_event_as_a_json_line() {
    let app = spawn_app().await;
    publish_series(&app, 11).await;

    let all = run(&app, &["list", "--all", "--limit", "2", "--types", "charge.*"]).await.ok("all");

    let events = all.lines();
    assert_eq!(
        ids(&events),
        ["evt_0", "evt_1", "evt_3", "evt_4", "evt_6", "evt_7", "evt_9", "evt_10"]
    );
    assert!(events.iter().all(|e| e["type"] == "charge.create"));
    let reverse = run(&app, &["list", "--all", "--limit", "3", "--order", "reverse-chronological"])
        .await
        .ok("reverse")
        .lines();
    assert_eq!(reverse.len(), 11);
    assert_eq!(reverse[0]["id"], "evt_10");
    assert_eq!(reverse[10]["id"], "evt_0");
    let none = run(&app, &["list", "--all", "--types", "nothing.here"]).await.ok("empty");
    assert_eq!(none.stdout, "");
}

#[tokio::test]
async fn failures_print_the_status_code_name_on_stderr_and_exit_with_1() {
    let app = spawn_app().await;
    let mut client = app.client.clone();

    let missing = run(&app, &["get", "evt_missing"]).await;
    assert_eq!(missing.code, Some(1));
    assert_eq!(missing.stderr, "eventsd: NOT_FOUND: event \"evt_missing\" not found\n");
    assert_eq!(missing.stdout, "");

    let cases: [(&[&str], &str); 6] = [
        (
            &["publish", "--type", "x.y", "--data", "[1, 2]"],
            "eventsd: --data: must be a JSON object",
        ),
        (&["publish", "--type", "x.y", "--data", "42"], "eventsd: --data: must be a JSON object"),
        (&["publish", "--type", "x.y", "--data", "{oops"], "eventsd: --data: is not valid JSON"),
        (
            &["publish", "--type", "x.y", "--data", r#"{"card":{"n":9007199254740993}}"#],
            "eventsd: --data: data.card.n: integer 9007199254740993 is beyond 2^53",
        ),
        (&["publish", "--type", "bad type", "--data", "{}"], "eventsd: INVALID_ARGUMENT: type: "),
        (&["list", "--page-token", "garbage"], "eventsd: INVALID_ARGUMENT: page_token: "),
    ];
    for (args, expected) in cases {
        let failed = run(&app, args).await;
        assert_eq!(failed.code, Some(1), "{args:?}: {}", failed.stderr);
        assert!(failed.stderr.starts_with(expected), "{args:?}: {}", failed.stderr);
        assert_eq!(failed.stdout, "", "{args:?}");
    }
    let file =
        run(&app, &["publish", "--type", "x.y", "--data-file", "/nonexistent/data.json"]).await;
    assert_eq!(file.code, Some(1));
    assert!(file.stderr.starts_with("eventsd: --data-file: cannot read"), "{}", file.stderr);
    let stdin = run_command(eventsd(&app, &["publish", "--type", "x.y"]), Some("[]")).await;
    assert_eq!(stdin.code, Some(1));
    assert!(stdin.stderr.contains("--data") && stdin.stderr.contains("stdin"), "{}", stdin.stderr);
    assert_eq!(stored_total(&mut client).await, 0, "a failed publish stores nothing");

    let unreachable = run(&app, &["get", "x", "--addr", "http://127.0.0.1:1"]).await;
    assert_eq!(unreachable.code, Some(1));
    assert!(
        unreachable.stderr.starts_with("eventsd: UNAVAILABLE: cannot connect to"),
        "{}",
        unreachable.stderr
    );

    // Usage errors are clap's, with exit code 2.
    for args in [
        &["list", "--order", "sideways"][..],
        &["list", "--limit", "-1"],
        &["list", "--from", "yesterday"],
        &["publish", "--data", "{}"],
        &["publish", "--type", "x", "--data", "{}", "--data-file", "f"],
    ] {
        let usage = run(&app, args).await;
        assert_eq!(usage.code, Some(2), "{args:?}: {}", usage.stderr);
    }
}

/// A key file with one admin key.
const KEYS: &str = r#"
[[key]]
name = "cli"
key = "sk_cli_admin"
scopes = ["admin"]
mode = "all"
"#;

#[tokio::test]
async fn every_subcommand_sends_the_api_key_from_the_environment() {
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("keys.toml");
    std::fs::write(&keys, KEYS).expect("write the key file");
    let app = spawn_app_with(|c| c.api_keys = Some(keys.clone())).await;
    let with_key = |args: &[&str]| {
        let mut command = eventsd(&app, args);
        command.env("EVENTSD_API_KEY", "sk_cli_admin");
        command
    };

    let anonymous = run(&app, &["list"]).await;
    assert_eq!(anonymous.code, Some(1));
    assert!(anonymous.stderr.starts_with("eventsd: UNAUTHENTICATED: "), "{}", anonymous.stderr);
    let published = run_command(
        with_key(&["publish", "--type", "charge.create", "--id", "evt_key", "--data", "{}"]),
        None,
    )
    .await
    .ok("publish with the key");
    assert_eq!(published.json()["id"], "evt_key");
    run_command(with_key(&["get", "evt_key"]), None).await.ok("get with the key");
    let listed = run_command(with_key(&["list", "--all"]), None).await.ok("list with the key");
    assert_eq!(ids(&listed.lines()), ["evt_key"]);

    let mut wrong = eventsd(&app, &["tail", "--from-beginning"]);
    wrong.env("EVENTSD_API_KEY", "sk_wrong");
    let refused = run_command(wrong, None).await;
    assert_eq!(refused.code, Some(1), "tail gives up on a key the server refuses");
    assert!(refused.stderr.contains("UNAUTHENTICATED: unknown API key"), "{}", refused.stderr);

    // tail with the key replays the stored event; it runs until stopped.
    let mut tail = with_key(&["tail", "--from-beginning"]);
    let first_line = tokio::task::spawn_blocking(move || {
        let mut child = tail.spawn().expect("start tail");
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line);
        let _ = child.kill();
        let _ = child.wait();
        read.expect("read a line from tail");
        line
    });
    let line = tokio::time::timeout(HANG_GUARD, first_line)
        .await
        .expect("hang guard: tail prints the event")
        .expect("the blocking task");
    let tailed: Json = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(tailed["id"], "evt_key");
}

#[tokio::test]
async fn help_describes_every_flag() {
    let app = spawn_app().await;
    let flags: [(&str, &[&str]); 3] = [
        (
            "publish",
            &[
                "--addr",
                "--type",
                "--data",
                "--data-file",
                "--id",
                "--created",
                "--livemode",
                "--api-version",
                "--source",
            ],
        ),
        ("get", &["--addr", "<ID>"]),
        (
            "list",
            &[
                "--addr",
                "--from",
                "--to",
                "--offset",
                "--limit",
                "--order",
                "--types",
                "--livemode",
                "--page-token",
                "--all",
            ],
        ),
    ];
    for (command, flags) in flags {
        let help = run(&app, &[command, "--help"]).await.ok("help");
        let lines: Vec<&str> = help.stdout.lines().collect();
        for flag in flags {
            let at = lines
                .iter()
                .position(|l| l.trim_start().starts_with(flag))
                .unwrap_or_else(|| panic!("{command} --help lacks {flag}:\n{}", help.stdout));
            // Short help: "--flag <V>   Description"; long help: the description below.
            let same_line = lines[at].trim().split_once("  ").is_some();
            let next_line = lines.get(at + 1).map(|l| l.trim()).unwrap_or("");
            let below = !next_line.is_empty() && !next_line.starts_with('-');
            assert!(same_line || below, "{command} --help: {flag} has no description");
        }
        assert!(help.stdout.contains("EVENTSD_API_KEY"), "{command} --help names the key variable");
    }
}

#[tokio::test]
async fn endpoints_and_deliveries_commands_manage_outbound_webhooks() {
    let app = spawn_app_with(|c| {
        c.delivery.allow_private = true;
        c.delivery.allow_http = true;
    })
    .await;
    // A receiver that is never reached: the endpoint is disabled before anything is published.
    let url = "http://127.0.0.1:9/hook";
    let created = run(
        &app,
        &[
            "endpoints",
            "create",
            "--url",
            url,
            "--type",
            "charge.*,refund.*",
            "--max-in-flight",
            "3",
        ],
    )
    .await
    .ok("create")
    .json();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["types"], json!(["charge.*", "refund.*"]));
    assert_eq!(created["maxInFlight"], 3);
    let disabled =
        run(&app, &["endpoints", "update", &id, "--disabled", "true", "--format", "omise"])
            .await
            .ok("update")
            .json();
    assert_eq!(
        (disabled["disabled"].as_bool(), disabled["format"].as_str()),
        (Some(true), Some("ENDPOINT_FORMAT_OMISE"))
    );
    assert!(disabled.get("secret").is_none());
    let listed = run(&app, &["endpoints", "list"]).await.ok("list").lines();
    assert_eq!(ids(&listed), vec![id.as_str()]);
    let mut client = app.client.clone();
    let published = publish(&mut client, event("charge.create")).await;
    publish(&mut client, event("other.create")).await;
    let pending = run(&app, &["deliveries", "list", &id, "--status", "pending"])
        .await
        .ok("deliveries")
        .lines();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0]["eventId"], json!(published.id));
    let replayed =
        run(&app, &["endpoints", "replay", &id, "--after-sequence", "0"]).await.ok("replay").json();
    assert_eq!(replayed["id"], json!(id));
    let rotated = run_command(
        {
            let mut command = eventsd(&app, &["endpoints", "rotate", &id]);
            command.env("EVENTSD_ENDPOINT_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
            command
        },
        None,
    )
    .await
    .ok("rotate")
    .json();
    assert_eq!(rotated["secret"], "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    let missing = run(&app, &["deliveries", "retry", &format!("dlv_{}_99", &id[3..])]).await;
    assert_eq!(missing.code, Some(1));
    assert!(missing.stderr.contains("NOT_FOUND"), "{}", missing.stderr);
    let bad = run(&app, &["endpoints", "create", "--url", "ftp://x"]).await;
    assert_eq!(bad.code, Some(1));
    assert!(bad.stderr.contains("INVALID_ARGUMENT: url:"), "{}", bad.stderr);
    run(&app, &["endpoints", "delete", &id]).await.ok("delete");
    let gone = run(&app, &["endpoints", "get", &id]).await;
    assert!(gone.stderr.contains("NOT_FOUND"), "{}", gone.stderr);
}
