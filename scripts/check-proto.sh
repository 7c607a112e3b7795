#!/usr/bin/env bash
# Fails when committed generated code differs from what `make proto` makes now.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
bash scripts/gen-proto.sh "$tmp" >/dev/null
list() { (cd "$1" && { find go/gen -type f; find python/polystream -name '*_pb2.py' -o -name '*_pb2_grpc.py'; echo proto/polystream.protoset; } | sort); }
if ! diff <(list .) <(list "$tmp") >/dev/null || ! while read -r f; do cmp -s "$f" "$tmp/$f" || { echo "stale: $f"; exit 1; }; done < <(list "$tmp"); then
  echo "generated code is stale: run 'make proto' and commit the result" >&2
  diff <(list .) <(list "$tmp") >&2 || true
  exit 1
fi
echo "generated code is up to date"
