"""Cross-language smoke tests, all as local processes on 127.0.0.1:

    Go CLI     ($POLYSTREAM_GO_BIN)          -> Python server (python -m polystream serve --port 0)
    Python CLI (python -m polystream)        -> Go server     ($POLYSTREAM_GO_BIN serve --port 0)

Every service is exercised through both pairs, and where the outcome is
deterministic the two pairs' parsed outputs, exit codes and error messages
must be the same (ids, timestamps and log positions are normalised away).
`make test-python` sets POLYSTREAM_GO_BIN; without it these tests fail.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from typing import Any, Callable

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

GO_BIN = os.environ.get("POLYSTREAM_GO_BIN", "")
VOLATILE = {"id", "event_id", "message_id", "timestamp", "connected_at", "updated_at", "job_id"}


class Pairs:
    """The two cross-language pairs, or why they could not be set up."""

    def __init__(self) -> None:
        self.problem = ""
        self.servers: list[ServerProcess] = []
        self.pairs: dict[str, Cli] = {}
        # pair -> (CLI command prefix, server command prefix)
        self.commands: dict[str, tuple[list[str], list[str]]] = {}

    def require(self) -> dict[str, Cli]:
        if self.problem:
            pytest.fail(self.problem, pytrace=False)
        return self.pairs


@pytest.fixture(scope="module")
def pairs():
    setup = Pairs()
    if not GO_BIN:
        setup.problem = (
            "POLYSTREAM_GO_BIN is not set: the cross-language tests need the Go binary "
            "(run `make test-python`, or `make build` and POLYSTREAM_GO_BIN=$PWD/bin/polystream)"
        )
    elif not os.access(GO_BIN, os.X_OK):
        setup.problem = f"POLYSTREAM_GO_BIN={GO_BIN} is not an executable file (run `make build`)"
    else:
        try:
            serve_flags = ["serve", "--port", "0", "--chat-keepalive", "1m", "--shutdown-grace", "1s"]
            python_server = ServerProcess([*PYTHON_CLI, *serve_flags], env=python_env())
            setup.servers.append(python_server)
            go_server = ServerProcess([GO_BIN, *serve_flags], env=python_env())
            setup.servers.append(go_server)
            setup.commands = {
                "go-cli->python-server": ([GO_BIN], PYTHON_CLI),
                "python-cli->go-server": (PYTHON_CLI, [GO_BIN]),
            }
            setup.pairs = {
                "go-cli->python-server": Cli([GO_BIN], python_server.address, env=python_env()),
                "python-cli->go-server": Cli(PYTHON_CLI, go_server.address, env=python_env()),
            }
        except AssertionError as exc:
            setup.problem = str(exc)
    yield setup
    for server in setup.servers:
        server.stop()


def server_language(pair: str) -> str:
    return pair.rsplit("->", 1)[1].removesuffix("-server")


def normalise(value: Any) -> Any:
    """Drops what legitimately differs between runs and servers."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    return value


def same_everywhere(results: dict[str, Any]) -> Any:
    """Asserts every pair produced the same result and returns it."""
    (first_pair, first), *rest = results.items()
    for pair, result in rest:
        assert result == first, f"{pair} differs from {first_pair}:\n{pair}: {result}\n{first_pair}: {first}"
    return first


def across(pairs: Pairs, scenario: Callable[[str, Cli], Any]) -> Any:
    """Runs a scenario through every pair; the results must agree."""
    return same_everywhere({name: scenario(name, cli) for name, cli in pairs.require().items()})


def error_of(cli: Cli, command: str, *args: str) -> tuple[int, str]:
    result = cli(command, *args)
    return result.code, result.stderr.strip()


# ---------------------------------------------------------------- events


