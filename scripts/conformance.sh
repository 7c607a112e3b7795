#!/usr/bin/env bash
# `make conformance`: every client image against every server image.
#   1. tools: Docker engine reachable, Go, protoset present
#   2. images: scripts/images/build.sh (local only, no registry)
#   3. the matrix: go run ./conformance/cmd/matrix (testcontainers-go, no reaper)
#   4. reports in conformance/results/ (junit.xml, matrix.md, matrix.html, ghz/)
# Exits non-zero when a check failed or a known-failing one passed.
#
# Environment:
#   CONFORMANCE_RUN=REGEXP      only the matching case ids (e.g. 'ordering/')
#   CONFORMANCE_CLIENTS=go,...  only these client implementations
#   CONFORMANCE_SERVERS=go,...  only these server implementations
#   CONFORMANCE_SKIP_BUILD=1    use the images as they are
#   CONFORMANCE_SELFTEST=1      the harness's self-test (conformance/selftest.yaml) instead
#   CONFORMANCE_BUDGET=13m      stop starting cases after this long (default:
#                               what is left of 14.5 min after the builds;
#                               40 min for the self-test)
#   CONFORMANCE_PARALLEL=4      client × server pairs tested at once
#   CONFORMANCE_VERBOSE=1       testcontainers' own log lines too
#   CONFORMANCE_CLEAN_STALE=1   first remove leftovers of runs killed hard
set -euo pipefail
cd "$(dirname "$0")/.."

start=$SECONDS
log() { printf 'conformance: %s\n' "$*" >&2; }

export PATH="/usr/local/go/bin:$(go env GOPATH 2>/dev/null || echo /root/go)/bin:$PATH"
command -v go >/dev/null || { log "Go is needed (https://go.dev/dl, or /usr/local/go)"; exit 2; }

if ! command -v docker >/dev/null; then
  log "installing the Docker engine from Debian's packages"
  apt_updated=""
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq docker.io >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  log "the Docker engine is not reachable (is dockerd running? DOCKER_HOST?)"
  exit 2
fi

# The reaper container (Ryuk) would need a registry pull: off, and the harness
# removes its containers and network itself (also on Ctrl-C).
export TESTCONTAINERS_RYUK_DISABLED=true

if [ "${CONFORMANCE_SKIP_BUILD:-0}" != 1 ]; then
  if [ -x scripts/images/build.sh ] || [ -f scripts/images/build.sh ]; then
    log "building the images (scripts/images/build.sh)"
    bash scripts/images/build.sh all
  else
    log "scripts/images/build.sh is missing: using the images as they are"
  fi
fi
log "images ready after $((SECONDS - start))s"

# Leftovers of a run that was killed hard (SIGKILL) carry our label. Opt-in,
# since another run on the same engine carries it too.
if [ "${CONFORMANCE_CLEAN_STALE:-0}" = 1 ]; then
  stale=$(docker ps -aq --filter label=polystream.conformance || true)
  [ -z "$stale" ] || docker rm -f $stale >/dev/null 2>&1 || true
  stale_nets=$(docker network ls -q --filter label=polystream.conformance || true)
  [ -z "$stale_nets" ] || docker network rm $stale_nets >/dev/null 2>&1 || true
fi

# The self-test reports apart, so it does not wipe the matrix's reports.
results=conformance/results
[ "${CONFORMANCE_SELFTEST:-0}" != 1 ] || results=conformance/results-selftest
rm -rf "$results"
mkdir -p "$results"
# The matrix gets what is left of 14.5 minutes after the image builds, so
# `make conformance` stays under 15 minutes whatever the builds took. The
# self-test runs every case at least once more, against faults: 40 minutes.
total=870; [ "${CONFORMANCE_SELFTEST:-0}" != 1 ] || total=2400
left=$(( total - (SECONDS - start) )); [ "$left" -ge 120 ] || left=120
args=(-dir conformance -results "$results" -protoset proto/polystream.protoset -budget "${CONFORMANCE_BUDGET:-${left}s}")
[ -z "${CONFORMANCE_RUN:-}" ] || args+=(-run "$CONFORMANCE_RUN")
[ -z "${CONFORMANCE_CLIENTS:-}" ] || args+=(-clients "$CONFORMANCE_CLIENTS")
[ -z "${CONFORMANCE_SERVERS:-}" ] || args+=(-servers "$CONFORMANCE_SERVERS")
[ "${CONFORMANCE_SELFTEST:-0}" != 1 ] || args+=(-selftest)
[ -z "${CONFORMANCE_PARALLEL:-}" ] || args+=(-parallel "$CONFORMANCE_PARALLEL")

go build -o "$results/matrix" ./conformance/cmd/matrix
set +e
"$results/matrix" "${args[@]}" 2>&1 | tee "$results/run.log"
rc=${PIPESTATUS[0]}
set -e
rm -f "$results/matrix"
log "wall time $((SECONDS - start))s; reports in $results/"
# The closing line stays the last line of the output.
tail -n 1 "$results/run.log"
exit "$rc"
