"""Helpers shared by the tests that run the CLIs and servers as local
processes (test_cli.py, test_crosslang.py): a server process and its
`polystream listening on HOST:PORT` address, one CLI aimed at one server,
and polling helpers."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Optional, Sequence

PYTHON_DIR = pathlib.Path(__file__).resolve().parents[1]
PYTHON_CLI = [sys.executable, "-m", "polystream"]
LISTENING = re.compile(r"^polystream listening on (\S+:\d+)$")


def python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PYTHON_DIR) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("POLYSTREAM_ADDR", None)
    return env


# ---------------------------------------------------------------- processes


class ServerProcess:
    """A server started as a local process; `address` comes from its
    `polystream listening on HOST:PORT` line."""

    def __init__(self, argv: Sequence[str], env: Optional[dict[str, str]] = None, start_timeout: float = 30) -> None:
        self.argv = list(argv)
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            self.argv, stdout=subprocess.PIPE, stderr=self.stderr, stdin=subprocess.DEVNULL, text=True, env=env
        )
        self._lines: queue.Queue[Optional[str]] = queue.Queue()
        # drain stdout for the whole run, so a chatty server never blocks on a full pipe
        threading.Thread(target=self._pump, daemon=True).start()
        self.address = self._wait_for_address(start_timeout)

    def _pump(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self._lines.put(line.rstrip("\n"))
        self._lines.put(None)

    def _wait_for_address(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            seen.append(line)
            match = LISTENING.match(line)
            if match:
                return match.group(1)
        self.stop()
        raise AssertionError(
            f"{' '.join(self.argv)} printed no 'polystream listening on HOST:PORT' line;\n"
            f"stdout: {seen}\nstderr: {self.stderr_text()[-2000:]}"
        )

    def stderr_text(self) -> str:
        self.stderr.seek(0)
        return self.stderr.read()

    def stop(self, timeout: float = 10) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@dataclasses.dataclass
class Result:
    code: int
    stdout: str
    stderr: str

    @property
    def messages(self) -> list[dict]:
        """stdout parsed: one JSON object per line."""
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    def describe(self) -> str:
        return f"exit {self.code}\nstdout: {self.stdout[-3000:]}\nstderr: {self.stderr[-3000:]}"


def run(argv: Sequence[str], input: Optional[str] = None, timeout: float = 30, env=None) -> Result:
    done = subprocess.run(
        list(argv), input=input if input is not None else "", capture_output=True, text=True, timeout=timeout, env=env
    )
    return Result(done.returncode, done.stdout, done.stderr)


class Cli:
    """One CLI implementation aimed at one server."""

    def __init__(self, prefix: Sequence[str], addr: str, env: Optional[dict[str, str]] = None) -> None:
        self.prefix = list(prefix)
        self.addr = addr
        self.env = env

    def argv(self, command: str, *args: str) -> list[str]:
        return [*self.prefix, command, "--addr", self.addr, *args]

    def __call__(self, command: str, *args: str, input: Optional[str] = None, timeout: float = 30) -> Result:
        return run(self.argv(command, *args), input=input, timeout=timeout, env=self.env)

    def ok(self, command: str, *args: str, input: Optional[str] = None, timeout: float = 30) -> list[dict]:
        result = self(command, *args, input=input, timeout=timeout)
        assert result.code == 0, f"{command} {' '.join(args)}: {result.describe()}"
        return result.messages

    def fails(self, command: str, *args: str, code: int = 1) -> str:
        """Runs a command that must fail; returns its stderr without trailing newline."""
        result = self(command, *args)
        assert result.code == code, f"{command} {' '.join(args)}: {result.describe()}"
        return result.stderr.strip()

    def start(self, command: str, *args: str) -> subprocess.Popen:
        """A long-running command, to finish with .communicate()."""
        return subprocess.Popen(
            self.argv(command, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, env=self.env,
        )


def wait_until(condition, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def read_first_line(proc: subprocess.Popen, timeout: float = 20) -> str:
    """The first stdout line of a running command (e.g. a stream's welcome)."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    if not lines or not lines[0]:
        raise AssertionError(f"{' '.join(map(str, proc.args))} printed nothing within {timeout}s")
    return lines[0]


def poke_until_exit(proc: subprocess.Popen, poke, timeout: float = 20, every: float = 0.3) -> None:
    """Calls poke() until the command exits: for a stream whose start cannot
    be observed, keep making the thing it waits for."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{' '.join(map(str, proc.args))} did not finish within {timeout}s")
        poke()
        time.sleep(every)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
