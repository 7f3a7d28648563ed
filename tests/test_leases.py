"""Leases: recovery from SIGKILLed workers, poison pills, renewal, stale executions,
what a job knows about itself, and unique jobs."""

from __future__ import annotations

import signal
import time

import pytest
import redis

from conveyor import InvalidArgument, JobStatus, Queue, Retry, calls, current_job, scripts
from conveyor.keys import QueueKeys
from support import fetch, runs, wait_status, wait_until, worker_id

K = QueueKeys("default")


def stat(conn: redis.Redis, name: str) -> int:
    return int(conn.hget(K.stats, name) or 0)


def started_by(conn: redis.Redis, job_id: str, worker: str) -> bool:
    job = fetch(conn, job_id)
    return job.status is JobStatus.STARTED and job.worker == worker


# -- a worker SIGKILLed mid-job ------------------------------------------------------------------


def test_sigkilled_workers_jobs_are_recovered_by_another_worker(queue: Queue, conn, spawn_worker) -> None:
    """Recovered jobs are suspects (one of them may have killed the worker): each runs apart,
    one per worker at a time, while ordinary jobs keep running beside them."""
    lease = 1.5
    flags = ("--lease-seconds", str(lease), "--concurrency", "4")
    jobs = [queue.enqueue("jobs:sleep", 1) for _ in range(4)]
    a = spawn_worker(*flags)
    a_id = worker_id(a)
    wait_until(lambda: all(started_by(conn, j.id, a_id) for j in jobs), 10, "all 4 jobs to start on worker A")
    first_exec = {j.id: fetch(conn, j.id).execution_id for j in jobs}

    a.signal(signal.SIGKILL)
    killed_at = time.time()
    a.wait(5)
    ordinary = [queue.enqueue("jobs:sleep", 0.5) for _ in range(3)]
    b = spawn_worker(*flags)
    b_id = worker_id(b)
    # Recovery can begin once the lease has run out and B is up (B's start-up is the
    # machine's speed, not Conveyor's): measured from the later of the two.
    can_recover = max(killed_at + lease, time.time())

    recovery = {}
    for j in jobs:
        done = wait_status(conn, j.id, JobStatus.FINISHED, JobStatus.FAILED, timeout=20)
        assert done.status is JobStatus.FINISHED and done.result == 1
        recovery[j.id] = (done.started_at - killed_at, done.ended_at - killed_at)
        assert done.worker == b_id
        assert done.orphaned == 1
        assert done.deliveries == 2
        assert not done.suspect  # it ran to its end: no longer suspected of anything
        assert done.execution_id != first_exec[j.id]
        lost, ok = done.attempts
        assert lost.exc_type == "WorkerLost" and lost.execution_id == first_exec[j.id]
        assert "lease expired" in lost.exc_message
        assert ok.exc_type is None and ok.execution_id == done.execution_id
    spans = sorted(recovery.values())
    print("\nrecovery after SIGKILL (started, ended - kill time):",
          ", ".join(f"{s:.2f}-{e:.2f}s" for s, e in spans), f"(lease {lease}s)")
    assert 0 < spans[0][0] and killed_at + spans[0][0] - can_recover <= 5, spans
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 0.01, f"two suspects ran at once on one worker: {spans}"
    # Ordinary jobs did not wait for the suspects.
    for j in ordinary:
        done = wait_status(conn, j.id, JobStatus.FINISHED, timeout=10)
        assert done.started_at - killed_at < spans[-1][0], (done.started_at - killed_at, spans)
    assert stat(conn, "orphans_recovered") == 4
    assert queue.started.job_ids == [] and queue.worker_job_ids(a_id) == []
    assert b.log().count("recovered from an expired lease") == 4


def test_poison_pill_is_abandoned_after_max_deliveries(queue: Queue, conn, spawn_worker) -> None:
    flags = ("--lease-seconds", "1")
    job = queue.enqueue("jobs:sleep", 30, max_deliveries=2)
    for n in (1, 2):
        w = spawn_worker(*flags)
        wid = worker_id(w)
        wait_until(lambda: started_by(conn, job.id, wid), 10, f"delivery {n} to start")
        assert fetch(conn, job.id).orphaned == n - 1
        w.signal(signal.SIGKILL)
        w.wait(5)

    reaper = spawn_worker(*flags)
    done = wait_status(conn, job.id, JobStatus.FAILED, timeout=10)
    assert done.exc_info.type == "Abandoned"
    assert "abandoned 2 times" in done.exc_info.message
    assert done.orphaned == 2
    assert [a.exc_type for a in done.attempts] == ["WorkerLost", "WorkerLost"]
    assert queue.failed.job_ids == [job.id]
    assert queue.count == 0 and queue.started.job_ids == []
    assert stat(conn, "abandoned") == 1
    reaper.wait_log("abandoned")


