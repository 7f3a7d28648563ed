"""Result and failure TTLs, registries and execution IDs, against real workers."""

from __future__ import annotations

import signal

import pytest
import redis

import conveyor
from conveyor import Job, JobStatus, Queue
from conveyor.keys import QueueKeys
from support import wait_until

# Queue-level structures that legitimately live without a TTL (see conveyor/keys.py).
QUEUE_LEVEL = ("ready", "wake", "leases", "finished", "failed", "canceled", "scheduled", "cron", "stats", "seq",
               "done", "deferred", "outbox")


def queue_keys(conn: redis.Redis, name: str = "default") -> list[str]:
    base = QueueKeys(name).base.replace("{", "\\{").replace("}", "\\}")
    return sorted(k.decode() for k in conn.scan_iter(match=base + ":*"))


# -- result_ttl ---------------------------------------------------------------------------


def test_default_result_ttl_is_500(queue: Queue, conn: redis.Redis, run_burst) -> None:
    assert conveyor.DEFAULT_RESULT_TTL == 500
    job = queue.enqueue("jobs:add", 2, 3)
    assert job.ttl == -1  # a queued job is kept until it runs
    run_burst()
    done = Job.fetch(job.id, conn)
    assert done.status is JobStatus.FINISHED and done.result == 5
    assert done.result_ttl in (None, 500)  # None: the job leaves it to the worker's policy
    assert 490 <= done.ttl <= 500
    assert done.ended_at is not None and done.started_at is not None
    assert done.enqueued_at <= done.started_at <= done.ended_at
    assert queue.finished.job_ids == [job.id]


def test_job_returning_none_is_kept_like_any_other(queue: Queue, conn: redis.Redis, run_burst) -> None:
    none_job = queue.enqueue("jobs:return_none")
    other = queue.enqueue("jobs:add", 1, 1)
    run_burst()
    done = Job.fetch(none_job.id, conn)
    assert conn.exists(done.key) == 1
    assert done.status is JobStatus.FINISHED
    assert done.result is None
    assert done.exc_info is None
    assert 490 <= done.ttl <= 500
    assert none_job.id in queue.finished.job_ids
    assert sorted(queue.finished.job_ids) == sorted([none_job.id, other.id])
    assert Job.fetch(other.id, conn).result == 2


@pytest.mark.parametrize("ser", ["json", "msgpack"])
def test_none_result_with_each_serializer(conn: redis.Redis, run_burst, ser: str) -> None:
    q = Queue("default", connection=conn, serializer=ser)
    job = q.enqueue("jobs:identity", None)
    run_burst()
    done = Job.fetch(job.id, conn)
    assert done.status is JobStatus.FINISHED and done.result is None
    assert job.id in q.finished.job_ids
    assert 490 <= done.ttl <= 500


def test_result_ttl_zero_deletes_job_on_completion(queue: Queue, conn: redis.Redis, run_burst) -> None:
    gone = queue.enqueue("jobs:add", 1, 2, result_ttl=0)
    kept = queue.enqueue("jobs:add", 3, 4)
    run_burst()
    assert conn.exists(queue.keys.job(gone.id)) == 0
    assert gone.ttl == -2
    with pytest.raises(conveyor.NoSuchJob):
        Job.fetch(gone.id, conn)
    assert gone.id not in queue.finished.job_ids
    assert queue.finished.job_ids == [kept.id]
    assert conn.zscore(queue.keys.finished, gone.id) is None


def test_queue_level_result_ttl_zero(conn: redis.Redis, run_burst) -> None:
    q = Queue("default", connection=conn, result_ttl=0)
    job = q.enqueue("jobs:add", 1, 2)
    run_burst()
    assert conn.exists(q.keys.job(job.id)) == 0
    assert q.finished.job_ids == []


def test_result_ttl_minus_one_keeps_job_forever(queue: Queue, conn: redis.Redis, run_burst) -> None:
    job = queue.enqueue("jobs:add", 1, 2, result_ttl=-1)
    run_burst()
    done = Job.fetch(job.id, conn)
    assert done.status is JobStatus.FINISHED and done.result == 3
    assert done.ttl == -1
    assert queue.finished.job_ids == [job.id]
    assert conn.zscore(queue.keys.finished, job.id) == float("inf")


