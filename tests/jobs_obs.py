"""Job functions for the observability tests (metrics, health, CLI); workers import this
module as `jobs_obs`.

Each job that other code must wait on leaves a trace in Redis when its body really
runs, so tests poll for that instead of sleeping.
"""

from __future__ import annotations

import time

import redis


def hold(url: str, key: str, seconds: float = 30.0) -> str:
    """Push to `<key>:running`, then block until something is pushed to `<key>:release`
    (or `seconds` pass). Lets a test keep a job running exactly as long as it needs."""
    # redis-py's default 5 s socket timeout would end the BLPOP (and fail the job) early.
    client = redis.Redis.from_url(url, socket_timeout=seconds + 10)
    try:
        client.rpush(f"{key}:running", "1")
        released = client.blpop([f"{key}:release"], timeout=seconds)
        return "released" if released else "timed out"
    finally:
        client.close()


def release(url: str, key: str) -> None:
    """The test side of :func:`hold` (called in-process, not by a worker)."""
    client = redis.Redis.from_url(url)
    client.rpush(f"{key}:release", "1")
    client.close()


def slow_once(url: str, key: str, seconds: float) -> int:
    """Count executions in `key`; the first one runs for `seconds` (long enough to be
    killed), every later one returns at once."""
    client = redis.Redis.from_url(url)
    n = int(client.incr(key))
    client.close()
    if n == 1:
        time.sleep(seconds)
    return n


def spin_marked(url: str, key: str, seconds: float) -> str:
    """Spin in Python code (a thread-pool stop can land here); announce itself in `key`
    first, and record the type of anything raised into it in `<key>:raised`."""
    client = redis.Redis.from_url(url)
    client.rpush(key, "running")
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            pass
    except BaseException as exc:
        client.set(f"{key}:raised", type(exc).__name__)
        raise
    finally:
        client.close()
    return "done"