def test_worker_max_deliveries_applies_to_jobs_without_their_own(queue: Queue, conn, spawn_worker) -> None:
    job = queue.enqueue("jobs:sleep", 30)
    w = spawn_worker("--lease-seconds", "1", "--max-deliveries", "1")
    wid = worker_id(w)
    wait_until(lambda: started_by(conn, job.id, wid), 10, "the job to start")
    w.signal(signal.SIGKILL)
    w.wait(5)
    spawn_worker("--lease-seconds", "1", "--max-deliveries", "1")
    done = wait_status(conn, job.id, JobStatus.FAILED, timeout=10)
    assert done.exc_info.type == "Abandoned" and "abandoned 1 times" in done.exc_info.message


# -- renewal and stale executions ------------------------------------------------------------------


def test_lease_is_renewed_while_a_long_job_runs(queue: Queue, conn, redis_url, spawn_worker) -> None:
    lease = 0.6
    a = spawn_worker("--lease-seconds", str(lease))
    a_id = worker_id(a)
    key = "t:runs"
    job = queue.enqueue("jobs_reliability:count_and_sleep", redis_url, key, 3 * lease)
    wait_until(lambda: started_by(conn, job.id, a_id), 10, "the job to start")
    # Another worker whose reaper runs every 0.2 s: it would steal an expired lease.
    spawn_worker("--lease-seconds", str(lease))
    started_ms = fetch(conn, job.id).started_at * 1000
    # The deadline moves forward past the first lease: renewal is happening.
    wait_until(lambda: (conn.zscore(K.leases, job.id) or 0) > started_ms + lease * 1000 + 300, 5,
               "the lease to be renewed")

    done = wait_status(conn, job.id, JobStatus.FINISHED, JobStatus.FAILED)
    assert done.status is JobStatus.FINISHED
    assert done.orphaned == 0 and done.deliveries == 1 and done.attempts == []
    assert runs(conn, key) == 1
    assert done.worker == a_id
    assert stat(conn, "orphans_recovered") == 0
    assert "lost the lease" not in a.log()


def test_stale_execution_cannot_overwrite_the_new_one(queue: Queue, conn, spawn_worker) -> None:
    # A: one slot, so it cannot take the job back itself while it still runs it.
    a = spawn_worker("--lease-seconds", "30", "--concurrency", "1")
    a_id = worker_id(a)
    # Long enough that A still runs it once B is up (B's start-up is the machine's speed).
    job = queue.enqueue("jobs_reliability:sleep_pid", 8)
    wait_until(lambda: started_by(conn, job.id, a_id), 10, "the job to start on A")
    a_exec = fetch(conn, job.id).execution_id
    b = spawn_worker("--lease-seconds", "30")
    b_id = worker_id(b)

    # A's lease "expires" while A is healthy and busy; a reaper hands the job back.
    _reap_now(conn, job.id)

    # B's run may be over by the time a starved test looks: started or finished on B.
    wait_until(lambda: (j := fetch(conn, job.id)).worker == b_id
               and j.status in (JobStatus.STARTED, JobStatus.FINISHED), 20, "B to take the job")
    b_exec = fetch(conn, job.id).execution_id
    assert b_exec != a_exec

    a.wait_log("no longer holds the lease", timeout=20)  # A finished first; its outcome was refused
    done = wait_status(conn, job.id, JobStatus.FINISHED, JobStatus.FAILED, timeout=30)
    assert done.status is JobStatus.FINISHED
    assert done.result == b.pid != a.pid
    assert done.worker == b_id and done.execution_id == b_exec
    assert done.orphaned == 1
    assert [(x.exc_type, x.execution_id) for x in done.attempts] == [("WorkerLost", a_exec), (None, b_exec)]
    assert f"job {job.id}: execution {a_exec} no longer holds the lease" in a.log()
    assert f"job {job.id} finished" not in a.log()


