"""Background jobs and their progress, for StartJob / CancelJob / WatchJobProgress.

A job is an asyncio task owned by the manager, not by any RPC: watchers come
and go without touching it. Each state change sets the job's current
"changed" event and replaces it; a watcher waits on it, then sends the
latest state, so a slow watcher skips intermediate states instead of queueing them
(memory stays bounded) and always receives the final one.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time

from polystream.updates.v1 import updates_pb2

Status = int  # an updates_pb2.JobStatus value

PENDING = updates_pb2.JOB_STATUS_PENDING
RUNNING = updates_pb2.JOB_STATUS_RUNNING
COMPLETED = updates_pb2.JOB_STATUS_COMPLETED
FAILED = updates_pb2.JOB_STATUS_FAILED
CANCELLED = updates_pb2.JOB_STATUS_CANCELLED
FINISHED = frozenset({COMPLETED, FAILED, CANCELLED})

DEFAULT_STEPS = 10
MAX_STEPS = 1000
DEFAULT_STEP_MS = 200
MAX_STEP_MS = 60_000
KEEP_FINISHED = 1000
# Bounds the memory and tasks StartJob calls can pin (finished jobs are bounded by KEEP_FINISHED).
MAX_RUNNING = 10_000


class JobRejected(ValueError):
    """Bad StartJob arguments (the message is the client's status text)."""


class JobsClosed(Exception):
    def __str__(self) -> str:
        return "server is shutting down"


class TooManyJobs(Exception):
    def __str__(self) -> str:
        return f"too many running jobs ({MAX_RUNNING})"


@dataclasses.dataclass(frozen=True)
class JobState:
    percentage: float
    status: Status
    current_step: str
    updated_at: float  # seconds since the epoch
    version: int

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclasses.dataclass(frozen=True)
class JobSpec:
    name: str
    steps: int
    step_seconds: float
    fail_at_step: int  # 0 = never

    @classmethod
    def from_request(cls, request: updates_pb2.StartJobRequest) -> JobSpec:
        if not 0 <= request.steps <= MAX_STEPS:
            raise JobRejected(f"steps must be between 0 and {MAX_STEPS}, got {request.steps}")
        if not 0 <= request.step_duration_ms <= MAX_STEP_MS:
            raise JobRejected(
                f"step_duration_ms must be between 0 and {MAX_STEP_MS}, got {request.step_duration_ms}"
            )
        return cls(
            name=request.name,
            steps=request.steps or DEFAULT_STEPS,
            step_seconds=(request.step_duration_ms or DEFAULT_STEP_MS) / 1000,
            fail_at_step=max(0, request.fail_at_step),
        )


class Job:
    def __init__(self, job_id: str, spec: JobSpec) -> None:
        self.id = job_id
        self.spec = spec
        self.state = JobState(0.0, PENDING, "", time.time(), 1)
        # Set (and replaced) on every change: a one-shot broadcast to all watchers.
        self._changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def set_state(self, status: Status, current_step: str, percentage: float) -> None:
        """Records a new state and wakes every watcher (never after the job finished)."""
        if self.state.finished:
            return
        self.state = JobState(percentage, status, current_step, time.time(), self.state.version + 1)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_past(self, version: int) -> JobState:
        """The first state newer than `version` (the latest one, if several came meanwhile)."""
        while self.state.version <= version:
            await self._changed.wait()
        return self.state


class JobManager:
    def __init__(self, logger: logging.Logger) -> None:
        self._log = logger
        self._jobs: dict[str, Job] = {}
        self._finished: collections.deque[str] = collections.deque()  # oldest first
        self._last_number = 0
        self._closed = False

    @property
    def running(self) -> int:
        return len(self._jobs) - len(self._finished)

    def start(self, spec: JobSpec) -> Job:
        if self._closed:
            raise JobsClosed()
        if self.running >= MAX_RUNNING:
            raise TooManyJobs()
        self._last_number += 1
        job = Job(f"job-{self._last_number}", spec)
        self._jobs[job.id] = job
        job.task = asyncio.get_running_loop().create_task(self._run(job), name=job.id)
        return job

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def cancel(self, job: Job) -> Status:
        if not job.state.finished:
            # The state changes now, so the caller's response already says CANCELLED.
            self._finish(job, CANCELLED, job.state.current_step, job.state.percentage)
            assert job.task is not None
            job.task.cancel()
        return job.state.status

    async def close(self) -> None:
        self._closed = True
        tasks = [job.task for job in self._jobs.values() if job.task and not job.task.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, job: Job) -> None:
        spec = job.spec
        job.set_state(RUNNING, f"step 0/{spec.steps}", 0.0)
        try:
            for step in range(1, spec.steps + 1):
                await asyncio.sleep(spec.step_seconds)
                if step == spec.fail_at_step:
                    self._finish(job, FAILED, f"failed at step {step}/{spec.steps}", job.state.percentage)
                    return
                percentage = 100.0 * step / spec.steps
                if step == spec.steps:
                    self._finish(job, COMPLETED, f"step {step}/{spec.steps}", percentage)
                else:
                    job.set_state(RUNNING, f"step {step}/{spec.steps}", percentage)
        except asyncio.CancelledError:
            # CancelJob already recorded CANCELLED; on server shutdown record it here.
            self._finish(job, CANCELLED, job.state.current_step, job.state.percentage)
            raise

    def _finish(self, job: Job, status: Status, current_step: str, percentage: float) -> None:
        if job.state.finished:
            return
        job.set_state(status, current_step, percentage)
        self._log.info(
            "job ended",
            extra={"job_id": job.id, "status": updates_pb2.JobStatus.Name(status), "current_step": current_step},
        )
        self._finished.append(job.id)
        while len(self._finished) > KEEP_FINISHED:
            self._jobs.pop(self._finished.popleft(), None)
