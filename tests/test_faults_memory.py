"""A full Redis degrades, never corrupts: producers get a typed error, workers start and drain.
An evicting Redis (which silently deletes jobs) is warned about, or refused when asked."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator

import pytest
import redis

from conveyor import JobStatus, Queue
from conveyor.embedded import EmbeddedRedis, free_port
from conveyor.errors import RedisFull
from jobs_faults import executions
from support import WORKER_ENV, fetch, wait_until, worker_id

PAYLOAD = "x" * 20_000


@pytest.fixture
def full_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server with a small maxmemory and the noeviction policy."""
    server = EmbeddedRedis(args=("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")).start()
    yield server
    server.stop()


def fill(q: Queue, path: str) -> list[str]:
    """Enqueue until Redis is full; returns the IDs of every job it acknowledged."""
    ids: list[str] = []
    with pytest.raises(RedisFull) as refused:
        for i in range(10_000):
            ids.append(q.enqueue("jobs_faults:record", path, f"j{i}", 0.0, PAYLOAD).id)
    msg = str(refused.value)
    assert "Redis is full" in msg and "nothing was written" in msg and "maxmemory" in msg
    assert "\n" not in msg
    return ids


def test_full_redis_refuses_enqueue_cleanly_and_workers_start_and_drain_it(full_redis: EmbeddedRedis, tmp_path,
                                                                            spawn_worker) -> None:
    conn = redis.Redis.from_url(full_redis.url)
    q = Queue("default", connection=conn)
    path = str(tmp_path / "runs")
    ids = fill(q, path)
    assert len(ids) > 20
    # A batch is refused whole. Memory dips once the refused command's buffers are freed, so
    # a batch can still fit just after the refusal: then it is taken whole, and runs.
    batches = 0
    while True:
        try:
            q.enqueue_many([Queue.prepare_data("jobs_faults:record", (path, "batch", 0.0, PAYLOAD)) for _ in range(3)])
        except RedisFull:
            break
        batches += 1
        assert batches < 5, "Redis kept taking batches past maxmemory"
    assert q.count == len(ids) + 3 * batches, "nothing half-written"

    workers = [spawn_worker("--concurrency", "4", url=full_redis.url) for _ in range(2)]
    for w in workers:
        worker_id(w)  # a new worker starts on a full Redis
    wait_until(lambda: sum(executions(path).values()) >= len(ids) + 3 * batches, 60, "the backlog to drain")
    wait_until(lambda: all(fetch(conn, i).status is JobStatus.FINISHED for i in ids), 30, "every job to be recorded")
    ran = executions(path)
    want = {f"j{i}": 1 for i in range(len(ids))} | ({"batch": 3 * batches} if batches else {})
    assert ran == want, "each acknowledged job ran exactly once"
    assert q.count == 0 and q.started.count == 0 and q.failed.count == 0
    for w in workers:
        w.signal(signal.SIGTERM)
        assert w.wait(15) == 0
        assert "Traceback" not in w.log()
    conn.close()


@pytest.fixture
def evicting_redis() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(args=("--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru")).start()
    yield server
    server.stop()


def test_an_evicting_redis_is_warned_about_once_and_shown_as_a_metric(evicting_redis: EmbeddedRedis,
                                                                      spawn_worker) -> None:
    port = free_port()
    w = spawn_worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1", url=evicting_redis.url)
    worker_id(w)  # it started serving
    log = w.log()
    assert log.count("maxmemory-policy allkeys-lru") == 1, log
    assert "evicted jobs are lost without a trace" in log
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'conveyor_redis_maxmemory_policy{policy="allkeys-lru"} 1.0' in body
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0


def test_require_noeviction_refuses_an_evicting_redis(evicting_redis: EmbeddedRedis, spawn_worker) -> None:
    w = spawn_worker("--require-noeviction", url=evicting_redis.url)
    assert w.wait(15) == 2
    log = w.log()
    assert "refusing to start: --require-noeviction" in log and "maxmemory-policy allkeys-lru" in log
    assert "serving" not in log and "Traceback" not in log


def test_info_warns_about_an_evicting_redis(evicting_redis: EmbeddedRedis) -> None:
    res = subprocess.run([sys.executable, "-m", "conveyor", "info", "--redis-url", evicting_redis.url],
                         capture_output=True, text=True, env=WORKER_ENV, timeout=30)
    assert res.returncode == 0, res.stderr
    assert "warning: maxmemory-policy is allkeys-lru" in res.stderr
    assert "evicted jobs are lost" in res.stderr
