"""Delayed jobs and the scheduler: enqueue_in/enqueue_at, the leader lock, promote, the warning.

Every scheduler here runs inside a real `conveyor worker --with-scheduler` process.
"""

from __future__ import annotations

import datetime as dt
import signal
import threading
import time

import pytest
import redis

from conveyor import InvalidArgument, InvalidTransition, JobStatus, Queue, calls, scripts
from conveyor.keys import QueueKeys
from support import fetch, runs, wait_status, wait_until, worker_id

K = QueueKeys("default")
FAST = ("--lease-seconds", "0.6")  # housekeeping every 0.2 s
EPS = 0.02


def lock_holder(conn: redis.Redis) -> str | None:
    v = conn.get(K.scheduler_lock)
    return v.decode() if v else None


def pid_of(worker_token: str) -> int:
    # "host.pid.hex": a host name may hold dots itself, so count from the right.
    return int(worker_token.rsplit(".", 2)[1])


# -- enqueue_in / enqueue_at ---------------------------------------------------------------------


def test_delayed_jobs_are_scheduled_not_queued(queue: Queue, conn, redis_url) -> None:
    t0 = time.time()
    a = queue.enqueue_in(30, "jobs:add", 1, 2)
    b = queue.enqueue_in(dt.timedelta(minutes=1), "jobs:add", 3, 4)
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=90)
    c = queue.enqueue_at(when, "jobs:add", 5, 6)
    naive = dt.datetime.now() + dt.timedelta(seconds=120)  # naive = local time
    d = queue.enqueue_at(naive, "jobs:add", 7, 8)

    expected = {a.id: t0 + 30, b.id: t0 + 60, c.id: when.timestamp(), d.id: naive.timestamp()}
    for job in (a, b, c, d):
        for view in (job, fetch(conn, job.id)):
            assert view.status is JobStatus.SCHEDULED
            assert view.due_at == pytest.approx(expected[job.id], abs=1.0)
    assert fetch(conn, c.id).due_at == pytest.approx(when.timestamp(), abs=0.002)
    assert sorted(queue.scheduled.job_ids) == sorted(expected)
    assert queue.job_ids == [] and queue.count == 0
    # The scheduled registry is ordered by due time.
    assert queue.scheduled.job_ids == [a.id, b.id, c.id, d.id]


def test_enqueue_in_and_at_validate_their_time(queue: Queue) -> None:
    for bad in (-1, dt.timedelta(seconds=-5), "10", None, True):
        with pytest.raises(InvalidArgument):
            queue.enqueue_in(bad, "jobs:add", 1, 2)
    with pytest.raises(InvalidArgument):
        queue.enqueue_at(time.time() + 5, "jobs:add", 1, 2)  # a float, not a datetime
    assert queue.scheduled.job_ids == []


def test_enqueue_in_takes_enqueue_options(queue: Queue, conn) -> None:
    job = queue.enqueue_in(60, "jobs:add", 1, b=2, job_id="later-1", result_ttl=77)
    stored = fetch(conn, "later-1")
    assert job.id == "later-1" and stored.result_ttl == 77
    assert stored.args == [1] and stored.kwargs == {"b": 2}


def test_scheduler_runs_delayed_jobs_no_sooner_than_due(queue: Queue, conn, redis_url, spawn_worker) -> None:
    jobs = [
        queue.enqueue_in(0.3, "jobs_reliability:count", redis_url, "t:a"),
        queue.enqueue_in(dt.timedelta(seconds=0.5), "jobs_reliability:count", redis_url, "t:b"),
        queue.enqueue_at(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.7), "jobs_reliability:count",
                         redis_url, "t:c"),
        queue.enqueue_at(dt.datetime.now() + dt.timedelta(seconds=0.4), "jobs_reliability:count", redis_url, "t:d"),
        # Already due: runs as soon as the scheduler looks.
        queue.enqueue_at(dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5), "jobs_reliability:count",
                         redis_url, "t:e"),
    ]
    spawn_worker("--with-scheduler")
    for job in jobs:
        done = wait_status(conn, job.id, JobStatus.FINISHED, JobStatus.FAILED)
        assert done.status is JobStatus.FINISHED
        assert done.started_at >= job.due_at - EPS, (done.started_at, job.due_at)
    assert [runs(conn, f"t:{x}") for x in "abcde"] == [1] * 5
    assert queue.scheduled.job_ids == []


