"""Where jobs run: --pool process (child processes), --pool async, and the thread pool's limits."""

from __future__ import annotations

import collections
import time

from conveyor import JobStatus, Queue
from support import fetch

# -- process pool ---------------------------------------------------------------------------------


def test_process_pool_runs_sync_jobs_in_a_child_process(queue: Queue, conn, run_burst) -> None:
    job = queue.enqueue("jobs:pid")
    add = queue.enqueue("jobs:add", 2, 3)
    aio = queue.enqueue("jobs:async_add", 3, 4)
    w = run_burst("--pool", "process", "--concurrency", "1")
    job = fetch(conn, job)
    assert job.status is JobStatus.FINISHED
    assert isinstance(job.result, int) and job.result != w.pid
    assert fetch(conn, add).result == 5
    assert fetch(conn, aio).result == 7


def test_process_pool_kills_a_job_past_its_timeout(queue: Queue, conn, run_burst) -> None:
    slow = queue.enqueue("jobs:sleep", 30, timeout=0.5)
    nxt = queue.enqueue("jobs:pid")
    started = time.monotonic()
    w = run_burst("--pool", "process", "--concurrency", "1", timeout=20)
    assert time.monotonic() - started < 15  # nowhere near the job's 30 s

    slow, nxt = fetch(conn, slow), fetch(conn, nxt)
    assert slow.status is JobStatus.FAILED
    assert slow.exc_info.type == "JobTimeout"
    assert "0.5s" in slow.exc_info.message and "killed" in slow.exc_info.message
    assert slow.id in queue.failed
    assert nxt.status is JobStatus.FINISHED and nxt.result != w.pid
    assert "Traceback" not in w.log()


def test_process_pool_sys_exit_fails_the_job_and_the_worker_lives(queue: Queue, conn, run_burst) -> None:
    bad = queue.enqueue("jobs:call_sys_exit", 3)
    good = queue.enqueue("jobs:add", 1, 2)
    run_burst("--pool", "process", "--concurrency", "1")

    bad = fetch(conn, bad)
    assert bad.status is JobStatus.FAILED
    assert bad.exc_info.type == "SystemExit"
    assert "sys.exit(3)" in bad.exc_info.message
    assert fetch(conn, good).status is JobStatus.FINISHED and fetch(conn, good).result == 3


def test_process_pool_os_exit_is_worker_lost_and_later_jobs_run(queue: Queue, conn, run_burst) -> None:
    first_pid = queue.enqueue("jobs:pid")
    bad = queue.enqueue("jobs:call_os_exit", 7)
    later = [queue.enqueue("jobs:pid") for _ in range(2)]
    w = run_burst("--pool", "process", "--concurrency", "1")

    bad = fetch(conn, bad)
    assert bad.status is JobStatus.FAILED
    assert bad.exc_info.type == "WorkerLost"
    assert "code 7" in bad.exc_info.message and "exited" in bad.exc_info.message
    assert bad.id in queue.failed
    results = [fetch(conn, j) for j in later]
    assert all(j.status is JobStatus.FINISHED for j in results)
    # The dead child was replaced by a new one.
    assert {j.result for j in results} != {fetch(conn, first_pid).result}
    assert all(j.result != w.pid for j in results)
    assert "Traceback" not in w.log()


def test_max_jobs_per_child_recycles_children(queue: Queue, conn, run_burst) -> None:
    jobs = [queue.enqueue("jobs:pid") for _ in range(6)]
    w = run_burst("--pool", "process", "--concurrency", "1", "--max-jobs-per-child", "2")
    results = [fetch(conn, j) for j in jobs]
    assert all(j.status is JobStatus.FINISHED for j in results)
    pids = [j.result for j in results]
    counts = collections.Counter(pids)
    assert len(counts) == 3, pids
    assert set(counts.values()) == {2}, pids
    # One child at a time: each child's two jobs are consecutive.
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]
    assert w.pid not in counts


def test_process_pool_concurrency_runs_jobs_in_separate_children(queue: Queue, conn, run_burst) -> None:
    jobs = [queue.enqueue("jobs:sleep", 0.5) for _ in range(3)]
    pids = [queue.enqueue("jobs:pid") for _ in range(3)]
    w = run_burst("--pool", "process", "--concurrency", "3")
    done = [fetch(conn, j) for j in jobs]
    assert all(j.status is JobStatus.FINISHED for j in done)
    assert max(j.started_at for j in done) < min(j.ended_at for j in done)
    seen = {fetch(conn, j).result for j in pids}
    assert w.pid not in seen and all(isinstance(p, int) for p in seen)


