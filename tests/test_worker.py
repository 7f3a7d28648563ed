"""The worker against a real redis-server: priority, pools, concurrency, timeouts, leases.

Also the Lua state transitions a worker relies on (complete/fail/release guarded
by the execution ID), called directly.
"""

from __future__ import annotations

import signal
import uuid

import pytest
import redis

from conveyor import JobStatus, Queue, calls, scripts
from conveyor.keys import QueueKeys
from conveyor.protocol import Code
from support import fetch, wait_until


def tokens(conn: redis.Redis, key: str) -> list[tuple[str, int]]:
    """Entries jobs:record pushed: (token, pid)."""
    out = []
    for raw in conn.lrange(key, 0, -1):
        token, _, pid = raw.decode().rpartition(":")
        out.append((token, int(pid)))
    return out


# -- queue priority -----------------------------------------------------------------------


def test_queues_are_served_in_the_order_given(conn, redis_url, run_burst) -> None:
    high = Queue("high", connection=conn)
    default = Queue("default", connection=conn)
    key = "test:order"
    # Default jobs are enqueued first: arrival order must not beat queue priority.
    for i in range(5):
        default.enqueue("jobs:record", redis_url, key, f"default-{i}")
    for i in range(5):
        high.enqueue("jobs:record", redis_url, key, f"high-{i}")

    run_burst("-q", "high,default", "--concurrency", "1")

    order = [t for t, _ in tokens(conn, key)]
    assert order == [f"high-{i}" for i in range(5)] + [f"default-{i}" for i in range(5)]
    assert high.count == 0 and default.count == 0


def test_repeated_queue_option_keeps_priority_order(conn, redis_url, run_burst) -> None:
    low = Queue("low", connection=conn)
    urgent = Queue("urgent", connection=conn)
    key = "test:order2"
    for i in range(3):
        low.enqueue("jobs:record", redis_url, key, f"low-{i}")
        urgent.enqueue("jobs:record", redis_url, key, f"urgent-{i}")

    run_burst("-q", "urgent", "-q", "low", "--concurrency", "1")

    order = [t for t, _ in tokens(conn, key)]
    assert order == ["urgent-0", "urgent-1", "urgent-2", "low-0", "low-1", "low-2"]


# -- sync, async, concurrency -----------------------------------------------------------------


def test_async_jobs_run_on_the_loop_and_sync_jobs_in_threads(queue: Queue, conn, run_burst) -> None:
    a = queue.enqueue("jobs:async_add", 20, 22)
    s = queue.enqueue("jobs:pid")
    w = run_burst()
    a, s = fetch(conn, a), fetch(conn, s)
    assert a.status is JobStatus.FINISHED and a.result == 42
    assert s.status is JobStatus.FINISHED
    # The thread pool runs sync jobs inside the worker process itself.
    assert s.result == w.pid


@pytest.mark.parametrize("n", [3, 5])
def test_concurrency_n_runs_n_jobs_at_once(queue: Queue, conn, run_burst, n: int) -> None:
    jobs = [queue.enqueue("jobs:sleep", 0.5) for _ in range(n)]
    run_burst("--concurrency", str(n))
    done = [fetch(conn, j) for j in jobs]
    assert all(j.status is JobStatus.FINISHED for j in done), [j.status for j in done]
    # All n intervals share a common instant: the latest start precedes the earliest end.
    latest_start = max(j.started_at for j in done)
    earliest_end = min(j.ended_at for j in done)
    assert latest_start < earliest_end, [(j.started_at, j.ended_at) for j in done]


def test_concurrency_one_runs_jobs_one_after_another(queue: Queue, conn, run_burst) -> None:
    jobs = [queue.enqueue("jobs:sleep", 0.2) for _ in range(3)]
    # No prefetch: a claimed job is stamped started_at when claimed, not when its slot frees up.
    run_burst("--concurrency", "1", "--prefetch", "0")
    done = sorted((fetch(conn, j) for j in jobs), key=lambda j: j.started_at)
    for before, after in zip(done, done[1:]):
        assert before.ended_at <= after.started_at + 0.001, "jobs overlapped with --concurrency 1"


# -- timeouts --------------------------------------------------------------------------------


