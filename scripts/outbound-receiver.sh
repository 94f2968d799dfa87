#!/usr/bin/env bash
# Outbound webhooks verified by the reference library: a Python receiver checks every
# delivery of a real eventsd (started from BIN) with the `standardwebhooks` PyPI package
# (scripts/outbound-receiver.py). Shares the virtualenv of scripts/webhook-libraries.sh.
#   scripts/outbound-receiver.sh target/debug/eventsd
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:?usage: $0 EVENTSD_BINARY}"
venv=target/py-webhooks
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check standardwebhooks==1.1.0 svix==2.9.1
fi
"$venv/bin/python" scripts/outbound-receiver.py --server "$bin"
