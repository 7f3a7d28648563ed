"""Conveyor on a real Redis Cluster (3 masters, 3 replicas, started by the fixture): the whole
surface on queues spread over the masters, and failovers under load.

Tests share one cluster; each takes its own key prefix, so none sees another's jobs. The truth
of what ran comes from the jobs' own records (tests/jobs_faults.py), not from Conveyor.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import RedisError

import jobs_faults
from conveyor import JobStatus, Queue, Retry, keys
from conveyor.connection import RedisTarget
from conveyor.errors import NotReplicated
from conveyor_operator.status import queue_depth
from deployments import RedisClusterDeployment
from support import WORKER_ENV, WorkerProcess, cli, wait_until, worker_id


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterDeployment]:
    with RedisClusterDeployment(masters=3, replicas_per_master=1) as c:
        yield c


@pytest.fixture
def client(cluster: RedisClusterDeployment) -> Iterator[Any]:
    c = RedisTarget.parse(cluster.url()).client()
    yield c
    c.close()


@pytest.fixture
def spawn(spawn_at: Callable[..., WorkerProcess], cluster: RedisClusterDeployment, prefix: str) -> Callable[..., WorkerProcess]:
    return functools.partial(spawn_at, cluster.url(), "--prefix", prefix)


def spread_queues(cluster: RedisClusterDeployment, prefix: str, n: int = 3) -> list[str]:
    """Queue names whose keys live on n different masters."""
    names: dict[Any, str] = {}
    for i in range(500):
        name = f"q{i}"
        owner = cluster.master_of_slot(key_slot(keys.Keyspace(prefix).queue(name).ready.encode()))
        names.setdefault(owner, name)
        if len(names) == n:
            return list(names.values())
    raise AssertionError("could not spread queues over the masters")



def test_the_whole_surface_on_queues_spread_over_the_masters(cluster, client, prefix, spawn, tmp_path) -> None:
    path = str(tmp_path / "runs")
    names = spread_queues(cluster, prefix)
    queues = [Queue(n, connection=client, prefix=prefix) for n in names]
    cron = tmp_path / "cron.toml"
    cron.write_text(f'[[cron]]\nschedule = "* * * * *"\nfunc = "jobs_faults:record"\nname = "tick"\n'
                    f'queue = "{names[2]}"\nargs = ["{path}", "cron"]\n')
    tick = int(time.time()) // 60 * 60
    client.hset(keys.Keyspace(prefix).queue(names[2]).cron, "tick", tick - 60)  # this minute's tick is due

    single = [q.enqueue("jobs_faults:record", path, f"one-{q.name}") for q in queues]
    many = queues[1].enqueue_many([Queue.prepare_data("jobs_faults:record", (path, f"many{i}")) for i in range(20)])
    later = queues[0].enqueue_in(0.3, "jobs_faults:record", path, "later")
    flaky = queues[2].enqueue("jobs_faults:fail_first", path, "flaky", 2, retry=Retry(max=3, intervals=[0.1, 0.2]))
    w = spawn("-q", ",".join(names), "--with-scheduler", "--cron-file", str(cron), "--lease-seconds", "3")

    done = [*single, *many, later]
    wait_until(lambda: all(j.refresh().status is JobStatus.FINISHED for j in done), 20, "the jobs to finish")
    wait_until(lambda: flaky.refresh().status is JobStatus.FINISHED, 20, "the flaky job to succeed on its third run")
    assert flaky.result == 3 and flaky.retries == 2
    wait_until(lambda: jobs_faults.executions(path)["cron"] >= 1, 20, "the cron tick to run")
    ran = jobs_faults.executions(path)
    assert all(ran[j.refresh().result] == 1 for j in [*single, *many, later])  # each exactly once

    # Idle, the worker blocks on every master's wake list at once (no polling per queue),
    # so a job on any queue is picked up at once. (How fast: benchmarks/topology.py.)
    for q in queues:
        master = cluster.procs[cluster.master_of_slot(key_slot(q.keys.wake.encode()))]
        wait_until(lambda: "cmd=blpop" in master.client().execute_command("CLIENT", "LIST"), 10,
                   f"the worker to block on {q.name}'s master")
    for q in queues:
        j = q.enqueue("jobs_faults:record", path, f"idle-{q.name}")
        wait_until(lambda: j.refresh().status is JobStatus.FINISHED, 10, f"pickup on {q.name}")

    # Cancel a scheduled job; stop a running one (the command crosses the cluster bus).
    gone = queues[0].enqueue_in(3600, "jobs_faults:record", path, "never")
    gone.cancel()
    assert gone.refresh().status is JobStatus.CANCELED
    held = queues[1].enqueue("jobs_faults:record", path, "held", 30)
    wait_until(lambda: held.refresh().status is JobStatus.STARTED, 10, "the held job to start")
    res = cli(cluster.url(), "job", "stop", held.id, prefix=prefix)
    assert res.returncode == 0, res.stderr
    assert held.refresh().status is JobStatus.CANCELED

    # The CLI, doctor, metrics' depth source and the operator's status reader.
    # one and idle each, with: later; 20 many; flaky and the cron ticks. A minute may turn over:
    # a tick that has run (its record is written) may not have its outcome recorded yet.
    def settled() -> dict[str, Any] | None:
        info = json.loads(cli(cluster.url(), "info", "--json", prefix=prefix).stdout)
        counts = {q["name"]: q["finished"] for q in info["queues"]}
        want = {names[0]: 3, names[1]: 22, names[2]: 3 + jobs_faults.executions(path)["cron"]}
        return info if counts == want else None

    info = wait_until(settled, 10, "info's finished counts to match what ran", interval=0.2)
    assert [x["id"] for x in info["workers"]] == [worker_id(w)]
    assert {q["scheduler_leader"] for q in info["queues"]} == {worker_id(w)}
    show = cli(cluster.url(), "job", "show", flaky.id, "--json", prefix=prefix)
    assert show.returncode == 0 and json.loads(show.stdout)["retries"] == 2
    doctor = cli(cluster.url(), "doctor", prefix=prefix)
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    depth = queue_depth(cluster.url(), names, prefix=prefix)
    assert [d["name"] for d in depth] == names and all(d["failed"] == 0 for d in depth)
    # The planned failures log their tracebacks (under their WARNING lines); anything else is a crash.
    crashes = [part for part in w.log().split("Traceback (most recent call last):")[1:] if "ValueError: attempt" not in part]
    assert not crashes and "ERROR" not in w.log(), w.log()


def test_dependencies_across_masters(cluster, client, prefix, spawn, tmp_path) -> None:
    """A diamond over three queues on three masters (other slots): each release crosses by the
    ending queue's outbox; a failure cancels across them too."""
    path = str(tmp_path / "runs")
    names = spread_queues(cluster, prefix)
    q0, q1, q2 = (Queue(n, connection=client, prefix=prefix) for n in names)
    a = q0.enqueue("jobs_faults:record", path, "a", 0.2)
    b = q1.enqueue("jobs_faults:record", path, "b", depends_on=[a])
    c = q2.enqueue("jobs_faults:record", path, "c", depends_on=[a])
    d = q0.enqueue("jobs_faults:record", path, "d", depends_on=[b, c])
    x = q2.enqueue("jobs_faults:fail_first", path, "x", 5)
    canceled = q1.enqueue("jobs_faults:record", path, "never", depends_on=[x, a])
    assert {b.status, c.status, d.status, canceled.status} == {JobStatus.DEFERRED}
    spawn("-q", ",".join(names), "--with-scheduler", "--scheduler-lock-seconds", "1", "--lease-seconds", "3")
    wait_until(lambda: d.refresh().status is JobStatus.FINISHED, 20, "the diamond to finish")
    wait_until(lambda: canceled.refresh().status is JobStatus.CANCELED, 10, "the failure to cancel across slots")
    assert jobs_faults.executions(path) == {"a": 1, "b": 1, "c": 1, "d": 1, "x": 1}
    order = [line.split()[0] for line in Path(path).read_text().splitlines()]
    assert order.index("a") < min(order.index("b"), order.index("c")) and order.index("d") == len(order) - 1