def test_publish_and_subscribe_with_resume(pairs):
    def scenario(_pair: str, cli: Cli):
        channel, kind = unique("ch"), unique("x")
        marker = cli.ok("publish", "--type", f"{kind}.marker", "--channels", channel)[0]
        published = [
            cli.ok("publish", "--type", f"{kind}.n", "--data", json.dumps({"n": n}), "--channels", channel,
                   "--metadata", f"n={n}")[0]
            for n in range(3)
        ]
        assert [int(p["sequence"]) for p in published] == sorted(int(p["sequence"]) for p in published)
        events = cli.ok("subscribe", "--client-id", unique("c"), "--channel", channel, "--types", f"{kind}.*",
                        "--last-event-id", marker["event_id"], "--count", "3", timeout=20)
        assert [e["id"] for e in events] == [p["event_id"] for p in published]
        assert [e["sequence"] for e in events] == [p["sequence"] for p in published]
        # live delivery through the resilient client
        live = cli.start("subscribe", "--client-id", unique("c"), "--channel", channel, "--types", f"{kind}.live",
                         "--count", "1")
        try:
            wait_until(lambda: cli.ok("publish", "--type", f"{kind}.live", "--channels", channel)[0].get(
                "recipients", 0) >= 1, what="live subscriber")
            out, err = live.communicate(timeout=20)
        finally:
            live.kill()
        assert live.returncode == 0, err
        return {
            "replayed": [normalise({**e, "type": e["type"].removeprefix(kind), "sequence": 0, "channel": 0})
                         for e in events],
            "live": [json.loads(line)["type"].removeprefix(kind) for line in out.splitlines()],
        }

    result = across(pairs, scenario)
    assert result["live"] == [".live"]


@pytest.mark.parametrize("pair", ["go-cli->python-server", "python-cli->go-server"])
def test_subscribe_survives_a_server_restart(pairs, pair, tmp_path):
    """The resilient subscriber of one language resumes from the other
    language's durable log: nothing lost, nothing twice."""
    pairs.require()
    cli_prefix, server_prefix = pairs.commands[pair]
    serve = [*server_prefix, "serve", "--data-dir", str(tmp_path), "--shutdown-grace", "1s"]
    server = ServerProcess([*serve, "--port", "0"], env=python_env())
    port = server.address.rsplit(":", 1)[1]
    cli = Cli(cli_prefix, server.address, env=python_env())
    client, kind = unique("c"), unique("restart")
    subscriber = cli.start("subscribe", "--client-id", client, "--types", f"{kind}.*", "--count", "6")
    try:
        wait_until(lambda: "connected" in cli.ok("status", "--client-id", client)[0], what="subscriber connected")
        published = [cli.ok("publish", "--type", f"{kind}.before")[0]["event_id"] for _ in range(3)]
        server.stop()
        server = ServerProcess([*serve, "--port", port], env=python_env())
        published += [cli.ok("publish", "--type", f"{kind}.after")[0]["event_id"] for _ in range(3)]
        out, err = subscriber.communicate(timeout=60)
    finally:
        subscriber.kill()
        server.stop()
    assert subscriber.returncode == 0, err
    assert [json.loads(line)["id"] for line in out.splitlines()] == published
    assert "reconnecting" in err


def test_idempotent_publish_and_replay_gap(pairs):
    def scenario(_pair: str, cli: Cli):
        event_id, channel, kind = unique("id"), unique("ch"), unique("gap")
        once = cli.ok("publish", "--type", kind, "--id", event_id, "--channels", channel)[0]
        twice = cli.ok("publish", "--type", kind, "--id", event_id, "--channels", channel)[0]
        assert once["event_id"] == twice["event_id"] == event_id and once["sequence"] == twice["sequence"]
        raw = cli.ok("subscribe", "--raw", "--client-id", unique("c"), "--channel", channel, "--types", kind,
                     "--last-event-id", "never-published", "--count", "1", timeout=20)
        gap = raw[0]
        return {
            "second_recipients": twice.get("recipients", 0),
            "gap": {"type": gap["type"], "requested_id": gap["metadata"]["requested_id"], "sequence": gap.get("sequence")},
            "last": raw[-1]["id"] == event_id,
        }

    result = across(pairs, scenario)
    assert result == {
        "second_recipients": 0,
        "gap": {"type": "polystream.replay_gap", "requested_id": "never-published", "sequence": None},
        "last": True,
    }


