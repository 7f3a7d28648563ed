"""An outage is not a death: when Redis (with its data on disk) is down longer than the lease and
comes back, live workers renew before anyone reaps them, and the outcomes they held are recorded:
nothing discarded, nothing completed twice. One log line per outage per worker."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from conveyor import JobStatus, Queue
from conveyor.embedded import EmbeddedRedis
from jobs_faults import executions
from support import fetch, loaded, stale_completions, wait_until, worker_id


def aof_server(data: Path, port: int | None = None) -> EmbeddedRedis:
    return EmbeddedRedis(port, args=("--appendonly", "yes", "--appendfsync", "always", "--dir", str(data))).start()


def run_outage(tmp_path: Path, spawn_worker, *, lease: float, outage: float, short: int, long: int) -> dict[str, float]:
    data = tmp_path / "redis"
    data.mkdir()
    server = aof_server(data)
    port = server.port
    conn = redis.Redis.from_url(server.url)
    q = Queue("default", connection=conn)
    path = str(tmp_path / "runs")
    try:
        jobs = q.enqueue_many([Queue.prepare_data("jobs_faults:record_after", (path, f"long{i}", lease * 1.5))
                               for i in range(long)])
        jobs += q.enqueue_many([Queue.prepare_data("jobs_faults:record", (path, f"s{i}", 0.02)) for i in range(short)])
        flags = ("--with-scheduler", "--concurrency", "4", "--lease-seconds", str(lease), "--scheduler-lock-seconds",
                 str(lease))
        workers = [spawn_worker(*flags, url=server.url) for _ in range(3)]
        for w in workers:
            worker_id(w)
        wait_until(lambda: sum(executions(path).values()) >= short // 4, 30, "a quarter of the jobs to run")
        server.stop()
        down_at = time.monotonic()
        for w in workers:
            w.wait_log("lost Redis", timeout=lease + 5)
        wait_until(lambda: time.monotonic() - down_at >= outage, outage + 5, f"a {outage}s outage", interval=0.1)
        server = aof_server(data, port)
        wait_until(lambda: loaded(conn), 30, "Redis to load its data")
        wait_until(lambda: all(fetch(conn, j).status is JobStatus.FINISHED for j in jobs), 60 + outage,
                   "every job to finish after the outage")
        ran = executions(path)
        for w in workers:
            w.signal(signal.SIGTERM)
            assert w.wait(30) == 0
        logs = [w.log() for w in workers]
        counted = [stale_completions(log) for log in logs]
        assert None not in counted, "every worker wrote its closing line"
        discarded = sum(n or 0 for n in counted)
        twice = sum(1 for n in ran.values() if n > 1)
        assert set(ran) == {f"long{i}" for i in range(long)} | {f"s{i}" for i in range(short)}
        for log in logs:
            assert log.count("lost Redis") == 1 and log.count("is back") == 1, log[-4000:]
            assert "scheduler step failed" not in log and "Traceback" not in log, log[-4000:]
        assert discarded == 0, "outcomes held through the outage were recorded"
        assert twice == 0, {t: n for t, n in ran.items() if n > 1}
        return {"discarded": discarded, "twice": twice}
    finally:
        conn.close()
        server.stop()


@pytest.mark.slow
def test_an_outage_longer_than_the_lease_loses_no_outcome(tmp_path, spawn_worker) -> None:
    run_outage(tmp_path, spawn_worker, lease=1.5, outage=4.0, short=300, long=6)


@pytest.mark.slow
def test_a_20s_outage_with_three_workers(tmp_path, spawn_worker) -> None:
    run_outage(tmp_path, spawn_worker, lease=5.0, outage=20.0, short=1000, long=12)
