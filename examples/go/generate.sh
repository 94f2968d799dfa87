#!/usr/bin/env bash
# Generates the Go stubs for every file under proto/ into examples/go/gen/, with
# protoc-gen-go and protoc-gen-go-grpc as they are (no M flags: each file's go_package
# names its import path):
#
#   protoc -I proto --go_out=gen --go-grpc_out=gen <every .proto>
#
# Usage: bash examples/go/generate.sh   (from anywhere)
#
# - The plugins are installed with `go install …@VERSION` into examples/go/bin (the Go
#   module proxy; Go's module and build caches make a second run cheap).
# - protoc is grpcio-tools' (`python -m grpc_tools.protoc`, from PyPI): set PYTHON to a
#   Python that has grpcio-tools (check.sh passes its venv's), or the script makes a venv
#   in target/tools/protoc-venv with examples/python/requirements.txt.
# - protoc-gen-go writes each file at its import path: gen/eventsd.dev/genproto/events/v1/
#   (go_package eventsd.dev/genproto/events/v1) and gen/cloudevents.io/genproto/v1/ (the
#   CloudEvents specification's go_package). Neither path is a published module, so each
#   gets a go.mod here and ../go.mod points at them with `replace`, as any Go user of the
#   vendored CloudEvents file must.
set -euo pipefail

# Versions: CLIENTS.md (newest that resolved from the Go module proxy).
PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_root="$(cd "$here/../.." && pwd)"
cd "$repo_root"

bin="$here/bin"
installed="$bin/.versions"
want="$PROTOC_GEN_GO_VERSION $PROTOC_GEN_GO_GRPC_VERSION"
if [ "$(cat "$installed" 2>/dev/null)" != "$want" ]; then
  echo "go install protoc-gen-go@$PROTOC_GEN_GO_VERSION protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION" >&2
  GOBIN="$bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
  GOBIN="$bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
  echo "$want" >"$installed"
fi

python="${PYTHON:-python3}"
if ! "$python" -c 'import grpc_tools' 2>/dev/null; then
  venv="$repo_root/target/tools/protoc-venv"
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import grpc_tools' 2>/dev/null; then
    echo "creating $venv with grpcio-tools" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r examples/python/requirements.txt
  fi
  python="$venv/bin/python"
fi

out="$here/gen"
rm -rf "$out"
mkdir -p "$out"
find proto -name '*.proto' -print0 | sort -z |
  PATH="$bin:$PATH" xargs -0 "$python" -m grpc_tools.protoc -I proto --go_out="$out" --go-grpc_out="$out"

for module in eventsd.dev/genproto cloudevents.io/genproto; do
  printf 'module %s\n\ngo 1.24\n' "$module" >"$out/$module/go.mod"
done
echo "generated Go stubs in $out" >&2