def test_status_and_event_errors(pairs):
    def scenario(_pair: str, cli: Cli):
        client = unique("c")
        return {
            "unseen": normalise(cli.ok("status", "--client-id", client)[0]) == {"client_id": client},
            "no_client": error_of(cli, "status"),
            "bad_pattern": error_of(cli, "subscribe", "--client-id", "c", "--types", "a..b"),
            "bad_heartbeat": error_of(cli, "subscribe", "--client-id", "c", "--heartbeat", "-5", "--raw"),
            "no_type": error_of(cli, "publish", "--type", ""),
        }

    result = across(pairs, scenario)
    assert result["unseen"] is True
    assert result["no_client"] == (1, "polystream: INVALID_ARGUMENT: client_id is required")
    assert result["bad_pattern"] == (1, 'polystream: INVALID_ARGUMENT: invalid event type pattern "a..b": empty segment')
    assert result["bad_heartbeat"] == (1, "polystream: INVALID_ARGUMENT: heartbeat_interval must be >= 0, got -5")
    assert result["no_type"] == (2, "polystream: publish: --type is required")


def test_status_of_a_connected_client(pairs):
    def scenario(_pair: str, cli: Cli):
        client = unique("c")
        subscriber = cli.start("subscribe", "--client-id", client, "--channel", unique("ch"))
        try:
            wait_until(lambda: cli.ok("status", "--client-id", client)[0].get("connected", False), what="connected")
            status = cli.ok("status", "--client-id", client)[0]
        finally:
            subscriber.send_signal(signal.SIGINT)
            subscriber.communicate(timeout=10)
        return {"connected": status["connected"], "active_streams": status["active_streams"],
                "has_connected_at": "connected_at" in status}

    assert across(pairs, scenario) == {"connected": True, "active_streams": 1, "has_connected_at": True}


# ---------------------------------------------------------------- updates


def test_updates(pairs):
    def scenario(_pair: str, cli: Cli):
        topic = unique("t")
        watcher = cli.start("updates", "--topics", topic, "--client-id", unique("c"), "--count", "2")
        try:
            wait_until(lambda: cli.ok("publish-update", "--topic", topic, "--message", "first")[0].get(
                "recipients", 0) >= 1, what="updates subscriber")
            response = cli.ok("publish-update", "--topic", topic, "--message", "second", "--metadata", "k=v")[0]
            out, err = watcher.communicate(timeout=20)
        finally:
            watcher.kill()
        assert watcher.returncode == 0, err
        updates = [normalise(json.loads(line)) for line in out.splitlines()]
        return {
            "recipients": response,
            "sequences": [u["sequence"] for u in updates],
            "topics": {u["topic"] == topic for u in updates},
            "errors": [error_of(cli, "publish-update", "--message", "m"), error_of(cli, "updates", "--count", "1")],
        }

    result = across(pairs, scenario)
    assert result["recipients"] == {"recipients": 1}
    assert result["sequences"] == ["1", "2"] and result["topics"] == {True}
    assert result["errors"] == [
        (1, "polystream: INVALID_ARGUMENT: topic is required"),
        (1, "polystream: INVALID_ARGUMENT: at least one topic is required"),
    ]


# ---------------------------------------------------------------- query


QUERIES = [
    ["--sql", "SELECT id, name, value FROM large_table WHERE id <= 250 ORDER BY id", "--batch-size", "100"],
    ["--sql", "SELECT COUNT(*) AS n, SUM(value) AS total, MAX(name) AS last FROM large_table"],
    ["--sql", "SELECT AVG(value) AS average, id / 3.0 AS ratio, NULL AS missing FROM large_table WHERE id IN (3, 7)"
              " GROUP BY id ORDER BY id"],
    ["--sql", "WITH t AS (SELECT id FROM large_table WHERE id > 9998) SELECT * FROM t;", "--batch-size", "1"],
    ["--sql", "SELECT id FROM large_table WHERE id < 0"],
]


