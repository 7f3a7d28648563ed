"""Test helpers shared by the suites: polling with a deadline, worker processes.

Imported by name (``from support import wait_until``): pytest loads every conftest.py
as a module called "conftest", so helpers living there would shadow each other.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor import Job, JobStatus, WorkerSettings

TESTS = Path(__file__).resolve().parent
# Set by conftest's pytest_runtest_makereport: whether the test itself failed, for fixtures
# that print what they started (logs) only then.
CALL_FAILED = pytest.StashKey[bool]()
WORKER_ENV = {**os.environ, "CONVEYOR_METRICS_PORT": "0", "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.01) -> Any:
    """Poll until predicate() is truthy; fail with `what` after the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)



def cli(url: str, *args: str, prefix: str | None = None, input: str | None = None,
        timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """`python -m conveyor ARGS` against url (and prefix), as a user's shell would run it."""
    env = {**WORKER_ENV, "CONVEYOR_REDIS_URL": url, **({"CONVEYOR_PREFIX": prefix} if prefix else {})}
    return subprocess.run([sys.executable, "-m", "conveyor", *args], env=env, input=input, capture_output=True,
                          text=True, timeout=timeout)


class WorkerProcess:
    """A `conveyor worker` subprocess with its log in a file."""

    def __init__(self, redis_url: str, args: tuple[str, ...], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        cmd = [sys.executable, "-m", "conveyor", "worker", "--redis-url", redis_url, *args]
        self.spawned_at = time.time()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**WORKER_ENV, **(env or {})})

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_log(self, text: str, timeout: float = 15.0) -> None:
        wait_until(lambda: text in self.log() or self.proc.poll() is not None, timeout, f"{text!r} in worker log")
        assert text in self.log(), f"worker exited ({self.proc.returncode}) before logging {text!r}:\n{self.log()}"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGUSR1)  # the worker dumps its threads' stacks
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
            raise AssertionError(f"worker did not exit within {timeout}s:\n{self.log()[-6000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self._log.close()


# -- jobs and workers as the reliability tests look at them --------------------------------

def parse_worker(args: list[str], url: str | None = None) -> WorkerSettings:
    """The settings ``conveyor worker ARGS`` would run with (its environment variables
    included), parsed by the real command without running a worker. ``url`` stands in for
    a URL neither the arguments nor the environment give."""
    from conveyor.cli import worker, worker_settings
    from conveyor.cli_worker import connect_timeout

    ctx = worker.make_context("worker", list(args))  # the real parser: a bad flag or variable fails here
    options = dict(ctx.params)
    redis_url, queues, log_format = options.pop("redis_url"), options.pop("queues"), options.pop("log_format")
    options.pop("log_level")
    options.pop("paths")
    options["connect_timeout"] = connect_timeout(options["connect_timeout"], bool(options["burst"]))
    return worker_settings(redis_url or url, queues, log_format, options)


def fetch(conn: redis.Redis, job: Job | str, queue: str = "default") -> Job:
    """A fresh copy of a job (a Job keeps its own queue; a bare ID is looked up in `queue`)."""
    if isinstance(job, Job):
        return Job.fetch(job.id, connection=conn, queue=job.queue)
    return Job.fetch(job, connection=conn, queue=queue)


def wait_status(conn: redis.Redis, job_id: str, *statuses: JobStatus, timeout: float = 10.0) -> Job:
    def check() -> Job | None:
        job = fetch(conn, job_id)
        return job if job.status in statuses else None

    return wait_until(check, timeout, f"job {job_id} to reach {[s.value for s in statuses]}")


def runs(conn: redis.Redis, key: str) -> int:
    return int(conn.get(key) or 0)


def worker_id(w) -> str:
    """The worker's ID, from its "worker <id> serving <queues>" line."""
    pattern = re.compile(r"worker (\S+) serving ")
    wait_until(lambda: pattern.search(w.log()) or w.proc.poll() is not None, 15, "the worker to start")
    m = pattern.search(w.log())
    assert m, f"worker exited ({w.proc.returncode}) before it started serving:\n{w.log()}"
    return m.group(1)


class Supervisor:
    """Keeps `size` worker processes running, restarting any that dies (as a Deployment would)."""

    def __init__(self, spawn: Callable[..., WorkerProcess], size: int, *args: str, **kw: Any) -> None:
        self._spawn, self._args, self._kw = spawn, args, kw
        self.started: list[WorkerProcess] = []  # every worker it ever ran
        self.workers = [self._new() for _ in range(size)]
        self.deaths: list[int] = []  # exit codes of workers that died

    def _new(self) -> WorkerProcess:
        w = self._spawn(*self._args, **self._kw)
        self.started.append(w)
        return w

    def tend(self) -> None:
        for i, w in enumerate(self.workers):
            code = w.proc.poll()
            if code is not None:
                self.deaths.append(code)
                self.workers[i] = self._new()

    def replace(self, i: int, sig: int) -> None:
        """Stop worker i with `sig` (as a rollout or the OOM killer would) and start another."""
        self.workers[i].signal(sig)
        self.workers[i].wait(60)
        self.workers[i] = self._new()

    def until(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        def check() -> Any:
            self.tend()
            return predicate()
        return wait_until(check, timeout, what, interval=0.05)

    def stop(self) -> None:
        for w in self.workers:
            if w.proc.poll() is None:
                w.signal(signal.SIGTERM)
        for w in self.workers:
            w.wait(30)


def stale_completions(log: str) -> int | None:
    """Outcomes a worker computed and Redis rejected as stale, from its closing line (None: no such line)."""
    m = re.search(r"(\d+) stale completions", log)
    return int(m.group(1)) if m else None


def loaded(conn: redis.Redis) -> bool:
    """Redis answers commands (not "LOADING": it reads its append-only file after a restart)."""
    try:
        return bool(conn.ping())
    except redis.ConnectionError:  # BusyLoadingError is one
        return False
