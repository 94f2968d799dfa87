#!/usr/bin/env bash
# Signs fresh deliveries with the reference Standard Webhooks libraries (`standardwebhooks`
# and `svix` from PyPI, pinned) and posts them to a real eventsd started from BIN; every answer
# is checked (scripts/webhook-libraries.py). The virtualenv is kept under target/ so a run
# installs the packages once.
#   scripts/webhook-libraries.sh target/debug/eventsd
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:?usage: $0 EVENTSD_BINARY}"
venv=target/py-webhooks
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check standardwebhooks==1.1.0 svix==2.9.1
fi
"$venv/bin/python" scripts/webhook-libraries.py --server "$bin"