@pytest.mark.parametrize("query", QUERIES, ids=["rows", "aggregates", "reals", "with", "empty"])
def test_query_results_are_identical(pairs, query):
    result = across(pairs, lambda _pair, cli: cli.ok("query", *query, timeout=30))
    assert result[-1]["is_last"] is True
    assert [b["batch_number"] for b in result] == list(range(1, len(result) + 1))


def test_both_clis_print_the_same_text(pairs):
    """Not only the same objects: the same line (map keys sorted, whole doubles as 25)."""
    pairs.require()
    query = ["--sql", "SELECT AVG(value) AS average, id AS id, id / 4.0 AS quarter FROM large_table WHERE id IN (4, 6)"
                      " GROUP BY id ORDER BY id"]
    for server in pairs.servers:
        go_cli, python_cli = (Cli(prefix, server.address, env=python_env()) for prefix in ([GO_BIN], PYTHON_CLI))
        go_out, python_out = (cli("query", *query, timeout=30) for cli in (go_cli, python_cli))
        assert go_out.code == python_out.code == 0, go_out.describe() + python_out.describe()
        assert python_out.stdout == go_out.stdout
        assert '"quarter":"1.0"' in go_out.stdout  # a REAL column (text), not a double: sqlite's own repr
        # A double field: a finished job's final state, watched by both CLIs.
        (started,) = go_cli.ok("start-job", "--steps", "2", "--step-ms", "1")
        wait_until(lambda: go_cli("watch-job", "--job-id", started["job_id"]).code == 0, what="job completed")
        go_out, python_out = (cli("watch-job", "--job-id", started["job_id"]) for cli in (go_cli, python_cli))
        assert python_out.stdout == go_out.stdout
        assert '"percentage":100,' in go_out.stdout


def test_query_errors(pairs):
    result = across(pairs, lambda _pair, cli: [
        error_of(cli, "query"),
        error_of(cli, "query", "--sql", "DELETE FROM large_table"),
        error_of(cli, "query", "--sql", "SELECT 1; SELECT 2"),
        error_of(cli, "query", "--sql", "SELECT 1", "--batch-size", "10001"),
    ])
    assert result == [
        (1, "polystream: INVALID_ARGUMENT: query is required"),
        (1, "polystream: INVALID_ARGUMENT: only a single SELECT statement is allowed"),
        (1, "polystream: INVALID_ARGUMENT: only a single SELECT statement is allowed"),
        (1, "polystream: INVALID_ARGUMENT: batch_size must be between 0 and 10000, got 10001"),
    ]


def test_query_sql_error_code(pairs):
    # sqlite's own text may differ by language: compare the code and prefix only
    result = across(pairs, lambda _pair, cli: error_of(cli, "query", "--sql", "SELECT nope FROM large_table")[1]
                    .startswith("polystream: INVALID_ARGUMENT: query failed: "))
    assert result is True


# ---------------------------------------------------------------- jobs


def test_jobs(pairs):
    def scenario(_pair: str, cli: Cli):
        done = cli("watch-job", "--start", "--name", "x", "--steps", "3", "--step-ms", "20", timeout=30)
        failed = cli("watch-job", "--start", "--steps", "4", "--step-ms", "20", "--fail-at", "2", timeout=30)
        job_id = cli.ok("start-job", "--steps", "100", "--step-ms", "60000")[0]["job_id"]
        cancelled = cli.ok("cancel-job", "--job-id", job_id)[0]
        watched = cli("watch-job", "--job-id", job_id)
        assert "100.0%" in done.stderr or "100%" in done.stderr, done.describe()
        return {
            "completed": (done.code, normalise(done.messages[-1])),
            "completed_sequences": [int(m["sequence"]) for m in done.messages] == list(range(1, len(done.messages) + 1)),
            "failed": (failed.code, normalise(failed.messages[-1])),
            "cancelled": normalise(cancelled),
            "watched": (watched.code, normalise(watched.messages)),
            "errors": [error_of(cli, "watch-job", "--job-id", "abc"), error_of(cli, "cancel-job"),
                       error_of(cli, "start-job", "--steps", "5000"), error_of(cli, "start-job", "--step-ms", "-1")],
        }

    result = across(pairs, scenario)
    assert result["completed"] == (0, {"percentage": 100, "status": "JOB_STATUS_COMPLETED",
                                       "current_step": "step 3/3", "sequence": result["completed"][1]["sequence"]})
    assert result["failed"][0] == 1 and result["failed"][1]["status"] == "JOB_STATUS_FAILED"
    assert result["failed"][1]["current_step"] == "failed at step 2/4"
    assert result["cancelled"] == {"status": "JOB_STATUS_CANCELLED"}
    assert result["watched"][0] == 1 and result["watched"][1][-1]["status"] == "JOB_STATUS_CANCELLED"
    assert result["errors"] == [
        (1, 'polystream: NOT_FOUND: job "abc" not found'),
        (1, "polystream: INVALID_ARGUMENT: job_id is required"),
        (1, "polystream: INVALID_ARGUMENT: steps must be between 0 and 1000, got 5000"),
        (1, "polystream: INVALID_ARGUMENT: step_duration_ms must be between 0 and 60000, got -1"),
    ]


