#!/usr/bin/python3
"""Scale benchmark: N concurrent idle EventService.Subscribe streams, then one
Broadcast that must reach all of them.

Run with the system interpreter from the repository root (grpcio from Debian):

    /usr/bin/python3 scripts/bench/python_streams.py --streams 5000

It runs the same load against three servers, one after the other, each in
its own process on 127.0.0.1 (never anything else):

  aio         the project's Python server, `python -m polystream serve` (grpc.aio)
  threadpool  a minimal grpcio thread-pool server written below
              (grpc.server(ThreadPoolExecutor(max_workers=10))) over the same
              generated stubs; a second, separate "control" server in the same
              process (own 2-worker pool, same in-process hub) answers the
              status polls and can publish, because the bench port cannot
              serve anything once its 10 workers are held by idle streams
  go          the Go server, `bin/polystream serve` (built if missing)

For each server: time to open N streams (until the server itself reports N
registered streams via GetConnectionStatus, summed over the client processes'
client ids), server RSS (VmRSS from /proc/PID/status) before and after, the
server's CPU seconds, then one Broadcast and the time until every stream has
received it (client-side receive times, CLOCK_MONOTONIC, which all processes
share). Clients are `--client-procs` grpc.aio processes (this script in
--role client), each with `--streams-per-channel` streams on each HTTP/2
connection. Every wait is bounded; every process this script starts is
stopped before it exits, also on error or Ctrl-C.

Output: a Markdown table on stdout and the raw figures as JSON (--out).
Timings measure a shared machine: compare servers within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "python"))

import grpc  # noqa: E402

from polystream.events.v1 import events_pb2, events_pb2_grpc  # noqa: E402

HOST = "127.0.0.1"
EVENT_TYPE = "bench.broadcast"
IDLE_HEARTBEAT = 3600  # seconds: no heartbeats while the streams are idle
TICK_HZ = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# The thread-pool baseline server (role "threadpool-server").
# --------------------------------------------------------------------------


class _Hub:
    """Subscribers' queues; one lock. Just enough to stream a Broadcast."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subs: dict[queue.SimpleQueue, str] = {}
        self.sequence = 0

    def publish(self, event: events_pb2.Event) -> tuple[int, int]:
        with self.lock:
            self.sequence += 1
            event.sequence = self.sequence
            targets = list(self.subs)
        for q in targets:
            q.put(event)
        return self.sequence, len(targets)


class ThreadPoolEvents(events_pb2_grpc.EventServiceServicer):
    def __init__(self, hub: _Hub) -> None:
        self.hub = hub

    def Subscribe(self, request, context):
        q: queue.SimpleQueue = queue.SimpleQueue()
        with self.hub.lock:
            self.hub.subs[q] = request.client_id
        # Woken by the RPC's termination callback, not by polling.
        if not context.add_callback(lambda: q.put(None)):
            q.put(None)
        try:
            context.send_initial_metadata(())
            while True:
                event = q.get()
                if event is None:
                    return
                yield event
        finally:
            with self.hub.lock:
                self.hub.subs.pop(q, None)

    def Broadcast(self, request, context):
        event = events_pb2.Event()
        event.CopyFrom(request.event)
        event.id = event.id or str(uuid.uuid4())
        sequence, recipients = self.hub.publish(event)
        return events_pb2.BroadcastResponse(recipients=recipients, event_id=event.id, sequence=sequence)

    def GetConnectionStatus(self, request, context):
        with self.hub.lock:
            n = sum(1 for cid in self.hub.subs.values() if cid == request.client_id)
        return events_pb2.ConnectionStatus(client_id=request.client_id, connected=n > 0, active_streams=n)


def run_threadpool_server(workers: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    servicer = ThreadPoolEvents(_Hub())
    bench = grpc.server(ThreadPoolExecutor(max_workers=workers))
    events_pb2_grpc.add_EventServiceServicer_to_server(servicer, bench)
    port = bench.add_insecure_port(f"{HOST}:0")
    control = grpc.server(ThreadPoolExecutor(max_workers=2))
    events_pb2_grpc.add_EventServiceServicer_to_server(servicer, control)
    control_port = control.add_insecure_port(f"{HOST}:0")
    bench.start()
    control.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"polystream listening on {HOST}:{port} control {HOST}:{control_port}", flush=True)
    stop.wait()
    bench.stop(0)
    control.stop(0)
    os._exit(0)  # do not wait for worker threads parked in handlers


# --------------------------------------------------------------------------
# The client process (role "client"): opens its share of streams on command.
# --------------------------------------------------------------------------


