#!/usr/bin/env bash
# Cross-language check of the example clients against a real eventsd.
#
#   bash examples/check.sh [path-to-eventsd-binary]     (default: target/debug/eventsd)
#
# First generates the stubs from proto/ for each language with its standard tool and no
# post-processing, and imports or compiles them: Python (grpc_tools.protoc, then
# `import events.v1.events_pb2_grpc`), Node (@grpc/proto-loader loads every file), Go
# (protoc-gen-go + protoc-gen-go-grpc, then `go build`) and Java (Maven: protoc and the
# grpc-java plugin as Maven artifacts, then javac). Downloads are cached: the Python venv in
# target/examples-venv, examples/node/node_modules, Go's module and build caches (plus the
# plugins in examples/go/bin), Maven's ~/.m2.
#
# Then starts eventsd on free loopback ports with a temporary data dir, publishes fixture
# events with examples/python/publish_fixture.py, and checks that the Python, Node, Go and
# Java subscribers print exactly the expected events, each once and in order: a full replay,
# resume from a checkpoint, filters, checkpointing on caught-up/heartbeat, and reconnection
# across a server restart. Last, the Go and Java publish examples each run twice with one
# id, and exactly one event is stored for each.
# Ends with `cross-language: N passed, M failed` and exits non-zero if any check failed.
# The temporary folder with the server's and subscribers' logs is removed on success,
# kept on failure or when KEEP_CHECK_LOGS=1.
set -uo pipefail