# -- current_job() --------------------------------------------------------------------------------


def test_current_job_exposes_id_execution_and_attempt(queue: Queue, conn, redis_url, spawn_worker) -> None:
    assert current_job() is None  # outside any job
    spawn_worker("--lease-seconds", "0.6")
    first = queue.enqueue("jobs_reliability:context_info", redis_url, "t:a")
    retried = queue.enqueue("jobs_reliability:context_info", redis_url, "t:b", 2, retry=Retry(max=2, intervals=[0]))
    aio = queue.enqueue("jobs_reliability:async_context_info")

    one = wait_status(conn, first.id, JobStatus.FINISHED)
    assert one.result == {"id": first.id, "execution_id": one.execution_id, "queue": "default", "attempt": 1}
    three = wait_status(conn, retried.id, JobStatus.FINISHED)
    assert three.result == {"id": retried.id, "execution_id": three.execution_id, "queue": "default", "attempt": 3}
    assert three.execution_id != three.attempts[0].execution_id
    a = wait_status(conn, aio.id, JobStatus.FINISHED)
    assert a.result == {"id": aio.id, "execution_id": a.execution_id, "queue": "default", "attempt": 1}


def test_current_job_in_the_process_pool(queue: Queue, conn, redis_url, spawn_worker) -> None:
    spawn_worker("--pool", "process", "--concurrency", "1")
    job = queue.enqueue("jobs_reliability:context_info", redis_url, "t:a", 1, retry=Retry(max=1, intervals=[0]))
    done = wait_status(conn, job.id, JobStatus.FINISHED, timeout=15)
    assert done.result == {"id": job.id, "execution_id": done.execution_id, "queue": "default", "attempt": 2}


# -- unique jobs ----------------------------------------------------------------------------------


def test_unique_key_returns_the_live_job_and_frees_up_when_it_ends(queue: Queue, conn, redis_url, spawn_worker) -> None:
    key = "t:runs"
    first = queue.enqueue("jobs_reliability:count_and_sleep", redis_url, key, 1.0, unique_key="report-42")
    dup = queue.enqueue("jobs_reliability:count_and_sleep", redis_url, key, 1.0, unique_key="report-42")
    assert dup.id == first.id and dup.status is JobStatus.QUEUED
    assert queue.job_ids == [first.id]
    assert stat(conn, "duplicates_suppressed") == 1
    other = queue.enqueue("jobs_reliability:count", redis_url, "t:other", unique_key="report-43")
    assert other.id != first.id

    w = spawn_worker()
    wid = worker_id(w)
    wait_until(lambda: started_by(conn, first.id, wid), 10, "the unique job to start")
    while_started = queue.enqueue("jobs_reliability:count_and_sleep", redis_url, key, 1.0, unique_key="report-42")
    assert while_started.id == first.id and while_started.status is JobStatus.STARTED
    assert stat(conn, "duplicates_suppressed") == 2

    wait_status(conn, first.id, JobStatus.FINISHED)
    after = queue.enqueue("jobs_reliability:count_and_sleep", redis_url, key, 0, unique_key="report-42")
    assert after.id != first.id
    assert stat(conn, "duplicates_suppressed") == 2
    wait_status(conn, after.id, JobStatus.FINISHED)
    assert runs(conn, key) == 2  # the first and the one after it ended; no duplicate ran


def test_unique_key_frees_up_after_failure_and_holds_through_a_scheduled_retry(
    queue: Queue, conn, redis_url, spawn_worker
) -> None:
    failing = queue.enqueue("jobs_reliability:fail_times", redis_url, "t:f", 9, unique_key="u-fail")
    retrying = queue.enqueue("jobs_reliability:fail_times", redis_url, "t:r", 9, unique_key="u-retry",
                             retry=Retry(max=1, intervals=[3600]))
    delayed = queue.enqueue_in(3600, "jobs:add", 1, 2, unique_key="u-later")
    spawn_worker()
    wait_status(conn, failing.id, JobStatus.FAILED)
    wait_status(conn, retrying.id, JobStatus.SCHEDULED)

    assert queue.enqueue("jobs:add", 1, 2, unique_key="u-fail").id != failing.id  # failed: key free
    assert queue.enqueue("jobs:add", 1, 2, unique_key="u-retry").id == retrying.id  # waiting to retry: held
    assert queue.enqueue_in(10, "jobs:add", 1, 2, unique_key="u-later").id == delayed.id  # scheduled: held
    assert stat(conn, "duplicates_suppressed") == 2


