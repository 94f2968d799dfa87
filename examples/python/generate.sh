#!/usr/bin/env bash
# Generates the Python stubs for every file under proto/ into examples/python/gen/, with the
# standard command and nothing after it:
#
#   python -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen <every .proto>
#
# Usage: bash examples/python/generate.sh   (from anywhere; uses the `python` on PATH,
#        so activate the venv that has requirements.txt installed first, or set PYTHON)
#
# grpc_tools.protoc adds the well-known types it ships (google/protobuf/*.proto) to the
# include path by itself. The stubs import each other as `events.v1.events_pb2` and
# `events.cloudevents.v1.cloudevents_pb2` (namespace packages, no __init__.py needed), so
# gen/ itself must be on sys.path (subscribe.py and publish_fixture.py add it).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here/../.."
python="${PYTHON:-python}"
out="$here/gen"

rm -rf "$out"
mkdir -p "$out"
find proto -name '*.proto' -print0 | sort -z |
  xargs -0 "$python" -m grpc_tools.protoc -I proto --python_out="$out" --pyi_out="$out" --grpc_python_out="$out"
echo "generated Python stubs in $out" >&2
