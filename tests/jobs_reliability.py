"""Job functions for the reliability tests (retries, scheduler, cron, leases).

Workers import this module as `jobs_reliability`. Every function that needs to
leave a trace takes the Redis URL and a key, so tests can count executions.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import redis

import conveyor


def _incr(url: str, key: str) -> int:
    client = redis.Redis.from_url(url)
    try:
        return int(client.incr(key))
    finally:
        client.close()


def fail_times(url: str, key: str, times: int) -> int:
    """Raise ValueError("attempt N") on the first `times` executions, then return N."""
    n = _incr(url, key)
    if n <= times:
        raise ValueError(f"attempt {n}")
    return n


def always_fail(url: str, key: str) -> None:
    """Raise ValueError("attempt N") every time, N counting executions."""
    n = _incr(url, key)
    raise ValueError(f"attempt {n}")


def raise_named(url: str, key: str, name: str) -> None:
    """Count the execution, then raise the builtin exception called `name`."""
    n = _incr(url, key)
    exc = {"ValueError": ValueError, "KeyError": KeyError, "TypeError": TypeError}[name]
    raise exc(f"{name} on attempt {n}")


def retry_later_once(url: str, key: str, delay: float) -> int:
    """Ask for a retry in `delay` seconds on the first execution; succeed afterwards."""
    n = _incr(url, key)
    if n == 1:
        raise conveyor.RetryLater(delay, reason="not yet")
    return n


def always_retry_later(url: str, key: str, delay: float) -> None:
    _incr(url, key)
    raise conveyor.RetryLater(delay)


def count(url: str, key: str) -> int:
    """Count the execution and return the count."""
    return _incr(url, key)


def sleep_pid(seconds: float) -> int:
    """Sleep, then return the pid of the process that ran the job."""
    time.sleep(seconds)
    return os.getpid()


def count_and_sleep(url: str, key: str, seconds: float) -> int:
    n = _incr(url, key)
    time.sleep(seconds)
    return n


def _ctx_dict() -> dict[str, Any] | None:
    ctx = conveyor.current_job()
    if ctx is None:
        return None
    return {"id": ctx.id, "execution_id": ctx.execution_id, "queue": ctx.queue, "attempt": ctx.attempt}


def context_info(url: str, key: str, fail_first: int = 0) -> dict[str, Any] | None:
    """Return what current_job() says; fail the first `fail_first` executions."""
    n = _incr(url, key)
    if n <= fail_first:
        raise ValueError(f"attempt {n}")
    return _ctx_dict()


async def async_context_info() -> dict[str, Any] | None:
    await asyncio.sleep(0)
    return _ctx_dict()


async def async_fail_times(url: str, key: str, times: int) -> int:
    """The async twin of fail_times: runs on the worker's event loop."""
    await asyncio.sleep(0)
    return fail_times(url, key, times)


async def async_retry_later_once(url: str, key: str, delay: float) -> int:
    await asyncio.sleep(0)
    return retry_later_once(url, key, delay)