def test_unique_key_expires_with_unique_ttl(queue: Queue, conn) -> None:
    first = queue.enqueue("jobs:add", 1, 2, unique_key="short", unique_ttl=1)
    lock_ttl = conn.ttl(K.unique("short"))
    assert 0 < lock_ttl <= 1
    assert queue.enqueue("jobs:add", 1, 2, unique_key="short").id == first.id
    wait_until(lambda: not conn.exists(K.unique("short")), 3, "the unique key to expire")
    second = queue.enqueue("jobs:add", 1, 2, unique_key="short")
    assert second.id != first.id
    assert queue.job_ids == [first.id, second.id]


@pytest.mark.parametrize("bad", [{"unique_key": ""}, {"unique_key": "x" * 201}, {"unique_key": 5},
                                 {"unique_ttl": 10}, {"unique_key": "k", "unique_ttl": 0},
                                 {"unique_key": "k", "unique_ttl": -1}, {"max_deliveries": 0},
                                 {"max_deliveries": True}])
def test_bad_unique_and_delivery_options_are_refused(queue: Queue, bad) -> None:
    with pytest.raises(InvalidArgument):
        queue.enqueue("jobs:add", 1, 2, **bad)
    assert queue.count == 0


def test_requeued_job_holds_its_unique_key_again(queue: Queue, conn, redis_url, spawn_worker) -> None:
    w = spawn_worker()
    job = queue.enqueue("jobs_reliability:fail_times", redis_url, "t:runs", 1, unique_key="nightly")
    wait_status(conn, job.id, JobStatus.FAILED)
    w.stop()  # keep the requeued job waiting in the queue
    # Failed: the key is free, as documented.
    assert not conn.exists(K.unique("nightly"))
    job.requeue()
    assert fetch(conn, job.id).status is JobStatus.QUEUED
    again = queue.enqueue("jobs_reliability:fail_times", redis_url, "t:runs", 1, unique_key="nightly")
    assert again.id == job.id
    assert queue.job_ids == [job.id]


# -- an execution whose lease is lost is told so ---------------------------------------------


def _reap_now(conn: redis.Redis, job_id: str) -> None:
    """Expire the job's lease and run the reaper, as another worker's housekeeping would.

    The worker may renew the lease between the two steps; then it is expired again. Another
    worker's housekeeping may reap it first: then it is taken too (it left this execution).
    """
    execution = fetch(conn, job_id).execution_id

    def reaped() -> bool:
        now = fetch(conn, job_id)
        if now.status is not JobStatus.STARTED or now.execution_id != execution:
            return True
        conn.zadd(K.leases, {job_id: 0})
        [(requeued, abandoned)] = scripts.execute(conn, lambda p: calls.reap(p, K, 3, 3600))
        assert [r.decode() for r in requeued] in ([], [job_id]) and abandoned == []
        return bool(requeued)

    wait_until(reaped, 5, f"the reaper to take job {job_id}")


@pytest.mark.parametrize("func, mark", [("jobs:until_lease_lost", "lost"), ("jobs:async_until_cancelled", "cancelled")])
def test_lost_lease_is_signalled_and_its_outcome_rejected(conn, queue, redis_url, spawn_worker, func, mark) -> None:
    """Sync jobs see current_job().lease_lost; async jobs are cancelled; the late outcome is discarded."""
    job = queue.enqueue(func, redis_url, "lost-mark")
    w = spawn_worker("--lease-seconds", "2", "--concurrency", "1")
    wait_status(conn, job.id, JobStatus.STARTED)
    first_exec = fetch(conn, job.id).execution_id
    _reap_now(conn, job.id)
    wait_until(lambda: conn.get("lost-mark") == mark.encode(), 10, f"the job to be told ({mark})")
    w.wait_log("lost the lease")
    done = wait_status(conn, job.id, JobStatus.FINISHED)
    assert done.result == "again" and done.execution_id != first_exec  # re-run, and only that run counted
    assert done.orphaned == 1
    if mark == "lost":  # the sync run came back late: its outcome was rejected, not recorded
        w.wait_log("no longer holds the lease")
