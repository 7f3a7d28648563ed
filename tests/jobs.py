"""Job functions the tests enqueue; workers import this module as `jobs`."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import redis


def add(a: int, b: int) -> int:
    return a + b


def echo(*args: Any, **kwargs: Any) -> Any:
    return {"args": list(args), "kwargs": kwargs}


def identity(value: Any) -> Any:
    return value


def return_none() -> None:
    return None


def fail(message: str = "boom") -> None:
    raise ValueError(message)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def busy(seconds: float) -> str:
    """Spin in Python code (an async exception can reach it, unlike time.sleep)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass
    return "done"


async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0.01)
    return a + b


async def async_sleep(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


def call_sys_exit(code: int = 3) -> None:
    sys.exit(code)


def call_os_exit(code: int = 7) -> None:
    os._exit(code)


def pid() -> int:
    return os.getpid()


def unserializable_result() -> object:
    return object()


def record(url: str, key: str, token: str, seconds: float = 0.0) -> str:
    """Append token to a Redis list (each execution leaves a trace), then sleep."""
    client = redis.Redis.from_url(url)
    client.rpush(key, f"{token}:{os.getpid()}")
    client.close()
    if seconds:
        time.sleep(seconds)
    return token


NOT_CALLABLE = 42


# The failure flag and the execution record are one atomic step: a worker SIGKILLed
# between them would leave a job that "failed" without a record of it.
_CHAOS_RECORD = """
local outcome = 'ok'
if ARGV[2] == '1' and redis.call('SET', KEYS[2], 1, 'NX') then outcome = 'fail' end
redis.call('RPUSH', KEYS[1], ARGV[1] .. ':' .. outcome)
return outcome
"""


def chaos(url: str, idx: int, fail_once: bool, seconds: float) -> int:
    """Chaos-test job: every execution leaves 'idx:execution_id:pid:outcome' in a list."""
    from conveyor import current_job

    ctx = current_job()
    client = redis.Redis.from_url(url)
    time.sleep(seconds)
    record = f"{idx}:{ctx.execution_id if ctx else '?'}:{os.getpid()}"
    outcome = client.eval(_CHAOS_RECORD, 2, "chaos:executions", f"chaos:failed:{idx}", record, int(fail_once))
    client.close()
    if outcome == b"fail":
        raise RuntimeError(f"chaos job {idx} fails once")
    return idx


def until_lease_lost(url: str, key: str, limit: float = 20.0) -> str:
    """First run: wait for the cooperative lease-lost signal and note it; later runs return at once."""
    from conveyor import current_job

    client = redis.Redis.from_url(url)
    if not client.set(f"{key}:ran", 1, nx=True):
        return "again"
    ctx = current_job()
    deadline = time.monotonic() + limit
    while ctx is not None and not ctx.lease_lost and time.monotonic() < deadline:
        time.sleep(0.01)
    client.set(key, "lost" if ctx is not None and ctx.lease_lost else "never told")
    return "first"


async def async_until_cancelled(url: str, key: str) -> str:
    """First run: sleep until cancelled and note it; later runs return at once."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        if not await client.set(f"{key}:ran", 1, nx=True):
            return "again"
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await client.set(key, "cancelled")
            raise
        return "first"
    finally:
        await client.aclose()