def test_per_job_timeout_fails_a_spinning_sync_job_and_the_worker_continues(queue: Queue, conn, run_burst) -> None:
    slow = queue.enqueue("jobs:busy", 5, timeout=0.3)
    after = queue.enqueue("jobs:add", 1, 2)
    run_burst("--concurrency", "1")

    slow, after = fetch(conn, slow), fetch(conn, after)
    assert slow.status is JobStatus.FAILED
    assert slow.exc_info.type == "JobTimeout"
    assert "timeout" in slow.exc_info.message and "0.3s" in slow.exc_info.message
    assert slow.id in queue.failed
    assert after.status is JobStatus.FINISHED and after.result == 3
    # With one slot, the next job starts only once the spinning thread really stopped:
    # well before the 5 s it would have spun for.
    assert after.started_at - slow.started_at < 4.0


def test_default_timeout_applies_to_jobs_without_their_own(queue: Queue, conn, run_burst) -> None:
    slow = queue.enqueue("jobs:busy", 5)
    own = queue.enqueue("jobs:sleep", 0.5, timeout=10)  # its own timeout beats the worker default
    run_burst("--default-timeout", "0.3")

    slow, own = fetch(conn, slow), fetch(conn, own)
    assert slow.status is JobStatus.FAILED and slow.exc_info.type == "JobTimeout"
    assert "0.3s" in slow.exc_info.message
    assert own.status is JobStatus.FINISHED and own.result == 0.5


def test_per_job_timeout_beats_a_larger_default(queue: Queue, conn, run_burst) -> None:
    slow = queue.enqueue("jobs:busy", 5, timeout=0.3)
    run_burst("--default-timeout", "100")
    slow = fetch(conn, slow)
    assert slow.exc_info is not None and slow.exc_info.type == "JobTimeout"
    assert "0.3s" in slow.exc_info.message


def test_timed_out_thread_is_interrupted_with_job_timeout(queue: Queue, conn, redis_url, spawn_worker) -> None:
    key = f"test:busy:{uuid.uuid4().hex}"
    job = queue.enqueue("jobs_worker:busy_marked", redis_url, key, 10, timeout=0.3)
    w = spawn_worker("--concurrency", "1")
    wait_until(lambda: fetch(conn, job).status is JobStatus.FAILED, 10, "the job to time out")
    # The exception raised into the spinning thread is JobTimeout.
    assert wait_until(lambda: conn.get(key), 5, "the job thread to see the interrupt") == b"JobTimeout"
    assert fetch(conn, job).exc_info.type == "JobTimeout"
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0


def test_async_job_past_its_timeout_is_cancelled(queue: Queue, conn, redis_url, run_burst) -> None:
    key = f"test:async:{uuid.uuid4().hex}"
    job = queue.enqueue("jobs_worker:async_sleep_marked", redis_url, key, 30, timeout=0.3)
    after = queue.enqueue("jobs:async_add", 1, 1)
    run_burst(timeout=20)

    job, after = fetch(conn, job), fetch(conn, after)
    assert job.status is JobStatus.FAILED
    assert job.exc_info.type == "JobTimeout"
    assert "timeout" in job.exc_info.message and "0.3s" in job.exc_info.message
    assert conn.get(key) == b"cancelled"
    assert after.status is JobStatus.FINISHED and after.result == 2


def test_sync_job_raising_timeout_error_is_not_a_job_timeout(queue: Queue, conn, run_burst) -> None:
    job = queue.enqueue("jobs_worker:raise_timeout_error", "upstream took too long", timeout=30)
    run_burst()
    job = fetch(conn, job)
    assert job.exc_info.type == "TimeoutError"
    assert job.exc_info.message == "upstream took too long"


def test_async_job_raising_timeout_error_is_not_a_job_timeout(queue: Queue, conn, run_burst) -> None:
    job = queue.enqueue("jobs_worker:async_raise_timeout_error", "upstream took too long", timeout=30)
    run_burst()
    job = fetch(conn, job)
    assert job.status is JobStatus.FAILED
    assert job.exc_info.type == "TimeoutError"
    assert job.exc_info.message == "upstream took too long"


def test_timeout_landing_after_the_job_function_returned_does_not_kill_the_pool_thread(
    queue: Queue, conn, spawn_worker
) -> None:
    # The job raises at once; formatting its traceback (worker code, not the job) spins for 2 s,
    # so the 0.3 s timeout fires outside the job function.
    bad = queue.enqueue("jobs_worker:raise_slow_to_format", timeout=0.3)
    after = queue.enqueue("jobs:add", 1, 2)
    w = spawn_worker("--concurrency", "1")
    wait_until(lambda: fetch(conn, bad).status is JobStatus.FAILED, 10, "the job to time out")
    assert fetch(conn, bad).exc_info.type == "JobTimeout"
    wait_until(lambda: fetch(conn, after).status is JobStatus.FINISHED, 6, "the next job to run")
    assert "Traceback" not in w.log()