def test_purge_and_requeue_from_the_cli(cluster, client, prefix, tmp_path) -> None:
    path = str(tmp_path / "runs")
    names = spread_queues(cluster, prefix, 2)
    q = Queue(names[1], connection=client, prefix=prefix)
    for i in range(5):
        q.enqueue("jobs_faults:record", path, f"p{i}")
    res = cli(cluster.url(), "purge", names[1], "--yes", prefix=prefix)
    assert res.returncode == 0 and "5 ready" in res.stdout, res.stderr
    assert q.count == 0


def test_a_node_url_given_as_redis_is_named(cluster) -> None:
    node = cluster.masters()[0]
    res = subprocess.run([sys.executable, "-m", "conveyor", "info", "--redis-url", f"redis://{node.host}:{node.port}/0"],
                         env=WORKER_ENV, capture_output=True, text=True, timeout=30)
    # Some keys happen to live on that node; the fleet key may not: either way, no traceback,
    # and a MOVED is explained.
    assert "Traceback" not in res.stderr
    if res.returncode:
        assert "redis+cluster://" in res.stderr


def _failover_under_load(cluster: RedisClusterDeployment, client: Any, prefix: str, spawn: Callable[..., WorkerProcess],
                         tmp_path: Path, fail: Callable[[Any], None]) -> None:
    path = str(tmp_path / "runs")
    names = spread_queues(cluster, prefix)
    # Enqueues wait for a replica (WAIT): an acknowledged job survives its master's death.
    queues = [Queue(n, connection=client, prefix=prefix, min_replicas=1) for n in names]
    workers = [spawn("-q", ",".join(names), "--with-scheduler", "--lease-seconds", "3", "--concurrency", "8")
               for _ in range(2)]
    try:
        ids = [worker_id(w) for w in workers]
    except AssertionError:
        print("\n".join(w.log()[-3000:] for w in workers))
        raise
    tags = [f"{q.name}-{i}" for i in range(150) for q in queues]
    for q in queues:
        q.enqueue_many([Queue.prepare_data("jobs_faults:record", (path, t, 0.02)) for t in tags if t.startswith(q.name + "-")])
    victim = cluster.master_of_slot(key_slot(keys.Keyspace(prefix).queue(names[0]).ready.encode()))
    wait_until(lambda: sum(jobs_faults.executions(path).values()) >= 100, 20, "work in flight")
    fail(victim)
    deadline = time.monotonic() + 30
    while len(tags) < 450 + 30 and time.monotonic() < deadline:  # keep enqueueing through the failover
        tag = f"after-{len(tags) - 450}"
        try:
            queues[len(tags) % 3].enqueue("jobs_faults:record", path, tag)
        except NotReplicated:
            pass  # queued on a master that has no replica left (it was the replica): it runs
        except (RedisError, OSError):
            time.sleep(0.1)
            continue
        tags.append(tag)
    assert len(tags) == 480, "enqueue did not come back after the failover"
    wait_until(lambda: all(jobs_faults.executions(path)[t] for t in tags), 60, "every job to run after the failover")
    ran = jobs_faults.executions(path)
    space = keys.Keyspace(prefix)
    wait_until(lambda: all(client.llen(space.queue(n).ready) == 0 and client.zcard(space.queue(n).leases) == 0
                           for n in names), 30, "the queues to drain")
    claimed = sum(client.scard(space.queue(n).claimed(wid)) for n in names for wid in ids)
    lost = [t for t in tags if ran[t] == 0]
    twice = sum(1 for t in tags if ran[t] > 1)
    print(f"\nfailover under load: {len(tags)} jobs, lost {len(lost)}, run twice {twice}, left claimed {claimed}")
    assert lost == [] and claimed == 0
    assert all(w.proc.poll() is None for w in workers), "a worker died in the failover"