# ---------------------------------------------------------------- tail


def test_tail(pairs):
    def scenario(_pair: str, cli: Cli):
        cli.ok("query", "--sql", "SELECT 1")  # its rpc record is the newest one
        past = cli.ok("tail", "--lines", "1", "--count", "1", "--level", "info")
        follower = cli.start("tail", "--follow", "--count", "1")
        try:
            poke_until_exit(follower, lambda: cli.ok("publish", "--type", "tail.me", "--channels", unique("ch")))
            out, err = follower.communicate(timeout=20)
        finally:
            follower.kill()
        assert follower.returncode == 0, err
        followed = json.loads(out.splitlines()[0])
        return {
            "past": normalise(past),
            "followed": normalise(followed),
            "errors": [error_of(cli, "tail", "--level", "verbose"), error_of(cli, "tail", "--lines", "-1")],
        }

    result = across(pairs, scenario)
    (past,) = result["past"]
    assert past["message"] == "rpc" and past["level"] == "info" and past["sequence"] == "1"
    assert past["fields"]["method"] == "/polystream.updates.v1.StreamService/StreamQueryResults"
    assert result["followed"]["fields"]["method"] == "/polystream.events.v1.EventService/Broadcast"
    assert result["errors"] == [
        (1, 'polystream: INVALID_ARGUMENT: log_level must be one of debug, info, warn, error; got "verbose"'),
        (1, "polystream: INVALID_ARGUMENT: lines must be >= 0, got -1"),
    ]


# ---------------------------------------------------------------- chat


def test_send_and_messages(pairs):
    def scenario(_pair: str, cli: Cli):
        room = unique("room")
        listener = cli.start("messages", "--user", "watcher", "--room", room, "--count", "2")
        try:
            welcome = json.loads(read_first_line(listener))  # it has joined
            sent = cli.ok("send", "--user", "alice", "--room", room, "--content", "hi")[0]
            out, err = listener.communicate(timeout=20)
        finally:
            listener.kill()
        assert listener.returncode == 0, err
        (message,) = (json.loads(line) for line in out.splitlines())
        assert message["id"] == sent["message_id"]
        return {
            "welcome": {**normalise(welcome), "content": welcome["content"].replace(room, "ROOM"), "room": 0},
            "message": {**normalise(message), "room": message["room"] == room},
            "errors": [error_of(cli, "send", "--content", "x"), error_of(cli, "send", "--user", "u")],
        }

    result = across(pairs, scenario)
    assert result["welcome"]["content"] == "welcome to ROOM, watcher"
    assert result["welcome"]["type"] == "MESSAGE_TYPE_SYSTEM"
    assert result["message"] == {"user": "alice", "content": "hi", "room": True, "type": "MESSAGE_TYPE_CHAT",
                                 "sequence": "2"}
    assert result["errors"] == [(1, "polystream: INVALID_ARGUMENT: user is required"),
                                (1, "polystream: INVALID_ARGUMENT: content is required")]


