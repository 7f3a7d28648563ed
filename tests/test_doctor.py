"""`conveyor doctor`: each test corrupts a real Redis the way a fault would, checks that doctor
finds exactly that (kind and count), that --fix repairs it, and that a second run is clean."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from typing import Any

import pytest
import redis

from conveyor import JobStatus, Queue, keys
from conveyor.doctor_redis import run
from support import cli, fetch, wait_status, wait_until, worker_id

WEEK = 7 * 24 * 3600


def doctor(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(redis_url, "doctor", *args, timeout=60)


def counts(report: dict[str, Any], queue: str = "default") -> dict[str, int]:
    return {kind: v["count"] for kind, v in report["queues"][queue]["findings"].items()}


def examples(report: dict[str, Any], kind: str, queue: str = "default") -> list[str]:
    return report["queues"][queue]["findings"][kind]["examples"]


def fix_and_recheck(conn: redis.Redis, expected_fixed: dict[str, int], queue: str = "default") -> None:
    """--fix repairs exactly what was found, and a second, read-only run finds nothing."""
    fixed = run(conn, queue, fix=True)
    assert {k: v["count"] for k, v in fixed["fixed"][queue].items()} == expected_fixed
    assert fixed["ok"], fixed["queues"]
    again = run(conn, queue)
    assert again["ok"] and counts(again, queue) == {}, again


def ready(conn: redis.Redis, q: Queue) -> list[str]:
    return [i.decode() for i in conn.lrange(q.keys.ready, 0, -1)]


def keyspace(conn: redis.Redis) -> dict[str, Any]:
    """Every key's type and content (and whether it has a TTL), to compare before and after."""
    out: dict[str, Any] = {}
    for raw in conn.scan_iter(count=1000):
        kind = conn.type(raw).decode()
        read = {"list": lambda k: conn.lrange(k, 0, -1), "zset": lambda k: conn.zrange(k, 0, -1, withscores=True),
                "set": conn.smembers, "hash": conn.hgetall, "string": conn.get}[kind]
        out[raw.decode()] = (kind, read(raw), conn.ttl(raw) > 0)
    return out


# -- clean queues -------------------------------------------------------------------------------


def test_clean_queue_with_queued_scheduled_finished_failed_and_canceled_jobs_reports_nothing(
        queue: Queue, conn, redis_url, run_burst) -> None:
    done = [queue.enqueue("jobs:add", i, i) for i in range(3)]
    bad = queue.enqueue("jobs:fail", "on purpose")
    run_burst()
    assert fetch(conn, done[0]).status is JobStatus.FINISHED and fetch(conn, bad).status is JobStatus.FAILED
    queue.enqueue("jobs:add", 5, 5)
    later = queue.enqueue_in(3600, "jobs:add", 6, 6)
    queue.enqueue("jobs:add", 7, 7).cancel()
    queue.enqueue("jobs:add", 8, 8, depends_on=[later])  # deferred, with its pending and dependents sets
    before = keyspace(conn)

    report = run(conn, "default")
    assert report == {"queues": {"default": {"findings": {}, "checked_jobs": 8}}, "warnings": [], "ok": True}
    res = doctor(redis_url)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "no problems" in res.stdout.splitlines()[-1]

    fixed = run(conn, None, fix=True)  # every queue: there is one
    assert fixed["ok"] and fixed["fixed"] == {"default": {}}
    assert keyspace(conn) == before


def test_fix_never_touches_a_consistent_job(queue: Queue, conn) -> None:
    jobs = [queue.enqueue("jobs:add", i, i) for i in range(5)]
    later = queue.enqueue_in(3600, "jobs:add", 0, 0)
    sound = {j: conn.hgetall(queue.keys.job(j.id)) for j in [*jobs, later]}
    order = ready(conn, queue)
    conn.hset(queue.keys.job(jobs[2].id), "timeout", "soon")

    assert counts(run(conn, "default")) == {"malformed_job": 1}
    fix_and_recheck(conn, {"malformed_job": 1})

    for job, raw in sound.items():
        if job is not jobs[2]:
            assert conn.hgetall(queue.keys.job(job.id)) == raw
    assert ready(conn, queue) == [i for i in order if i != jobs[2].id]
    assert conn.zscore(queue.keys.scheduled, later.id) is not None


