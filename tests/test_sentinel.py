"""Conveyor on a real Sentinel group (a master, a replica, three sentinels, started by the
fixture): the whole surface through a redis+sentinel:// URL, enqueues that wait for a
replica, and a failover under load.

Tests share one group; each takes its own key prefix. What ran comes from the jobs' records.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis.exceptions import RedisError

import jobs_faults
from conveyor import JobStatus, Queue, Retry, keys
from conveyor.connection import RedisTarget
from conveyor.errors import NotReplicated
from conveyor_operator.status import queue_depth
from deployments import SentinelGroup
from support import WorkerProcess, cli, wait_until, worker_id


@pytest.fixture(scope="module")
def group() -> Iterator[SentinelGroup]:
    with SentinelGroup("mymaster", replicas=1, sentinels=3) as g:
        yield g


@pytest.fixture
def client(group: SentinelGroup) -> Iterator[Any]:
    c = RedisTarget.parse(group.url()).client()
    yield c
    c.close()


@pytest.fixture
def spawn(spawn_at: Callable[..., WorkerProcess], group: SentinelGroup, prefix: str) -> Callable[..., WorkerProcess]:
    return functools.partial(spawn_at, group.url(), "--prefix", prefix)



def test_the_whole_surface_through_sentinel(group, client, prefix, spawn, tmp_path) -> None:
    path = str(tmp_path / "runs")
    q = Queue("s", connection=client, prefix=prefix)
    cron = tmp_path / "cron.toml"
    cron.write_text(f'[[cron]]\nschedule = "* * * * *"\nfunc = "jobs_faults:record"\nname = "tick"\n'
                    f'queue = "s"\nargs = ["{path}", "cron"]\n')
    client.hset(keys.Keyspace(prefix).queue("s").cron, "tick", int(time.time()) // 60 * 60 - 60)
    one = q.enqueue("jobs_faults:record", path, "one")
    many = q.enqueue_many([Queue.prepare_data("jobs_faults:record", (path, f"many{i}")) for i in range(10)])
    later = q.enqueue_in(0.3, "jobs_faults:record", path, "later")
    flaky = q.enqueue("jobs_faults:fail_first", path, "flaky", 2, retry=Retry(max=3, intervals=[0.1, 0.2]))
    w = spawn("-q", "s", "--with-scheduler", "--cron-file", str(cron), "--lease-seconds", "3")
    wid = worker_id(w)
    wait_until(lambda: all(j.refresh().status is JobStatus.FINISHED for j in [one, *many, later, flaky]), 20,
               "the jobs to finish")
    wait_until(lambda: jobs_faults.executions(path)["cron"] >= 1, 20, "the cron tick to run")
    ran = jobs_faults.executions(path)
    assert all(ran[t] == 1 for t in ["one", "later", *(f"many{i}" for i in range(10))]) and ran["flaky"] == 3

    gone = q.enqueue_in(3600, "jobs_faults:record", path, "never")
    gone.cancel()
    assert gone.refresh().status is JobStatus.CANCELED
    held = q.enqueue("jobs_faults:record", path, "held", 30)
    wait_until(lambda: held.refresh().status is JobStatus.STARTED, 10, "the held job to start")
    res = cli(group.url(), "job", "stop", held.id, prefix=prefix)
    assert res.returncode == 0, res.stderr
    assert held.refresh().status is JobStatus.CANCELED

    info = json.loads(cli(group.url(), "info", "--json", prefix=prefix).stdout)
    ticks = jobs_faults.executions(path)["cron"]  # one, or two if a minute turned over
    assert [(x["name"], x["finished"], x["scheduler_leader"]) for x in info["queues"]] == [("s", 13 + ticks, wid)]
    assert cli(group.url(), "doctor", prefix=prefix).returncode == 0
    [depth] = queue_depth(group.url(), ["s"], prefix=prefix)
    assert depth["failed"] == 0 and depth["ready"] == 0
    assert "ERROR" not in w.log()


def test_enqueue_can_wait_for_a_replica(client, prefix) -> None:
    durable = Queue("d", connection=client, prefix=prefix, min_replicas=1, replica_timeout=2)
    job = durable.enqueue("jobs:add", 1, 2)
    assert job.refresh().status is JobStatus.QUEUED
    # More replicas than the group has: the job is queued all the same, and the caller is told.
    greedy = Queue("d", connection=client, prefix=prefix, min_replicas=2, replica_timeout=0.2)
    with pytest.raises(NotReplicated, match="only 1 of 2 replica") as caught:
        greedy.enqueue("jobs:add", 3, 4)
    [queued] = caught.value.jobs
    assert queued.refresh().status is JobStatus.QUEUED and durable.count == 2


@pytest.mark.slow
def test_failover_under_load_then_the_old_master_returns(group, client, prefix, spawn, tmp_path) -> None:
    path = str(tmp_path / "runs")
    q = Queue("s", connection=client, prefix=prefix, min_replicas=1, replica_timeout=2)
    workers = [spawn("-q", "s", "--with-scheduler", "--lease-seconds", "3", "--concurrency", "8") for _ in range(2)]
    ids = [worker_id(w) for w in workers]
    tags = [f"j{i}" for i in range(300)]
    q.enqueue_many([Queue.prepare_data("jobs_faults:record", (path, t, 0.02)) for t in tags])
    wait_until(lambda: sum(jobs_faults.executions(path).values()) >= 80, 20, "work in flight")
    old = group.kill_master()
    t0 = time.monotonic()
    group.wait_failover(old)
    promoted = time.monotonic() - t0
    # Enqueue through the failover: once the new master answers, work resumes. (Its only
    # replica is dead, so these do not wait for one.)
    q = Queue("s", connection=client, prefix=prefix)
    deadline = time.monotonic() + 30
    while len(tags) < 330 and time.monotonic() < deadline:
        tag = f"after{len(tags)}"
        try:
            q.enqueue("jobs_faults:record", path, tag)
        except (RedisError, OSError):
            time.sleep(0.05)
            continue
        tags.append(tag)
    assert len(tags) == 330, "enqueue did not come back after the failover"
    resumed = time.monotonic() - t0
    wait_until(lambda: all(jobs_faults.executions(path)[t] for t in tags), 60, "every job to run")
    # The old master comes back empty, and Sentinel makes it a replica: no READONLY loop.
    group.restart(old)
    back = [q.enqueue("jobs_faults:record", path, f"back{i}") for i in range(10)]
    wait_until(lambda: all(j.refresh().status is JobStatus.FINISHED for j in back), 20, "jobs after the return")
    ran = jobs_faults.executions(path)
    space = keys.Keyspace(prefix).queue("s")
    wait_until(lambda: client.llen(space.ready) == 0 and client.zcard(space.leases) == 0, 30, "the queue to drain")
    claimed = sum(client.scard(space.claimed(wid)) for wid in ids)
    lost = [t for t in tags if ran[t] == 0]
    twice = sum(1 for t in tags if ran[t] > 1)
    print(f"\nsentinel failover: promoted in {promoted:.1f}s, enqueue back in {resumed:.1f}s; {len(tags)} jobs, "
          f"lost {len(lost)}, run twice {twice}, left claimed {claimed}")
    assert lost == [] and claimed == 0
    assert all(w.proc.poll() is None for w in workers)
    assert all("READONLY" not in w.log() and "read only replica" not in w.log() for w in workers)


def test_a_replica_given_as_redis_is_named(group, tmp_path) -> None:
    master = group.master_addr()
    [replica] = [p.addr for p in group.data if p.addr != master and p.alive]
    url = f"redis://{replica.host}:{replica.port}/0"
    with pytest.raises(Exception, match="read-only replica; point at the master, or use redis\\+sentinel://"):
        Queue("r", redis_url=url).enqueue("jobs:add", 1, 2)
    w = WorkerProcess(url, ("-q", "r"), tmp_path / "w.log")
    try:
        w.wait_log("read-only replica", 15)
    finally:
        w.stop()