def test_process_pool_reports_import_errors_and_exceptions(queue: Queue, conn, run_burst) -> None:
    missing = queue.enqueue("nope.mod:fn")
    raises = queue.enqueue("jobs:fail", "in a child")
    run_burst("--pool", "process", "--concurrency", "1")
    missing, raises = fetch(conn, missing), fetch(conn, raises)
    assert missing.status is JobStatus.FAILED and "cannot import" in missing.exc_info.message
    assert raises.exc_info.type == "ValueError" and raises.exc_info.message == "in a child"
    assert "raise ValueError(message)" in raises.exc_info.traceback


# -- async pool -------------------------------------------------------------------------------------


def test_async_pool_runs_async_jobs_and_refuses_sync_ones(queue: Queue, conn, run_burst) -> None:
    a = queue.enqueue("jobs:async_add", 1, 2)
    s = queue.enqueue("jobs:add", 1, 2)
    b = queue.enqueue("jobs:async_sleep", 0.05)
    run_burst("--pool", "async")

    a, s, b = fetch(conn, a), fetch(conn, s), fetch(conn, b)
    assert a.status is JobStatus.FINISHED and a.result == 3
    assert b.status is JobStatus.FINISHED and b.result == 0.05
    assert s.status is JobStatus.FAILED
    assert "--pool async" in s.exc_info.message
    assert "jobs:add" in s.exc_info.message
    assert s.id in queue.failed


def test_async_pool_runs_async_jobs_concurrently(queue: Queue, conn, run_burst) -> None:
    jobs = [queue.enqueue("jobs:async_sleep", 0.5) for _ in range(4)]
    run_burst("--pool", "async", "--concurrency", "4")
    done = [fetch(conn, j) for j in jobs]
    assert all(j.status is JobStatus.FINISHED for j in done)
    assert max(j.started_at for j in done) < min(j.ended_at for j in done)


def test_async_pool_timeout(queue: Queue, conn, run_burst) -> None:
    job = queue.enqueue("jobs:async_sleep", 30, timeout=0.3)
    run_burst("--pool", "async", timeout=20)
    job = fetch(conn, job)
    assert job.status is JobStatus.FAILED and job.exc_info.type == "JobTimeout"
    assert "0.3s" in job.exc_info.message


# -- thread pool ------------------------------------------------------------------------------------


def test_thread_pool_spinning_job_times_out_and_burst_worker_exits_cleanly(queue: Queue, conn, run_burst) -> None:
    job = queue.enqueue("jobs:busy", 10, timeout=0.3)
    started = time.monotonic()
    w = run_burst("--pool", "thread", timeout=20)
    elapsed = time.monotonic() - started
    job = fetch(conn, job)
    assert job.status is JobStatus.FAILED
    assert job.exc_info.type == "JobTimeout"
    assert "0.3s" in job.exc_info.message
    assert elapsed < 8, f"burst worker took {elapsed:.1f}s: it waited for the spinning job"
    log = w.log()
    assert "Traceback" not in log, log
    assert "1 failed" in log


def test_thread_pool_runs_sync_jobs_in_the_worker_process(queue: Queue, conn, run_burst) -> None:
    ok = queue.enqueue("jobs:pid")
    bad = queue.enqueue("jobs:fail", "x")
    w = run_burst("--pool", "thread")
    assert fetch(conn, ok).result == w.pid
    assert fetch(conn, bad).exc_info.type == "ValueError"


def test_thread_pool_sys_exit_fails_the_job_and_the_worker_lives(queue: Queue, conn, run_burst) -> None:
    bad = queue.enqueue("jobs:call_sys_exit", 4)
    good = queue.enqueue("jobs:add", 2, 2)
    w = run_burst("--pool", "thread", "--concurrency", "1")
    bad = fetch(conn, bad)
    assert bad.status is JobStatus.FAILED
    assert bad.exc_info.type == "SystemExit" and "sys.exit(4)" in bad.exc_info.message
    assert fetch(conn, good).result == 4
    assert "1 finished, 1 failed" in w.log()