# An explicit binary path is taken relative to the caller's directory; the default one
# relative to the repository root.
bin_arg="${1:-}"
case "$bin_arg" in "" | /*) ;; *) bin_arg="$(pwd)/$bin_arg" ;; esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo_root="$(pwd)"
bin="${bin_arg:-$repo_root/target/debug/eventsd}"

passed=0
failed=0
started_at=$(date +%s)

say() { echo "check.sh: $*" >&2; }

summary_and_exit() {
  echo "cross-language: $passed passed, $failed failed"
  if [ "$failed" -ne 0 ]; then exit 1; fi
  exit 0
}

fatal() {
  say "FATAL: $*"
  failed=$((failed + 1))
  summary_and_exit
}

[ -x "$bin" ] || fatal "eventsd binary not found at $bin (build it with: cargo build)"

# --- 1. toolchains --------------------------------------------------------------------
venv="$repo_root/target/examples-venv"
py="$venv/bin/python"
if [ ! -x "$py" ]; then
  say "creating venv $venv"
  python3 -m venv "$venv" || fatal "cannot create venv $venv"
fi
req="$repo_root/examples/python/requirements.txt"
req_sum="$(sha256sum "$req" | cut -d' ' -f1)"
if [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$req_sum" ]; then
  say "pip install -r examples/python/requirements.txt"
  "$py" -m pip install --quiet --disable-pip-version-check -r "$req" || fatal "pip install failed"
  echo "$req_sum" >"$venv/.requirements.sha256"
fi

command -v node >/dev/null || fatal "node is not installed"
(
  cd examples/node || exit 1
  if [ -f package-lock.json ]; then
    lock_sum="$(sha256sum package-lock.json | cut -d' ' -f1)"
    if [ "$(cat node_modules/.check-lock.sha256 2>/dev/null)" != "$lock_sum" ]; then
      say "npm ci in examples/node"
      npm ci --no-audit --no-fund --loglevel=error && echo "$lock_sum" >node_modules/.check-lock.sha256
    fi
  else
    say "npm install in examples/node (no package-lock.json)"
    npm install --no-audit --no-fund --loglevel=error
  fi
) || fatal "npm install failed"

# The stubs, each language's way; each check fails if its generator or compiler does.
stubs_python() {
  PYTHON="$py" bash examples/python/generate.sh &&
    (cd examples/python/gen && "$py" -c 'import events.v1.events_pb2_grpc, events.cloudevents.v1.cloudevents_pb2')
}
stubs_node() { # proto-loader loads every file under proto/ as it is
  (cd examples/node && find ../../proto -name '*.proto' -printf '%P\n' | sort | node -e '
    const protoLoader = require("@grpc/proto-loader");
    const files = require("fs").readFileSync(0, "utf8").split("\n").filter(Boolean);
    const def = protoLoader.loadSync(files, { includeDirs: ["../../proto"], longs: String, defaults: true, oneofs: true });
    for (const name of ["events.v1.EventService", "io.cloudevents.v1.CloudEvent", "io.cloudevents.v1.CloudEventBatch"]) {
      if (!def[name]) { console.error(`proto-loader: ${name} missing`); process.exit(1); }
    }')
}
stubs_go() {
  PYTHON="$py" bash examples/go/generate.sh && (cd examples/go && go vet ./... && go build -o bin/ ./cmd/...)
}
stubs_java() {
  (cd examples/java && mvn -q -B compile) && test -s examples/java/target/classpath.txt
}
for lang in python node go java; do
  t0=$(date +%s)
  if "stubs_$lang" >"$repo_root/target/stubs.$lang.log" 2>&1; then
    passed=$((passed + 1))
    echo "ok   - $lang: stubs generated from proto/ and imported/compiled ($(($(date +%s) - t0)) s)"
  else
    failed=$((failed + 1))
    echo "FAIL - $lang: stubs generated from proto/ and imported/compiled (log: target/stubs.$lang.log)"
    tail -20 "$repo_root/target/stubs.$lang.log" >&2
  fi
done
[ "$failed" -eq 0 ] || summary_and_exit
java_cp="$repo_root/examples/java/target/classes:$(cat examples/java/target/classpath.txt)"
langs=(py js go java)
setup_done=$(date +%s)

# --- 2. server ------------------------------------------------------------------------
work="$(mktemp -d "${TMPDIR:-/tmp}/eventsd-check.XXXXXX")"
server_pid=""
bg_pids=()

cleanup() {
  for p in "${bg_pids[@]}"; do kill "$p" 2>/dev/null; done
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$server_pid" 2>/dev/null
  fi
  if [ "$failed" -eq 0 ] && [ -z "${KEEP_CHECK_LOGS:-}" ]; then rm -rf "$work"; else say "logs kept in $work"; fi
}
trap cleanup EXIT

read -r grpc_port http_port < <("$py" -c '
import socket
a, b = socket.socket(), socket.socket()
a.bind(("127.0.0.1", 0)); b.bind(("127.0.0.1", 0))
print(a.getsockname()[1], b.getsockname()[1])
a.close(); b.close()')
addr="127.0.0.1:$grpc_port"

server_args=(--listen "$addr" --http-listen "127.0.0.1:$http_port" --data-dir "$work/data" --heartbeat-interval 300ms)
heartbeats=1

server_log_n=0
start_server() {
  server_log_n=$((server_log_n + 1))
  "$bin" "${server_args[@]}" >"$work/server.$server_log_n.log" 2>&1 &
  server_pid=$!
  # Wait (bounded: 100 x 0.1 s) until the gRPC port accepts connections.
  if ! "$py" - "$grpc_port" "$server_pid" <<'EOF'; then
import os, socket, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
for _ in range(100):
    try:
        os.kill(pid, 0)
    except OSError:
        sys.exit("eventsd exited during start-up")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("eventsd did not accept connections within 10 s")
EOF
    tail -20 "$work/server.$server_log_n.log" >&2
    fatal "eventsd did not start"
  fi
}

stop_server() {
  kill -TERM "$server_pid" 2>/dev/null
  for _ in $(seq 1 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$server_pid" 2>/dev/null; then
    say "eventsd did not stop within 10 s of SIGTERM; killing it"
    kill -9 "$server_pid" 2>/dev/null
  fi
  wait "$server_pid" 2>/dev/null
  server_pid=""
}

start_server
say "eventsd up on $addr (data in $work/data)"

# --- helpers --------------------------------------------------------------------------
check() { # check NAME COMMAND...: runs COMMAND, counts and reports the outcome
  local name="$1"
  shift
  if "$@"; then
    passed=$((passed + 1))
    echo "ok   - $name"
  else
    failed=$((failed + 1))
    echo "FAIL - $name"
  fi
}

publish() { # publish START COUNT: appends the stored events to $work/published.jsonl
  "$py" examples/python/publish_fixture.py --addr "$addr" --start "$1" --count "$2" >"$work/publish.$1.jsonl" \
    2>"$work/publish.$1.err" || { cat "$work/publish.$1.err" >&2; return 1; }
  cat "$work/publish.$1.jsonl" >>"$work/published.jsonl"
  # The store numbers events 1, 2, 3, ... in commit order, so fixture i is sequence i here.
  verify "$work/publish.$1.jsonl" "$(seq -s, "$1" $(($1 + $2 - 1)))"
}

# verify OUTPUT SEQS: OUTPUT (JSON lines) holds exactly the published events with the
# sequences in SEQS (comma list), in that order, field for field (ints stay ints).
verify() {
  "$py" - "$work/published.jsonl" "$1" "$2" <<'EOF'
import json, sys
published_file, output_file, seqs = sys.argv[1], sys.argv[2], sys.argv[3]
want_seqs = [int(s) for s in seqs.split(",") if s]
published = {}
with open(published_file) as f:
    for line in f:
        ev = json.loads(line)
        published[ev["sequence"]] = ev
canon = lambda ev: json.dumps(ev, sort_keys=True)
problems = []
got = []
with open(output_file) as f:
    for n, line in enumerate(f, 1):
        try:
            got.append(json.loads(line))
        except ValueError:
            problems.append(f"line {n} is not JSON: {line!r}")
got_seqs = [ev.get("sequence") for ev in got]
if got_seqs != want_seqs:
    problems.append(f"sequences {got_seqs}, want {want_seqs}")
for ev in got:
    want = published.get(ev.get("sequence"))
    if want is None:
        continue
    if canon(ev) != canon(want):
        problems.append(f"event {ev.get('sequence')}:\n      got  {canon(ev)}\n      want {canon(want)}")
    elif not isinstance(ev["data"].get("amount"), int):
        problems.append(f"event {ev['sequence']}: amount is not an integer")
for p in problems[:10]:
    print(f"    {output_file}: {p}", file=sys.stderr)
sys.exit(1 if problems else 0)
EOF
}

file_is() { # file_is FILE VALUE
  local got
  got="$(tr -d '[:space:]' <"$1" 2>/dev/null)"
  [ "$got" = "$2" ] || { say "    $1 holds '${got}', want '$2'"; return 1; }
}

same_output() { # same_output FILE1 FILE2: the same JSON values line by line
  "$py" - "$1" "$2" <<'EOF'
import json, sys
a = [json.dumps(json.loads(l), sort_keys=True) for l in open(sys.argv[1])]
b = [json.dumps(json.loads(l), sort_keys=True) for l in open(sys.argv[2])]
if a != b:
    print(f"    {sys.argv[1]} and {sys.argv[2]} differ", file=sys.stderr)
    sys.exit(1)
EOF
}

# sub_cmd LANG: the command line of the LANG subscriber, in the array sub_cmd.
sub_cmd() {
  case "$1" in
    py) sub_cmd=("$py" examples/python/subscribe.py) ;;
    js) sub_cmd=(node examples/node/subscribe.js) ;;
    go) sub_cmd=(examples/go/bin/subscribe) ;;
    java) sub_cmd=(java -cp "$java_cp" dev.eventsd.examples.Subscribe) ;;
  esac
}

# sub LANG NAME ARGS...: runs one subscriber (bounded by timeout 60) with output to
# $work/NAME.LANG.out and notes to $work/NAME.LANG.err; fails unless it exits 0.
sub() {
  local lang="$1" name="$2"
  shift 2
  sub_cmd "$lang"
  timeout 60 "${sub_cmd[@]}" --addr "$addr" "$@" >"$work/$name.$lang.out" 2>"$work/$name.$lang.err"
  local rc=$?
  if [ $rc -ne 0 ]; then
    say "    $lang subscriber ($name) exited $rc; its notes:"
    tail -5 "$work/$name.$lang.err" >&2
    return 1
  fi
}

sub_bg() { # sub_bg LANG NAME ARGS...: as sub, in the background; pid in $bg_pid
  local lang="$1" name="$2"
  shift 2
  sub_cmd "$lang"
  timeout 60 "${sub_cmd[@]}" --addr "$addr" "$@" >"$work/$name.$lang.out" 2>"$work/$name.$lang.err" &
  bg_pid=$!
  bg_pids+=("$bg_pid")
}

wait_for() { # wait_for SECONDS COMMAND...: polls COMMAND every 0.1 s, bounded
  local tries=$(($1 * 10))
  shift
  for _ in $(seq 1 "$tries"); do
    if "$@" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

replay_and_verify() { sub "$1" replay --from-beginning --max-events 10 && verify "$work/replay.$1.out" 1,2,3,4,5,6,7,8,9,10; }
resume_first() {
  sub "$1" resume1 --from-beginning --checkpoint "$work/ckpt.$1" --max-events 10 &&
    verify "$work/resume1.$1.out" 1,2,3,4,5,6,7,8,9,10 && file_is "$work/ckpt.$1" 10
}
resume_second() {
  sub "$1" resume2 --checkpoint "$work/ckpt.$1" --max-events 5 &&
    verify "$work/resume2.$1.out" 11,12,13,14,15 && file_is "$work/ckpt.$1" 15
}

# --- 3, 4. publish and replay ---------------------------------------------------------
: >"$work/published.jsonl"
check "publish events 1..10 (sequences 1..10)" publish 1 10
for lang in "${langs[@]}"; do
  check "$lang: --from-beginning --max-events 10 prints events 1..10 exactly" replay_and_verify $lang
done
for lang in js go java; do
  check "$lang prints the same events as python" same_output "$work/replay.py.out" "$work/replay.$lang.out"
done

# --- 5. resume from a checkpoint ------------------------------------------------------
for lang in "${langs[@]}"; do
  check "$lang: first run with --checkpoint prints 1..10 and stores 10" resume_first $lang
done
check "publish events 11..15" publish 11 5
for lang in "${langs[@]}"; do
  check "$lang: second run with the same checkpoint prints exactly 11..15" resume_second $lang
done

# --- 6. filters ---------------------------------------------------------------------
# Fixture i is a refund when i % 3 == 0, and live when i is even.
for lang in "${langs[@]}"; do
  check "$lang: --types 'refund.*' gets only the refund events" \
    eval "sub $lang refunds --types 'refund.*' --from-beginning --max-events 5 && verify \$work/refunds.$lang.out 3,6,9,12,15"
  check "$lang: --types charge.create --livemode true gets only live charges" \
    eval "sub $lang livecharges --types charge.create --livemode true --after 0 --max-events 5 && verify \$work/livecharges.$lang.out 2,4,8,10,14"
done

# --- checkpoint advanced by caught-up and heartbeats, with a filter that matches nothing
if [ "$heartbeats" -eq 1 ]; then
  quiet_pids=()
  for lang in "${langs[@]}"; do
    sub_bg $lang quiet --types 'nothing.*' --from-beginning --checkpoint "$work/quiet.$lang"
    quiet_pids+=("$bg_pid")
  done
  for lang in "${langs[@]}"; do
    check "$lang: caught-up stores sequence 15 in the checkpoint" wait_for 10 file_is "$work/quiet.$lang" 15
  done
  check "publish event 16" publish 16 1
  for lang in "${langs[@]}"; do
    check "$lang: a heartbeat moves the checkpoint to 16 with no matching event" wait_for 10 file_is "$work/quiet.$lang" 16
  done
  kill "${quiet_pids[@]}" 2>/dev/null
  wait "${quiet_pids[@]}" 2>/dev/null
  for lang in "${langs[@]}"; do
    check "$lang: nothing printed for a filter that matches nothing" test ! -s "$work/quiet.$lang.out"
  done
else
  say "this eventsd has no --heartbeat-interval: heartbeat checks skipped"
  check "publish event 16" publish 16 1
fi

# --- reconnect across a server restart --------------------------------------------------
declare -A restart_pids
for lang in "${langs[@]}"; do
  sub_bg $lang restart --after 16 --max-events 4
  restart_pids[$lang]=$bg_pid
done
for lang in "${langs[@]}"; do
  check "$lang: subscriber is live before the restart" wait_for 20 grep -q 'caught up' "$work/restart.$lang.err"
done
stop_server
start_server
say "eventsd restarted on $addr"
check "publish events 17..20 after the restart" publish 17 4
restart_done() { # restart_done LANG PID
  wait "$2"
  local rc=$?
  [ $rc -eq 0 ] || { say "    $1 subscriber exited $rc"; tail -5 "$work/restart.$1.err" >&2; return 1; }
  grep -q 'reconnecting' "$work/restart.$1.err" || { say "    $1 subscriber never reconnected"; return 1; }
  verify "$work/restart.$1.out" 17,18,19,20
}
for lang in "${langs[@]}"; do
  check "$lang: reconnects with backoff and resumes with exactly 17..20" restart_done $lang "${restart_pids[$lang]}"
done

# --- publish with a caller-supplied id, twice ---------------------------------------------
# publish_twice LANG SEQ: the LANG publish example, run twice with one id, prints the same
# stored event both times, with sequence SEQ (the next one: nothing else was stored).
publish_twice() {
  local lang="$1" seq="$2" cmd
  case "$lang" in
    go) cmd=(examples/go/bin/publish) ;;
    java) cmd=(java -cp "$java_cp" dev.eventsd.examples.Publish) ;;
  esac
  for run in 1 2; do
    timeout 60 "${cmd[@]}" --addr "$addr" --id "publish_$lang" --type "publish.$lang" --amount 4200 --source check \
      >"$work/publish_$lang.$run.out" 2>"$work/publish_$lang.$run.err" ||
      { say "    $lang publish (run $run) failed:"; cat "$work/publish_$lang.$run.err" >&2; return 1; }
  done
  cmp -s "$work/publish_$lang.1.out" "$work/publish_$lang.2.out" ||
    { say "    the two $lang runs printed different events"; return 1; }
  cat "$work/publish_$lang.1.out" >>"$work/published.jsonl"
  verify "$work/publish_$lang.1.out" "$seq"
}
stored_events() { # stored_events N: ListEvents counts exactly N events in the store
  PYTHONPATH=examples/python/gen "$py" - "$addr" "$1" <<'EOF'
import sys, grpc
from events.v1 import events_pb2, events_pb2_grpc
with grpc.insecure_channel(sys.argv[1]) as channel:
    total = events_pb2_grpc.EventServiceStub(channel).ListEvents(events_pb2.ListEventsRequest(), timeout=10).total
if total != int(sys.argv[2]):
    sys.exit(f"    ListEvents counts {total} events, want {sys.argv[2]}")
EOF
}
check "go: publish twice with one id stores one event (sequence 21)" publish_twice go 21
check "java: publish twice with one id stores one event (sequence 22)" publish_twice java 22
check "the store holds exactly 22 events" stored_events 22
check "py: a subscriber prints the published events as the publish examples did" \
  eval "sub py published --after 20 --max-events 2 && verify \$work/published.py.out 21,22"

# --- 7. stop ------------------------------------------------------------------------
stop_server
ended_at=$(date +%s)
say "setup $((setup_done - started_at))s, checks $((ended_at - setup_done))s"
summary_and_exit