def test_job_scheduled_while_the_scheduler_sleeps_wakes_it(queue: Queue, conn, redis_url, spawn_worker) -> None:
    # Lock TTL 30 s: an idle leader sleeps ~10 s between renewals, unless the
    # enqueue's publish wakes it up for the new due time.
    w = spawn_worker("--with-scheduler", "--scheduler-lock-seconds", "30")
    w.wait_log("leading queue default")
    job = queue.enqueue_in(0.3, "jobs_reliability:count", redis_url, "t:a")
    done = wait_status(conn, job.id, JobStatus.FINISHED, timeout=8)
    late = done.started_at - job.due_at
    assert -EPS <= late < 1.0, f"started {late:.3f}s after its due time"


def test_cancel_a_scheduled_job(queue: Queue, conn, redis_url, spawn_worker) -> None:
    doomed = queue.enqueue_in(0.2, "jobs_reliability:count", redis_url, "t:doomed")
    later = queue.enqueue_in(0.5, "jobs_reliability:count", redis_url, "t:later")
    doomed.cancel()
    assert doomed.status is JobStatus.CANCELED
    assert queue.scheduled.job_ids == [later.id]
    assert queue.canceled.job_ids == [doomed.id]
    with pytest.raises(InvalidTransition):
        doomed.cancel()

    spawn_worker("--with-scheduler")
    wait_status(conn, later.id, JobStatus.FINISHED)
    # The later job's due time is past the canceled one's: had it been promoted, it ran by now.
    assert runs(conn, "t:doomed") == 0
    assert fetch(conn, doomed.id).status is JobStatus.CANCELED
    assert queue.job_ids == []


# -- the leader lock ---------------------------------------------------------------------------


def test_two_schedulers_one_leader_each_job_runs_once(queue: Queue, conn, redis_url, spawn_worker) -> None:
    w1 = spawn_worker("--with-scheduler", "--scheduler-lock-seconds", "1")
    w2 = spawn_worker("--with-scheduler", "--scheduler-lock-seconds", "1")
    ids = {worker_id(w1), worker_id(w2)}
    assert len(ids) == 2
    holder = wait_until(lambda: lock_holder(conn), 5, "a scheduler lock")
    assert holder in ids

    key = "t:record"
    jobs = [queue.enqueue_in(0.2 + i * 0.05, "jobs:record", redis_url, key, f"j{i}") for i in range(12)]
    for job in jobs:
        done = wait_status(conn, job.id, JobStatus.FINISHED, JobStatus.FAILED)
        assert done.status is JobStatus.FINISHED and done.deliveries == 1
    tokens = sorted(raw.decode().rsplit(":", 1)[0] for raw in conn.lrange(key, 0, -1))
    assert tokens == sorted(f"j{i}" for i in range(12))  # each exactly once

    # Several renewals have passed (TTL 1 s, renewed every 1/3 s): still one leader, the same one.
    assert lock_holder(conn) == holder
    leaders = [w for w in (w1, w2) if "leading queue default" in w.log()]
    assert len(leaders) == 1
    assert worker_id(leaders[0]) == holder
    assert conn.pttl(K.scheduler_lock) <= 1000
    for w in (w1, w2):
        assert "no scheduler" not in w.log()


def test_leader_takeover_after_sigkill(queue: Queue, conn, redis_url, spawn_worker) -> None:
    lock_ttl = 1.0
    workers = [spawn_worker("--with-scheduler", "--scheduler-lock-seconds", str(lock_ttl)) for _ in range(2)]
    by_id = {worker_id(w): w for w in workers}
    leader_token = wait_until(lambda: lock_holder(conn), 5, "a scheduler lock")
    leader = by_id[leader_token]
    assert leader.pid == pid_of(leader_token)
    (other_token,) = set(by_id) - {leader_token}

    leader.signal(signal.SIGKILL)
    killed_at = time.monotonic()
    leader.wait(5)
    wait_until(lambda: lock_holder(conn) == other_token, lock_ttl + 1.0, "the other worker to take the lock")
    took = time.monotonic() - killed_at
    print(f"\nscheduler takeover after SIGKILL: {took:.3f}s (lock TTL {lock_ttl}s)")
    assert took <= lock_ttl + 1.0
    by_id[other_token].wait_log("leading queue default")

    key = "t:after"
    job = queue.enqueue_in(0.2, "jobs_reliability:count", redis_url, key)
    done = wait_status(conn, job.id, JobStatus.FINISHED, timeout=8)
    assert done.worker == other_token
    assert done.started_at >= job.due_at - EPS
    assert runs(conn, key) == 1


def test_leader_releases_the_lock_on_graceful_stop(queue: Queue, conn, spawn_worker) -> None:
    w = spawn_worker("--with-scheduler", "--scheduler-lock-seconds", "30")
    token = worker_id(w)
    wait_until(lambda: lock_holder(conn) == token, 5, "the lock")
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    # Released at once, not left to expire 30 s later.
    assert lock_holder(conn) is None


