#!/usr/bin/env bash
# Measures what a client on a run's Docker network meets when it connects to
# a server container (docs/conformance.md, "A stopped server's address does
# not answer"): the container running without a listener, then stopped (its
# old address, and its alias). Needs the polystream/python:dev image
# (scripts/images/build.sh python). Bounded: each connect waits at most
# PROBE_TIMEOUT seconds (default 10). Cleans up what it made.
set -euo pipefail
image=polystream/python:dev
timeout=${PROBE_TIMEOUT:-10}
run=probe-$$
cleanup() {
	docker rm -f "$run-server" "$run-client" >/dev/null 2>&1 || true
	docker network rm "$run" >/dev/null 2>&1 || true
}
trap cleanup EXIT

docker network create "$run" >/dev/null
docker run -d --name "$run-server" --network "$run" --network-alias server --entrypoint sleep "$image" 300 >/dev/null
docker run -d --name "$run-client" --network "$run" --entrypoint sleep "$image" 300 >/dev/null
addr=$(docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$run-server")

connect() { # label host
	docker exec "$run-client" /usr/bin/python3 -c "
import socket, sys, time
start = time.monotonic()
try:
    socket.create_connection(('$2', 50051), timeout=$timeout).close()
    outcome = 'connected'
except OSError as e:
    outcome = type(e).__name__
print(f'$1: {outcome} after {(time.monotonic() - start) * 1000:.0f} ms')
"
}

connect "running, no listener, $addr" "$addr"
docker stop -t 0 "$run-server" >/dev/null
connect "stopped, old address $addr" "$addr"
connect "stopped, alias server" server
