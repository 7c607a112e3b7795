"""StreamService (polystream.updates.v1): the server-streaming patterns.

Topic updates, batched query results, job progress and log tailing. Each
pattern's state lives in its own module (updates_topics, updates_query,
updates_jobs, updates_logs); this module holds the rules of the wire
contract (docs/contract.md) and the handlers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import shutil
import sqlite3
import tempfile
from typing import AsyncIterator, Callable, TypeVar

import grpc
from google.protobuf import timestamp_pb2

from polystream.config import ServerConfig
from polystream.services import updates_jobs, updates_logs, updates_query
from polystream.services.updates_topics import TopicHub
from polystream.updates.v1 import updates_pb2, updates_pb2_grpc

T = TypeVar("T")

QUERY_WORKERS = 8  # SQLite work never runs on the event loop; at most this many at once (Go: 8 connections)


def timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1_000_000_000))
    return stamp


class UpdatesService(updates_pb2_grpc.StreamServiceServicer):
    def __init__(self, config: ServerConfig, logger: logging.Logger) -> None:
        self._config = config
        self._log = logger
        self._ring = updates_logs.LogRing()
        # The server attaches it to the "polystream" logger: every record feeds TailLogs.
        self.log_handler: logging.Handler = self._ring
        self._topics = TopicHub(config.queue_size)
        self._jobs = updates_jobs.JobManager(logger)
        self._query_pool = concurrent.futures.ThreadPoolExecutor(QUERY_WORKERS, thread_name_prefix="polystream-query")
        self._temp_dir: str | None = None
        self._db_path = ""
        self._open_queries: set[updates_query.QueryRun] = set()

    # --- lifecycle -----------------------------------------------------------

    def register(self, server: grpc.aio.Server) -> None:
        updates_pb2_grpc.add_StreamServiceServicer_to_server(self, server)

    async def start(self) -> None:
        if self._config.data_dir:
            directory = self._config.data_dir
        else:
            directory = self._temp_dir = tempfile.mkdtemp(prefix="polystream-query-")
        self._db_path = os.path.join(directory, updates_query.DB_FILE_NAME)
        await self._in_query_pool(updates_query.seed_database, self._db_path)

    async def close(self) -> None:
        await self._jobs.close()
        for run in list(self._open_queries):
            run.stop()
        # Closing connections waits for interrupted fetches; off the loop.
        await asyncio.get_running_loop().run_in_executor(None, self._query_pool.shutdown, True)
        if self._temp_dir:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    @property
    def database_path(self) -> str:
        return self._db_path

    @property
    def jobs(self) -> updates_jobs.JobManager:
        return self._jobs

    @property
    def topic_subscribers(self) -> int:
        return self._topics.subscriber_count()

    @property
    def active_queries(self) -> int:
        """Queries whose connection is still open (observable by tests)."""
        return len(self._open_queries)

    # --- topic updates -------------------------------------------------------

    async def SubscribeToUpdates(
        self, request: updates_pb2.SubscribeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[updates_pb2.Update]:
        topics = frozenset(topic for topic in request.topics if topic)
        if not topics:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "at least one topic is required")
        subscriber = self._topics.subscribe(topics)
        sequence = 0
        try:
            # Headers tell the client it is subscribed: updates published from now on reach it.
            await context.send_initial_metadata(())
            while True:
                update = await subscriber.next()
                sequence += 1
                yield updates_pb2.Update(
                    topic=update.topic,
                    message=update.message,
                    timestamp=timestamp(update.published_at),
                    metadata=update.metadata,
                    sequence=sequence,
                )
        finally:
            self._topics.unsubscribe(subscriber)

    async def PublishUpdate(
        self, request: updates_pb2.PublishUpdateRequest, context: grpc.aio.ServicerContext
    ) -> updates_pb2.PublishUpdateResponse:
        if not request.topic:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "topic is required")
        recipients = self._topics.publish(request.topic, request.message, dict(request.metadata))
        return updates_pb2.PublishUpdateResponse(recipients=recipients)

    # --- query results -------------------------------------------------------

    async def StreamQueryResults(
        self, request: updates_pb2.QueryRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[updates_pb2.QueryResult]:
        if not request.query.strip():
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "query is required")
        try:
            batch_size = updates_query.batch_size_or_default(request.batch_size)
            statement = updates_query.single_select(request.query)
        except updates_query.QueryRejected as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

        run = updates_query.QueryRun(self._db_path, statement, batch_size)
        self._open_queries.add(run)
        # However the RPC ends (cancel, deadline, shutdown), stop the statement at once,
        # even while this generator is parked at a `yield`.
        context.add_done_callback(lambda _context: run.stop())
        try:
            try:
                row_count = await self._in_query_pool(run.start)
                total = updates_query.total_batches(row_count, batch_size)
                batch_number = 0
                last = False
                while not last:
                    rows, last = await self._in_query_pool(run.fetch)
                    batch_number += 1
                    if total < batch_number or (last and total != batch_number):
                        total = batch_number  # the data moved between COUNT and SELECT (random(), say)
                    yield updates_pb2.QueryResult(
                        rows=[updates_pb2.Row(columns=row) for row in rows],
                        batch_number=batch_number,
                        total_batches=total,
                        is_last=last,
                        sequence=batch_number,
                    )
            except updates_query.BatchTooLarge as exc:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except sqlite3.Error as exc:
                if run.stopped:
                    raise asyncio.CancelledError() from exc
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"query failed: {exc}")
        finally:
            run.stop()
            # Closing waits (in the pool) for an interrupted fetch; the RPC need not.
            try:
                self._query_pool.submit(self._close_query, run)
            except RuntimeError:  # the pool is shut down: the server is closing
                self._close_query(run)

    def _close_query(self, run: updates_query.QueryRun) -> None:
        try:
            run.close()
        finally:
            self._open_queries.discard(run)  # set.discard is atomic under the GIL

    async def _in_query_pool(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._query_pool, fn, *args)

    # --- jobs ----------------------------------------------------------------

    async def StartJob(
        self, request: updates_pb2.StartJobRequest, context: grpc.aio.ServicerContext
    ) -> updates_pb2.StartJobResponse:
        try:
            spec = updates_jobs.JobSpec.from_request(request)
        except updates_jobs.JobRejected as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        try:
            job = self._jobs.start(spec)
        except updates_jobs.TooManyJobs as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except updates_jobs.JobsClosed as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        return updates_pb2.StartJobResponse(job_id=job.id)

    async def CancelJob(
        self, request: updates_pb2.CancelJobRequest, context: grpc.aio.ServicerContext
    ) -> updates_pb2.CancelJobResponse:
        job = await self._known_job(request.job_id, context)
        status = self._jobs.cancel(job)
        return updates_pb2.CancelJobResponse(job_id=job.id, status=status)

    async def WatchJobProgress(
        self, request: updates_pb2.JobRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[updates_pb2.JobProgress]:
        job = await self._known_job(request.job_id, context)
        state = job.state
        sequence = 1
        while True:
            yield updates_pb2.JobProgress(
                job_id=job.id,
                percentage=state.percentage,
                status=state.status,
                current_step=state.current_step,
                updated_at=timestamp(state.updated_at),
                sequence=sequence,
            )
            if state.finished:
                return
            state = await job.wait_past(state.version)
            sequence += 1

    async def _known_job(self, job_id: str, context: grpc.aio.ServicerContext) -> updates_jobs.Job:
        if not job_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "job_id is required")
        job = self._jobs.get(job_id)
        if job is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f'job "{job_id}" not found')
        return job

    # --- log tail ------------------------------------------------------------

    async def TailLogs(
        self, request: updates_pb2.LogRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[updates_pb2.LogEntry]:
        if request.log_level not in ("",) + updates_logs.LEVELS:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f'log_level must be one of debug, info, warn, error; got "{request.log_level}"',
            )
        if request.lines < 0:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"lines must be >= 0, got {request.lines}")

        min_rank = updates_logs.level_rank(request.log_level)
        service = request.service_name

        def matches(entry: updates_logs.LogRecordEntry) -> bool:
            return entry.rank >= min_rank and (not service or entry.service == service)

        ring = self._ring
        waker = updates_logs.Waker()
        if request.follow:
            ring.add_waker(waker)  # before the snapshot: no record slips between the two
        try:
            # History and follow cursor come from one snapshot: following goes on
            # exactly where the history ended.
            past, cursor = ring.since(0)
            history = [entry for entry in past if matches(entry)][-request.lines :] if request.lines else []
            sequence = 0
            for entry in history:
                sequence += 1
                yield _log_entry(entry, sequence)
            if not request.follow:
                return
            if not sequence:
                # Headers tell a following client that records logged from now on reach it.
                await context.send_initial_metadata(())
            while True:
                await waker.event.wait()
                waker.event.clear()  # before reading, so a record arriving meanwhile wakes us again
                records, cursor = ring.since(cursor)
                for entry in records:
                    if matches(entry):
                        sequence += 1
                        yield _log_entry(entry, sequence)
        finally:
            ring.remove_waker(waker)


def _log_entry(entry: updates_logs.LogRecordEntry, sequence: int) -> updates_pb2.LogEntry:
    return updates_pb2.LogEntry(
        timestamp=timestamp(entry.created),
        level=entry.level,
        message=entry.message,
        service=entry.service,
        fields=entry.fields,
        sequence=sequence,
    )