# -- malformed jobs -------------------------------------------------------------------------------


@pytest.mark.parametrize("field, value, message", [
    ("attempts", "{not json", "attempts is not valid JSON"),
    ("status", "bogus", "status 'bogus' is unknown"),
    ("timeout", "abc", "timeout is not a number > 0"),
    ("result_ttl", "1.5", "result_ttl is not an integer >= -1"),
    ("deliveries", "", "deliveries is not an integer >= 0"),
    ("due_at", "tomorrow", "due_at is not a number"),
])
def test_malformed_job_is_failed_with_a_reason_naming_the_field(queue: Queue, conn, field, value, message) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    other = queue.enqueue("jobs:add", 3, 4)
    conn.hset(job.key, field, value)

    report = run(conn, "default")
    assert counts(report) == {"malformed_job": 1}
    assert examples(report, "malformed_job") == [job.id]
    assert message in report["queues"]["default"]["findings"]["malformed_job"]["details"][0]

    before = time.time()
    fix_and_recheck(conn, {"malformed_job": 1})
    raw = {k.decode(): v.decode() for k, v in conn.hgetall(job.key).items()}
    assert raw["status"] == "failed" and raw["exc_type"] == "MalformedJob" and raw["exc_message"] == message
    if field != "status":
        assert raw[field] == value  # left as it was, for inspection
    assert float(raw["ended_at"]) >= before - 1
    assert WEEK - 60 < conn.ttl(job.key) <= WEEK
    assert conn.zscore(queue.keys.failed, job.id) == pytest.approx(time.time() + WEEK, abs=60)
    assert ready(conn, queue) == [other.id]


def test_job_key_of_the_wrong_type_is_renamed_aside_and_failed(queue: Queue, conn) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    conn.delete(job.key)
    conn.set(job.key, "garbage")

    report = run(conn, "default")
    assert counts(report) == {"malformed_job": 1}
    assert "the job key holds a string, not a hash" in report["queues"]["default"]["findings"]["malformed_job"]["details"][0]
    fix_and_recheck(conn, {"malformed_job": 1})

    assert conn.get(queue.keys.corrupt(job.id)) == b"garbage"
    assert conn.ttl(queue.keys.corrupt(job.id)) > 0
    failed = fetch(conn, job.id)
    assert failed.status is JobStatus.FAILED and failed.exc_info.type == "MalformedJob"
    assert failed.exc_info.message == "the job key holds a string, not a hash"
    assert ready(conn, queue) == [] and job.id in queue.failed.job_ids


def test_malformed_job_a_worker_holds_is_reported_but_left_to_it(queue: Queue, conn) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    conn.lrem(queue.keys.ready, 0, job.id)
    conn.hset(job.key, mapping={"status": "started", "worker": "w1", "attempts": "[oops"})
    conn.zadd(queue.keys.leases, {job.id: (time.time() + 60) * 1000})
    conn.sadd(queue.keys.claimed("w1"), job.id)

    assert counts(run(conn, "default")) == {"malformed_job": 1}
    report = run(conn, "default", fix=True)
    assert report["fixed"]["default"] == {} and counts(report) == {"malformed_job": 1} and not report["ok"]
    assert conn.hget(job.key, "status") == b"started" and conn.zscore(queue.keys.leases, job.id)


# -- queue keys of the wrong type -----------------------------------------------------------------


