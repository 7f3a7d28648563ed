"""Corrupted data must fail the one bad job, never the others: bad JSON, unknown statuses,
non-numeric fields, keys of the wrong type, corrupted while queued or while running.

Truth comes from the jobs themselves: each execution appends a line to a file outside Redis.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import redis

from conveyor import JobStatus, Queue, calls, scripts
from conveyor.keys import QueueKeys
from jobs_faults import executions
from support import fetch, wait_status, wait_until

K = QueueKeys("default")


def good_jobs(queue: Queue, path: Path, n: int, prefix: str = "good") -> list[str]:
    jobs = queue.enqueue_many([Queue.prepare_data("jobs_faults:record", (str(path), f"{prefix}{i}"))
                               for i in range(n)])
    return [j.id for j in jobs]


def assert_ran_once(conn: redis.Redis, path: Path, ids: list[str], prefix: str = "good") -> None:
    ran = executions(path)
    assert {tag: n for tag, n in ran.items() if tag.startswith(prefix)} == {f"{prefix}{i}": 1 for i in range(len(ids))}
    for job_id in ids:
        assert fetch(conn, job_id).status is JobStatus.FINISHED


def assert_malformed(conn: redis.Redis, queue: Queue, job_id: str, reason: str) -> None:
    job = fetch(conn, job_id)
    assert job.status is JobStatus.FAILED, job
    assert job.exc_info is not None and job.exc_info.type == "MalformedJob"
    assert reason in job.exc_info.message, job.exc_info.message
    assert job_id in queue.failed.job_ids


@pytest.mark.parametrize("field, value, reason", [
    ("attempts", "{not json", "attempts is not valid JSON"),
    ("status", "bogus", "status 'bogus' is unknown"),
    ("result_ttl", "soon", "result_ttl is not an integer >= -1"),
    ("failure_ttl", "1.5", "failure_ttl is not an integer >= -1"),
    ("timeout", "-3", "timeout is not a number > 0"),
    ("max_deliveries", "zero", "max_deliveries is not an integer >= 1"),
    ("deliveries", "many", "deliveries is not an integer >= 0"),
    ("orphaned", "x", "orphaned is not an integer >= 0"),
])
def test_one_malformed_field_fails_only_that_job(queue: Queue, conn, tmp_path, run_burst, field, value, reason) -> None:
    path = tmp_path / "runs"
    first = good_jobs(queue, path, 15, "a")
    bad = queue.enqueue("jobs_faults:record", str(path), "bad")
    rest = good_jobs(queue, path, 15, "b")
    conn.hset(K.job(bad.id), field, value)

    w = run_burst("--concurrency", "4")
    assert_malformed(conn, queue, bad.id, reason)
    assert executions(path)["bad"] == 0, "a malformed job never runs"
    assert_ran_once(conn, path, first, "a")
    assert_ran_once(conn, path, rest, "b")
    if field != "status":  # the status now says failed; the message names the bad one
        assert conn.hget(K.job(bad.id), field) == value.encode(), "the bad field is kept for inspection"
    assert f"job {bad.id} failed: MalformedJob: {reason}" in w.log()
    assert "Traceback" not in w.log()


def test_a_job_key_of_the_wrong_type_is_kept_aside_and_the_rest_run(queue: Queue, conn, tmp_path, run_burst) -> None:
    path = tmp_path / "runs"
    ids = good_jobs(queue, path, 15)
    conn.rpush(K.ready, "intruder")
    conn.set(K.job("intruder"), "not a hash")
    ids += good_jobs(queue, path, 5, "late")

    run_burst("--concurrency", "3")
    assert_ran_once(conn, path, ids[:15])
    assert_ran_once(conn, path, ids[15:], "late")
    assert_malformed(conn, queue, "intruder", "the job key held a string, not a hash")
    assert conn.get(K.corrupt("intruder")) == b"not a hash", "the corrupt value is kept"
    assert conn.ttl(K.corrupt("intruder")) > 0
    assert queue.count == 0 and queue.started.count == 0 and queue.prefetched.count == 0


def test_a_stale_or_missing_entry_is_dropped_and_a_status_without_hash_is_not_claimed(queue: Queue, conn, tmp_path,
                                                                                        run_burst) -> None:
    path = tmp_path / "runs"
    ids = good_jobs(queue, path, 10)
    done = queue.enqueue("jobs_faults:record", str(path), "done")
    run_burst()
    conn.rpush(K.ready, done.id, "ghost")  # an ended job listed again, and an ID with no hash
    more = good_jobs(queue, path, 5, "more")
    run_burst()
    assert executions(path)["done"] == 1
    assert fetch(conn, done.id).status is JobStatus.FINISHED
    assert_ran_once(conn, path, more, "more")
    assert_ran_once(conn, path, ids)
    assert queue.count == 0


def test_attempts_corrupted_while_the_job_runs_are_kept_aside(queue: Queue, conn, tmp_path, spawn_worker) -> None:
    path = tmp_path / "runs"
    job = queue.enqueue("jobs_faults:record", str(path), "slow", 1.0, retry=None)
    others = good_jobs(queue, path, 10)
    w = spawn_worker("--concurrency", "2")
    wait_until(lambda: executions(path)["slow"] == 1, 10, "the slow job to start")
    conn.hset(K.job(job.id), "attempts", "][")
    conn.hset(K.job(job.id), "orphaned", "1")  # so the success appends to the history
    done = wait_status(conn, job.id, JobStatus.FINISHED, timeout=10)
    assert done.result == "slow"
    assert conn.hget(K.job(job.id), "attempts_unreadable") == b"]["
    assert [a.exc_type for a in done.attempts] == [None]
    for job_id in others:
        wait_status(conn, job_id, JobStatus.FINISHED)
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0


def test_a_queue_key_of_the_wrong_type_is_refused_before_anything_changes(queue: Queue, conn, tmp_path,
                                                                          spawn_worker) -> None:
    """A finished registry that became a string: outcomes are refused and kept, never lost, and
    recorded as soon as the key is repaired; the other queue carries on meanwhile."""
    path = tmp_path / "runs"
    other = Queue("other", connection=conn)
    conn.set(K.finished, "oops")
    ids = good_jobs(queue, path, 5)
    w = spawn_worker("-q", "default,other", "--concurrency", "2")
    wait_until(lambda: sum(executions(path).values()) == 5, 10, "the jobs to run")
    w.wait_log("Redis refused the worker's outcomes of queue default")
    more = [other.enqueue("jobs_faults:record", str(path), f"o{i}") for i in range(3)]
    wait_until(lambda: all(fetch(conn, j).status is JobStatus.FINISHED for j in more), 10, "queue other to run")
    assert all(fetch(conn, i).status is JobStatus.STARTED for i in ids), "refused outcomes are not recorded yet"
    with pytest.raises(Exception, match="holds a string, not a zset"):
        scripts.execute(conn, lambda p: calls.complete(p, K, "w", 500, [(ids[0], "x", b"1")]))

    conn.delete(K.finished)  # repaired (conveyor doctor --fix renames it aside)
    for job_id in ids:
        wait_status(conn, job_id, JobStatus.FINISHED, timeout=10)
    assert executions(path) == {f"good{i}": 1 for i in range(5)} | {f"o{i}": 1 for i in range(3)}
    w.wait_log("Redis accepts the worker's outcomes of queue default again")
    assert w.log().count("Redis refused the worker's outcomes") == 1, "one line per refusal, not per attempt"
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
