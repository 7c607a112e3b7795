"""StreamMetrics figures: the kernel's own accounting of this process.

Reads /proc/self/stat, /proc/self/statm and /proc/uptime, the same files the
Go server reads (go/chat/proc.go). These are in-memory kernel files, so the
reads never wait on a disk and are fine on the event loop.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Callable

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@dataclasses.dataclass(frozen=True)
class ProcStat:
    cpu_seconds: float  # user + system time
    age_seconds: float  # since the process started
    rss_bytes: float
    threads: int  # OS threads of the process (grpc's core threads included)


def read_proc() -> ProcStat:
    with open("/proc/self/stat", "rb") as stat_file:
        stat = stat_file.read()
    # The command name (field 2) may hold spaces and parentheses; the numeric
    # fields start after the last ")". fields[0] is field 3 (state).
    fields = stat[stat.rindex(b")") + 1 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14, 15
    threads = int(fields[17])  # field 20
    start_ticks = int(fields[19])  # field 22
    with open("/proc/uptime", "rb") as uptime_file:
        uptime = float(uptime_file.read().split()[0])
    with open("/proc/self/statm", "rb") as statm_file:
        resident_pages = int(statm_file.read().split()[1])
    return ProcStat(
        cpu_seconds=(utime + stime) / CLOCK_TICKS,
        age_seconds=uptime - start_ticks / CLOCK_TICKS,
        rss_bytes=float(resident_pages * PAGE_SIZE),
        threads=threads,
    )


@dataclasses.dataclass(frozen=True)
class Sample:
    cpu_percent: float
    rss_bytes: float
    threads: float
    requests_per_second: float
    active_streams: float


class Sampler:
    """Turns cumulative counters (CPU seconds, requests) into rates over the time
    since the previous sample; a stream's first sample averages over the
    process's whole life, so it is real from the start."""

    def __init__(self, stats: Callable[[], tuple[int, int]]) -> None:
        self._stats = stats
        self._previous: tuple[float, float, int] | None = None  # (monotonic time, cpu, requests)

    def take(self) -> Sample:
        proc = read_proc()
        requests, active = self._stats()
        now = time.monotonic()
        if self._previous is None:
            elapsed, cpu, new_requests = proc.age_seconds, proc.cpu_seconds, requests
        else:
            at, cpu_before, requests_before = self._previous
            elapsed, cpu, new_requests = now - at, proc.cpu_seconds - cpu_before, requests - requests_before
        self._previous = (now, proc.cpu_seconds, requests)
        return Sample(
            cpu_percent=100 * cpu / elapsed if elapsed > 0 else 0.0,
            rss_bytes=proc.rss_bytes,
            threads=float(proc.threads),
            requests_per_second=new_requests / elapsed if elapsed > 0 else 0.0,
            active_streams=float(active),
        )