def test_chat(pairs):
    def scenario(_pair: str, cli: Cli):
        room = unique("room")
        messages = cli.ok("chat", "--user", "bob", "--room", room, input="hello\nworld\n", timeout=30)
        return [{**normalise(m), "room": m.get("room") == room} for m in messages]

    result = across(pairs, scenario)
    chats = [m for m in result if m["type"] == "MESSAGE_TYPE_CHAT"]
    assert [(m["user"], m["content"], m["room"]) for m in chats] == [("bob", "hello", True), ("bob", "world", True)]


@pytest.mark.parametrize("pair", ["go-cli->python-server", "python-cli->go-server"])
def test_chat_ends_with_the_server_shutdown(pairs, pair):
    """A graceful shutdown ends the other language's chat stream with
    UNAVAILABLE, and the CLI exits though its stdin is still open."""
    pairs.require()
    cli_prefix, server_prefix = pairs.commands[pair]
    server = ServerProcess([*server_prefix, "serve", "--port", "0", "--shutdown-grace", "1s"], env=python_env())
    chat = subprocess.Popen(
        [*cli_prefix, "chat", "--addr", server.address, "--user", "eve"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=python_env(),
    )
    try:
        chat.stdin.write("still here\n")  # type: ignore[union-attr]
        chat.stdin.flush()  # type: ignore[union-attr]
        assert json.loads(read_first_line(chat))["content"] == "still here"
        server.stop()
        chat.wait(timeout=10)
        err = chat.stderr.read()  # type: ignore[union-attr]
    finally:
        chat.kill()
        server.stop()
    assert (chat.returncode, err) == (1, "polystream: UNAVAILABLE: server is shutting down\n")


def test_upload(pairs):
    result = across(pairs, lambda _pair, cli: [
        cli.ok("upload", "--user", "u", "--room", "r", input="one\ntwo\nthree\n"),
        cli.ok("upload", "--user", "u", "--room", "r", "--count", "5"),
    ])
    assert result == [[{"message_count": 3, "success": True}], [{"message_count": 5, "success": True}]]


def test_metrics(pairs):
    def scenario(pair: str, cli: Cli):
        metrics = cli.ok("metrics", "--instance-id", "smoke", "--interval", "1", "--count", "1", timeout=20)
        assert {m["labels"]["language"] for m in metrics} == {server_language(pair)}
        return {
            "names": sorted({m["name"] for m in metrics}),
            "instance": {m["labels"]["instance_id"] for m in metrics},
            "error": error_of(cli, "metrics", "--interval", "-1"),
        }

    result = across(pairs, scenario)
    assert result["names"] == sorted([
        "process_cpu_percent", "process_resident_memory_bytes", "process_threads",
        "server_requests_per_second", "server_active_streams",
    ])
    assert result["instance"] == {"smoke"}
    assert result["error"] == (1, "polystream: INVALID_ARGUMENT: interval_seconds must be >= 0, got -1")


# ---------------------------------------------------------------- the CLIs themselves


@pytest.mark.parametrize(
    "args, same_text",
    [
        (["subscribe"], True),
        (["publish", "--type", ""], True),
        (["no-such-command"], True),
        # the flag libraries' own wording differs
        (["query", "--batch-size", "many"], False),
        (["publish", "--type", "x", "--metadata", "novalue"], False),
    ],
)
def test_bad_flags_exit_2_in_both_clis(pairs, args, same_text):
    pairs.require()
    results = {"go": run([GO_BIN, *args]), "python": run([*PYTHON_CLI, *args], env=python_env())}
    assert {lang: r.code for lang, r in results.items()} == {"go": 2, "python": 2}
    for lang, result in results.items():
        assert result.stderr.startswith("polystream: ") and result.stdout == "", f"{lang}: {result.describe()}"
    if same_text:
        assert results["go"].stderr == results["python"].stderr


def test_unreachable_server_in_both_clis(pairs):
    pairs.require()
    for argv, env in (([GO_BIN], None), (PYTHON_CLI, python_env())):
        result = run([*argv, "status", "--client-id", "c", "--addr", "127.0.0.1:1"], env=env)
        assert result.code == 1 and result.stderr.startswith("polystream: UNAVAILABLE: "), result.describe()
