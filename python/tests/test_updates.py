"""StreamService against the real server on 127.0.0.1 (docs/contract.md).

The server comes from conftest's start_server; tests read the service's own
state (open queries, subscribers, log followers) only to await what a client
cannot see.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import sqlite3
import threading
from typing import Awaitable, Callable

import grpc
import pytest

from conftest import eventually, expect_error, take
from polystream.server import RunningServer
from polystream.services import updates_query
from polystream.services.updates import UpdatesService
from polystream.updates.v1 import updates_pb2 as pb
from polystream.updates.v1 import updates_pb2_grpc

WAIT = 15.0  # upper bound for awaited conditions; never a speed assertion
NO_BDP = [("grpc.http2.bdp_probe", 0)]  # fixed flow-control windows


@dataclasses.dataclass
class Running:
    service: UpdatesService
    stub: updates_pb2_grpc.StreamServiceStub
    server: RunningServer


@pytest.fixture
async def start_updates(start_server, open_channel, tmp_path: pathlib.Path) -> Callable[..., Awaitable[Running]]:
    """The whole server (conftest's start_server) with a channel to its StreamService;
    config fields as keywords."""

    async def start(**overrides: object) -> Running:
        server = await start_server(**({"data_dir": str(tmp_path), "log_level": "debug"} | overrides))
        channel = open_channel(server.address, options=NO_BDP)
        return Running(server.updates, updates_pb2_grpc.StreamServiceStub(channel), server)

    return start


@pytest.fixture
async def running(start_updates) -> Running:
    return await start_updates()


# --- topic updates ------------------------------------------------------------


@pytest.mark.parametrize("topics", [[], [""]])
async def test_subscribe_requires_a_topic(running: Running, topics: list[str]) -> None:
    await expect_error(
        running.stub.SubscribeToUpdates(pb.SubscribeRequest(client_id="c", topics=topics)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "at least one topic is required",
    )


async def test_publish_requires_a_topic(running: Running) -> None:
    await expect_error(
        running.stub.PublishUpdate(pb.PublishUpdateRequest(message="m")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "topic is required",
    )


async def test_updates_reach_subscribers_of_their_topic_in_order(running: Running) -> None:
    both = running.stub.SubscribeToUpdates(pb.SubscribeRequest(topics=["a", "b", "a"], client_id="both"))
    only_b = running.stub.SubscribeToUpdates(pb.SubscribeRequest(topics=["b"], client_id="only-b"))
    await both.initial_metadata()  # headers = subscribed
    await only_b.initial_metadata()
    assert running.service.topic_subscribers == 2

    recipients = []
    for i, topic in enumerate(["a", "b", "c", "a"]):
        response = await running.stub.PublishUpdate(
            pb.PublishUpdateRequest(topic=topic, message=f"m{i}", metadata={"i": str(i)})
        )
        recipients.append(response.recipients)
    assert recipients == [1, 2, 0, 1]

    got = await take(both, 3)
    assert [(u.topic, u.message, u.metadata["i"], u.sequence) for u in got] == [
        ("a", "m0", "0", 1),
        ("b", "m1", "1", 2),
        ("a", "m3", "3", 3),
    ]
    assert all(u.timestamp.seconds > 0 for u in got)
    (first_b,) = await take(only_b, 1)
    assert (first_b.message, first_b.sequence) == ("m1", 1)

    both.cancel()
    only_b.cancel()
    await eventually(lambda: running.service.topic_subscribers == 0, WAIT, "subscribers gone after cancel")


async def test_a_stalled_subscriber_loses_updates_without_holding_up_others(start_updates) -> None:
    # Whatever the events' policy, a full topic queue refuses the new update.
    running = await start_updates(queue_size=2, backpressure="drop-oldest")
    stalled = running.stub.SubscribeToUpdates(pb.SubscribeRequest(topics=["t"], client_id="stalled"))
    await stalled.initial_metadata()  # headers = subscribed

    # Large updates fill the stalled stream's flow-control window, then its queue.
    big = "x" * 300_000
    accepted = []
    for i in range(40):
        response = await running.stub.PublishUpdate(pb.PublishUpdateRequest(topic="t", message=f"{i}:{big}"))
        if response.recipients == 1:
            accepted.append(f"{i}:{big}")
    assert len(accepted) < 40, "a full queue must refuse new updates"

    # A live subscriber is served at once while the other one is stalled.
    live = running.stub.SubscribeToUpdates(pb.SubscribeRequest(topics=["t"], client_id="live"))
    await live.initial_metadata()
    last = await running.stub.PublishUpdate(pb.PublishUpdateRequest(topic="t", message="last"))
    (update,) = await take(live, 1)
    assert (update.message, update.sequence) == ("last", 1)

    # The stalled stream gets exactly what its queue took, numbered without gaps.
    expected = accepted + (["last"] if last.recipients == 2 else [])
    received = await take(stalled, len(expected))
    assert [u.message for u in received] == expected
    assert [u.sequence for u in received] == list(range(1, len(received) + 1))
    stalled.cancel()
    live.cancel()
    await eventually(lambda: running.service.topic_subscribers == 0, WAIT, "subscribers gone after cancel")


# --- query results -------------------------------------------------------------


async def run_query(running: Running, query: str, batch_size: int = 0) -> list[pb.QueryResult]:
    return [r async for r in running.stub.StreamQueryResults(pb.QueryRequest(query=query, batch_size=batch_size))]


async def test_query_streams_the_seeded_table_in_batches(running: Running) -> None:
    results = await run_query(running, "SELECT id, name, value FROM large_table ORDER BY id", batch_size=1000)
    assert [r.batch_number for r in results] == list(range(1, 11))
    assert [r.sequence for r in results] == list(range(1, 11))
    assert {r.total_batches for r in results} == {10}
    assert [r.is_last for r in results] == [False] * 9 + [True]
    rows = [dict(row.columns) for r in results for row in r.rows]
    assert len(rows) == 10_000
    assert rows[0] == {"id": "1", "name": "item-00001", "value": "7919"}
    assert rows[9999] == {"id": "10000", "name": "item-10000", "value": str(10000 * 7919 % 10007)}
    assert all(row["value"] == str(int(row["id"]) * 7919 % 10007) for row in rows)


async def test_query_default_batch_size_is_100(running: Running) -> None:
    results = await run_query(running, "select * from large_table where id <= 250;")
    assert [len(r.rows) for r in results] == [100, 100, 50]
    assert {r.total_batches for r in results} == {3}


async def test_query_with_no_rows_sends_one_empty_last_batch(running: Running) -> None:
    (result,) = await run_query(running, "SELECT * FROM large_table WHERE id < 0")
    assert (len(result.rows), result.batch_number, result.total_batches, result.is_last) == (0, 1, 1, True)


async def test_query_values_are_text(running: Running) -> None:
    (result,) = await run_query(
        running,
        "SELECT 42 AS i, -7 AS neg, 'héllo' AS t, NULL AS n, 1.0 AS r, 0.1 AS p, "
        "1e-5 AS tiny, 1e16 AS big, 2.5e15 AS below_big",
    )
    assert dict(result.rows[0].columns) == {
        "i": "42",
        "neg": "-7",
        "t": "héllo",
        "n": "",
        "r": "1.0",
        "p": "0.1",
        "tiny": "1e-05",
        "big": "1e+16",
        "below_big": "2500000000000000.0",
    }


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 1 AS x;",
        "  with t(x) AS (SELECT 1) SELECT x FROM t",
        "/* lead */ SELECT ';' AS x -- trailing ; comment",
        'SELECT 1 AS "a;b"; -- done',
        "SELECT 1 AS x; /* end */ ",
        "SELECT 'it''s; fine' AS x",
        "SELECT 1 AS x /* a block comment left open",
        "SELECT 1 AS [x;y]",
    ],
)
async def test_query_accepts_one_select_with_quotes_and_comments(running: Running, query: str) -> None:
    (result,) = await run_query(running, query)
    assert len(result.rows) == 1 and result.is_last


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM large_table",
        "SELECT 1; SELECT 2",
        "SELECT 1;;",
        "PRAGMA table_info(large_table)",
        "-- only a comment",
        "(SELECT 1)",
        "INSERT INTO large_table VALUES (0, 'x', 0)",
        "SELECT ';'; DROP TABLE large_table",
        ";SELECT 1",
        "\u00a0SELECT 1",  # only ASCII whitespace separates tokens
        "SELECT 1; -- fine\nSELECT 2",
    ],
)
async def test_query_rejects_anything_but_a_single_select(running: Running, query: str) -> None:
    await expect_error(
        running.stub.StreamQueryResults(pb.QueryRequest(query=query)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "only a single SELECT statement is allowed",
    )


@pytest.mark.parametrize("query", ["", "   \n"])
async def test_query_is_required(running: Running, query: str) -> None:
    await expect_error(
        running.stub.StreamQueryResults(pb.QueryRequest(query=query)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "query is required",
    )


@pytest.mark.parametrize("batch_size", [10001, -1])
async def test_query_batch_size_out_of_range(running: Running, batch_size: int) -> None:
    await expect_error(
        running.stub.StreamQueryResults(pb.QueryRequest(query="SELECT 1", batch_size=batch_size)),
        grpc.StatusCode.INVALID_ARGUMENT,
        f"batch_size must be between 0 and 10000, got {batch_size}",
    )


async def test_query_errors_carry_sqlite_message(running: Running) -> None:
    await expect_error(
        running.stub.StreamQueryResults(pb.QueryRequest(query="SELECT * FROM missing_table")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "query failed: no such table: missing_table",
    )


async def test_query_connection_is_read_only(running: Running) -> None:
    call = running.stub.StreamQueryResults(
        pb.QueryRequest(query="WITH t AS (SELECT 1) DELETE FROM large_table")
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("query failed: ")
    # The table is intact.
    (result,) = await run_query(running, "SELECT COUNT(*) AS n FROM large_table")
    assert result.rows[0].columns["n"] == "10000"


async def test_a_value_larger_than_1_mib_is_refused_by_sqlite(running: Running) -> None:
    await expect_error(
        running.stub.StreamQueryResults(pb.QueryRequest(query="SELECT length(zeroblob(2000000)) AS n")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "query failed: string or blob too big",
    )


async def test_a_batch_larger_than_8_mib_ends_the_stream_after_the_batches_before_it(running: Running) -> None:
    # 1,000,000 characters a row: batches of 3 rows fit (and fit a 4 MiB message), of 10 do not.
    wide = "SELECT id, replace(hex(zeroblob(500000)), '00', 'xy') AS v FROM large_table WHERE id <= 12 ORDER BY id"
    fitting = await run_query(running, wide, batch_size=3)
    assert [len(r.rows) for r in fitting] == [3, 3, 3, 3]
    assert len(fitting[0].rows[0].columns["v"]) == 1_000_000
    # Rows 1..10 are short, 11..20 wide: the first batch goes out, the second ends the stream.
    mixed = (
        "SELECT id, CASE WHEN id > 10 THEN replace(hex(zeroblob(500000)), '00', 'xy') ELSE 'x' END AS v "
        "FROM large_table WHERE id <= 20 ORDER BY id"
    )
    call = running.stub.StreamQueryResults(pb.QueryRequest(query=mixed, batch_size=10))
    received = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for result in call:
            received.append(result)
    assert [(r.batch_number, len(r.rows), r.is_last) for r in received] == [(1, 10, False)]
    assert (info.value.code(), info.value.details()) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "query batch larger than 8388608 bytes; use a smaller batch_size",
    )
    await eventually(lambda: running.service.active_queries == 0, WAIT, "the query to close")


async def test_cancelling_an_endless_query_stops_it(running: Running) -> None:
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT x FROM n"
    call = running.stub.StreamQueryResults(pb.QueryRequest(query=endless))
    await eventually(lambda: running.service.active_queries == 1, WAIT, "the query to run")
    call.cancel()
    # Without an interrupt the COUNT(*) would never return and the connection stay open.
    await eventually(lambda: running.service.active_queries == 0, WAIT, "the query to stop after cancel")
    assert (await running.stub.PublishUpdate(pb.PublishUpdateRequest(topic="alive"))).recipients == 0


async def test_cancelling_mid_stream_stops_fetching(running: Running) -> None:
    call = running.stub.StreamQueryResults(pb.QueryRequest(query="SELECT * FROM large_table", batch_size=1))
    got = await take(call, 3)
    assert [r.batch_number for r in got] == [1, 2, 3] and got[0].total_batches == 10_000
    call.cancel()
    await eventually(lambda: running.service.active_queries == 0, WAIT, "the query to close after cancel")


async def test_query_deadline_stops_it(running: Running) -> None:
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT x FROM n"
    call = running.stub.StreamQueryResults(pb.QueryRequest(query=endless), timeout=0.5)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in call:
            pass
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await eventually(lambda: running.service.active_queries == 0, WAIT, "the query to stop after its deadline")


# --- jobs ----------------------------------------------------------------------

S = pb.JobStatus


async def watch(running: Running, job_id: str) -> list[pb.JobProgress]:
    return [p async for p in running.stub.WatchJobProgress(pb.JobRequest(job_id=job_id))]


async def test_job_runs_to_completion_and_pushes_each_change(running: Running) -> None:
    started = await running.stub.StartJob(pb.StartJobRequest(name="j", steps=4, step_duration_ms=20))
    assert started.job_id == "job-1"
    progress = await watch(running, "job-1")
    assert [p.sequence for p in progress] == list(range(1, len(progress) + 1))
    assert progress[0].status in (S.Value("JOB_STATUS_PENDING"), S.Value("JOB_STATUS_RUNNING"))
    final = progress[-1]
    assert (final.job_id, final.status, final.percentage, final.current_step) == (
        "job-1",
        S.Value("JOB_STATUS_COMPLETED"),
        100.0,
        "step 4/4",
    )
    percentages = [p.percentage for p in progress]
    assert percentages == sorted(percentages)
    assert all(p.updated_at.seconds > 0 for p in progress)
    steps = [p.current_step for p in progress if p.status == S.Value("JOB_STATUS_RUNNING")]
    assert set(steps) <= {"step 0/4", "step 1/4", "step 2/4", "step 3/4"}
    # Job ids count up.
    assert (await running.stub.StartJob(pb.StartJobRequest(steps=1, step_duration_ms=1))).job_id == "job-2"


async def test_watching_a_finished_job_sends_its_final_state(running: Running) -> None:
    job_id = (await running.stub.StartJob(pb.StartJobRequest(steps=1, step_duration_ms=1))).job_id
    await watch(running, job_id)
    (only,) = await watch(running, job_id)
    assert (only.status, only.sequence) == (S.Value("JOB_STATUS_COMPLETED"), 1)


async def test_job_fails_at_the_requested_step(running: Running) -> None:
    job_id = (await running.stub.StartJob(pb.StartJobRequest(steps=4, step_duration_ms=10, fail_at_step=3))).job_id
    final = (await watch(running, job_id))[-1]
    assert (final.status, final.current_step, final.percentage) == (
        S.Value("JOB_STATUS_FAILED"),
        "failed at step 3/4",
        50.0,
    )


async def test_cancel_job_ends_its_watchers(running: Running) -> None:
    job_id = (await running.stub.StartJob(pb.StartJobRequest(steps=1000, step_duration_ms=60000))).job_id
    watcher = running.stub.WatchJobProgress(pb.JobRequest(job_id=job_id))
    first = (await take(watcher, 1))[0]
    assert first.status in (S.Value("JOB_STATUS_PENDING"), S.Value("JOB_STATUS_RUNNING"))
    response = await running.stub.CancelJob(pb.CancelJobRequest(job_id=job_id))
    assert (response.job_id, response.status) == (job_id, S.Value("JOB_STATUS_CANCELLED"))
    rest = [p async for p in watcher]
    assert rest[-1].status == S.Value("JOB_STATUS_CANCELLED")
    # Cancelling a finished job reports its final status, no error.
    again = await running.stub.CancelJob(pb.CancelJobRequest(job_id=job_id))
    assert again.status == S.Value("JOB_STATUS_CANCELLED")
    done = (await running.stub.StartJob(pb.StartJobRequest(steps=1, step_duration_ms=1))).job_id
    await watch(running, done)
    assert (await running.stub.CancelJob(pb.CancelJobRequest(job_id=done))).status == S.Value("JOB_STATUS_COMPLETED")


async def test_several_watchers_and_one_leaving_does_not_cancel_the_job(running: Running) -> None:
    job_id = (await running.stub.StartJob(pb.StartJobRequest(steps=5, step_duration_ms=50))).job_id
    leaving = running.stub.WatchJobProgress(pb.JobRequest(job_id=job_id))
    await take(leaving, 1)
    leaving.cancel()
    first, second = await asyncio.gather(watch(running, job_id), watch(running, job_id))
    for progress in (first, second):
        assert progress[-1].status == S.Value("JOB_STATUS_COMPLETED")
        assert [p.sequence for p in progress] == list(range(1, len(progress) + 1))


@pytest.mark.parametrize(
    "request_, message",
    [
        (pb.StartJobRequest(steps=5000), "steps must be between 0 and 1000, got 5000"),
        (pb.StartJobRequest(steps=-1), "steps must be between 0 and 1000, got -1"),
        (pb.StartJobRequest(step_duration_ms=-1), "step_duration_ms must be between 0 and 60000, got -1"),
        (pb.StartJobRequest(step_duration_ms=60001), "step_duration_ms must be between 0 and 60000, got 60001"),
    ],
)
async def test_start_job_rejects_out_of_range(running: Running, request_, message: str) -> None:
    await expect_error(running.stub.StartJob(request_), grpc.StatusCode.INVALID_ARGUMENT, message)


async def test_at_most_10000_jobs_run_at_once(running: Running) -> None:
    from polystream.services import updates_jobs

    jobs = running.service.jobs
    spec = updates_jobs.JobSpec(name="", steps=1, step_seconds=60.0, fail_at_step=0)
    first = jobs.start(spec)  # the service's own manager, to reach the limit quickly
    for _ in range(updates_jobs.MAX_RUNNING - 1):
        jobs.start(spec)
    await expect_error(
        running.stub.StartJob(pb.StartJobRequest()), grpc.StatusCode.RESOURCE_EXHAUSTED, "too many running jobs (10000)"
    )
    await running.stub.CancelJob(pb.CancelJobRequest(job_id=first.id))
    assert (await running.stub.StartJob(pb.StartJobRequest(steps=1, step_duration_ms=1))).job_id == "job-10001"


async def test_no_job_starts_once_the_jobs_are_closed(running: Running) -> None:
    await running.service.jobs.close()  # what server shutdown does, while calls may still arrive
    await expect_error(
        running.stub.StartJob(pb.StartJobRequest()), grpc.StatusCode.UNAVAILABLE, "server is shutting down"
    )


async def test_unknown_and_missing_job_ids(running: Running) -> None:
    for call in (
        lambda r: running.stub.WatchJobProgress(pb.JobRequest(job_id=r)),
        lambda r: running.stub.CancelJob(pb.CancelJobRequest(job_id=r)),
    ):
        await expect_error(call("abc"), grpc.StatusCode.NOT_FOUND, 'job "abc" not found')
        await expect_error(call(""), grpc.StatusCode.INVALID_ARGUMENT, "job_id is required")


# --- log tail --------------------------------------------------------------------


async def tail(running: Running, **fields) -> list[pb.LogEntry]:
    return [e async for e in running.stub.TailLogs(pb.LogRequest(**fields))]


async def test_tail_returns_recent_records_filtered_by_level_and_service(running: Running) -> None:
    chat = logging.getLogger("polystream.chat")  # no chat RPC runs here, so these are all of chat's
    chat.debug("chat debug")
    chat.info("chat info", extra={"room": "general", "count": 3})
    chat.warning("chat warn")
    chat.error("chat error")
    logging.getLogger("polystream.events").error("events error")

    entries = await tail(running, service_name="chat", lines=10)
    assert [(e.level, e.message) for e in entries] == [
        ("debug", "chat debug"),
        ("info", "chat info"),
        ("warn", "chat warn"),
        ("error", "chat error"),
    ]
    assert [e.sequence for e in entries] == [1, 2, 3, 4]
    assert all(e.service == "chat" and e.timestamp.seconds > 0 for e in entries)
    assert dict(entries[1].fields) == {"room": "general", "count": "3"}

    warn_and_up = await tail(running, log_level="warn", lines=10)
    assert [e.message for e in warn_and_up][-3:] == ["chat warn", "chat error", "events error"]
    assert [e.message for e in await tail(running, service_name="chat", lines=2)] == ["chat warn", "chat error"]
    assert await tail(running, service_name="chat") == []  # lines 0 = no history


async def test_tail_follow_sees_new_records(running: Running) -> None:
    logging.getLogger("polystream.updates").info("before")
    follow = running.stub.TailLogs(pb.LogRequest(service_name="updates", lines=1, follow=True))
    (past,) = await take(follow, 1)
    assert past.message == "before"
    ring = running.service.log_handler
    assert ring.follower_count() == 1
    job_id = (await running.stub.StartJob(pb.StartJobRequest(name="tailed", steps=1, step_duration_ms=1))).job_id
    async for live in follow:
        if live.message == "job ended":
            break
    assert (live.fields["job_id"], live.fields["status"], live.fields["current_step"]) == (
        job_id,
        "JOB_STATUS_COMPLETED",
        "step 1/1",
    )
    assert live.sequence >= 2
    follow.cancel()
    await eventually(lambda: ring.follower_count() == 0, WAIT, "the follower to leave")


async def test_tail_follow_without_history_sends_headers_then_records(running: Running) -> None:
    follow = running.stub.TailLogs(pb.LogRequest(service_name="chat", log_level="warn", follow=True))
    await follow.initial_metadata()  # headers = following
    chat = logging.getLogger("polystream.chat")
    chat.info("below the level")
    logging.getLogger("polystream.events").error("other service")
    chat.warning("first", extra={"n": 1})
    chat.error("second")
    got = await take(follow, 2)
    assert [(e.message, e.level, e.sequence) for e in got] == [("first", "warn", 1), ("second", "error", 2)]
    assert dict(got[0].fields) == {"n": "1"}
    follow.cancel()


async def test_a_follower_far_behind_skips_to_the_oldest_retained_record(running: Running) -> None:
    follow = running.stub.TailLogs(pb.LogRequest(service_name="tailtest", follow=True))
    await follow.initial_metadata()
    log = logging.getLogger("polystream.tailtest")
    for i in range(1500):  # logged without yielding: the follower is 1500 behind a ring of 1000
        log.info("burst %d", i)
    got = await take(follow, 1000)
    assert [e.message for e in got] == [f"burst {i}" for i in range(500, 1500)]
    assert [e.sequence for e in got] == list(range(1, 1001))
    follow.cancel()


async def test_tail_keeps_only_the_last_1000_records(running: Running) -> None:
    log = logging.getLogger("polystream.tailtest")
    for i in range(1200):
        log.info("record %d", i)
    entries = await tail(running, lines=5000)
    assert len(entries) == 1000
    assert entries[-1].message == "record 1199"


async def test_tail_rejects_bad_arguments(running: Running) -> None:
    await expect_error(
        running.stub.TailLogs(pb.LogRequest(log_level="verbose")),
        grpc.StatusCode.INVALID_ARGUMENT,
        'log_level must be one of debug, info, warn, error; got "verbose"',
    )
    await expect_error(
        running.stub.TailLogs(pb.LogRequest(lines=-1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "lines must be >= 0, got -1",
    )


async def test_a_changed_query_database_is_reseeded(start_updates, tmp_path: pathlib.Path) -> None:
    import sqlite3

    path = tmp_path / "query.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE large_table (id INTEGER PRIMARY KEY, name TEXT NOT NULL, value INTEGER NOT NULL)")
        conn.execute("INSERT INTO large_table VALUES (1, 'tampered', 0)")
    conn.close()
    running = await start_updates(data_dir=str(tmp_path))
    (result,) = await run_query(running, "SELECT COUNT(*) AS n, MAX(name) AS last FROM large_table")
    assert dict(result.rows[0].columns) == {"n": "10000", "last": "item-10000"}


async def test_query_database_is_seeded_in_a_temp_dir_without_data_dir(start_updates) -> None:
    running = await start_updates(data_dir="")
    path = pathlib.Path(running.service.database_path)
    assert path.exists()
    await running.service.close()
    assert not path.parent.exists()


async def test_server_shutdown_ends_every_stream_and_stops_queries_and_jobs(running: Running) -> None:
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT x FROM n"
    query = running.stub.StreamQueryResults(pb.QueryRequest(query=endless))
    updates = running.stub.SubscribeToUpdates(pb.SubscribeRequest(topics=["t"]))
    tail = running.stub.TailLogs(pb.LogRequest(service_name="nobody", follow=True))
    job_id = (await running.stub.StartJob(pb.StartJobRequest(steps=10, step_duration_ms=60000))).job_id
    watcher = running.stub.WatchJobProgress(pb.JobRequest(job_id=job_id))
    await updates.initial_metadata()
    await tail.initial_metadata()
    await take(watcher, 1)
    await eventually(lambda: running.service.active_queries == 1, WAIT, "the query to run")
    job = running.service.jobs.get(job_id)

    await running.server.stop()
    for call in (query, updates, tail, watcher):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for _ in call:
                pass
        assert (info.value.code(), info.value.details()) == (grpc.StatusCode.UNAVAILABLE, "server is shutting down")
    assert running.service.active_queries == 0
    assert job is not None and job.state.status == S.Value("JOB_STATUS_CANCELLED")


def test_a_stop_between_statements_still_stops_an_endless_query(tmp_path: pathlib.Path) -> None:
    # sqlite's interrupt() is lost when no statement is running: a stop that
    # lands after start()'s last check and before its COUNT must still end it.
    db = str(tmp_path / "q.db")
    updates_query.seed_database(db)
    endless = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n) SELECT x FROM n"
    run = updates_query.QueryRun(db, endless, 10)
    checks = 0
    check = run._check_running

    def check_then_stop() -> None:
        nonlocal checks
        check()
        checks += 1
        if checks == 2:  # the check right before the COUNT
            run.stop()

    run._check_running = check_then_stop  # type: ignore[method-assign]
    errors: list[BaseException] = []

    def start() -> None:
        try:
            run.start()
        except sqlite3.Error as exc:
            errors.append(exc)

    worker = threading.Thread(target=start, daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "the endless COUNT kept running after stop()"
    assert errors and "interrupt" in str(errors[0])
    run.close()