def test_custom_result_ttl(queue: Queue, conn: redis.Redis, run_burst) -> None:
    job = queue.enqueue("jobs:add", 1, 2, result_ttl=30)
    run_burst()
    assert 20 <= Job.fetch(job.id, conn).ttl <= 30
    assert queue.finished.job_ids == [job.id]


def test_queue_default_result_ttl_applies(conn: redis.Redis, run_burst) -> None:
    q = Queue("default", connection=conn, result_ttl=42)
    job = q.enqueue("jobs:add", 1, 2)
    run_burst()
    done = Job.fetch(job.id, conn)
    assert done.result_ttl == 42
    assert 32 <= done.ttl <= 42


# -- failure_ttl ----------------------------------------------------------------------------


def test_default_failure_ttl_is_seven_days(queue: Queue, conn: redis.Redis, run_burst) -> None:
    assert conveyor.DEFAULT_FAILURE_TTL == 7 * 24 * 3600
    job = queue.enqueue("jobs:fail", "nope")
    run_burst()
    failed = Job.fetch(job.id, conn)
    assert failed.status is JobStatus.FAILED
    assert failed.exc_info.type == "ValueError" and failed.exc_info.message == "nope"
    assert failed.failure_ttl in (None, conveyor.DEFAULT_FAILURE_TTL)
    assert conveyor.DEFAULT_FAILURE_TTL - 10 <= failed.ttl <= conveyor.DEFAULT_FAILURE_TTL
    assert queue.failed.job_ids == [job.id]
    assert queue.finished.job_ids == []


def test_custom_failure_ttl(queue: Queue, conn: redis.Redis, run_burst) -> None:
    job = queue.enqueue("jobs:fail", failure_ttl=120, result_ttl=5)
    run_burst()
    failed = Job.fetch(job.id, conn)
    assert failed.status is JobStatus.FAILED
    assert 110 <= failed.ttl <= 120
    assert queue.failed.job_ids == [job.id]


def test_queue_default_failure_ttl_applies(conn: redis.Redis, run_burst) -> None:
    q = Queue("default", connection=conn, failure_ttl=77)
    job = q.enqueue("jobs:fail")
    run_burst()
    assert 67 <= Job.fetch(job.id, conn).ttl <= 77


def test_failure_ttl_zero_deletes_failed_job(queue: Queue, conn: redis.Redis, run_burst) -> None:
    gone = queue.enqueue("jobs:fail", failure_ttl=0)
    kept = queue.enqueue("jobs:fail")
    run_burst()
    assert conn.exists(queue.keys.job(gone.id)) == 0
    assert gone.id not in queue.failed.job_ids
    assert queue.failed.job_ids == [kept.id]


def test_failure_ttl_minus_one_keeps_failed_job_forever(queue: Queue, conn: redis.Redis, run_burst) -> None:
    job = queue.enqueue("jobs:fail", failure_ttl=-1)
    run_burst()
    assert Job.fetch(job.id, conn).ttl == -1
    assert queue.failed.job_ids == [job.id]


def test_result_ttl_does_not_apply_to_failures(queue: Queue, conn: redis.Redis, run_burst) -> None:
    job = queue.enqueue("jobs:fail", result_ttl=0)
    run_burst()
    failed = Job.fetch(job.id, conn)
    assert failed.status is JobStatus.FAILED
    assert failed.ttl > 500


# -- no key outlives its job --------------------------------------------------------------------


def test_every_job_key_expires_after_jobs_end(queue: Queue, conn: redis.Redis, run_burst) -> None:
    queue.enqueue_many([Queue.prepare_data("jobs:add", (i, i), result_ttl=500) for i in range(20)])
    queue.enqueue("jobs:return_none", result_ttl=500)
    queue.enqueue("jobs:fail", failure_ttl=600)
    queue.enqueue("jobs:async_add", 1, 2, result_ttl=500)
    run_burst()
    assert queue.count == 0
    keys = queue_keys(conn)
    base = QueueKeys("default").base
    assert any(k.startswith(QueueKeys("default").job_prefix) for k in keys)
    persistent = []
    for key in keys:
        ttl = conn.ttl(key)
        if ttl == -1:
            persistent.append(key)
            suffix = key[len(base) + 1 :]
            assert suffix in QUEUE_LEVEL, f"{key} has no TTL but is not a queue-level structure"
        else:
            assert ttl > 0 or ttl == -2, key
    assert not any(":job:" in k for k in persistent)
    assert not any(":claimed:" in k for k in keys), "a finished worker left its claimed set behind"


