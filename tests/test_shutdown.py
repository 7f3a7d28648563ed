"""Graceful shutdown with real signals sent to real worker processes."""

from __future__ import annotations

import signal
import time
import uuid

import pytest
import redis

from conveyor import Job, JobStatus, Queue
from support import fetch, wait_until


@pytest.fixture
def key() -> str:
    return f"test:running:{uuid.uuid4().hex}"


def wait_running(conn: redis.Redis, key: str, n: int = 1) -> None:
    """jobs:record pushes to `key` when its body really runs."""
    wait_until(lambda: conn.llen(key) >= n, 15, f"{n} job(s) to be running")


def assert_handed_back(conn: redis.Redis, queue: Queue, job: Job) -> None:
    back = fetch(conn, job)
    assert back.status is JobStatus.QUEUED
    assert back.deliveries == 0
    assert back.worker is None
    assert back.exc_info is None
    assert job.id not in queue.failed
    assert job.id not in queue.started
    assert job.id not in queue.prefetched
    assert job.id not in queue.finished


def test_sigterm_lets_the_running_job_finish(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    job = queue.enqueue("jobs:record", redis_url, key, "t", 1.0)
    w = spawn_worker("--shutdown-timeout", "10")
    wait_running(conn, key)
    w.signal(signal.SIGTERM)
    w.wait_log("stopping on SIGTERM")
    assert w.wait(15) == 0

    done = fetch(conn, job)
    assert done.status is JobStatus.FINISHED
    assert done.result == "t"
    assert queue.count == 0 and job.id not in queue.started
    log = w.log()
    assert "Traceback" not in log
    assert "1 finished" in log


def test_sigterm_does_not_start_queued_jobs(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    running = queue.enqueue("jobs:record", redis_url, key, "t", 1.0)
    waiting = [queue.enqueue("jobs:add", i, i) for i in range(3)]
    w = spawn_worker("--concurrency", "1", "--prefetch", "0", "--shutdown-timeout", "10")
    wait_running(conn, key)
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0
    assert fetch(conn, running).status is JobStatus.FINISHED
    assert queue.job_ids == [j.id for j in waiting]
    assert all(fetch(conn, j).status is JobStatus.QUEUED for j in waiting)


def test_shutdown_timeout_hands_the_running_job_back_to_the_head(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    job = queue.enqueue("jobs:record", redis_url, key, "t", 30)
    behind = queue.enqueue("jobs:add", 1, 1)
    w = spawn_worker("--concurrency", "1", "--prefetch", "0", "--shutdown-timeout", "0.5")
    wait_running(conn, key)
    assert fetch(conn, job).deliveries == 1
    sent = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert time.monotonic() - sent < 5, "the worker waited for the job instead of its shutdown timeout"

    assert queue.job_ids[0] == job.id
    assert queue.job_ids == [job.id, behind.id]
    assert_handed_back(conn, queue, job)
    assert fetch(conn, behind).status is JobStatus.QUEUED
    assert "Traceback" not in w.log()


def test_handed_back_job_runs_again_on_the_next_worker(queue: Queue, conn, redis_url, key, spawn_worker, run_burst) -> None:
    job = queue.enqueue("jobs:record", redis_url, key, "t", 30)
    w = spawn_worker("--shutdown-timeout", "0.2")
    wait_running(conn, key)
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert queue.job_ids == [job.id]
    # Shorten it so the second run is quick: same job, new execution.
    old_exec = fetch(conn, job).execution_id
    conn.hset(queue.keys.job(job.id), "payload", b'{"a": ["%s", "%s", "t2", 0], "k": {}}' % (redis_url.encode(), key.encode()))
    run_burst()
    again = fetch(conn, job)
    assert again.status is JobStatus.FINISHED and again.result == "t2"
    assert again.deliveries == 1
    assert again.execution_id != old_exec


def test_second_signal_skips_the_wait(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    job = queue.enqueue("jobs:record", redis_url, key, "t", 30)
    w = spawn_worker("--shutdown-timeout", "60")
    wait_running(conn, key)
    w.signal(signal.SIGTERM)
    w.wait_log("stopping on SIGTERM")
    # Still waiting for the job: the first signal alone does not hand it back.
    assert fetch(conn, job).status is JobStatus.STARTED
    sent = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert time.monotonic() - sent < 5
    assert queue.job_ids == [job.id]
    assert_handed_back(conn, queue, job)
    assert "second stop request" in w.log()


def test_sigint_after_sigterm_skips_the_wait(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    job = queue.enqueue("jobs:record", redis_url, key, "t", 30)
    w = spawn_worker("--shutdown-timeout", "60")
    wait_running(conn, key)
    w.signal(signal.SIGTERM)
    w.wait_log("stopping on SIGTERM")
    w.signal(signal.SIGINT)
    assert w.wait(10) == 0
    assert queue.job_ids == [job.id]
    assert_handed_back(conn, queue, job)
    assert "second stop request on SIGINT" in w.log()


def test_sigint_alone_is_a_graceful_stop(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    job = queue.enqueue("jobs:record", redis_url, key, "t", 0.5)
    w = spawn_worker("--shutdown-timeout", "10")
    wait_running(conn, key)
    w.signal(signal.SIGINT)
    assert w.wait(10) == 0
    assert fetch(conn, job).status is JobStatus.FINISHED


def test_prefetched_jobs_go_back_at_once_in_order(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    jobs = [queue.enqueue("jobs:record", redis_url, key, f"t{i}", 30) for i in range(6)]
    w = spawn_worker("--concurrency", "1", "--prefetch", "3", "--shutdown-timeout", "60")
    wait_running(conn, key)
    # One runs, three more are claimed and wait in the worker, visibly not running (and not
    # charged a delivery); the rest stay queued.
    wait_until(lambda: queue.count == 2, 10, "the prefetch claim")
    assert [fetch(conn, j).status for j in jobs[:4]] == [JobStatus.STARTED] + [JobStatus.PREFETCHED] * 3
    assert [fetch(conn, j).deliveries for j in jobs[:4]] == [1, 0, 0, 0]
    assert queue.started.job_ids == [jobs[0].id]
    assert sorted(queue.prefetched.job_ids) == sorted(j.id for j in jobs[1:4])
    assert queue.job_ids == [j.id for j in jobs[4:]]
    assert conn.llen(key) == 1  # only the first one runs

    w.signal(signal.SIGTERM)
    # Prefetched jobs come back right away, at the head, in their original order,
    # while the running one still has its 60 s.
    wait_until(lambda: queue.count == 5, 10, "the prefetched jobs to be handed back")
    assert queue.job_ids == [j.id for j in jobs[1:]]
    for j in jobs[1:4]:
        assert_handed_back(conn, queue, j)
    assert fetch(conn, jobs[0]).status is JobStatus.STARTED
    assert w.proc.poll() is None

    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert queue.job_ids == [j.id for j in jobs]
    for j in jobs[:4]:
        assert_handed_back(conn, queue, j)
    assert conn.llen(key) == 1  # none of the prefetched ones ever ran
    assert "Traceback" not in w.log()


def test_process_pool_shutdown_timeout_hands_back_and_kills_the_child(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    job = queue.enqueue("jobs:record", redis_url, key, "t", 30)
    w = spawn_worker("--pool", "process", "--concurrency", "1", "--shutdown-timeout", "0.5")
    wait_running(conn, key)
    child_pid = int(conn.lindex(key, 0).decode().rpartition(":")[2])
    assert child_pid != w.pid
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert queue.job_ids == [job.id]
    assert_handed_back(conn, queue, job)

    def child_gone() -> bool:
        try:
            with open(f"/proc/{child_pid}/stat") as f:
                return f.read().split(") ")[1].startswith("Z")  # a zombie is gone too
        except FileNotFoundError:
            return True

    wait_until(child_gone, 10, "the job's child process to be killed")


@pytest.mark.parametrize("delay", [0, 0.002, 0.005, 0.02])
def test_sigterm_on_an_idle_worker_exits_at_once(queue: Queue, conn, spawn_worker, delay: float) -> None:
    """Wherever the signal lands in the waker's first BLPOP, the worker ends without waiting it out."""
    w = spawn_worker("--shutdown-timeout", "60")
    w.wait_log("serving")
    time.sleep(delay)  # not synchronisation: it moves where in the BLPOP's life the signal lands
    sent = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert time.monotonic() - sent < 5
    assert "Traceback" not in w.log()