def _emit(**fields: Any) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def _client_main(args: argparse.Namespace) -> None:
    import asyncio

    loop = asyncio.get_running_loop()
    target = f"{HOST}:{args.port}"
    n_channels = max(1, -(-args.count // args.streams_per_channel))
    # A local subchannel pool per channel: one TCP connection each.
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(n_channels)
    ]
    await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 30)
    stubs = [events_pb2_grpc.EventServiceStub(c) for c in channels]
    received: list[float] = []
    errors: dict[str, int] = {}
    calls: list[Any] = []

    async def one(i: int) -> None:
        call = stubs[i % n_channels].Subscribe(
            events_pb2.SubscribeRequest(client_id=args.client_id, heartbeat_interval=IDLE_HEARTBEAT)
        )
        calls.append(call)
        try:
            async for event in call:
                if event.type == EVENT_TYPE:
                    received.append(time.monotonic())
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
        except asyncio.CancelledError:
            pass

    _emit(ready=True, channels=n_channels)
    tasks: list[asyncio.Task] = []
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        command = line.strip()
        if command == "open":
            tasks = [asyncio.ensure_future(one(i)) for i in range(args.count)]
            await asyncio.sleep(0)
            _emit(started=time.monotonic())
        elif command == "count":
            _emit(count=len(received))
        elif command == "report":
            _emit(received=received, errors=errors)
        else:  # "quit" or EOF (the orchestrator went away)
            break
    for call in calls:
        call.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.wait_for(asyncio.gather(*(c.close() for c in channels)), 10)
    sys.stdout.flush()
    os._exit(0)  # the stdin reader thread may still be parked in readline


# --------------------------------------------------------------------------
# The orchestrator.
# --------------------------------------------------------------------------


class Proc:
    """A child process whose stdout lines land in a queue (read by a thread)."""

    def __init__(self, name: str, argv: list[str], env: Optional[dict] = None, stderr=None) -> None:
        self.name = name
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.p = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr if stderr is not None else subprocess.DEVNULL, text=True, bufsize=1,
        )
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise TimeoutError(f"{self.name}: no output within {timeout:.0f}s") from None
        if line is None:
            raise RuntimeError(f"{self.name}: exited (code {self.p.poll()})")
        return line

    def json(self, key: str, deadline: float) -> dict:
        while True:
            msg = json.loads(self.line(deadline - time.monotonic()))
            if key in msg:
                return msg

    def send(self, command: str) -> None:
        try:
            assert self.p.stdin is not None
            self.p.stdin.write(command + "\n")
            self.p.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def stop(self, grace: float, sig: Optional[int] = signal.SIGTERM) -> None:
        """Signals the process (unless sig is None), waits up to grace, then kills it."""
        if self.p.poll() is None:
            try:
                if sig is not None:
                    self.p.send_signal(sig)
                self.p.wait(grace)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait(5)
            except ProcessLookupError:
                pass


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK_HZ  # utime + stime


def start_server(kind: str, args: argparse.Namespace, logdir: str) -> tuple[Proc, str, str]:
    log = open(os.path.join(logdir, f"python-streams-{kind}.server.log"), "w")
    if kind == "aio":
        env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "python"))
        argv = [sys.executable, "-m", "polystream", "serve", "--host", HOST, "--port", "0"]
    elif kind == "go":
        binary = os.path.join(ROOT, "bin", "polystream")
        if not os.path.exists(binary):
            go = "/usr/local/go/bin/go" if os.path.exists("/usr/local/go/bin/go") else "go"
            subprocess.run([go, "build", "-o", binary, "./go/cmd/polystream"], cwd=ROOT, check=True)
        env, argv = None, [binary, "serve", "--host", HOST, "--port", "0"]
    else:
        env = None
        argv = [sys.executable, os.path.abspath(__file__), "--role", "threadpool-server", "--workers", str(args.workers)]
    server = Proc(kind, argv, env=env, stderr=log)
    log.close()
    words = server.line(30).split()
    if words[:3] != ["polystream", "listening", "on"]:
        raise RuntimeError(f"{kind}: unexpected first line {' '.join(words)!r}")
    target = words[3]
    control = words[5] if len(words) > 5 and words[4] == "control" else target
    return server, target, control


