"""Extra job functions for the worker tests; workers import this module as `jobs_worker`."""

from __future__ import annotations

import asyncio
import time

import redis

import joblog


async def async_sleep_marked(url: str, key: str, seconds: float) -> str:
    """Sleep; leave "started", then "finished" or "cancelled" in Redis key `key`."""
    client = redis.Redis.from_url(url)
    try:
        client.set(key, "started")
        await asyncio.sleep(seconds)
        client.set(key, "finished")
        return "finished"
    except asyncio.CancelledError:
        client.set(key, "cancelled")
        raise
    finally:
        client.close()


async def async_raise_timeout_error(message: str) -> None:
    """An async job that fails by itself with the builtin TimeoutError, well inside its own timeout."""
    raise TimeoutError(message)


def raise_timeout_error(message: str) -> None:
    raise TimeoutError(message)


def busy_marked(url: str, key: str, seconds: float) -> str:
    """Spin in Python; if something is raised into the loop, record its type name in `key`."""
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            pass
    except BaseException as exc:
        client = redis.Redis.from_url(url)
        client.set(key, type(exc).__name__)
        client.close()
        raise
    return "done"


class _SlowNotes(list):
    """Exception notes that take a while to iterate, in Python code (so an interrupt can land there)."""

    seconds = 2.0

    def __iter__(self):  # type: ignore[override]
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            pass
        return iter(())


def raise_slow_to_format() -> None:
    """Raise at once; the worker's traceback formatting then spins for 2 s (outside this frame)."""
    exc = ValueError("slow to format")
    exc.__notes__ = _SlowNotes()
    raise exc


async def overlap(path: str, seconds: float) -> None:
    """Leave "+ <time>" when it starts and "- <time>" when it ends in `path` (one write each): how
    many jobs ran at once, from the jobs' own side. Async: no thread pool caps it, only the
    worker's slots."""
    for sign in ("+", "-"):
        joblog.append(path, f"{sign} {time.time()!r}")
        if sign == "+":
            await asyncio.sleep(seconds)
