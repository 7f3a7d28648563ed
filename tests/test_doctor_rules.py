"""`conveyor doctor` beyond single corruptions: its rules (the same in Python and in repair.lua),
how it finds queues, consistent reads, fixes that must not apply once the fleet moved on, a
live fleet, warnings and bad input."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections import Counter
from typing import Any

import pytest
import redis

from conveyor import Queue, Retry, keys
from conveyor.doctor import Finding, JobRecord, Snapshot, analyze, field_problem, format_report
from conveyor.doctor_redis import check_queue, discover, live_workers, repair, run
from conveyor.embedded import free_port
from support import cli, wait_until


def doctor(redis_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return cli(redis_url, "doctor", *args, timeout=60)


def counts(report: dict[str, Any], queue: str = "default") -> dict[str, int]:
    return {kind: v["count"] for kind, v in report["queues"][queue]["findings"].items()}


# -- the rules, without Redis -------------------------------------------------------------------


def test_analyze_is_a_pure_function_of_the_snapshot() -> None:
    snap = Snapshot(
        "q", "conveyor:{q:q}:", now=1000.0, key_types={"ready": "list", "stats": "string", "claimed:w": "set"},
        lists={"ready": ["a", "a", "ghost"]},
        zsets={"finished": {"b": 2000.0, "old": 10.0}, "leases": {"b": 5.0}},
        claimed={"dead": {"b"}},
        jobs={"a": JobRecord("hash", {"status": "queued"}), "b": JobRecord("hash", {"status": "finished"}),
              "c": JobRecord("hash", {"status": "scheduled", "due_at": "x"}), "d": JobRecord("list", {})},
    )
    found = [(f.kind, f.subject, f.place) for f in analyze(snap)]
    assert found == [
        ("wrong_type_key", "conveyor:{q:q}:stats", "stats"),
        ("expired_entry", "old", "finished"),
        ("dangling_entry", "ghost", "ready"),
        ("malformed_job", "c", ""),
        ("malformed_job", "d", ""),
        ("duplicate_entry", "a", ""),
        ("misplaced_entry", "b", "leases"),
        ("stale_claimed_set", "b", "claimed:dead"),
    ]
    lines = format_report({"queues": {"q": {"findings": {}, "checked_jobs": 4}}, "warnings": ["w"]})
    assert lines == ["q: 4 jobs checked, no problems", "warning: w", "doctor: no problems in 1 queue (4 jobs checked)"]


VALID = [
    ("timeout", "30"), ("timeout", "0.5"), ("timeout", "1e-05"), ("timeout", "inf"), ("timeout", ""),
    ("result_ttl", "-1"), ("result_ttl", "0"), ("result_ttl", ""), ("failure_ttl", "604800"),
    ("max_deliveries", "1"), ("unique_ttl", "3600"), ("deliveries", "0"), ("retries", "2"), ("orphaned", "1"),
    ("due_at", "1700000000000"), ("due_at", ""), ("enqueued_at", "1700000000.123456"),
    ("attempts", "[]"), ("attempts", '[{"n": 1, "exc_type": "ValueError"}]'), ("status", "finished"),
]
INVALID = [
    ("timeout", "0"), ("timeout", "-1"), ("timeout", "abc"), ("timeout", "nan"), ("timeout", " 5"),
    ("timeout", "0x10"), ("timeout", "1_0"), ("result_ttl", "-2"), ("result_ttl", "1.5"), ("result_ttl", "1e3"),
    ("failure_ttl", "week"), ("max_deliveries", "0"), ("unique_ttl", "0"), ("deliveries", ""),
    ("deliveries", "-1"), ("retries", "1.0"), ("orphaned", "x"), ("due_at", "soon"), ("enqueued_at", "nan"),
    ("attempts", "{not json"), ("attempts", "{}"), ("attempts", '"x"'), ("attempts", "1"),
    ("status", "bogus"), ("status", ""),
]


@pytest.mark.parametrize("field, value", VALID + INVALID)
def test_python_and_repair_lua_agree_on_what_is_malformed(queue: Queue, conn, field: str, value: str) -> None:
    job = queue.enqueue("jobs:add", 1, 1)
    conn.hset(job.key, field, value)
    fields = {k.decode(): v.decode() for k, v in conn.hgetall(job.key).items()}
    problem = field_problem(fields)
    assert (problem is None) == ((field, value) in VALID)

    fixed = repair(conn, "default", [Finding("malformed_job", job.id)], {})
    assert len(fixed) == (0 if problem is None else 1)
    if problem is not None:
        assert problem.startswith(field)
        assert conn.hget(job.key, "exc_message").decode() == problem


# -- which queues, which reads ----------------------------------------------------------------------


def test_queues_are_found_by_their_keys_when_the_queues_set_is_lost(conn) -> None:
    a, b = Queue("alpha", connection=conn), Queue("beta", connection=conn)
    a.enqueue("jobs:add", 1, 1)
    b.enqueue("jobs:add", 2, 2)
    conn.rpush(b.keys.ready, "ghost")
    conn.delete(keys.DEFAULT.queues)
    conn.set("conveyor:{q:bad name}:ready", "x")

    report = run(conn)
    assert sorted(report["queues"]) == ["alpha", "beta"]
    assert counts(report, "alpha") == {} and counts(report, "beta") == {"dangling_entry": 1}
    assert any("'bad name' is not a valid queue name" in w for w in report["warnings"])
    assert not report["ok"]


def test_claimed_sets_and_unique_keys_of_the_wrong_type_are_renamed_aside(queue: Queue, conn) -> None:
    job = queue.enqueue("jobs:add", 1, 1, unique_key="nightly")
    k = queue.keys
    conn.set(k.claimed("w1"), "x")
    conn.delete(k.unique("nightly"))
    conn.rpush(k.unique("nightly"), job.id)

    report = run(conn, "default")
    assert counts(report) == {"wrong_type_key": 2}
    assert sorted(report["queues"]["default"]["findings"]["wrong_type_key"]["examples"]) == [
        k.claimed("w1"), k.unique("nightly")]
    fixed = run(conn, "default", fix=True)
    assert fixed["ok"] and fixed["fixed"]["default"]["wrong_type_key"]["count"] == 2
    assert conn.get(k.corrupt("claimed:w1")) == b"x"
    assert conn.lrange(k.corrupt("unique:nightly"), 0, -1) == [job.id.encode()]
    assert queue.enqueue("jobs:add", 2, 2, unique_key="nightly").id != job.id  # enqueue works again


def test_chunked_reads_confirm_the_same_findings_as_one_transaction(queue: Queue, conn) -> None:
    jobs = [queue.enqueue("jobs:add", i, i) for i in range(7)]
    k = queue.keys
    conn.hset(jobs[0].key, "attempts", "{")
    conn.lrem(k.ready, 0, jobs[1].id)
    conn.rpush(k.ready, jobs[2].id, "ghost")
    conn.zadd(k.leases, {jobs[3].id: 0})
    conn.sadd(k.claimed("gone"), jobs[4].id)
    conn.set(k.stats, "x")

    whole = run(conn, "default")
    assert counts(whole) == {"wrong_type_key": 1, "dangling_entry": 1, "malformed_job": 1, "unlisted_job": 1,
                             "duplicate_entry": 1, "misplaced_entry": 1, "stale_claimed_set": 1}
    assert run(conn, "default", chunk=1) == whole
    assert run(conn, "default", chunk=3) == whole


def test_fix_leaves_findings_that_no_longer_hold(queue: Queue, conn) -> None:
    unlisted, bad, held = (queue.enqueue("jobs:add", i, i) for i in range(3))
    k = queue.keys
    conn.lrem(k.ready, 0, unlisted.id)
    conn.hset(bad.key, "attempts", "{")
    conn.rpush(k.ready, "ghost")
    conn.sadd(k.claimed("gone"), held.id)
    result = check_queue(conn, "default", discover(conn, "default", [])["default"], live_workers(conn))
    assert sorted(f.kind for f in result.findings) == [
        "dangling_entry", "malformed_job", "stale_claimed_set", "unlisted_job"]

    # The fleet moves on between doctor's read and its fix:
    conn.rpush(k.ready, unlisted.id)  # the job is listed again,
    conn.hset(bad.key, "attempts", "[]")  # the field was repaired,
    conn.hset(k.job("ghost"), mapping={"status": "queued", "func": "jobs:add"})  # the ghost's job exists,
    conn.lrem(k.ready, 0, held.id)  # and "gone" (a worker after all) holds its job now.
    conn.hset(held.key, mapping={"status": "started", "worker": "gone"})
    conn.zadd(k.leases, {held.id: 0})

    assert repair(conn, "default", result.findings, {}) == []
    assert [i.decode() for i in conn.lrange(k.ready, 0, -1)] == [bad.id, "ghost", unlisted.id]
    assert conn.hget(bad.key, "status") == b"queued"
    assert conn.smembers(k.claimed("gone")) == {held.id.encode()}


# -- a live fleet ---------------------------------------------------------------------------------


def test_on_a_live_fleet_doctor_finds_nothing_and_fix_changes_nothing(queue: Queue, conn, redis_url,
                                                                      spawn_worker) -> None:
    """Workers claim, finish, retry and promote jobs, and a producer enqueues, while doctor
    reads (in one transaction, and in chunks of a few jobs) and fixes: no false finding,
    nothing "fixed", every job run once."""
    key = f"test:doctor:{uuid.uuid4().hex}"
    for _ in range(2):
        spawn_worker("--concurrency", "4", "--with-scheduler")
    queue.enqueue_many([Queue.prepare_data("jobs:record", (redis_url, key, str(i), 0.01)) for i in range(100)])
    for i in range(100, 120):
        queue.enqueue_in(0.3, "jobs:record", redis_url, key, str(i), 0.01)
    flaky = [queue.enqueue("jobs_reliability:fail_times", redis_url, f"{key}:{i}", 1, retry=Retry(max=2, intervals=[0.2]))
             for i in range(10)]
    produced = list(range(120))
    stop = threading.Event()

    def produce() -> None:
        q = Queue("default", redis_url=redis_url)
        while not stop.is_set() and len(produced) < 300:
            q.enqueue("jobs:record", redis_url, key, str(len(produced)), 0.01, result_ttl=0)
            produced.append(len(produced))

    producer = threading.Thread(target=produce)
    producer.start()
    rounds = 0

    def all_ended() -> bool:
        nonlocal rounds
        rounds += 1
        report = run(conn, "default", fix=rounds % 2 == 0, chunk=5 if rounds % 3 else 1000)
        assert counts(report) == {} and report.get("fixed", {"default": {}}) == {"default": {}}, report
        return not producer.is_alive() and conn.llen(key) == len(produced) and \
            conn.zcard(queue.keys.finished) == 120 + len(flaky)

    try:
        wait_until(all_ended, 60, "every job to finish under doctor's eye", interval=0)
    finally:
        stop.set()
        producer.join()
    assert rounds >= 4
    ran = Counter(entry.decode().split(":")[0] for entry in conn.lrange(key, 0, -1))
    assert ran == Counter({str(i): 1 for i in produced})


def test_ghosts_of_an_evicting_redis_are_confirmed_by_reading_the_list_whole(queue: Queue, conn) -> None:
    jobs = [queue.enqueue("jobs:add", i, i) for i in range(3)]
    ghosts = [f"ghost-{i}" for i in range(1100)]  # 1100 IDs x 1100 entries: past the LPOS budget
    conn.rpush(queue.keys.ready, *ghosts)

    report = run(conn, "default")
    assert counts(report) == {"dangling_entry": 1100}
    assert run(conn, "default", chunk=2) == report
    fixed = run(conn, "default", fix=True)
    assert fixed["fixed"]["default"]["dangling_entry"]["count"] == 1100 and fixed["ok"]
    assert [i.decode() for i in conn.lrange(queue.keys.ready, 0, -1)] == [j.id for j in jobs]


# -- warnings and bad input ---------------------------------------------------------------------


def test_an_evicting_maxmemory_policy_is_a_warning(queue: Queue, conn, redis_url) -> None:
    queue.enqueue("jobs:add", 1, 1)
    conn.config_set("maxmemory-policy", "allkeys-lru")
    try:
        report = run(conn, "default")
        res = doctor(redis_url)
    finally:
        conn.config_set("maxmemory-policy", "noeviction")
    assert report["ok"] and len(report["warnings"]) == 1 and "allkeys-lru" in report["warnings"][0]
    assert res.returncode == 0, res.stdout + res.stderr
    assert "warning: maxmemory-policy is allkeys-lru, not noeviction" in res.stdout
    assert run(conn, "default")["warnings"] == []


@pytest.mark.parametrize("args, message", [
    (("-q", "bad name"), "invalid queue name 'bad name'"),
    (("-q", "nosuch"), "unknown queue 'nosuch'"),
])
def test_bad_input_gets_one_clear_line(queue: Queue, redis_url, args: tuple[str, ...], message: str) -> None:
    queue.enqueue("jobs:add", 1, 1)
    res = doctor(redis_url, *args)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1 and message in res.stderr, res.stderr


def test_unreachable_redis_gets_one_clear_line() -> None:
    res = doctor(f"redis://127.0.0.1:{free_port()}/0")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1 and "cannot reach Redis" in res.stderr, res.stderr


def test_an_empty_redis_is_clean(conn: redis.Redis, redis_url: str) -> None:
    assert run(conn) == {"queues": {}, "warnings": [], "ok": True}
    res = doctor(redis_url, "--json")
    assert res.returncode == 0 and '"ok": true' in res.stdout
