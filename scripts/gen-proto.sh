#!/usr/bin/env bash
# Regenerates every file that comes from proto/: Go stubs (go/gen/), Python
# stubs (python/polystream/, beside the hand-written modules), and
# proto/polystream.protoset for grpcurl and ghz. Run through `make proto`.
# With an argument, writes the same tree under that folder instead (used by
# `make proto-check` to compare against what is committed).
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(realpath "${1:-.}")"
export PATH="$(go env GOPATH)/bin:$PATH"
bash scripts/install-tools.sh protoc

protos=$(cd proto && find polystream -name '*.proto' -not -path '*/vendor/*' | sort)

rm -rf "$out/go/gen" && mkdir -p "$out/go/gen" "$out/python/polystream" "$out/proto"
(cd proto && protoc -I . -I /usr/include \
  --go_out="$out/go/gen" --go_opt=paths=source_relative \
  --go-grpc_out="$out/go/gen" --go-grpc_opt=paths=source_relative \
  $protos)

# Python: generated modules live inside the package (python/polystream/<svc>/v1/).
find "$out/python/polystream" \( -name "*_pb2.py" -o -name "*_pb2_grpc.py" \) -delete
(cd proto && protoc -I . -I /usr/include \
  --python_out="$out/python" --grpc_out="$out/python" \
  --plugin=protoc-gen-grpc="$(command -v grpc_python_plugin)" \
  $protos)
# Health and reflection: from grpc-go's compiled descriptors (see scripts/vendorproto).
vendor_set=$(mktemp); trap 'rm -f "$vendor_set"' EXIT
go run ./scripts/vendorproto "$vendor_set"
protoc --descriptor_set_in="$vendor_set" \
  --python_out="$out/python" --grpc_out="$out/python" \
  --plugin=protoc-gen-grpc="$(command -v grpc_python_plugin)" \
  polystream/vendor/grpc_health_v1.proto polystream/vendor/grpc_reflection_v1.proto
for d in $(find "$out/python/polystream" -name '*_pb2.py' -exec dirname {} \; | sort -u); do
  [ -f "$d/__init__.py" ] || : > "$d/__init__.py"
  p=$(dirname "$d"); [ "$p" = "$out/python/polystream" ] || [ -f "$p/__init__.py" ] || : > "$p/__init__.py"
done

# One self-contained descriptor set for grpcurl -protoset and ghz --protoset.
(cd proto && protoc -I . -I /usr/include --include_imports \
  --descriptor_set_out="$out/proto/polystream.protoset" $protos)