# -- promote ---------------------------------------------------------------------------------


def _promote(client: redis.Redis, limit: int = 1000) -> list[int]:
    return scripts.execute(client, lambda p: calls.promote(p, K, limit, 3600))[0]


def test_promote_twice_concurrently_moves_each_job_once(queue: Queue, conn, redis_url) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    due = [queue.enqueue_at(past, "jobs:add", i, i).id for i in range(200)]
    future = queue.enqueue_in(3600, "jobs:add", 0, 0)
    scripts.load(conn)

    barrier = threading.Barrier(4)
    results: list[list[int]] = []
    lock = threading.Lock()

    def race() -> None:
        client = redis.Redis.from_url(redis_url)
        try:
            barrier.wait()
            out = [_promote(client, 7) for _ in range(40)]  # small batches: the calls interleave
            with lock:
                results.extend(out)
        finally:
            client.close()

    threads = [threading.Thread(target=race) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(results) == 160

    ready = queue.job_ids
    assert len(ready) == len(due) and sorted(ready) == sorted(due)  # each exactly once
    assert sum(moved for moved, _ in results) == len(due)
    assert all(fetch(conn, j).status is JobStatus.QUEUED for j in due[:10])
    assert queue.scheduled.job_ids == [future.id]
    # Once more, in a row: nothing left to move; the next due time is the future job's.
    again = _promote(conn)
    assert again[0] == 0
    assert again[1] == int(fetch(conn, future.id).due_at * 1000)
    assert queue.job_ids == ready


def test_promote_skips_jobs_no_longer_scheduled(queue: Queue, conn) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    keep = queue.enqueue_at(past, "jobs:add", 1, 1)
    gone = queue.enqueue_at(past, "jobs:add", 2, 2)
    # A scheduled-set entry whose job was meanwhile moved on (here: faked as started).
    conn.hset(K.job(gone.id), "status", "started")
    assert _promote(conn) == [1, -1]
    assert queue.job_ids == [keep.id]
    assert queue.scheduled.job_ids == []


# -- the missing-scheduler warning -----------------------------------------------------------------


def _housekeeping_rounds(conn: redis.Redis, n: int, tag: str) -> None:
    """Wait for n housekeeping rounds of the workers, each seen by its reap.

    Every round reaps expired leases: a lease entry with no job behind it is
    dropped and nothing else happens, so its disappearance marks one round.
    """
    for i in range(n):
        probe = f"probe-{tag}-{i}"
        conn.zadd(K.leases, {probe: 0})
        wait_until(lambda: conn.zscore(K.leases, probe) is None, 5, f"housekeeping round {i + 1}")


def test_worker_without_scheduler_warns_once_about_scheduled_jobs(queue: Queue, conn, spawn_worker) -> None:
    queue.enqueue_in(3600, "jobs:add", 1, 2)
    queue.enqueue_in(3600, "jobs:add", 3, 4)
    w = spawn_worker(*FAST)
    w.wait_log("no scheduler")
    _housekeeping_rounds(conn, 3, "a")
    log = w.log()
    assert log.count("no scheduler") == 1, log
    assert "queue default has 2 scheduled jobs" in log


def test_the_warning_comes_back_after_a_scheduler_went_away(queue: Queue, conn, spawn_worker) -> None:
    queue.enqueue_in(3600, "jobs:add", 1, 2)
    w = spawn_worker(*FAST)
    w.wait_log("no scheduler")
    conn.set(K.scheduler_lock, "someone-else", px=60_000)  # a scheduler appears...
    _housekeeping_rounds(conn, 2, "a")
    assert w.log().count("no scheduler") == 1
    conn.delete(K.scheduler_lock)  # ...and is gone again
    wait_until(lambda: w.log().count("no scheduler") == 2, 5, "a second warning")
    _housekeeping_rounds(conn, 2, "b")
    assert w.log().count("no scheduler") == 2


def test_no_warning_without_scheduled_jobs_or_with_a_live_scheduler(queue: Queue, conn, spawn_worker) -> None:
    idle = spawn_worker(*FAST)
    worker_id(idle)
    _housekeeping_rounds(conn, 2, "a")  # no scheduled jobs
    conn.set(K.scheduler_lock, "someone-else", px=60_000)
    queue.enqueue_in(3600, "jobs:add", 1, 2)
    _housekeeping_rounds(conn, 3, "b")  # scheduled jobs, but a scheduler holds the lock
    assert "no scheduler" not in idle.log()
