#!/usr/bin/env bash
# The console's browser test: Debian's chromium driven by playwright-core (from npm, installed
# under target/console-test/), against a real eventsd started by the test itself on free
# loopback ports. Fails when chromium is missing or any step fails; saves docs/console.png and
# docs/console-endpoints.png.
#
#   bash scripts/console-test.sh [path/to/eventsd]   (default: target/debug/eventsd)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${1:-target/debug/eventsd}"
chromium="${CHROMIUM:-/usr/bin/chromium}"
if [[ ! -x "$chromium" ]]; then
  echo "console-test: $chromium is missing (apt-get install -y chromium)" >&2
  exit 1
fi
if [[ ! -x "$bin" ]]; then
  echo "console-test: $bin is missing (cargo build first)" >&2
  exit 1
fi
dir=target/console-test
mkdir -p "$dir"
if [[ ! -d "$dir/node_modules/playwright-core" ]]; then
  # playwright-core brings no browser of its own: it drives the chromium above.
  npm install --prefix "$dir" --no-audit --no-fund --loglevel=error playwright-core@1.65.2
fi
CONSOLE_TEST_MODULES="$dir" EVENTSD_BIN="$bin" CHROMIUM="$chromium" \
  CONSOLE_SCREENSHOT="docs/console.png" CONSOLE_ENDPOINTS_SCREENSHOT="docs/console-endpoints.png" node scripts/console-test.mjs
