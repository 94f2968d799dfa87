#!/usr/bin/env bash
# Lints the proto with buf (STANDARD + COMMENTS rules) and checks it for wire- and
# JSON-breaking changes against the previous commit. buf comes from the npm package
# @bufbuild/buf, installed into target/tools on first use.
#
# The breaking check uses buf's WIRE_JSON category (buf.yaml), which compares messages and
# fields by full name wherever their file is: moving a file, as the vendored CloudEvents file
# moved from io/cloudevents/v1/ to events/cloudevents/v1/, is not reported. That move breaks
# only generated import paths (buf's FILE category would flag it), which was its purpose.
# buf.yaml says which rules are excepted for the vendored file, and why.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/tools
if [ ! -x "$tools/node_modules/.bin/buf" ]; then
  mkdir -p "$tools"
  npm install --silent --no-audit --no-fund --prefix "$tools" @bufbuild/buf@1.75.0 >/dev/null
fi
buf="$tools/node_modules/.bin/buf"
"$buf" lint
echo "buf lint: ok"
if git rev-parse --verify --quiet HEAD~1 >/dev/null \
  && git cat-file -e HEAD~1:proto/events/v1/events.proto 2>/dev/null; then
  "$buf" breaking --against '.git#ref=HEAD~1'
  echo "buf breaking against HEAD~1: ok"
else
  echo "buf breaking: no earlier commit with the proto; nothing to compare"
fi
