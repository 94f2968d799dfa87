#!/usr/bin/env bash
# A 3-node JetStream cluster (R3-capable) on free loopback ports, for tests and spikes.
#
#   scripts/nats-cluster.sh start DIR [sync_always]   start it; prints the client URL list
#   scripts/nats-cluster.sh stop DIR                  kill its nodes (by PID) and wait for them
#
# DIR holds everything: nN.conf, nN.log, nN/ (JetStream store), ports, pids (one PID a line,
# node order) and url (nats://127.0.0.1:p1,nats://127.0.0.1:p2,nats://127.0.0.1:p3).
# `start` waits (at most 60 s) until every node's /healthz is ok (JetStream current with the
# meta leader; `?js-enabled-only=true` would say ok before any leader exists) and every node's
# /jsz names the same meta leader; on failure it stops the nodes and shows the logs' tails. `sync_always` adds `sync_interval: always` to the jetstream blocks (fsync
# before every ack). The binary comes from scripts/nats-server.sh (NATS_SERVER_BIN overrides).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() {
    echo "usage: $0 start DIR [sync_always] | stop DIR" >&2
    exit 2
}

stop() {
    local dir="$1"
    [[ -f "$dir/pids" ]] || return 0
    local pid
    while read -r pid; do
        [[ -n "$pid" ]] && kill -KILL "$pid" 2>/dev/null || true
    done <"$dir/pids"
    # Wait (bounded) until they are gone, so their ports and store locks are free again.
    for _ in $(seq 100); do
        local alive=0
        while read -r pid; do
            [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null && alive=1
        done <"$dir/pids"
        [[ $alive == 0 ]] && break
        sleep 0.1
    done
    rm -f "$dir/pids"
}

start() {
    local dir="$1" sync="${2:-}"
    case "$sync" in "" | sync_always) ;; *) usage ;; esac
    local bin
    bin="$("$here/nats-server.sh")"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if [[ -f "$dir/pids" ]]; then
        echo "nats-cluster.sh: $dir/pids exists; stop that cluster first" >&2
        exit 1
    fi

    # Nine distinct free ports: client, cluster (route) and monitoring for each node. All are
    # bound at once before any is released so no two coincide.
    local ports
    ports="$(python3 -c '
import socket
socks = [socket.socket() for _ in range(9)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
')"
    read -r c1 c2 c3 r1 r2 r3 m1 m2 m3 <<<"$ports"
    local client=("$c1" "$c2" "$c3") route=("$r1" "$r2" "$r3") mon=("$m1" "$m2" "$m3")
    printf '%s\n' "client ${client[*]}" "route ${route[*]}" "monitor ${mon[*]}" >"$dir/ports"

    local sync_line=""
    [[ "$sync" == sync_always ]] && sync_line="    sync_interval: always"

    : >"$dir/pids"
    local i
    for i in 0 1 2; do
        local n=$((i + 1))
        mkdir -p "$dir/n$n"
        cat >"$dir/n$n.conf" <<CONF
server_name: n$n
listen: 127.0.0.1:${client[$i]}
http: 127.0.0.1:${mon[$i]}
jetstream {
    store_dir: "$dir/n$n"
$sync_line
}
cluster {
    name: eventsd-test
    listen: 127.0.0.1:${route[$i]}
    routes: [
        nats-route://127.0.0.1:${route[0]}
        nats-route://127.0.0.1:${route[1]}
        nats-route://127.0.0.1:${route[2]}
    ]
}
CONF
        "$bin" -c "$dir/n$n.conf" >>"$dir/n$n.log" 2>&1 &
        echo $! >>"$dir/pids"
    done

    if ! python3 - "${mon[@]}" <<'PY'; then
import json, sys, time, urllib.request
ports = sys.argv[1:]
deadline = time.monotonic() + 60
def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
        return r.read()
while time.monotonic() < deadline:
    try:
        leaders = set()
        for p in ports:
            json.loads(get(p, "/healthz"))
            leaders.add((json.loads(get(p, "/jsz")).get("meta_cluster") or {}).get("leader"))
        if len(leaders) == 1 and None not in leaders and "" not in leaders:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.1)
sys.exit(1)
PY
        echo "nats-cluster.sh: cluster in $dir not ready within 60 s" >&2
        for i in 1 2 3; do
            echo "--- n$i.log" >&2
            tail -n 20 "$dir/n$i.log" >&2 || true
        done
        stop "$dir"
        exit 1
    fi

    local url="nats://127.0.0.1:${client[0]},nats://127.0.0.1:${client[1]},nats://127.0.0.1:${client[2]}"
    printf '%s\n' "$url" >"$dir/url"
    printf '%s\n' "$url"
}

[[ $# -ge 2 ]] || usage
case "$1" in
    start) [[ $# -le 3 ]] || usage; start "$2" "${3:-}" ;;
    stop) [[ $# -eq 2 ]] || usage; stop "$2" ;;
    *) usage ;;
esac
