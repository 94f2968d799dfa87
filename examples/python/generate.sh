#!/usr/bin/env bash
# Generates the Python stubs for events.v1 into examples/python/gen/.
#
# Usage: bash examples/python/generate.sh   (from anywhere; uses the `python` on PATH,
#        so activate the venv that has requirements.txt installed first, or set PYTHON)
#
# The stubs import each other as `events.v1.events_pb2`, so gen/ itself must be on
# sys.path (subscribe.py and publish_fixture.py add it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
proto_root="$(cd "$here/../../proto" && pwd)"
out="$here/gen"
python="${PYTHON:-python}"

# The well-known types (google/protobuf/*.proto) ship inside grpcio-tools.
wkt_include="$("$python" -c 'import os, grpc_tools; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')"

rm -rf "$out"
mkdir -p "$out"
"$python" -m grpc_tools.protoc \
  -I "$proto_root" \
  -I "$wkt_include" \
  --python_out="$out" \
  --pyi_out="$out" \
  --grpc_python_out="$out" \
  "$proto_root/events/v1/events.proto" \
  "$proto_root/io/cloudevents/v1/cloudevents.proto"

# The CloudEvents package is `io.cloudevents.v1`, but `io` is a module of Python's standard
# library, so `import io.cloudevents` cannot work. Its stubs move to `cloudevents_io.v1`
# (the protobuf descriptors keep their proto names; only the Python import path changes).
mkdir -p "$out/cloudevents_io"
mv "$out/io/cloudevents/v1" "$out/cloudevents_io/v1"
rm -rf "$out/io"
sed -i 's/^from io\.cloudevents\.v1 import/from cloudevents_io.v1 import/' "$out"/events/v1/*.py "$out"/events/v1/*.pyi

# Make the generated folders regular packages, so `import events.v1` works the same
# on every Python version.
touch "$out/events/__init__.py" "$out/events/v1/__init__.py" \
  "$out/cloudevents_io/__init__.py" "$out/cloudevents_io/v1/__init__.py"
echo "generated Python stubs in $out" >&2
