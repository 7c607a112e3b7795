"""The Python CLI end to end: `python -m polystream ...` as a subprocess
against a `python -m polystream serve --port 0` subprocess (docs/cli.md).

The process helpers are in support.py, shared with test_crosslang.py.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest

from support import (
    PYTHON_CLI,
    Cli,
    ServerProcess,
    poke_until_exit,
    python_env,
    read_first_line,
    run,
    unique,
    wait_until,
)

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess([*PYTHON_CLI, "serve", "--port", "0", "--chat-keepalive", "1m"], env=python_env())
    yield proc
    proc.stop()


@pytest.fixture
def cli(server) -> Cli:
    return Cli(PYTHON_CLI, server.address, env=python_env())


# ---------------------------------------------------------------- events


def test_publish_then_subscribe_resumes_after_a_known_id(cli):
    channel, kind = unique("ch"), unique("cli")
    first = cli.ok("publish", "--type", f"{kind}.start", "--channels", channel)[0]
    assert first["event_id"] and int(first["sequence"]) > 0
    published = [
        cli.ok(
            "publish", "--type", f"{kind}.n", "--data", json.dumps({"n": n}), "--channels", channel,
            "--metadata", f"n={n},who=cli",
        )[0]
        for n in range(3)
    ]
    events = cli.ok(
        "subscribe", "--client-id", unique("c"), "--channel", channel, "--types", f"{kind}.*",
        "--last-event-id", first["event_id"], "--count", "3", timeout=20,
    )
    assert [e["id"] for e in events] == [p["event_id"] for p in published]
    assert [json.loads(e["data"]) for e in events] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert events[1]["metadata"] == {"n": "1", "who": "cli"}
    assert {e["channel"] for e in events} == {channel}


def test_publish_with_a_known_id_is_idempotent(cli):
    event_id, channel = unique("id"), unique("ch")
    once = cli.ok("publish", "--type", "cli.idem", "--id", event_id, "--channels", channel)[0]
    twice = cli.ok("publish", "--type", "cli.idem", "--id", event_id, "--channels", channel)[0]
    assert once["event_id"] == twice["event_id"] == event_id
    assert once["sequence"] == twice["sequence"]
    assert twice.get("recipients", 0) == 0


def test_raw_subscribe_prints_control_events(cli):
    channel, kind = unique("ch"), unique("raw")
    published = cli.ok("publish", "--type", kind, "--channels", channel)[0]
    events = cli.ok(
        "subscribe", "--raw", "--client-id", unique("c"), "--channel", channel, "--types", kind,
        "--last-event-id", "no-such-id", "--count", "1", timeout=20,
    )
    assert events[0]["type"] == "polystream.replay_gap"
    assert events[0]["metadata"]["requested_id"] == "no-such-id"
    assert events[-1]["id"] == published["event_id"]


def test_raw_subscribe_shows_heartbeats_and_honours_timeout(cli):
    result = cli("subscribe", "--raw", "--client-id", unique("c"), "--channel", unique("ch"),
                 "--heartbeat", "1", "--timeout", "2500ms")
    assert result.code == 1, result.describe()
    assert result.stderr.startswith("polystream: DEADLINE_EXCEEDED: "), result.describe()
    beats = result.messages
    assert beats and all(e["type"] == "heartbeat" for e in beats)
    assert beats[0]["payload"]["sequence"] == "1"


def test_status_of_a_subscribed_client(cli):
    client = unique("c")
    assert cli.ok("status", "--client-id", client) == [{"client_id": client}]
    subscriber = cli.start("subscribe", "--client-id", client, "--channel", unique("ch"))
    try:
        wait_until(lambda: cli.ok("status", "--client-id", client)[0].get("connected"), what="connected")
        status = cli.ok("status", "--client-id", client)[0]
        assert status["active_streams"] == 1 and "connected_at" in status
    finally:
        subscriber.send_signal(signal.SIGINT)
        subscriber.communicate(timeout=10)


def test_ctrl_c_ends_a_subscription_even_when_started_with_sigint_ignored(cli):
    # A shell without job control starts `cmd &` with SIGINT ignored, and the
    # child inherits that; the Go CLI takes SIGINT back (signal.Notify), so
    # the Python CLI must too.
    client = unique("c")
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        subscriber = cli.start("subscribe", "--client-id", client, "--channel", unique("ch"))
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        wait_until(lambda: cli.ok("status", "--client-id", client)[0].get("connected"), what="connected")
    finally:
        subscriber.send_signal(signal.SIGINT)
        subscriber.communicate(timeout=10)
    assert subscriber.returncode == 130


def test_event_errors(cli):
    assert cli.fails("status") == "polystream: INVALID_ARGUMENT: client_id is required"
    assert cli.fails("subscribe", "--client-id", "c", "--types", "a..b") == (
        'polystream: INVALID_ARGUMENT: invalid event type pattern "a..b": empty segment'
    )
    assert cli.fails("subscribe", "--client-id", "c", "--heartbeat", "-5") == (
        "polystream: INVALID_ARGUMENT: heartbeat_interval must be >= 0, got -5"
    )


# ---------------------------------------------------------------- updates, query, jobs, tail


def test_updates_and_publish_update(cli):
    topic = unique("topic")
    watcher = cli.start("updates", "--topics", f"{topic},other", "--client-id", unique("c"), "--count", "2")
    try:
        wait_until(
            lambda: cli.ok("publish-update", "--topic", topic, "--message", "ping")[0].get("recipients", 0) >= 1,
            what="updates subscriber",
        )
        cli.ok("publish-update", "--topic", topic, "--message", "hello", "--metadata", "k=v")
        out, err = watcher.communicate(timeout=20)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    updates = [json.loads(line) for line in out.splitlines()]
    assert [u["sequence"] for u in updates] == ["1", "2"]
    assert updates[-1]["topic"] == topic and updates[-1]["message"] in ("ping", "hello")


def test_query_streams_batches(cli):
    batches = cli.ok("query", "--sql", "SELECT id, name, value FROM large_table WHERE id <= 5 ORDER BY id",
                     "--batch-size", "2")
    assert [b["batch_number"] for b in batches] == [1, 2, 3]
    assert {b["total_batches"] for b in batches} == {3}
    assert [b.get("is_last", False) for b in batches] == [False, False, True]
    rows = [r["columns"] for b in batches for r in b["rows"]]
    assert rows[0] == {"id": "1", "name": "item-00001", "value": str(7919 % 10007)}
    assert [r["id"] for r in rows] == ["1", "2", "3", "4", "5"]


def test_query_errors(cli):
    assert cli.fails("query") == "polystream: INVALID_ARGUMENT: query is required"
    assert cli.fails("query", "--sql", "DELETE FROM large_table") == (
        "polystream: INVALID_ARGUMENT: only a single SELECT statement is allowed"
    )
    assert cli.fails("query", "--sql", "SELECT 1", "--batch-size", "10001") == (
        "polystream: INVALID_ARGUMENT: batch_size must be between 0 and 10000, got 10001"
    )


def test_watch_job_to_completion_with_a_progress_bar(cli):
    result = cli("watch-job", "--start", "--name", "demo", "--steps", "4", "--step-ms", "20")
    assert result.code == 0, result.describe()
    progress = result.messages
    assert progress[-1]["status"] == "JOB_STATUS_COMPLETED" and progress[-1]["percentage"] == 100
    assert progress[-1]["current_step"] == "step 4/4"
    assert "100.0%" in result.stderr and "#" in result.stderr


def test_watch_job_that_fails_exits_1(cli):
    result = cli("watch-job", "--start", "--steps", "4", "--step-ms", "10", "--fail-at", "2")
    assert result.code == 1, result.describe()
    assert result.messages[-1]["status"] == "JOB_STATUS_FAILED"
    assert result.messages[-1]["current_step"] == "failed at step 2/4"


def test_start_cancel_and_watch_a_job(cli):
    job_id = cli.ok("start-job", "--name", "long", "--steps", "100", "--step-ms", "60000")[0]["job_id"]
    assert re.fullmatch(r"job-\d+", job_id)
    cancelled = cli.ok("cancel-job", "--job-id", job_id)[0]
    assert cancelled == {"job_id": job_id, "status": "JOB_STATUS_CANCELLED"}
    result = cli("watch-job", "--job-id", job_id)
    assert result.code == 1 and result.messages[-1]["status"] == "JOB_STATUS_CANCELLED", result.describe()


def test_job_errors(cli):
    assert cli.fails("watch-job", "--job-id", "abc") == 'polystream: NOT_FOUND: job "abc" not found'
    assert cli.fails("cancel-job") == "polystream: INVALID_ARGUMENT: job_id is required"
    assert cli.fails("start-job", "--steps", "5000") == (
        "polystream: INVALID_ARGUMENT: steps must be between 0 and 1000, got 5000"
    )


def test_tail_past_records_and_follow(cli):
    cli.ok("publish", "--type", "tail.me", "--channels", unique("ch"))  # makes a log record
    past = cli.ok("tail", "--lines", "2", "--count", "2")
    assert [p["sequence"] for p in past] == ["1", "2"]
    assert past[-1]["message"] == "rpc" and past[-1]["fields"]["method"].endswith("/Broadcast")
    follower = cli.start("tail", "--follow", "--level", "info", "--count", "1")
    try:
        poke_until_exit(follower, lambda: cli.ok("publish", "--type", "tail.me", "--channels", unique("ch")))
        out, err = follower.communicate(timeout=20)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    entry = json.loads(out.splitlines()[0])
    assert entry["message"] == "rpc" and entry["level"] in ("info", "warn", "error")
    assert entry["fields"]["method"] == "/polystream.events.v1.EventService/Broadcast"


def test_tail_errors(cli):
    assert cli.fails("tail", "--level", "verbose") == (
        'polystream: INVALID_ARGUMENT: log_level must be one of debug, info, warn, error; got "verbose"'
    )
    assert cli.fails("tail", "--lines", "-1") == "polystream: INVALID_ARGUMENT: lines must be >= 0, got -1"


# ---------------------------------------------------------------- chat


def test_send_and_messages(cli):
    room, user = unique("room"), unique("u")
    listener = cli.start("messages", "--user", user, "--room", room, "--count", "2")
    try:
        welcome = json.loads(read_first_line(listener))  # it has joined
        sent = cli.ok("send", "--user", "alice", "--room", room, "--content", "hi")[0]
        out, err = listener.communicate(timeout=20)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    (message,) = (json.loads(line) for line in out.splitlines())
    assert welcome["type"] == "MESSAGE_TYPE_SYSTEM" and welcome["content"] == f"welcome to {room}, {user}"
    assert message["id"] == sent["message_id"] and message["content"] == "hi" and message["user"] == "alice"


def test_chat_echoes_stdin_lines_and_exits_at_end_of_stream(cli):
    messages = cli.ok("chat", "--user", "bob", "--room", unique("room"), input="hello\nworld\n", timeout=20)
    echoes = [m for m in messages if m.get("type") == "MESSAGE_TYPE_CHAT"]
    assert [m["content"] for m in echoes] == ["hello", "world"]
    assert all(m["user"] == "bob" and "timestamp" in m for m in echoes)
    sequences = [int(m["sequence"]) for m in messages]
    assert sequences == list(range(1, len(messages) + 1))


def test_chat_ends_when_the_server_does_even_with_stdin_open():
    server = ServerProcess([*PYTHON_CLI, "serve", "--port", "0", "--shutdown-grace", "1s"], env=python_env())
    chat = subprocess.Popen(
        [*PYTHON_CLI, "chat", "--addr", server.address, "--user", "eve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env(),
    )
    try:
        chat.stdin.write("still here\n")  # type: ignore[union-attr]
        chat.stdin.flush()  # type: ignore[union-attr]
        echo = json.loads(read_first_line(chat))
        assert echo["content"] == "still here"
        server.stop()
        chat.wait(timeout=10)
        err = chat.stderr.read()  # type: ignore[union-attr]
    finally:
        chat.kill()
        server.stop()
    assert chat.returncode == 1, err
    assert err == "polystream: UNAVAILABLE: server is shutting down\n"


def test_upload_from_stdin_and_generated(cli):
    room = unique("room")
    assert cli.ok("upload", "--user", "u", "--room", room, input="a\nb\nc\n") == [
        {"message_count": 3, "success": True}
    ]
    assert cli.ok("upload", "--user", "u", "--room", room, "--count", "5") == [{"message_count": 5, "success": True}]


def test_chat_errors(cli):
    assert cli.fails("send", "--content", "x") == "polystream: INVALID_ARGUMENT: user is required"
    assert cli.fails("send", "--user", "u") == "polystream: INVALID_ARGUMENT: content is required"
    assert cli.fails("metrics", "--interval", "-1") == (
        "polystream: INVALID_ARGUMENT: interval_seconds must be >= 0, got -1"
    )


def test_metrics_count_samples(cli):
    metrics = cli.ok("metrics", "--instance-id", "cli-test", "--interval", "1", "--count", "2", timeout=20)
    names = [m["name"] for m in metrics]
    expected = {
        "process_cpu_percent", "process_resident_memory_bytes", "process_threads",
        "server_requests_per_second", "server_active_streams",
    }
    assert set(names) == expected and len(metrics) == 2 * len(expected)
    assert all(m["labels"]["instance_id"] == "cli-test" and m["labels"]["language"] == "python" for m in metrics)


# ---------------------------------------------------------------- flags and failures


@pytest.mark.parametrize(
    "args",
    [
        ["subscribe"],  # --client-id is required
        ["publish"],  # --type is required
        ["query", "--batch-size", "many"],
        ["status", "--timeout", "soon"],
        ["publish", "--type", "x", "--metadata", "novalue"],
        ["no-such-command"],
        [],
    ],
)
def test_bad_flags_exit_2(args):
    result = run([*PYTHON_CLI, *args], env=python_env())
    assert result.code == 2, result.describe()
    assert result.stdout == ""


def test_required_flags_must_not_be_empty():
    result = run([*PYTHON_CLI, "publish", "--type", ""], env=python_env())
    assert (result.code, result.stderr) == (2, "polystream: publish: --type is required\n")
    result = run([*PYTHON_CLI, "subscribe"], env=python_env())
    assert (result.code, result.stderr) == (2, "polystream: subscribe: --client-id is required\n")


def test_unreachable_server_is_unavailable():
    result = run([*PYTHON_CLI, "status", "--client-id", "c", "--addr", "127.0.0.1:1"], env=python_env())
    assert result.code == 1
    assert result.stderr.startswith("polystream: UNAVAILABLE: ")


def test_addr_from_environment(server):
    env = {**python_env(), "POLYSTREAM_ADDR": server.address}
    result = run([*PYTHON_CLI, "status", "--client-id", "env"], env=env)
    assert result.code == 0 and json.loads(result.stdout) == {"client_id": "env"}, result.describe()


def test_serve_prints_its_address_and_stops_on_sigterm():
    proc = ServerProcess([*PYTHON_CLI, "serve", "--port", "0", "--shutdown-grace", "1s"], env=python_env())
    started = time.monotonic()
    assert proc.stop() == 0
    assert time.monotonic() - started < 5