def active_streams(stub, client_ids: list[str]) -> int:
    return sum(
        stub.GetConnectionStatus(events_pb2.SubscribeRequest(client_id=cid), timeout=10).active_streams
        for cid in client_ids
    )


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def bench_one(kind: str, args: argparse.Namespace, logdir: str) -> dict:
    result: dict[str, Any] = {"server": kind, "streams": args.streams}
    server, target, control = start_server(kind, args, logdir)
    clients: list[Proc] = []
    control_channel = grpc.insecure_channel(control)
    try:
        control_stub = events_pb2_grpc.EventServiceStub(control_channel)
        active_streams(control_stub, ["warmup"])
        time.sleep(1)
        pid = server.p.pid
        result["rss_kib_before"] = rss_kib(pid)
        result["threads_before"] = threads(pid)

        port = target.rsplit(":", 1)[1]
        shares = [args.streams // args.client_procs + (1 if i < args.streams % args.client_procs else 0)
                  for i in range(args.client_procs)]
        client_ids = [f"bench-{i}" for i in range(args.client_procs)]
        for i, share in enumerate(shares):
            clients.append(Proc(f"client-{i}", [
                sys.executable, os.path.abspath(__file__), "--role", "client", "--port", port,
                "--count", str(share), "--client-id", client_ids[i],
                "--streams-per-channel", str(args.streams_per_channel),
            ], stderr=None if args.verbose else subprocess.DEVNULL))
        deadline = time.monotonic() + 60
        result["connections"] = sum(c.json("ready", deadline)["channels"] for c in clients)

        # Open: all clients start their calls at once; done when the server
        # reports all of them registered, or after a bound, or when the count
        # has not moved for --stall seconds.
        cpu0 = cpu_seconds(pid)
        t0 = time.monotonic()
        for c in clients:
            c.send("open")
        seen, last_change, t_open, slowest_poll, failed_polls = 0, t0, None, 0.0, 0
        while True:
            t_poll = time.monotonic()
            try:
                n = active_streams(control_stub, client_ids)
            except grpc.RpcError:  # the server is too busy to answer within 10 s: keep waiting
                n, failed_polls = seen, failed_polls + 1
                last_change = time.monotonic()  # a busy server is not a stalled one
            now = time.monotonic()
            slowest_poll = max(slowest_poll, now - t_poll)
            if n != seen:
                seen, last_change = n, now
            if n >= args.streams:
                t_open = now - t0
                break
            if now - t0 > args.open_timeout or now - last_change > args.stall:
                break
            time.sleep(0.1)
        result["open_seconds"] = round(t_open, 2) if t_open is not None else None
        result["registered"] = seen
        # How long the server took to answer one status poll (2 unary calls
        # for 2 client processes) while the streams were opening: a measure of
        # how busy its event loop / workers were.
        result["slowest_status_poll_seconds"] = round(slowest_poll, 2)
        result["failed_status_polls"] = failed_polls
        result["open_cpu_seconds"] = round(cpu_seconds(pid) - cpu0, 2)
        time.sleep(1)
        result["rss_kib_open"] = rss_kib(pid)
        result["threads_open"] = threads(pid)
        # Per stream asked: a thread-pool server holds the unserved calls too.
        result["rss_kib_per_stream"] = round((result["rss_kib_open"] - result["rss_kib_before"]) / args.streams, 2)

        # Broadcast on the bench port (bounded), then, if the bench port could
        # not serve it, on the control port (the thread-pool baseline).
        event = events_pb2.Event(type=EVENT_TYPE, data='{"bench":true}')
        bench_channel = grpc.insecure_channel(target)
        stub = events_pb2_grpc.EventServiceStub(bench_channel)
        cpu1 = cpu_seconds(pid)
        t_b = time.monotonic()
        try:
            res = stub.Broadcast(events_pb2.BroadcastRequest(event=event), timeout=args.broadcast_timeout)
            result["broadcast_rpc"] = {"recipients": res.recipients, "seconds": round(time.monotonic() - t_b, 3)}
        except grpc.RpcError as exc:
            result["broadcast_rpc"] = {"error": exc.code().name, "seconds": round(time.monotonic() - t_b, 3)}
            if control != target:
                t_b = time.monotonic()
                res = control_stub.Broadcast(events_pb2.BroadcastRequest(event=event), timeout=10)
                result["broadcast_control"] = {"recipients": res.recipients, "seconds": round(time.monotonic() - t_b, 3)}
        # Wait until as many streams have the event as the server says it
        # queued it for (all N for a server that registered them all).
        expected = (result.get("broadcast_control") or result["broadcast_rpc"]).get("recipients", args.streams)
        deadline = t_b + args.deliver_timeout
        while time.monotonic() < deadline:
            for c in clients:
                c.send("count")
            got = sum(c.json("count", deadline + 30)["count"] for c in clients)
            if got >= expected:
                break
            time.sleep(0.1)
        result["deliver_cpu_seconds"] = round(cpu_seconds(pid) - cpu1, 2)
        times: list[float] = []
        errors: dict[str, int] = {}
        for c in clients:
            c.send("report")
            msg = c.json("received", time.monotonic() + 30)
            times += msg["received"]
            for code, count in msg["errors"].items():
                errors[code] = errors.get(code, 0) + count
        latencies = sorted(t - t_b for t in times)
        result["delivered"] = len(latencies)
        result["deliver_all_seconds"] = round(latencies[-1], 3) if len(latencies) == args.streams else None
        result["deliver_p50_seconds"] = round(percentile(latencies, 0.5), 3) if latencies else None
        result["deliver_max_seconds"] = round(latencies[-1], 3) if latencies else None
        result["client_errors"] = errors
        result["rss_kib_after"] = rss_kib(pid)
        result["server_cpu_seconds_total"] = round(cpu_seconds(pid), 2)
        bench_channel.close()
        return result
    finally:
        for c in clients:
            c.send("quit")
        for c in clients:
            c.stop(15, sig=None)  # "quit" ends it; killed if it has not within 15 s
        control_channel.close()
        server.stop(10)