# -- two workers, one set of jobs ------------------------------------------------------------


def test_two_workers_run_each_of_1000_jobs_exactly_once(queue: Queue, conn, redis_url, spawn_worker) -> None:
    key = "test:once"
    workers = [spawn_worker(), spawn_worker()]
    for w in workers:
        w.wait_log("serving")
    jobs = queue.enqueue_many(
        [Queue.prepare_data("jobs:record", (redis_url, key, f"t{i}")) for i in range(1000)]
    )
    wait_until(lambda: queue.finished.count >= 1000, 60, "1000 finished jobs")
    for w in workers:
        w.signal(signal.SIGTERM)
    for w in workers:
        assert w.wait(15) == 0

    records = tokens(conn, key)
    assert len(records) == 1000
    assert {t for t, _ in records} == {f"t{i}" for i in range(1000)}
    assert queue.finished.count == 1000
    assert queue.count == 0 and queue.failed.count == 0 and queue.started.count == 0
    pipe = conn.pipeline(transaction=False)
    for j in jobs:
        pipe.hmget(queue.keys.job(j.id), "status", "deliveries")
    assert {(s, d) for s, d in pipe.execute()} == {(b"finished", b"1")}
    # Both workers got a share (thread pool: jobs run in the worker's own process).
    assert {pid for _, pid in records} == {w.pid for w in workers}


# -- leases ------------------------------------------------------------------------------------


def test_a_running_job_holds_a_lease(queue: Queue, conn, spawn_worker) -> None:
    name = f"lease-worker-{uuid.uuid4().hex[:6]}"
    job = queue.enqueue("jobs:sleep", 1.5)
    w = spawn_worker("--name", name)
    wait_until(lambda: fetch(conn, job).status is JobStatus.STARTED, 10, "the job to start")

    running = fetch(conn, job)
    assert running.execution_id
    assert running.worker == name
    assert running.deliveries == 1
    leases = QueueKeys("default").leases
    assert leases == queue.keys.leases
    score = conn.zscore(leases, job.id)
    secs, micros = conn.time()
    now_ms = secs * 1000 + micros // 1000
    assert score is not None and score > now_ms
    assert score <= now_ms + 15_000 + 1_000  # the default lease is 15 s
    assert queue.worker_job_ids(name) == [job.id]
    assert conn.sismember(queue.keys.claimed(name), job.id)
    assert job.id in queue.started
    [execution] = queue.started.executions()
    assert (execution.job_id, execution.execution_id, execution.worker) == (job.id, running.execution_id, name)

    wait_until(lambda: fetch(conn, job).status is JobStatus.FINISHED, 10, "the job to finish")
    # Ending the job gives the lease back.
    assert conn.zscore(leases, job.id) is None
    assert queue.worker_job_ids(name) == []
    assert fetch(conn, job).execution_id == running.execution_id
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0


@pytest.mark.slow
def test_lease_seconds_sets_the_lease_length(queue: Queue, conn, spawn_worker) -> None:
    job = queue.enqueue("jobs:sleep", 5)  # long enough to be seen running on a starved machine
    w = spawn_worker("--lease-seconds", "120")
    wait_until(lambda: fetch(conn, job).status is JobStatus.STARTED, 20, "the job to start")
    secs, micros = conn.time()
    now_ms = secs * 1000 + micros // 1000
    score = conn.zscore(queue.keys.leases, job.id)
    assert score is not None and now_ms + 100_000 < score <= now_ms + 121_000
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0


