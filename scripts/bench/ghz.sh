#!/usr/bin/env bash
# ghz load profiles against the Go and the Python server, side by side.
#
#   bash scripts/bench/ghz.sh [OUTDIR]      (default bench-results/ghz-<UTC time>)
#
# Starts both servers on 127.0.0.1 with --port 0 (nothing else is contacted),
# then runs every profile against each, ROUNDS times, alternating which server
# goes first so that the machine's drift hurts both alike. ghz reads the
# compiled descriptors in proto/polystream.protoset, never server reflection
# (grpcio's reflection does not serve what ghz asks for). Every run is bounded
# in count (-n), in wall time (timeout -s INT around ghz) and each call by
# --timeout.
#
# Output: OUTDIR/<profile>.<server>.r<round>.json (ghz's JSON report),
# OUTDIR/summary.md and OUTDIR/summary.html (scripts/bench/ghz_summary.py:
# rps and p50/p99 per server, Go:Python ratios), server logs.
#
# Environment: ROUNDS (3), PROFILES (all: "broadcast status sendmessage query"),
# PYTHON (/usr/bin/python3), GHZ (ghz from GOPATH/bin, installed pinned if
# missing).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
export PATH=/usr/local/go/bin:$PATH
PYTHON=${PYTHON:-/usr/bin/python3}
ROUNDS=${ROUNDS:-3}
PROFILES=${PROFILES:-broadcast status sendmessage query}
OUT=${1:-bench-results/ghz-$(date -u +%Y%m%dT%H%M%SZ)}
PROTOSET=proto/polystream.protoset
GHZ_VERSION=v0.121.0 # the module proxy's "latest" is an older release: pin

GHZ=${GHZ:-$(go env GOPATH)/bin/ghz}
if [[ ! -x $GHZ ]]; then
	go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
fi
[[ -x bin/polystream ]] || CGO_ENABLED=0 go build -o bin/polystream ./go/cmd/polystream
mkdir -p "$OUT"

# Profiles: name -> "call|data|ghz flags". Unary ones at concurrency 10 on
# one connection; the streaming query returns 1,000 rows in 10 batches per
# call. LIMIT bounds each run's wall time (see below).
declare -A CALL DATA FLAGS LIMIT
CALL[broadcast]=polystream.events.v1.EventService.Broadcast
DATA[broadcast]='{"event":{"type":"bench.ghz","data":"{\"n\":1}"},"target_channels":["ghz-bench"]}'
FLAGS[broadcast]="-c 10 -n 6000 --skipFirst 300"
LIMIT[broadcast]=25
CALL[status]=polystream.events.v1.EventService.GetConnectionStatus
DATA[status]='{"client_id":"ghz-bench"}'
FLAGS[status]="-c 10 -n 6000 --skipFirst 300"
LIMIT[status]=25
CALL[sendmessage]=polystream.chat.v1.ChatService.SendMessage
DATA[sendmessage]='{"user":"ghz","content":"hello","room":"ghz-bench"}'
FLAGS[sendmessage]="-c 10 -n 6000 --skipFirst 300"
LIMIT[sendmessage]=25
CALL[query]=polystream.updates.v1.StreamService.StreamQueryResults
DATA[query]='{"query":"SELECT id, name, value FROM large_table WHERE id <= 1000","batch_size":100}'
FLAGS[query]="-c 4 -n 300 --skipFirst 20"
LIMIT[query]=30

# Bounds: -n per run, --timeout per call, and `timeout -s INT LIMIT` around
# ghz for the wall time (on SIGINT ghz stops and still writes its report).
# Not -z or -x: in ghz v0.121.0 both make it ignore -n (-x is documented to
# respect -n, but the runner turns it into -z, and -z sets n to MaxInt32).

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

PIDS=()
cleanup() {
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 70); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
	done
}
trap cleanup EXIT

# start NAME CMD...: runs a server, waits for its "polystream listening on
# HOST:PORT" line, sets ADDR_<NAME>.
start() {
	local name=$1 line=""
	shift
	"$@" --host 127.0.0.1 --port 0 >"$OUT/$name.server.out" 2>"$OUT/$name.server.log" &
	PIDS+=($!)
	for _ in $(seq 300); do
		line=$(grep -m1 '^polystream listening on ' "$OUT/$name.server.out" || true)
		[[ -n $line ]] && break
		kill -0 "${PIDS[-1]}" 2>/dev/null || break
		sleep 0.1
	done
	if [[ -z $line ]]; then
		echo "ghz.sh: $name server did not start; see $OUT/$name.server.log" >&2
		exit 1
	fi
	printf -v "ADDR_$name" '%s' "${line##* }"
	printf -v "PID_$name" '%s' "${PIDS[-1]}"
	echo "$name: ${line##* } (pid ${PIDS[-1]})"
}

start go bin/polystream serve
PYTHONPATH=$ROOT/python start python "$PYTHON" -m polystream serve

{
	date -u +%Y-%m-%dT%H:%M:%SZ
	echo "nproc $(nproc); $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
	echo "load $(cut -d' ' -f1-3 /proc/loadavg); $(go version); ghz $GHZ_VERSION ($("$GHZ" --version 2>&1))"
	echo "grpcio $("$PYTHON" -c 'import grpc; print(grpc.__version__)'); $("$PYTHON" --version)"
} >"$OUT/machine.txt"

for profile in $PROFILES; do
	for round in $(seq "$ROUNDS"); do
		order="go python"
		((round % 2 == 0)) && order="python go"
		for server in $order; do
			addr_var=ADDR_$server
			report="$OUT/$profile.$server.r$round.json"
			# shellcheck disable=SC2086 # FLAGS are words
			cmd=("$GHZ" --insecure --protoset "$PROTOSET" --call "${CALL[$profile]}"
				-d "${DATA[$profile]}" ${FLAGS[$profile]} --timeout 10s
				-O json -o "$report" "${!addr_var}")
			{ printf '%q ' timeout -s INT -k 10 "${LIMIT[$profile]}" "${cmd[@]}"; echo; } >>"$OUT/commands.txt"
			pid_var=PID_$server
			cpu0=$(cpu_ticks "${!pid_var}")
			timeout -s INT -k 10 "${LIMIT[$profile]}" "${cmd[@]}" ||
				echo "ghz.sh: ghz exited $? for $profile on $server" >&2
			# The server's CPU time during the run (utime+stime, clock ticks).
			echo "$(($(cpu_ticks "${!pid_var}") - cpu0)) $(getconf CLK_TCK)" >"${report%.json}.cpu"
			printf '%-12s %-7s r%s  %s\n' "$profile" "$server" "$round" "$("$PYTHON" -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("%.0f rps, %d calls, codes %s" % (r["rps"], r["count"], r.get("statusCodeDistribution")))
' "$report" 2>/dev/null || echo '(no report)')"
		done
	done
done

"$PYTHON" scripts/bench/ghz_summary.py "$OUT"