def test_cli_finds_a_queue_key_of_the_wrong_type_and_renames_it_aside(queue: Queue, conn, redis_url) -> None:
    done = queue.enqueue("jobs:add", 1, 1)
    conn.delete(queue.keys.ready)  # nothing queued: only the key is wrong
    conn.hset(done.key, "status", "canceled")
    conn.zadd(queue.keys.canceled, {done.id: "+inf"})
    conn.set(queue.keys.ready, "x")

    res = doctor(redis_url, "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert counts(report) == {"wrong_type_key": 1}
    assert examples(report, "wrong_type_key") == [queue.keys.ready]
    human = doctor(redis_url)
    assert human.returncode == 1
    line = next(line for line in human.stdout.splitlines() if "wrong_type_key" in line)
    assert " 1 " in line and "a string, not a list" in line
    assert "1 problem" in human.stdout.splitlines()[-1]

    fixed = doctor(redis_url, "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "fixed 1 wrong_type_key" in fixed.stdout
    assert conn.get(queue.keys.corrupt("ready")) == b"x" and conn.ttl(queue.keys.corrupt("ready")) > 0
    assert conn.type(queue.keys.ready) == b"none"
    assert doctor(redis_url).returncode == 0
    queue.enqueue("jobs:add", 2, 2)  # the queue works again
    assert conn.llen(queue.keys.ready) == 1


def test_queued_jobs_stranded_by_a_wrong_type_ready_list_are_relisted_in_order(queue: Queue, conn, run_burst) -> None:
    jobs = [queue.enqueue("jobs:add", i, 1) for i in range(3)]
    conn.delete(queue.keys.ready)
    conn.set(queue.keys.ready, "x")

    assert counts(run(conn, "default")) == {"wrong_type_key": 1, "unlisted_job": 3}
    fix_and_recheck(conn, {"wrong_type_key": 1, "unlisted_job": 3})
    assert ready(conn, queue) == [j.id for j in jobs]
    run_burst()
    assert [fetch(conn, j).result for j in jobs] == [1, 2, 3]


# -- entries without jobs --------------------------------------------------------------------------


def test_entries_whose_job_is_gone_are_pruned(queue: Queue, conn) -> None:
    job = queue.enqueue("jobs:add", 1, 1)
    k = queue.keys
    now = time.time()
    conn.rpush(k.ready, "ghost-ready")
    conn.rpush(k.recovered, "ghost-recovered")
    conn.zadd(k.leases, {"ghost-lease": 0})
    conn.zadd(k.prefetched, {"ghost-prefetched": 0})
    conn.zadd(k.scheduled, {"ghost-scheduled": now * 1000})
    conn.zadd(k.finished, {"ghost-finished": now + 100})
    conn.sadd(k.claimed("w1"), "ghost-claimed")
    conn.zadd(k.failed, {"expired-1": now - 100, "expired-2": now - 5})

    report = run(conn, "default")
    assert counts(report) == {"expired_entry": 2, "dangling_entry": 7}
    assert sorted(examples(report, "expired_entry")) == ["expired-1", "expired-2"]
    fix_and_recheck(conn, {"expired_entry": 2, "dangling_entry": 7})
    assert ready(conn, queue) == [job.id]
    for key in (k.recovered, k.leases, k.prefetched, k.scheduled, k.finished, k.failed, k.claimed("w1")):
        assert conn.exists(key) == 0, key


# -- jobs not listed where their status says --------------------------------------------------------


def test_cli_relists_a_queued_job_missing_from_ready_once(queue: Queue, conn, redis_url, run_burst) -> None:
    jobs = [queue.enqueue("jobs:add", i, i) for i in range(3)]
    conn.lrem(queue.keys.ready, 0, jobs[1].id)
    conn.delete(queue.keys.wake)

    res = doctor(redis_url, "-q", "default", "--json")
    assert res.returncode == 1, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert counts(report) == {"unlisted_job": 1} and examples(report, "unlisted_job") == [jobs[1].id]
    assert report["queues"]["default"]["checked_jobs"] == 3 and report["ok"] is False

    res = doctor(redis_url, "-q", "default", "--fix", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    fixed = json.loads(res.stdout)
    assert fixed["fixed"]["default"]["unlisted_job"]["examples"] == [jobs[1].id]
    assert fixed["ok"] and counts(fixed) == {}
    assert ready(conn, queue) == [jobs[0].id, jobs[2].id, jobs[1].id]
    assert conn.lrange(queue.keys.wake, 0, -1) == [b"1"]
    run_burst()
    assert [fetch(conn, j).status for j in jobs] == [JobStatus.FINISHED] * 3


def test_scheduled_and_ended_jobs_missing_from_their_sets_are_relisted(queue: Queue, conn, run_burst) -> None:
    done = queue.enqueue("jobs:add", 1, 1, result_ttl=300)
    kept = queue.enqueue("jobs:add", 2, 2, result_ttl=-1)
    run_burst()
    later = queue.enqueue_in(3600, "jobs:add", 0, 0)
    due = conn.zscore(queue.keys.scheduled, later.id)
    conn.zrem(queue.keys.scheduled, later.id)
    conn.zrem(queue.keys.finished, done.id, kept.id)

    assert counts(run(conn, "default")) == {"unlisted_job": 3}
    fix_and_recheck(conn, {"unlisted_job": 3})
    assert conn.zscore(queue.keys.scheduled, later.id) == due
    assert conn.zscore(queue.keys.finished, done.id) == pytest.approx(time.time() + conn.ttl(done.key), abs=5)
    assert conn.zscore(queue.keys.finished, kept.id) == float("inf")


def test_started_job_without_a_lease_on_a_live_worker_keeps_running(queue: Queue, conn, redis_url, spawn_worker) -> None:
    key = f"test:doctor:{uuid.uuid4().hex}"
    w = spawn_worker("--concurrency", "1", "--lease-seconds", "2")
    job = queue.enqueue("jobs_obs:hold", redis_url, key, 30)
    wait_until(lambda: conn.llen(f"{key}:running"), 15, "the job to start")
    wid = worker_id(w)
    conn.zrem(queue.keys.leases, job.id)

    report = run(conn, "default")
    assert counts(report) == {"unlisted_job": 1}
    assert "started, not in leases" in report["queues"]["default"]["findings"]["unlisted_job"]["details"][0]
    fix_and_recheck(conn, {"unlisted_job": 1})
    # Not expired at once (another worker's reaper would run it twice): it lasts as long as the
    # worker's registration, and the worker's own renewals carry it on.
    restored = conn.zscore(queue.keys.leases, job.id)
    assert restored is not None and restored > time.time() * 1000
    assert conn.sismember(queue.keys.claimed(wid), job.id)
    wait_until(lambda: conn.zscore(queue.keys.leases, job.id) != restored, 10, "the worker to renew the lease")
    conn.rpush(f"{key}:release", "go")
    assert wait_status(conn, job.id, JobStatus.FINISHED).result == "released"
    assert conn.llen(f"{key}:running") == 1  # ran once: never reaped from under its worker


def test_started_job_without_a_lease_on_a_dead_worker_is_reaped_and_run(queue: Queue, conn, redis_url,
                                                                        spawn_worker) -> None:
    key = f"test:doctor:{uuid.uuid4().hex}"
    w = spawn_worker("--concurrency", "1")
    job = queue.enqueue("jobs_obs:hold", redis_url, key, 30)
    wait_until(lambda: conn.llen(f"{key}:running"), 15, "the job to start")
    wid = worker_id(w)
    w.signal(signal.SIGKILL)
    w.proc.wait()
    conn.zrem(keys.DEFAULT.workers, wid)  # its registration would lapse on its own
    conn.zrem(queue.keys.leases, job.id)

    assert counts(run(conn, "default")) == {"unlisted_job": 1}
    fix_and_recheck(conn, {"unlisted_job": 1})
    assert conn.zscore(queue.keys.leases, job.id) == 0
    assert conn.sismember(queue.keys.claimed(wid), job.id)
    # Its housekeeping reaps the expired lease, once a whole lease has passed since Redis
    # started (an outage is not a death): a short lease keeps that wait short when this test
    # runs first on a new Redis.
    spawn_worker("--concurrency", "1", "--lease-seconds", "3")
    wait_until(lambda: conn.llen(f"{key}:running") == 2, 20, "the job to run again")
    conn.rpush(f"{key}:release", "go")
    assert wait_status(conn, job.id, JobStatus.FINISHED, timeout=15).orphaned == 1


# -- entries where the job's status does not allow them ---------------------------------------------


def test_misplaced_entries_are_removed_once_the_job_is_listed_where_it_belongs(queue: Queue, conn, run_burst) -> None:
    done = queue.enqueue("jobs:add", 1, 1)
    run_burst()
    waiting = queue.enqueue("jobs:add", 2, 2)
    moved = queue.enqueue("jobs:add", 3, 3)
    k = queue.keys
    conn.zadd(k.leases, {done.id: (time.time() + 60) * 1000})  # a finished job still leased
    conn.rpush(k.ready, done.id)  # ... and ready
    conn.zadd(k.finished, {waiting.id: time.time() + 60})  # a queued job in finished too
    conn.lrem(k.ready, 0, moved.id)  # a queued job only in leases
    conn.zadd(k.leases, {moved.id: 0})

    report = run(conn, "default")
    assert counts(report) == {"unlisted_job": 1, "misplaced_entry": 4}
    assert examples(report, "unlisted_job") == [moved.id]
    fix_and_recheck(conn, {"unlisted_job": 1, "misplaced_entry": 4})
    assert ready(conn, queue) == [waiting.id, moved.id]
    assert conn.zcard(k.leases) == 0
    assert conn.zscore(k.finished, done.id) and conn.zscore(k.finished, waiting.id) is None


def test_duplicate_entries_keep_one(queue: Queue, conn, run_burst) -> None:
    twice, both, once = (queue.enqueue("jobs:add", i, i) for i in range(3))
    k = queue.keys
    conn.rpush(k.ready, twice.id, twice.id)
    conn.rpush(k.recovered, both.id)

    report = run(conn, "default")
    assert counts(report) == {"duplicate_entry": 2}
    assert sorted(examples(report, "duplicate_entry")) == sorted([twice.id, both.id])
    fix_and_recheck(conn, {"duplicate_entry": 2})
    assert ready(conn, queue) == [twice.id, once.id]  # the entry nearest the head stays
    assert conn.lrange(k.recovered, 0, -1) == [both.id.encode()]  # a recovered job stays a suspect
    run_burst()
    assert [fetch(conn, j).deliveries for j in (twice, once)] == [1, 1]  # ran once each


def test_claimed_set_of_a_dead_worker_is_emptied_but_a_live_workers_lease_is_not_touched(queue: Queue, conn) -> None:
    done = queue.enqueue("jobs:add", 1, 1)
    held = queue.enqueue("jobs:add", 2, 2)
    k = queue.keys
    conn.delete(k.ready)
    conn.hset(done.key, "status", "finished")
    conn.zadd(k.finished, {done.id: "+inf"})
    conn.sadd(k.claimed("gone-worker"), done.id)
    # A live worker's started job, with its lease: what claim.lua leaves.
    conn.zadd(keys.DEFAULT.workers, {"live-worker": time.time() + 60})
    conn.hset(held.key, mapping={"status": "started", "worker": "live-worker"})
    conn.zadd(k.leases, {held.id: (time.time() + 15) * 1000})
    conn.sadd(k.claimed("live-worker"), held.id)
    # A dead worker's job whose lease expired is the reaper's business, not doctor's.
    lost = queue.enqueue("jobs:add", 3, 3)
    conn.lrem(k.ready, 0, lost.id)
    conn.hset(lost.key, mapping={"status": "started", "worker": "gone-worker"})
    conn.zadd(k.leases, {lost.id: 0})
    conn.sadd(k.claimed("gone-worker"), lost.id)

    report = run(conn, "default")
    assert counts(report) == {"stale_claimed_set": 1} and examples(report, "stale_claimed_set") == [done.id]
    fix_and_recheck(conn, {"stale_claimed_set": 1})
    assert conn.smembers(k.claimed("gone-worker")) == {lost.id.encode()}
    assert conn.smembers(k.claimed("live-worker")) == {held.id.encode()}
    conn.srem(k.claimed("gone-worker"), lost.id)
    conn.hset(lost.key, "status", "canceled")  # now the entry is stale too, and the set goes
    conn.zadd(k.canceled, {lost.id: "+inf"})
    conn.zrem(k.leases, lost.id)
    conn.sadd(k.claimed("gone-worker"), lost.id)
    fix_and_recheck(conn, {"stale_claimed_set": 1})
    assert conn.exists(k.claimed("gone-worker")) == 0


def test_a_live_workers_claimed_entry_for_a_job_it_does_not_hold_is_misplaced(queue: Queue, conn) -> None:
    job = queue.enqueue("jobs:add", 1, 1)
    conn.zadd(keys.DEFAULT.workers, {"live-worker": time.time() + 60})
    conn.sadd(queue.keys.claimed("live-worker"), job.id)

    assert counts(run(conn, "default")) == {"misplaced_entry": 1}
    fix_and_recheck(conn, {"misplaced_entry": 1})
    assert ready(conn, queue) == [job.id] and conn.exists(queue.keys.claimed("live-worker")) == 0