@pytest.mark.slow
def test_manual_failover_under_load(cluster, client, prefix, spawn, tmp_path) -> None:
    _failover_under_load(cluster, client, prefix, spawn, tmp_path,
                         lambda victim: cluster.manual_failover(cluster.replicas(of=victim)[0]))


@pytest.mark.slow
def test_sigkill_of_a_master_with_a_replica_under_load(cluster, client, prefix, spawn, tmp_path) -> None:
    def kill(victim: Any) -> None:
        cluster.kill(victim)
        cluster.wait_ok(30)

    try:
        _failover_under_load(cluster, client, prefix, spawn, tmp_path, kill)
    finally:
        for addr, proc in list(cluster.procs.items()):
            if not proc.alive:
                cluster.restart(addr)


def test_waits_and_progress_on_queues_spread_over_the_masters(cluster, client, prefix, spawn, tmp_path) -> None:
    """The ending steps announce on their queue's master; classic pub/sub reaches the waiter's
    one subscription on any node. Sync and asyncio waits, over every master at once."""
    import asyncio

    from conveyor.aio import AsyncQueue

    trace = str(tmp_path / "runs")
    names = spread_queues(cluster, prefix)
    queues = [Queue(n, connection=client, prefix=prefix) for n in names]
    spawn("-q", ",".join(names), "--lease-seconds", "1.5")
    jobs = [q.enqueue("jobs_wait:add", trace, i, 1) for i, q in enumerate(queues)]
    assert queues[0].wait_all(jobs, timeout=30) == [1, 2, 3]
    seen: list[float] = []
    stepped = queues[1].enqueue("jobs_wait:steps", trace, 3, 0.3)
    assert stepped.wait(timeout=30, on_progress=lambda p: seen.append(p.value)) == 3
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)

    async def main() -> list[Any]:
        aclient = RedisTarget.parse(cluster.url()).aclient()
        try:
            aqueues = [AsyncQueue(n, connection=aclient, prefix=prefix) for n in names]
            ajobs = [await q.enqueue("jobs_wait:add", trace, 10 * i, 1) for i, q in enumerate(aqueues)]
            return list(await asyncio.gather(*(j.wait(timeout=30) for j in ajobs)))
        finally:
            await aclient.aclose()

    assert asyncio.run(main()) == [1, 11, 21]