def render(results: list[dict]) -> str:
    def cell(v: Any) -> str:
        return "—" if v is None else str(v)

    rows = [
        ("streams asked", "streams"),
        ("TCP connections", "connections"),
        ("streams registered by the server", "registered"),
        ("time to register all (s)", "open_seconds"),
        ("server CPU while opening (s)", "open_cpu_seconds"),
        ("slowest status poll while opening (s)", "slowest_status_poll_seconds"),
        ("server RSS idle (MiB)", "rss_mib_before"),
        ("server RSS with streams open (MiB)", "rss_mib_open"),
        ("RSS growth per stream asked (KiB)", "rss_kib_per_stream"),
        ("server threads with streams open", "threads_open"),
        ("Broadcast RPC on the served port", "broadcast"),
        ("streams that received the broadcast", "delivered"),
        ("broadcast → median stream (s)", "p50"),
        ("broadcast → last stream (s)", "deliver_all_seconds"),
        ("server CPU while delivering (s)", "deliver_cpu_seconds"),
    ]
    for r in results:
        r["rss_mib_before"] = round(r["rss_kib_before"] / 1024, 1)
        r["rss_mib_open"] = round(r["rss_kib_open"] / 1024, 1)
        b = r.get("broadcast_rpc", {})
        r["broadcast"] = (f"{b['error']} after {b['seconds']} s" if "error" in b
                          else f"ok in {b.get('seconds')} s, recipients {b.get('recipients')}")
        if "broadcast_control" in r:
            r["broadcast"] += f"; control port: recipients {r['broadcast_control']['recipients']}"
        r["p50"] = cell(r.get("deliver_p50_seconds"))
    out = ["| | " + " | ".join(r["server"] for r in results) + " |", "|---" * (len(results) + 1) + "|"]
    for label, key in rows:
        out.append(f"| {label} | " + " | ".join(cell(r.get(key)) for r in results) + " |")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", default="bench", choices=["bench", "client", "threadpool-server"])
    ap.add_argument("--streams", type=int, default=5000)
    ap.add_argument("--servers", default="aio,threadpool,go", help="comma list of aio, threadpool, go")
    ap.add_argument("--client-procs", type=int, default=2)
    ap.add_argument("--streams-per-channel", type=int, default=100)
    ap.add_argument("--workers", type=int, default=10, help="thread-pool baseline's max_workers")
    ap.add_argument("--open-timeout", type=float, default=90)
    ap.add_argument("--stall", type=float, default=10, help="stop waiting when the count has not moved this long")
    ap.add_argument("--broadcast-timeout", type=float, default=5)
    ap.add_argument("--deliver-timeout", type=float, default=30)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench-results", "python-streams.json"))
    ap.add_argument("--verbose", action="store_true")
    # client role
    ap.add_argument("--port", type=int)
    ap.add_argument("--count", type=int)
    ap.add_argument("--client-id")
    args = ap.parse_args()

    if args.role == "threadpool-server":
        run_threadpool_server(args.workers)
        return 0
    if args.role == "client":
        import asyncio

        asyncio.run(_client_main(args))
        return 0

    def terminated(*_: Any) -> None:
        raise KeyboardInterrupt  # run the finally blocks: stop every child

    signal.signal(signal.SIGTERM, terminated)
    # Streams share connections, so fds are few; raise the soft limit anyway.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    logdir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(logdir, exist_ok=True)
    results = []
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for kind in args.servers.split(","):
        print(f"# {kind}: {args.streams} streams ...", file=sys.stderr, flush=True)
        r = bench_one(kind, args, logdir)
        print(json.dumps(r), file=sys.stderr, flush=True)
        results.append(r)
    meta = {
        "date": started, "nproc": os.cpu_count(), "loadavg": open("/proc/loadavg").read().split()[:3],
        "python": sys.version.split()[0], "grpcio": grpc.__version__, "argv": sys.argv[1:],
        "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
    }
    with open(args.out, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print(f"{started}, nproc {meta['nproc']}, load {' '.join(meta['loadavg'])}, grpcio {grpc.__version__}, "
          f"{args.client_procs} client processes, {args.streams_per_channel} streams per connection\n")
    print(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