# -- registries hold plain job IDs ------------------------------------------------------------


def test_registries_hold_plain_job_ids(queue: Queue, conn: redis.Redis, run_burst) -> None:
    ok = [queue.enqueue("jobs:add", i, 1, job_id=f"ok-{i}") for i in range(3)]
    bad = [queue.enqueue("jobs:fail", job_id=f"bad-{i}") for i in range(2)]
    canceled = queue.enqueue("jobs:add", 0, 0, job_id="cx")
    canceled.cancel()
    run_burst()
    registries = {
        "finished": sorted(j.id for j in ok),
        "failed": sorted(j.id for j in bad),
        "canceled": ["cx"],
        "started": [],
    }
    for name, expected in registries.items():
        reg = queue.registry(name)
        ids = reg.job_ids
        assert all(":" not in i for i in ids), (name, ids)
        assert sorted(ids) == expected, name
        assert reg.count == len(expected) == len(reg)
        for i in expected:
            assert i in reg
    assert queue.started.job_ids == [] and queue.started.executions() == []


def test_started_registry_and_executions_while_running(queue: Queue, conn: redis.Redis, spawn_worker) -> None:
    queue.enqueue("jobs:sleep", 2, job_id="long-one")
    w = spawn_worker("-q", "default", "--name", "w-results", "--log-level", "debug")  # for its "started" line
    wait_until(lambda: queue.started.job_ids == ["long-one"], 15, "job to start")
    assert queue.count == 0
    execs = queue.started.executions()
    assert len(execs) == 1
    e = execs[0]
    assert e.job_id == "long-one"
    assert e.execution_id and e.execution_id != "long-one" and ":" not in e.execution_id
    assert e.worker == "w-results"
    running = Job.fetch("long-one", conn)
    assert running.status is JobStatus.STARTED
    assert running.execution_id == e.execution_id
    assert running.worker == "w-results"
    assert running.deliveries == 1
    now = conn.time()[0]
    assert now < e.lease_deadline <= now + 16  # default lease 15 s
    assert queue.worker_job_ids("w-results") == ["long-one"]
    assert queue.worker_job_ids("someone-else") == []
    # Redis marks it started before the claim's reply reaches the worker; a stop before that
    # hands it back un-run (a stop starts nothing new): wait until the worker runs it.
    wait_until(lambda: "job long-one started" in w.log(), 15, "the worker to run the job")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    done = Job.fetch("long-one", conn)
    assert done.status is JobStatus.FINISHED and done.result == 2
    assert done.execution_id == e.execution_id
    assert queue.started.job_ids == []
    assert queue.worker_job_ids("w-results") == []
    assert queue.finished.job_ids == ["long-one"]


def test_each_execution_gets_its_own_id(queue: Queue, conn: redis.Redis, run_burst) -> None:
    jobs_ = [queue.enqueue("jobs:add", i, i) for i in range(5)]
    for j in jobs_:
        assert j.execution_id is None  # not claimed yet
    run_burst()
    done = [Job.fetch(j.id, conn) for j in jobs_]
    exec_ids = [d.execution_id for d in done]
    assert all(exec_ids)
    assert len(set(exec_ids)) == len(exec_ids)
    for original, d in zip(jobs_, done):
        assert d.execution_id != d.id
        assert d.id == original.id and ":" not in d.id  # the execution ID is never glued onto the job ID
    assert sorted(queue.finished.job_ids) == sorted(j.id for j in jobs_)


def test_execution_ids_differ_across_workers_and_queues(conn: redis.Redis, run_burst) -> None:
    q = Queue("default", connection=conn)
    first = q.enqueue("jobs:add", 1, 1)
    run_burst()
    second = q.enqueue("jobs:add", 2, 2)
    run_burst()
    a, b = Job.fetch(first.id, conn), Job.fetch(second.id, conn)
    assert a.execution_id and b.execution_id and a.execution_id != b.execution_id
