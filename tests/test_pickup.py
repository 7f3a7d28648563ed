"""An idle worker's pickup: the claim goes out with the BLPOP, in one write (waker.py,
Flow.pickup_claim), so a job starts one round trip after its enqueue. These check that it
is one round trip, that a lost reply leaves no job stuck or run twice, that a stop does
not wait out the block nor let the claim run, and that queue priority still holds."""

from __future__ import annotations

import re
import signal
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor import JobStatus, Queue, scripts
from conveyor.embedded import free_port
from jobs_faults import executions
from support import fetch, wait_until, worker_id


def roundtrips(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
        text = resp.read().decode()
    m = re.search(r"^conveyor_redis_roundtrips_total(?:\{[^}]*\})? (\S+)$", text, re.M)
    assert m, text
    return int(float(m.group(1)))


def settled(port: int, quiet: float = 0.3, timeout: float = 10.0) -> int:
    """The round-trip count once it has not moved for `quiet` seconds (polled, with a deadline)."""
    seen = {"n": roundtrips(port), "since": time.monotonic()}

    def still() -> bool:
        n = roundtrips(port)
        if n != seen["n"]:
            seen["n"], seen["since"] = n, time.monotonic()
        return time.monotonic() - seen["since"] >= quiet

    wait_until(still, timeout, "the worker's round trips to settle", interval=0.05)
    return seen["n"]


def round_trips_for_one_job(conn: redis.Redis, queue: Queue, path: Path, port: int) -> int:
    """A warm-up job, then the worker's round trips (settled before and after) for one job."""
    warm = queue.enqueue("jobs_faults:record", str(path), "warm")
    wait_until(lambda: fetch(conn, warm).status is JobStatus.FINISHED, 10, "the warm-up job")
    before = settled(port)
    job = queue.enqueue("jobs_faults:record", str(path), "j")
    wait_until(lambda: fetch(conn, job).status is JobStatus.FINISHED, 10, "the job")
    return settled(port) - before


def order(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line] if path.exists() else []


def test_an_idle_worker_wakes_and_claims_in_one_round_trip(conn, spawn_worker, tmp_path) -> None:
    """Idle (the BLPOP and its claim out), a job comes: it runs, its outcome is recorded and the
    worker waits again: two round trips (the outcome, the next BLPOP+claim; the wake+claim
    that brought the job was counted when it went out), where a BLPOP then a claim made three."""
    port = free_port()
    # A long lease: housekeeping (every third of it) stays out of the count.
    w = spawn_worker("--concurrency", "1", "--lease-seconds", "60", "--metrics-port", str(port),
                     "--metrics-host", "127.0.0.1")
    worker_id(w)
    path = tmp_path / "runs"
    assert round_trips_for_one_job(conn, Queue("default", connection=conn), path, port) == 2, w.log()
    assert executions(path) == {"warm": 1, "j": 1}
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0


def test_a_job_of_a_later_queue_costs_one_claim_after_the_wake(conn, spawn_worker, tmp_path) -> None:
    """Two queues, a job in the second: the claim sent with the BLPOP (the first queue's) comes
    back empty, and the step after it claims only the second queue (the first was just claimed):
    that claim; the outcome (with a claim of the first queue for the freed slot) and one of the
    second; the next BLPOP+claim: four round trips, where claiming the first queue again after
    the wake made five."""
    port = free_port()
    w = spawn_worker("-q", "high,low", "--concurrency", "1", "--prefetch", "0", "--lease-seconds", "60",
                     "--metrics-port", str(port), "--metrics-host", "127.0.0.1")
    worker_id(w)
    low = Queue("low", connection=conn)
    assert round_trips_for_one_job(conn, low, tmp_path / "runs", port) == 4, w.log()
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0


def test_a_stop_while_blocked_exits_at_once_and_claims_nothing(conn, spawn_worker, tmp_path) -> None:
    """SIGTERM while the BLPOP and its claim are out: the worker exits well inside its block
    (5 s) and the claim never runs: a job enqueued afterwards stays queued, unleased."""
    w = spawn_worker("--lease-seconds", "60")
    worker_id(w)
    q = Queue("default", connection=conn)
    warm = q.enqueue("jobs_faults:record", str(tmp_path / "runs"), "warm")
    wait_until(lambda: fetch(conn, warm).status is JobStatus.FINISHED, 10, "the warm-up job")
    # The BLPOP is parked: Redis lists the worker's blocking connection as blocked in BLPOP.
    wait_until(lambda: any(c.get("cmd") == "blpop" for c in conn.client_list()), 10, "the worker to block")
    sent = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0
    took = time.monotonic() - sent
    assert took < 3, f"the stop took {took:.1f}s:\n{w.log()}"
    job = q.enqueue("jobs_faults:record", str(tmp_path / "runs"), "late")
    assert fetch(conn, job).status is JobStatus.QUEUED
    assert conn.llen(q.keys.wake) == 1  # its token is still there for another worker
    assert conn.zcard(q.keys.leases) == 0
    assert "reply was lost" not in w.log()  # nothing to disown: the claim never ran


def test_a_stop_with_a_job_running_cuts_the_claim_at_once(conn, spawn_worker, tmp_path) -> None:
    """SIGTERM while a job runs and the BLPOP with its claim (for the free slot) is out: the
    running job gets its shutdown time, but the claim is cut at once: a job enqueued right
    after the stop is neither claimed nor handed back, and stays queued for another worker."""
    w = spawn_worker("--concurrency", "2", "--lease-seconds", "60")
    worker_id(w)
    q = Queue("default", connection=conn)
    path = tmp_path / "runs"
    running = q.enqueue("jobs_faults:record_after", str(path), "running", 1.0)
    wait_until(lambda: fetch(conn, running).status is JobStatus.STARTED, 10, "the job to start")
    wait_until(lambda: any(c.get("cmd") == "blpop" for c in conn.client_list()), 10, "the worker to block")
    w.signal(signal.SIGTERM)
    w.wait_log("stopping on SIGTERM")
    late = q.enqueue("jobs_faults:record", str(path), "late")
    assert w.wait(15) == 0
    assert executions(path) == {"running": 1}
    assert fetch(conn, late).status is JobStatus.QUEUED and fetch(conn, late).deliveries == 0
    assert f"job {late.id} handed back" not in w.log(), w.log()


def test_a_worker_with_two_queues_claims_the_first_when_woken_by_the_second(conn, spawn_worker, tmp_path) -> None:
    """Jobs in both queues, only the later queue's wake token: the claim sent with the BLPOP
    is the first queue's (strict priority), not the queue whose token woke the worker."""
    w = spawn_worker("-q", "high,low", "--concurrency", "1", "--prefetch", "0", "--lease-seconds", "60")
    worker_id(w)
    path = tmp_path / "runs"
    high, low = Queue("high", connection=conn), Queue("low", connection=conn)
    warm = low.enqueue("jobs_faults:record", str(path), "warm")
    wait_until(lambda: fetch(conn, warm).status is JobStatus.FINISHED, 10, "the warm-up job")
    wait_until(lambda: any(c.get("cmd") == "blpop" for c in conn.client_list()), 10, "the worker to block")
    # One transaction: the high job without its token, then the low one with its own.
    pipe = conn.pipeline(transaction=True)
    for q, tag in ((high, "high"), (low, "low")):
        encoded = q.encode_batch([Queue.prepare_data("jobs_faults:record", (str(path), tag))], "error")
        scripts.enqueue(pipe, [*encoded.keys, q.keyspace.queues], encoded.argv)
        if tag == "high":
            pipe.delete(q.keys.wake)
    pipe.execute()
    wait_until(lambda: len(order(path)) == 3, 10, "both jobs to run")
    assert order(path) == ["warm", "high", "low"], w.log()
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0


def most_at_once(path: Path) -> int:
    events = sorted((float(t), 1 if sign == "+" else -1) for sign, t in
                    (line.split() for line in path.read_text().splitlines() if line))
    now = peak = 0
    for _, step in events:  # an end and a start at the same instant: the end first (-1 sorts before 1)
        now += step
        peak = max(peak, now)
    return peak


def test_pickups_never_run_more_jobs_than_slots(conn, spawn_worker, tmp_path) -> None:
    """Waves of jobs reach an idle worker with one slot busy (the claim with the BLPOP is sized
    for the free slot): counted from the jobs' own side, never more run at once than its slots."""
    # Prefetch: the claim asks for more than the free slot, the rest must wait in the buffer.
    w = spawn_worker("--concurrency", "2", "--prefetch", "4", "--lease-seconds", "60")
    worker_id(w)
    q = Queue("default", connection=conn)
    path = tmp_path / "overlap"
    jobs = []
    for _ in range(4):
        long = q.enqueue("jobs_worker:overlap", str(path), 0.4)
        wait_until(lambda j=long: fetch(conn, j).status is JobStatus.STARTED, 10, "the long job to start")
        wait_until(lambda: any(c.get("cmd") == "blpop" for c in conn.client_list()), 10, "the worker to block")
        wave = q.enqueue_many([Queue.prepare_data("jobs_worker:overlap", (str(path), 0.05)) for _ in range(5)])
        jobs += [long, *wave]
        wait_until(lambda: all(fetch(conn, j).status is JobStatus.FINISHED for j in jobs), 15, "the wave to finish")
    assert most_at_once(path) == 2, path.read_text()
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0


@pytest.mark.parametrize("prefetch", ["0", "4"])
def test_a_lost_pickup_reply_runs_the_job_exactly_once(server, proxy, spawn_worker: Callable[..., Any], tmp_path,
                                                       prefetch: str) -> None:
    """The BLPOP+claim reply is lost (the connection reset after Redis ran both): the claim is
    disowned on the next step and the job runs once, here or after its lease, never twice,
    and is not charged a delivery for the start it never had."""
    conn = redis.Redis.from_url(server.url)
    q = Queue("default", connection=conn)
    path = tmp_path / "runs"
    w = spawn_worker("--lease-seconds", "30", "--concurrency", "1", "--prefetch", prefetch, url=proxy.url())
    worker_id(w)
    warm = q.enqueue("jobs_faults:record", str(path), "warm")
    wait_until(lambda: fetch(conn, warm).status is JobStatus.FINISHED, 10, "the warm-up job")
    wait_until(lambda: any(c.get("cmd") == "blpop" for c in conn.client_list()), 10, "the worker to block")
    job_id = uuid.uuid4().hex
    proxy.lose_reply_with(job_id.encode())  # the blocked connection's: BLPOP and claim replies together
    job = q.enqueue("jobs_faults:record", str(path), "j", job_id=job_id)
    wait_until(lambda: proxy.replies_lost == 1, 10, "the pickup's reply to be lost")
    wait_until(lambda: fetch(conn, job).status is JobStatus.FINISHED, 15, "the job to finish")
    assert executions(path) == {"warm": 1, "j": 1}
    assert fetch(conn, job).deliveries == 1
    wait_until(lambda: "handed back: Redis leased them to this worker but the reply was lost" in w.log(), 5,
               "the hand-back to be logged")
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0
    assert executions(path) == {"warm": 1, "j": 1}
    conn.close()