def test_leases_of_running_and_prefetched_jobs_are_renewed(queue: Queue, conn, redis_url, spawn_worker) -> None:
    """Jobs that outlive several lease periods keep their lease (no reaping, no second run)."""
    key = f"test:renew:{uuid.uuid4().hex}"
    jobs = [queue.enqueue("jobs:record", redis_url, key, f"t{i}", 1.2) for i in range(2)]
    w = spawn_worker("--lease-seconds", "0.6", "--concurrency", "1", "--prefetch", "1")
    wait_until(lambda: conn.llen(key) == 1, 10, "the first job to run")
    # The second job is claimed (prefetched) and waits in the worker under its own lease.
    assert fetch(conn, jobs[1]).status is JobStatus.PREFETCHED
    first = conn.zscore(queue.keys.leases, jobs[0].id)
    waiting = conn.zscore(queue.keys.prefetched, jobs[1].id)
    assert first is not None and waiting is not None
    wait_until(lambda: (conn.zscore(queue.keys.leases, jobs[0].id) or 0) > first + 300, 5, "a lease renewal")
    assert (conn.zscore(queue.keys.prefetched, jobs[1].id) or 0) > waiting
    wait_until(lambda: all(fetch(conn, j).status is JobStatus.FINISHED for j in jobs), 15, "both jobs to finish")

    assert sorted(t for t, _ in tokens(conn, key)) == ["t0", "t1"]  # each ran once
    assert [fetch(conn, j).deliveries for j in jobs] == [1, 1]
    assert queue.started.count == 0
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert "lost the lease" not in w.log()


# -- the execution ID guards every transition ------------------------------------------------


# Script arguments as the worker's flow passes them (TTL for jobs that set none of their own).
RESULT_TTL = 500
FAILURE_TTL = 7 * 24 * 3600


def claim_one(conn: redis.Redis, q: Queue, worker: str, lease_ms: int = 60_000, start_now: bool = True) -> tuple[str, str]:
    """Claim one job as a worker would: started at once, or prefetched (held, not running)."""
    [reply] = scripts.execute(
        conn, lambda p: calls.claim(p, q.keys, worker, 1, 1 if start_now else 0, lease_ms, f"{worker}-", 0, False,
                                    FAILURE_TTL))
    left, malformed, throttle, *jobs = reply  # claim.lua answers IDs left, the malformed, its throttle, the jobs
    assert jobs, "nothing was claimed"
    return jobs[0].decode(), jobs[1].decode()


def complete(conn: redis.Redis, q: Queue, worker: str, job_id: str, exec_id: str, result: bytes) -> int:
    [codes] = scripts.execute(conn, lambda p: calls.complete(p, q.keys, worker, RESULT_TTL, [(job_id, exec_id, result)]))
    return codes[0]


def fail(conn: redis.Redis, q: Queue, worker: str, job_id: str, exec_id: str, exc_type: str = "ValueError") -> int:
    [codes] = scripts.execute(conn, lambda p: calls.fail(p, q.keys, worker, "failed", FAILURE_TTL,
                                                         [(job_id, exec_id, exc_type, "boom", "Traceback ...")]))
    return codes[0]


def release(conn: redis.Redis, q: Queue, worker: str, job_id: str, exec_id: str) -> int:
    [codes] = scripts.execute(conn, lambda p: calls.release(p, q.keys, worker, [(job_id, exec_id)]))
    return codes[0]


def snapshot(conn: redis.Redis, q: Queue, job_id: str) -> tuple:
    k = q.keys
    return (
        conn.hgetall(k.job(job_id)),
        conn.zscore(k.leases, job_id),
        conn.zscore(k.finished, job_id),
        conn.zscore(k.failed, job_id),
        conn.lrange(k.ready, 0, -1),
        conn.ttl(k.job(job_id)),
    )


def test_claim_script_starts_the_job_under_a_new_execution_id(queue: Queue, conn) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    job_id, exec_id = claim_one(conn, queue, "w1")
    assert job_id == job.id
    started = fetch(conn, job)
    assert started.status is JobStatus.STARTED
    assert started.execution_id == exec_id and started.worker == "w1" and started.deliveries == 1
    assert queue.count == 0
    assert queue.worker_job_ids("w1") == [job.id]


def test_stale_execution_cannot_complete_a_started_job(queue: Queue, conn) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    job_id, exec_id = claim_one(conn, queue, "w1")
    before = snapshot(conn, queue, job_id)
    wrong = exec_id + "0"

    assert complete(conn, queue, "w0", job_id, wrong, b"99") == Code.STALE
    assert snapshot(conn, queue, job_id) == before
    assert fetch(conn, job).status is JobStatus.STARTED
    assert queue.worker_job_ids("w1") == [job_id]

    # The execution that holds the lease still can.
    assert complete(conn, queue, "w1", job_id, exec_id, b"3") == Code.OK
    done = fetch(conn, job)
    assert done.status is JobStatus.FINISHED and done.result == 3
    assert job_id in queue.finished and job_id not in queue.started


