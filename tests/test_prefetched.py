"""Prefetched is its own state: a job a worker holds in its buffer is visibly not running, is
not charged a delivery, can be canceled or stopped (it never runs), and goes back on SIGTERM.
Fleet commands reach only the database they were issued on."""

from __future__ import annotations

import signal

import pytest
import redis

from conveyor import InvalidTransition, JobStatus, Queue, keys
from jobs_faults import executions
from support import cli, fetch, wait_status, wait_until


def listening(conn: redis.Redis, db: int = 0) -> bool:
    channel = keys.DEFAULT.commands(db)
    return dict(conn.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1


@pytest.fixture
def held(queue: Queue, conn, redis_url, tmp_path, spawn_worker):
    """One job runs (until stopped), three more wait prefetched in the same worker."""
    path = str(tmp_path / "runs")
    jobs = [queue.enqueue("jobs_faults:async_until_cancelled", path, "run", 60)]
    jobs += [queue.enqueue("jobs_faults:record", path, f"p{i}") for i in range(3)]
    w = spawn_worker("--concurrency", "1", "--prefetch", "3", "--shutdown-timeout", "30")
    wait_until(lambda: [fetch(conn, j).status for j in jobs] == [JobStatus.STARTED] + [JobStatus.PREFETCHED] * 3,
               10, "one job running, three prefetched")
    wait_until(lambda: listening(conn), 10, "the worker to listen for commands")
    return w, jobs, path


def test_a_prefetched_job_shows_as_such_and_is_not_charged(queue: Queue, conn, redis_url, held) -> None:
    w, jobs, path = held
    assert [fetch(conn, j).deliveries for j in jobs] == [1, 0, 0, 0]
    assert queue.started.job_ids == [jobs[0].id]
    assert sorted(queue.prefetched.job_ids) == sorted(j.id for j in jobs[1:])
    show = cli(redis_url, "job", "show", jobs[1].id)
    assert show.returncode == 0 and "prefetched" in show.stdout
    info = cli(redis_url, "info")
    assert "PREFETCHED" in info.stdout


def test_canceling_a_prefetched_job_means_it_never_runs(queue: Queue, conn, redis_url, held) -> None:
    w, jobs, path = held
    fetch(conn, jobs[2]).cancel()
    assert fetch(conn, jobs[2]).status is JobStatus.CANCELED
    res = cli(redis_url, "job", "cancel", jobs[1].id)
    assert res.returncode == 0 and "canceled" in res.stdout, res.stderr
    assert jobs[1].id in queue.canceled.job_ids and jobs[2].id in queue.canceled.job_ids
    assert queue.prefetched.job_ids == [jobs[3].id]

    res = cli(redis_url, "job", "stop", jobs[3].id)  # stopping a prefetched job cancels it as well
    assert res.returncode == 0, res.stderr
    assert fetch(conn, jobs[3]).status is JobStatus.CANCELED
    res = cli(redis_url, "job", "stop", jobs[0].id)  # the running one is stopped
    assert res.returncode == 0, res.stderr
    assert fetch(conn, jobs[0]).status is JobStatus.CANCELED
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0
    assert executions(path) == {"run": 1, "run-cancelled": 1}, "no canceled job ever ran"
    with pytest.raises(InvalidTransition, match="is canceled"):
        fetch(conn, jobs[1]).cancel()


def test_a_started_job_cannot_be_canceled_only_stopped(queue: Queue, conn, held) -> None:
    w, jobs, path = held
    with pytest.raises(InvalidTransition, match="use 'conveyor job stop'"):
        fetch(conn, jobs[0]).cancel()


def test_commands_are_scoped_to_their_database(redis_server, spawn_worker, tmp_path) -> None:
    """pub/sub ignores DB numbers: a stop issued on db 0 must not stop db 1's job of the same ID."""
    base = redis_server.url.rsplit("/", 1)[0]
    urls = [f"{base}/0", f"{base}/1"]
    conns = [redis.Redis.from_url(u) for u in urls]
    for c in conns:
        c.flushdb()
    path = str(tmp_path / "runs")
    jobs = [Queue("default", connection=c).enqueue("jobs_faults:async_until_cancelled", path, f"db{n}", 60,
                                                   job_id="same-id") for n, c in enumerate(conns)]
    workers = [spawn_worker("--shutdown-timeout", "1", url=u) for u in urls]
    for n, c in enumerate(conns):
        wait_status(c, "same-id", JobStatus.STARTED)
        wait_until(lambda c=c, n=n: listening(c, n), 10, "the workers to listen")
    res = cli(urls[0], "job", "stop", "same-id")
    assert res.returncode == 0, res.stderr
    assert fetch(conns[0], jobs[0]).status is JobStatus.CANCELED
    assert fetch(conns[1], jobs[1]).status is JobStatus.STARTED, "db 1's job kept running"
    assert executions(path)["db1-cancelled"] == 0
    for w in workers:
        w.signal(signal.SIGTERM)
        assert w.wait(15) == 0
    for c in conns:
        c.close()
