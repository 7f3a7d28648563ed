"""The network breaking between a worker and Redis: connections reset, packets silently
dropped. Through a TCP proxy the test controls (tests/proxy.py)."""

from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis

from conveyor import JobStatus, Queue
from conveyor.embedded import free_port
from jobs_faults import executions
from support import fetch, wait_until, worker_id


def readyz(port: int) -> int | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@pytest.fixture
def http_worker(spawn_worker: Callable[..., Any]) -> Callable[..., tuple[Any, int]]:
    def start(*args: str, **kw: Any) -> tuple[Any, int]:
        port = free_port()
        w = spawn_worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1", *args, **kw)
        worker_id(w)
        wait_until(lambda: readyz(port) == 200, 15, "the worker to be ready", interval=0.05)
        return w, port
    return start


@pytest.mark.slow
def test_a_silent_redis_is_noticed_within_the_silence_budget(server, proxy, http_worker, spawn_worker,
                                                             tmp_path) -> None:
    """Packets dropped, no reset: /readyz turns 503 within max(lease/3, 2 s); when the leases run
    out by the worker's own clock its executions are lost at once (the sync job is told, the
    async one cancelled); another worker runs them; the late outcome is discarded."""
    conn = redis.Redis.from_url(server.url)
    q = Queue("default", connection=conn)
    path = str(tmp_path / "runs")
    lease = 2.0
    w, port = http_worker("--lease-seconds", str(lease), "--concurrency", "2", url=proxy.url())
    sync = q.enqueue("jobs_faults:until_lease_lost", path, "sync")
    asyn = q.enqueue("jobs_faults:async_until_cancelled", path, "async")
    wait_until(lambda: executions(path)["sync"] == 1 and executions(path)["async"] == 1, 10, "both jobs to start")

    proxy.blackhole()
    silent_at = time.monotonic()
    wait_until(lambda: readyz(port) == 503, 5, "/readyz to turn 503", interval=0.02)
    noticed = time.monotonic() - silent_at
    wait_until(lambda: executions(path)["sync-lost"] == 1 and executions(path)["async-cancelled"] == 1,
               lease + 3, "the executions to be treated as lost")
    lost = time.monotonic() - silent_at
    print(f"\nsilent Redis: /readyz 503 after {noticed:.2f}s, leases given up after {lost:.2f}s (lease {lease}s)")
    assert noticed <= max(lease / 3, 2.0), noticed
    assert lost <= lease + 1.0, lost

    rescuer = spawn_worker("--lease-seconds", str(lease), url=server.url)
    wait_until(lambda: all(fetch(conn, j).status is JobStatus.FINISHED for j in (sync, asyn)), 20,
               "another worker to run both jobs")
    proxy.heal()
    wait_until(lambda: readyz(port) == 200, 20, "/readyz back to 200 once the network heals", interval=0.05)
    w.wait_log("no longer holds the lease")  # the partitioned sync run's late outcome: discarded
    assert fetch(conn, sync).result == "again" and fetch(conn, asyn).result == "again"
    log = w.log()
    assert log.count("lost Redis") == 1, log
    assert "Traceback" not in log
    for proc in (w, rescuer):
        proc.signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    conn.close()


def test_a_claim_whose_reply_is_lost_hands_its_jobs_back_at_once(server, proxy, spawn_worker, tmp_path) -> None:
    """Redis ran the claim, the connection died before the worker read the reply: the jobs it
    leased are handed back on the next round trip and run once each, long before their lease
    (30 s) would have brought them back."""
    conn = redis.Redis.from_url(server.url)
    q = Queue("default", connection=conn)
    path = str(tmp_path / "runs")
    w = spawn_worker("--lease-seconds", "30", "--concurrency", "2", url=proxy.url())
    worker_id(w)
    ids = [uuid.uuid4().hex for _ in range(3)]
    proxy.lose_reply_with(ids[0].encode())  # only a claim's reply carries job IDs
    jobs = [q.enqueue("jobs_faults:record", path, f"j{i}", 0, job_id=ids[i]) for i in range(3)]
    wait_until(lambda: proxy.replies_lost == 1, 10, "a claim's reply to be lost")
    wait_until(lambda: all(fetch(conn, j).status is JobStatus.FINISHED for j in jobs), 10, "the jobs to finish")
    assert executions(path) == {f"j{i}": 1 for i in range(3)}
    assert all(fetch(conn, j).deliveries == 1 for j in jobs)  # a handed-back start is not a delivery
    wait_until(lambda: "handed back: Redis leased them to this worker but the reply was lost" in w.log(), 5,
               "the hand-back to be logged")
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0
    conn.close()


def test_a_stop_does_not_wait_for_redis_to_undo_a_claim_whose_reply_was_lost(server, proxy, spawn_worker,
                                                                            tmp_path) -> None:
    """The claim's reply is lost and Redis is gone from then on: the worker started none of
    those jobs, so a SIGTERM ends it at once (their leases bring them back), instead of
    waiting the whole shutdown timeout for a Redis that could undo the claim."""
    conn = redis.Redis.from_url(server.url)
    q = Queue("default", connection=conn)
    w = spawn_worker("--lease-seconds", "2", "--shutdown-timeout", "20", url=proxy.url())
    worker_id(w)
    job_id = uuid.uuid4().hex
    proxy.lose_reply_with(job_id.encode(), then_refuse=True)
    job = q.enqueue("jobs_faults:record", str(tmp_path / "runs"), "j", 0, job_id=job_id)
    wait_until(lambda: proxy.replies_lost == 1, 10, "a claim's reply to be lost")
    w.wait_log("lost Redis")
    sent = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0
    assert time.monotonic() - sent < 5, w.log()
    assert executions(str(tmp_path / "runs")) == {}  # never started here
    # The claim ran: the job is leased to the stopped worker until its lease lapses.
    assert fetch(conn, job).status in (JobStatus.STARTED, JobStatus.PREFETCHED)
    conn.close()


@pytest.mark.slow
def test_reset_connections_are_replaced_quietly(server, proxy, http_worker, tmp_path) -> None:
    """A pooled connection that died (reset) is replaced without an ERROR line or a readiness blip."""
    conn = redis.Redis.from_url(server.url)
    q = Queue("default", connection=conn)
    path = str(tmp_path / "runs")
    w, port = http_worker("--lease-seconds", "12", url=proxy.url())
    seen: list[int | None] = []
    for round_ in range(3):
        busy = [q.enqueue("jobs_faults:record", path, f"r{round_}-{i}", 0.3) for i in range(3)]
        wait_until(lambda: sum(executions(path).values()) >= 3 * round_ + 1, 10, "work to start")
        proxy.reset()
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            seen.append(readyz(port))
            time.sleep(0.02)
        wait_until(lambda: all(fetch(conn, j).status is JobStatus.FINISHED for j in busy), 10, "the jobs to finish")
    assert set(seen) == {200}, f"readiness blipped: {sorted(set(seen), key=str)}"
    assert executions(path) == {f"r{r}-{i}": 1 for r in range(3) for i in range(3)}
    log = w.log()
    assert "ERROR" not in log and "lost Redis" not in log, log
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0
    conn.close()
