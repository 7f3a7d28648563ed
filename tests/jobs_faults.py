"""Job functions for the fault tests: each execution appends a line to a file outside Redis,
so "did it run, how often" never depends on Conveyor's own bookkeeping.

A line is "<tag> <pid> <execution id>"; read them back with `executions(path)`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import time
from pathlib import Path

import conveyor
import joblog


def _append(path: str, tag: str) -> None:
    ctx = conveyor.current_job()
    joblog.append(path, f"{tag} {os.getpid()} {ctx.execution_id if ctx else '-'}")


def record(path: str, tag: str, seconds: float = 0.0, pad: str = "") -> str:
    """pad: ballast, to make the job big (filling a Redis with maxmemory)."""
    _append(path, tag)
    if seconds:
        time.sleep(seconds)
    return tag


async def async_record(path: str, tag: str, seconds: float = 0.0) -> str:
    _append(path, tag)
    if seconds:
        await asyncio.sleep(seconds)
    return tag


def record_after(path: str, tag: str, seconds: float) -> str:
    """Run for a while first, then record: the line says the run reached its end."""
    time.sleep(seconds)
    _append(path, tag)
    return tag


def pill(path: str, tag: str, seconds: float = 0.05) -> None:
    """A poison pill: takes its whole worker process down (as a segfault or the OOM killer would)."""
    _append(path, tag)
    time.sleep(seconds)
    os._exit(1)


def executions(path: str | Path) -> collections.Counter[str]:
    """How many times each tag ran."""
    p = Path(path)
    if not p.exists():
        return collections.Counter()
    return collections.Counter(line.split()[0] for line in p.read_text().splitlines() if line)


def execution_ids(path: str | Path) -> list[str]:
    p = Path(path)
    return [line.split()[2] for line in p.read_text().splitlines() if line] if p.exists() else []


def until_lease_lost(path: str, tag: str, limit: float = 30.0) -> str:
    """Run until told the lease is lost (records "<tag>-lost"), or for `limit` seconds.
    A second run (another worker's) returns at once."""
    again = executions(path)[tag] > 0
    _append(path, tag)
    if again:
        return "again"
    ctx = conveyor.current_job()
    deadline = time.monotonic() + limit
    while ctx is not None and not ctx.lease_lost and time.monotonic() < deadline:
        time.sleep(0.01)
    if ctx is not None and ctx.lease_lost:
        _append(path, f"{tag}-lost")
    return tag


async def async_until_cancelled(path: str, tag: str, seconds: float = 30.0) -> str:
    """Sleep; a cancel is recorded as "<tag>-cancelled". A second run returns at once."""
    again = executions(path)[tag] > 0
    _append(path, tag)
    if again:
        return "again"
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        _append(path, f"{tag}-cancelled")
        raise
    return tag


def fail_first(path: str, tag: str, times: int) -> int:
    """Record, then raise ValueError on the first `times` runs; return the run's number after."""
    _append(path, tag)
    n = executions(path)[tag]
    if n <= times:
        raise ValueError(f"attempt {n}")
    return n
