#!/usr/bin/env bash
# Smoke test of the built images (docs/images.md): every image's server (with
# --data-dir /data) and driver start, and every driver drives every server (a
# unary call and a server stream) over a private Docker network. Ports are published on
# 127.0.0.1 only; every container and the network are removed on exit.
#
#   scripts/images/smoke.sh            (builds what is missing or stale first)
#   SKIP_BUILD=1 scripts/images/smoke.sh   (use the images as they are)
#   SMOKE_LANGS=python scripts/images/smoke.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-/usr/bin/python3}
read -r -a langs <<<"${SMOKE_LANGS:-go python}"

[ "${SKIP_BUILD:-0}" = 1 ] || bash scripts/images/build.sh "${langs[@]}"

tag="ps-smoke-$$"
net="$tag"
containers=()
cleanup() {
  for c in "${containers[@]}"; do docker rm -f "$c" >/dev/null 2>&1 || true; done
  docker network rm "$net" >/dev/null 2>&1 || true
}
trap cleanup EXIT
docker network create "$net" >/dev/null

# start NAME IMAGE PORT WANT CMD...: runs a container, waits for its line WANT
# in the logs, prints the host port it was published on.
start() {
  local name=$1 image=$2 port=$3 want=$4; shift 4
  docker run -d --name "$name" --network "$net" -p "127.0.0.1::$port" "$image" "$@" >/dev/null
  for _ in $(seq 100); do
    if docker logs "$name" 2>/dev/null | grep -q "^$want"; then
      docker port "$name" "$port/tcp" | head -n1 | sed 's/.*://'
      return
    fi
    if [ "$(docker inspect -f '{{.State.Running}}' "$name")" != true ]; then break; fi
    sleep 0.1
  done
  echo "smoke: $name did not print '$want':" >&2
  docker logs "$name" >&2 || true
  exit 1
}

declare -A image=([go]=polystream/go:dev [python]=polystream/python:dev)
declare -A server_cmd=(
  [go]="/polystream serve --host 0.0.0.0 --port 50051 --data-dir /data"
  [python]="python3 -m polystream serve --host 0.0.0.0 --port 50051 --data-dir /data")
declare -A driver_cmd=(
  [go]="/polystream-driver --port 50052"
  [python]="python3 -m polystream.conformance_driver --port 50052")
declare -A driver_port

start=$SECONDS
for lang in "${langs[@]}"; do
  containers+=("$tag-server-$lang" "$tag-driver-$lang") # start runs in a subshell
  # shellcheck disable=SC2086 # the commands are word lists
  start "$tag-server-$lang" "${image[$lang]}" 50051 "polystream listening on" ${server_cmd[$lang]} >/dev/null
  # shellcheck disable=SC2086
  driver_port[$lang]=$(start "$tag-driver-$lang" "${image[$lang]}" 50052 "polystream driver listening on" ${driver_cmd[$lang]})
done
echo "smoke: ${#langs[@]} servers and ${#langs[@]} drivers up in $((SECONDS - start))s"

passed=0 failed=0
for client in "${langs[@]}"; do
  for server in "${langs[@]}"; do
    if PYTHONPATH=python "$PYTHON" - "127.0.0.1:${driver_port[$client]}" "$tag-server-$server:50051" <<'PY'
import json, sys
import grpc
from polystream.conformance.v1 import driver_pb2 as d, driver_pb2_grpc
from polystream.updates.v1 import updates_pb2

driver, target = sys.argv[1], sys.argv[2]
stub = driver_pb2_grpc.ClientDriverStub(grpc.insecure_channel(driver))

def run(req):
    obs = list(stub.Run(req, timeout=30))
    return obs, obs[-1].finished

obs, fin = run(d.RunRequest(target=target, unary=d.Unary(
    method="/polystream.events.v1.EventService/Broadcast",
    request_json=json.dumps({"event": {"type": "smoke.test", "data": "{}"}}))))
assert fin.code == "OK" and json.loads(fin.response_json)["event_id"], fin
obs, fin = run(d.RunRequest(target=target, query=d.Query(request=updates_pb2.QueryRequest(
    query="SELECT id FROM large_table WHERE id <= 10", batch_size=4))))
got = [o.received.sequence for o in obs if o.HasField("received")]
assert fin.code == "OK" and got == [1, 2, 3], (fin, got)
PY
    then echo "smoke: $client client -> $server server: ok"; passed=$((passed + 1))
    else echo "smoke: $client client -> $server server: FAILED"; failed=$((failed + 1))
      docker logs "$tag-server-$server" 2>&1 | tail -n 20 >&2; docker logs "$tag-driver-$client" 2>&1 | tail -n 20 >&2
    fi
  done
done
echo "smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
