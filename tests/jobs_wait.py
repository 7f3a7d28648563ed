"""Job functions of the waiting and progress tests; workers import this module as `jobs_wait`.
Each run appends a line to a file outside Redis: the truth of how often it ran."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import joblog
from conveyor import current_job


def _trace(path: str, line: str) -> int:
    joblog.append(path, line)
    return len(Path(path).read_text().splitlines())


def add(path: str, a: int, b: int) -> int:
    _trace(path, f"add {a} {b}")
    return a + b


def boom(path: str, message: str) -> None:
    _trace(path, "boom")
    raise KeyError(message)


def flaky(path: str, fails: int) -> str:
    """Fails its first ``fails`` runs, then succeeds."""
    n = _trace(path, "flaky")
    if n <= fails:
        raise RuntimeError(f"run {n} fails")
    return f"ok after {n} runs"


def steps(path: str, n: int, pause: float) -> int:
    """Reports progress i/n with a message, and its meta, n times; then returns n."""
    job = current_job()
    assert job is not None
    for i in range(1, n + 1):
        time.sleep(pause)
        job.set_progress(i / n, message=f"step {i} of {n}")
        job.set_meta({"done": i, "unit": "rows"})
        _trace(path, f"step {i}")
    return n


def many_reports(path: str, n: int) -> int:
    """Reports n times in a tight loop: only the latest value is written."""
    job = current_job()
    assert job is not None
    for i in range(1, n + 1):
        job.set_progress(i)
    _trace(path, "reported")
    return n


async def async_steps(path: str, n: int, pause: float) -> int:
    job = current_job()
    assert job is not None
    for i in range(1, n + 1):
        await asyncio.sleep(pause)
        job.set_progress(i / n, message=f"async {i}")
    _trace(path, "async done")
    return n


def report_in_child(path: str) -> None:
    _trace(path, "child")
    job = current_job()
    assert job is not None
    job.set_progress(0.5)


def bad_meta(path: str) -> str:
    job = current_job()
    assert job is not None
    try:
        job.set_meta({"blob": "x" * 10_000})
    except Exception as exc:
        _trace(path, "refused")
        return f"{type(exc).__name__}: {exc}"
    return "accepted"