def test_stale_execution_cannot_fail_a_started_job(queue: Queue, conn) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    job_id, exec_id = claim_one(conn, queue, "w1")
    before = snapshot(conn, queue, job_id)

    assert fail(conn, queue, "w0", job_id, "not-" + exec_id) == Code.STALE
    assert snapshot(conn, queue, job_id) == before
    current = fetch(conn, job)
    assert current.status is JobStatus.STARTED and current.exc_info is None
    assert job_id not in queue.failed


def test_stale_execution_cannot_release_a_started_job(queue: Queue, conn) -> None:
    queue.enqueue("jobs:add", 1, 2)
    job_id, exec_id = claim_one(conn, queue, "w1")
    before = snapshot(conn, queue, job_id)
    assert release(conn, queue, "w0", job_id, exec_id + "0") == Code.STALE
    assert snapshot(conn, queue, job_id) == before
    assert queue.count == 0


def test_old_execution_cannot_overwrite_after_the_job_was_claimed_again(queue: Queue, conn) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    job_id, first = claim_one(conn, queue, "w1")
    assert release(conn, queue, "w1", job_id, first) == Code.OK
    assert queue.job_ids == [job_id]
    _, second = claim_one(conn, queue, "w2")
    assert second != first
    before = snapshot(conn, queue, job_id)

    assert complete(conn, queue, "w1", job_id, first, b"99") == Code.STALE
    assert fail(conn, queue, "w1", job_id, first) == Code.STALE
    assert snapshot(conn, queue, job_id) == before
    assert fetch(conn, job).worker == "w2"


def test_retried_complete_flush_is_a_harmless_duplicate(queue: Queue, conn) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    job_id, exec_id = claim_one(conn, queue, "w1")
    assert complete(conn, queue, "w1", job_id, exec_id, b"3") == Code.OK
    after_first = snapshot(conn, queue, job_id)

    assert complete(conn, queue, "w1", job_id, exec_id, b"4") == Code.DUPLICATE
    assert snapshot(conn, queue, job_id) == after_first
    # A fail for the same, already recorded execution changes nothing either.
    assert fail(conn, queue, "w1", job_id, exec_id) == Code.DUPLICATE
    assert snapshot(conn, queue, job_id) == after_first
    done = fetch(conn, job)
    assert done.status is JobStatus.FINISHED and done.result == 3 and done.exc_info is None


def test_retried_fail_flush_is_a_harmless_duplicate(queue: Queue, conn) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    job_id, exec_id = claim_one(conn, queue, "w1")
    assert fail(conn, queue, "w1", job_id, exec_id, "KeyError") == Code.OK
    after_first = snapshot(conn, queue, job_id)

    assert fail(conn, queue, "w1", job_id, exec_id, "OtherError") == Code.DUPLICATE
    assert complete(conn, queue, "w1", job_id, exec_id, b"3") == Code.DUPLICATE
    assert snapshot(conn, queue, job_id) == after_first
    failed = fetch(conn, job)
    assert failed.status is JobStatus.FAILED and failed.exc_info.type == "KeyError" and failed.result is None
    assert job_id in queue.failed


def test_completing_a_deleted_job_reports_missing(queue: Queue, conn) -> None:
    queue.enqueue("jobs:add", 1, 2)
    job_id, exec_id = claim_one(conn, queue, "w1")
    conn.delete(queue.keys.job(job_id))
    assert complete(conn, queue, "w1", job_id, exec_id, b"3") == Code.MISSING
    assert not conn.exists(queue.keys.job(job_id))
    assert job_id not in queue.finished


def test_stale_completion_by_a_real_worker_is_discarded(queue: Queue, conn, spawn_worker) -> None:
    """A worker whose execution was superseded must not record its outcome."""
    job = queue.enqueue("jobs:sleep", 1)
    w = spawn_worker("--concurrency", "1")
    wait_until(lambda: fetch(conn, job).status is JobStatus.STARTED, 10, "the job to start")
    # Someone else took the job over under a new execution ID (as a lease reaper would).
    conn.hset(queue.keys.job(job.id), mapping={"execution_id": "taken-over", "worker": "other"})
    w.wait_log("no longer holds the lease", timeout=10)
    current = fetch(conn, job)
    assert current.status is JobStatus.STARTED
    assert current.execution_id == "taken-over" and current.worker == "other"
    assert current.result is None
    assert job.id not in queue.finished
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert "1 stale completions" in w.log()
