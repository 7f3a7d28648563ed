"""Job dependencies (conveyor/deps.py): graphs run in dependency order on real workers, failures
cancel or let dependents run, enqueue refuses what cannot be waited for, and releases across
queues survive a lost worker. What ran, and in which order, comes from the jobs' own file
(tests/jobs_deps.py), not from Conveyor's bookkeeping."""

from __future__ import annotations

import asyncio
import collections
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor import (
    AsyncQueue,
    EnqueueData,
    InvalidArgument,
    JobCanceled,
    JobStatus,
    NoSuchJob,
    Queue,
    chain,
    deps,
    group,
)
from support import cli, wait_until

FLAGS = ("--with-scheduler", "--scheduler-lock-seconds", "1", "--lease-seconds", "2", "--log-level", "warning")
STEP = "jobs_deps:step"


class Trace:
    """The jobs' own record: 'start NAME PID' and 'end NAME PID' lines, in the order written."""

    def __init__(self, tmp_path: Path) -> None:
        self.path = str(tmp_path / "trace")

    def lines(self) -> list[tuple[str, str, int]]:
        try:
            text = Path(self.path).read_text()
        except FileNotFoundError:
            return []
        return [(kind, name, int(pid)) for kind, name, pid in (line.split() for line in text.splitlines())]

    def ends(self) -> collections.Counter[str]:
        return collections.Counter(name for kind, name, _ in self.lines() if kind == "end")

    def starts(self) -> collections.Counter[str]:
        return collections.Counter(name for kind, name, _ in self.lines() if kind == "start")

    def assert_order(self, edges: list[tuple[str, str]]) -> None:
        """Every start of a dependent comes after an end of each of its dependencies."""
        lines = self.lines()
        first_end = {}
        for n, (kind, name, _) in enumerate(lines):
            if kind == "end":
                first_end.setdefault(name, n)
        for n, (kind, name, _) in enumerate(lines):
            if kind != "start":
                continue
            for before, after in edges:
                if after == name:
                    assert before in first_end and first_end[before] < n, f"{name} started before {before} ended"

    def step(self, name: str, seconds: float = 0.0, **options: Any) -> EnqueueData:
        return Queue.prepare_data(STEP, (self.path, name, seconds), job_id=options.pop("job_id", name), **options)


@pytest.fixture
def trace(tmp_path: Path) -> Trace:
    return Trace(tmp_path)


def nothing_left(conn: redis.Redis, *queues: Queue) -> None:
    """No job deferred, no release pending (an outbox entry goes just after its release)."""
    wait_until(lambda: not any(conn.zcard(q.keys.deferred) or conn.llen(q.keys.outbox) for q in queues), 10,
               "no job deferred and no release pending")


# -- refused at enqueue, before anything is written ------------------------------------------

def test_unknown_ids_cycles_and_bad_options_are_refused(conn: redis.Redis, queue: Queue, trace: Trace) -> None:
    a = queue.enqueue(STEP, trace.path, "a", job_id="a")
    with pytest.raises(NoSuchJob, match="unknown dependency 'default:nope'"):
        queue.enqueue(STEP, trace.path, "x", depends_on=[a, "nope"])
    with pytest.raises(NoSuchJob, match="unknown dependency 'other:a'"):
        queue.enqueue(STEP, trace.path, "x", depends_on=["other:a"])
    with pytest.raises(InvalidArgument, match="job 's' depends on itself"):
        queue.enqueue(STEP, trace.path, "s", job_id="s", depends_on=["s"])
    with pytest.raises(InvalidArgument, match="dependency cycle in the batch of queue 'default': p -> r -> q -> p"):
        queue.enqueue_many([trace.step("p", depends_on=["r"]), trace.step("q", depends_on=["p"]),
                            trace.step("r", depends_on=["q", a])])
    with pytest.raises(InvalidArgument, match="on_dependency_failure must be one of"):
        queue.enqueue(STEP, trace.path, "x", depends_on=[a], on_dependency_failure="ignore")
    with pytest.raises(InvalidArgument, match="cannot be combined with enqueue_in"):
        queue.enqueue_in(10, STEP, trace.path, "x", depends_on=[a])
    with pytest.raises(InvalidArgument, match="depends_on takes Jobs, job IDs or 'queue:id' strings, got int"):
        queue.enqueue(STEP, trace.path, "x", depends_on=[7])
    other = Queue("default", connection=conn, prefix="elsewhere").enqueue(STEP, trace.path, "o")
    with pytest.raises(InvalidArgument, match="under key prefix 'elsewhere', not 'conveyor'"):
        queue.enqueue(STEP, trace.path, "x", depends_on=[other])
    # Nothing of the refused batches was written.
    assert queue.job_ids == ["a"]
    assert conn.zcard(queue.keys.deferred) == 0
    assert not conn.exists(queue.keys.job("p"), queue.keys.job("q"), queue.keys.job("r"), queue.keys.job("s"))


def test_a_deferred_job_can_be_canceled_and_its_dependents_follow(conn: redis.Redis, queue: Queue, trace: Trace,
                                                                   redis_url: str) -> None:
    a = queue.enqueue(STEP, trace.path, "a")
    b = queue.enqueue(STEP, trace.path, "b", depends_on=[a])
    c = queue.enqueue(STEP, trace.path, "c", depends_on=[b])
    run = queue.enqueue(STEP, trace.path, "run", depends_on=[b], on_dependency_failure="run")
    assert (b.status, c.status) == (JobStatus.DEFERRED, JobStatus.DEFERRED)
    # Same queue: linked in the step that wrote them, so not due for the scheduler's check soon.
    assert conn.smembers(queue.keys.dependents(a.id)) == {f"default:{b.id}".encode()}
    assert conn.zscore(queue.keys.deferred, b.id) > (time.time() + 200) * 1000
    assert set(queue.deferred.job_ids) == {b.id, c.id, run.id}
    assert c.depends_on == [f"default:{b.id}"] and b.refresh().depends_on == [f"default:{a.id}"]
    [info] = json.loads(cli(redis_url, "info", "--json").stdout)["queues"]
    assert (info["ready"], info["deferred"]) == (1, 3)
    b.cancel()
    assert b.status is JobStatus.CANCELED
    assert c.refresh().status is JobStatus.CANCELED
    assert c.exc_info is not None and c.exc_info.type == "DependencyFailed" and b.id in c.exc_info.message
    assert run.refresh().status is JobStatus.QUEUED
    assert queue.job_ids == [a.id, run.id]
    assert conn.zcard(queue.keys.deferred) == 0


# -- graphs on real workers ------------------------------------------------------------------

def test_diamond_and_failure_policies(conn: redis.Redis, queue: Queue, trace: Trace, spawn_worker) -> None:
    """a -> (b, c) -> d; and x fails: its 'cancel' dependent (and that one's dependent) is
    canceled, its 'run' dependent runs."""
    queue.enqueue_many([
        trace.step("a", 0.1), trace.step("b", 0.1, depends_on=["a"]), trace.step("c", depends_on=["a"]),
        trace.step("d", depends_on=["b", "c"]),
    ])
    x = queue.enqueue("jobs_deps:broken", trace.path, "x", job_id="x")
    canceled = queue.enqueue(STEP, trace.path, "canceled", job_id="canceled", depends_on=[x])
    after = queue.enqueue(STEP, trace.path, "after", job_id="after", depends_on=[canceled], on_dependency_failure="run")
    runs = queue.enqueue(STEP, trace.path, "runs", job_id="runs", depends_on=[x], on_dependency_failure="run")
    assert queue.job_ids == ["a", "x"]
    spawn_worker("--concurrency", "4", *FLAGS)
    wait_until(lambda: trace.ends() == {"a": 1, "b": 1, "c": 1, "d": 1, "runs": 1, "after": 1}, 20, "the graph to run")
    trace.assert_order([("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")])
    assert x.refresh().status is JobStatus.FAILED
    assert canceled.refresh().status is JobStatus.CANCELED and canceled.exc_info is not None
    assert canceled.exc_info.message == "dependency default:x failed or was canceled"
    # A job's last line is written before its worker records the outcome.
    wait_until(lambda: {runs.refresh().status, after.refresh().status} == {JobStatus.FINISHED}, 10, "outcomes")
    assert "canceled" not in trace.starts()
    nothing_left(conn, queue)


def test_finished_or_expired_dependencies_do_not_block(conn: redis.Redis, queue: Queue, trace: Trace,
                                                       spawn_worker) -> None:
    kept = queue.enqueue(STEP, trace.path, "kept")
    gone = queue.enqueue(STEP, trace.path, "gone", result_ttl=0)  # deleted the moment it finishes
    failed = queue.enqueue("jobs_deps:broken", trace.path, "failed")
    spawn_worker(*FLAGS)
    wait_until(lambda: failed.refresh().status is JobStatus.FAILED and trace.ends()["kept"] == 1, 15, "the jobs to end")
    wait_until(lambda: not conn.exists(gone.key), 15, "the result_ttl=0 job to be gone")
    late = queue.enqueue(STEP, trace.path, "late", depends_on=[kept, gone])
    assert late.status is JobStatus.QUEUED  # released by the enqueue itself
    doomed = queue.enqueue(STEP, trace.path, "doomed", depends_on=[kept, failed])
    assert doomed.status is JobStatus.CANCELED
    # In one batch, the later job registered on the earlier before that one was canceled.
    after, first = queue.enqueue_many([trace.step("after", depends_on=["first"]), trace.step("first",
                                                                                          depends_on=[failed])])
    assert first.status is JobStatus.CANCELED and after.refresh().status is JobStatus.CANCELED
    wait_until(lambda: trace.ends()["late"] == 1, 15, "the late job to run")
    nothing_left(conn, queue)


def test_chain_of_100_with_the_async_client(conn: redis.Redis, redis_url: str, trace: Trace, spawn_worker) -> None:
    names = [f"s{i}" for i in range(100)]

    async def enqueue() -> list[Any]:
        q = AsyncQueue("default", redis_url=redis_url)
        try:
            return await q.enqueue_many(chain(*(trace.step(n) for n in names)))
        finally:
            await q.aclose()

    jobs = asyncio.run(enqueue())
    assert [j.status for j in jobs[:2]] == [JobStatus.QUEUED, JobStatus.DEFERRED]
    spawn_worker("--concurrency", "4", *FLAGS)
    wait_until(lambda: sum(trace.ends().values()) == 100, 30, "the chain to run")
    assert [name for kind, name, _ in trace.lines() if kind == "end"] == names
    assert trace.ends() == {n: 1 for n in names}
    nothing_left(conn, Queue("default", connection=conn))


# -- across queues ---------------------------------------------------------------------------

def test_a_dependency_on_another_queue(conn: redis.Redis, trace: Trace, spawn_worker) -> None:
    up, down = Queue("up", connection=conn), Queue("down", connection=conn)
    a = up.enqueue(STEP, trace.path, "a", 0.2)
    b = down.enqueue(STEP, trace.path, "b", depends_on=[a])
    c = down.enqueue(STEP, trace.path, "c", depends_on=["up:" + a.id, b])
    assert conn.smembers(up.keys.dependents(a.id)) == {f"down:{b.id}".encode(), f"down:{c.id}".encode()}
    spawn_worker("-q", "up,down", *FLAGS)
    wait_until(lambda: trace.ends() == {"a": 1, "b": 1, "c": 1}, 20, "both queues to run")
    trace.assert_order([("a", "b"), ("a", "c"), ("b", "c")])
    nothing_left(conn, up, down)


def test_a_waiter_hears_of_a_dependent_canceled_and_one_run(conn: redis.Redis, queue: Queue, trace: Trace,
                                                            spawn_worker) -> None:
    x = queue.enqueue("jobs_deps:broken", trace.path, "x")
    canceled = queue.enqueue(STEP, trace.path, "canceled", depends_on=[x])
    ran = queue.enqueue(STEP, trace.path, "ran", depends_on=[x], on_dependency_failure="run")
    spawn_worker(*FLAGS)
    with pytest.raises(JobCanceled):
        canceled.wait(timeout=15)
    assert ran.wait(timeout=15) == "ran"


def test_a_failure_on_another_queue_cancels_its_dependents(conn: redis.Redis, trace: Trace, spawn_worker) -> None:
    up, down = Queue("up", connection=conn), Queue("down", connection=conn)
    x = up.enqueue("jobs_deps:broken", trace.path, "x")
    canceled = down.enqueue(STEP, trace.path, "canceled", depends_on=[x])
    then = up.enqueue(STEP, trace.path, "then", depends_on=[f"down:{canceled.id}"])
    runs = down.enqueue(STEP, trace.path, "runs", depends_on=[x], on_dependency_failure="run")
    spawn_worker("-q", "up,down", *FLAGS)
    wait_until(lambda: trace.ends() == {"runs": 1}, 15, "the run-anyway dependent to run")
    wait_until(lambda: then.refresh().status is JobStatus.CANCELED, 10, "the cancel to cross back to up")
    wait_until(lambda: runs.refresh().status is JobStatus.FINISHED, 10, "the outcome of runs")
    assert canceled.refresh().status is JobStatus.CANCELED and "canceled" not in trace.starts()
    nothing_left(conn, up, down)


def test_an_outbox_entry_outlives_the_worker_that_wrote_it(conn: redis.Redis, trace: Trace, spawn_worker) -> None:
    """The release for another queue is written with the completion; if the worker dies before
    handing it on, the next scheduler does, once, however often the entry is seen."""
    up, down = Queue("up", connection=conn), Queue("down", connection=conn)
    a = up.enqueue(STEP, trace.path, "a")
    b = down.enqueue(STEP, trace.path, "b", depends_on=[a])
    first = spawn_worker("-q", "up", "--log-level", "warning")  # no scheduler: nobody drains the outbox
    wait_until(lambda: a.refresh().status is JobStatus.FINISHED, 15, "a to finish")
    assert conn.lrange(up.keys.outbox, 0, -1) == [f"1 down:{b.id} up:{a.id}".encode()]
    first.signal(signal.SIGKILL)
    first.wait()
    conn.rpush(up.keys.outbox, f"1 down:{b.id} up:{a.id}")  # as if handed on and not yet removed
    assert b.refresh().status is JobStatus.DEFERRED
    spawn_worker("-q", "up,down", *FLAGS)
    wait_until(lambda: trace.ends()["b"] == 1, 15, "b to run")
    wait_until(lambda: conn.llen(up.keys.outbox) == 0, 10, "the outbox to drain")
    wait_until(lambda: b.refresh().status is JobStatus.FINISHED, 10, "the outcome of b")
    assert trace.ends() == {"a": 1, "b": 1}
    nothing_left(conn, up, down)


def test_a_client_lost_between_write_and_link_is_caught_by_the_scheduler(
        conn: redis.Redis, queue: Queue, trace: Trace, spawn_worker, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dependency on another queue is linked by the client after the write (one on the same
    queue is linked in the write itself); a client lost in between leaves the job to the
    scheduler's check."""
    up = Queue("up", connection=conn)
    a = up.enqueue(STEP, trace.path, "a")

    def lost(*_: Any) -> Any:
        raise ConnectionError("the client died here")
        yield  # a generator, as link_created is

    monkeypatch.setattr(deps, "link_created", lost)
    with pytest.raises(ConnectionError):
        queue.enqueue(STEP, trace.path, "b", job_id="b", depends_on=[a])
    monkeypatch.undo()
    assert conn.hget(queue.keys.job("b"), "status") == b"deferred" and not conn.exists(up.keys.dependents(a.id))
    conn.zadd(queue.keys.deferred, {"b": 0})  # its minute of grace has passed
    spawn_worker("-q", "default,up", *FLAGS)
    wait_until(lambda: trace.ends() == {"a": 1, "b": 1}, 15, "b to be linked and run")
    trace.assert_order([("a", "b")])
    nothing_left(conn, queue, up)


def test_a_purged_dependency_cancels_its_dependents_at_the_next_check(conn: redis.Redis, queue: Queue, trace: Trace,
                                                                      redis_url: str, spawn_worker) -> None:
    a = queue.enqueue(STEP, trace.path, "a")
    b = queue.enqueue(STEP, trace.path, "b", depends_on=[a])
    assert cli(redis_url, "purge", "default", "--yes").returncode == 0  # a is deleted, never ends
    conn.zadd(queue.keys.deferred, {b.id: 0})  # as if its recheck interval had passed
    spawn_worker(*FLAGS)
    wait_until(lambda: b.refresh().status is JobStatus.CANCELED, 15, "b to be canceled")
    assert b.exc_info is not None and b.exc_info.type == "DependencyFailed" and not trace.starts()
    nothing_left(conn, queue)


def test_jobs_without_dependencies_touch_no_dependency_key(conn: redis.Redis, queue: Queue, trace: Trace,
                                                           run_burst) -> None:
    queue.enqueue_many([trace.step(f"j{i}") for i in range(5)])
    queue.enqueue("jobs_deps:broken", trace.path, "x").cancel()
    run_burst()
    base = queue.keys.base + ":"
    names = {k.decode()[len(base):].split(":")[0] for k in conn.scan_iter(match=base + "*")}
    assert not names & {"deps", "dependents", "outbox", "deferred"}, names
    assert conn.zcard(queue.keys.done) == 5  # the one write: finished IDs, per completion call
    assert not any(conn.hexists(queue.keys.job(f"j{i}"), "has_dependents") for i in range(5))


# -- at size, with a worker killed -----------------------------------------------------------

def test_fan_in_of_1000(conn: redis.Redis, queue: Queue, trace: Trace, spawn_worker) -> None:
    names = [f"m{i}" for i in range(1000)]
    jobs = queue.enqueue_many(group(trace.step(n) for n in names).then(trace.step("callback")))
    assert jobs[-1].status is JobStatus.DEFERRED and conn.scard(queue.keys.deps("callback")) == 1000
    spawn_worker("--concurrency", "8", *FLAGS)
    wait_until(lambda: trace.ends()["callback"] == 1, 60, "the callback to run")
    ends = [name for kind, name, _ in trace.lines() if kind == "end"]
    assert ends[-1] == "callback" and collections.Counter(ends) == {n: 1 for n in [*names, "callback"]}
    nothing_left(conn, queue)


@pytest.mark.slow
def test_a_worker_killed_mid_graph(conn: redis.Redis, trace: Trace, spawn_worker) -> None:
    """A chain, a diamond and a fan-in over two queues; the first worker is SIGKILLed midway and
    a second finishes. Every job ran, after its dependencies; only jobs that were on the killed
    worker ran twice; nothing is left deferred."""
    one, two = Queue("one", connection=conn), Queue("two", connection=conn)
    edges: list[tuple[str, str]] = []
    # c13 runs long enough to be killed while it runs.
    links = [trace.step(f"c{i}", 1.0 if i == 13 else 0.05, depends_on=[f"c{i - 1}"] if i else []) for i in range(30)]
    edges += [(f"c{i - 1}", f"c{i}") for i in range(1, 30)]
    one.enqueue_many(links)
    fan = [trace.step(f"f{i}", 0.05) for i in range(40)]
    one.enqueue_many(fan)
    two.enqueue_many([
        trace.step("top", 0.05, depends_on=["one:c10"]), trace.step("left", 0.1, depends_on=["top"]),
        trace.step("right", 0.1, depends_on=["top"]),
        trace.step("bottom", depends_on=["left", "right", "one:c29", *(f"one:f{i}" for i in range(40))]),
    ])
    edges += [("c10", "top"), ("top", "left"), ("top", "right"), ("left", "bottom"), ("right", "bottom"),
              ("c29", "bottom"), *((f"f{i}", "bottom") for i in range(40))]
    everything = [*(f"c{i}" for i in range(30)), *(f"f{i}" for i in range(40)), "top", "left", "right", "bottom"]
    first = spawn_worker("-q", "one,two", "--concurrency", "3", *FLAGS)
    wait_until(lambda: trace.starts()["c13"] >= 1, 30, "the chain to reach c13")
    first.signal(signal.SIGKILL)
    first.wait()
    spawn_worker("-q", "one,two", "--concurrency", "3", *FLAGS)
    wait_until(lambda: set(trace.ends()) == set(everything), 60, "every job to run")
    wait_until(lambda: all(Queue(q, connection=conn).fetch_job(n).status is JobStatus.FINISHED
                           for q, names in (("one", everything[:70]), ("two", everything[70:])) for n in names),
               30, "every job to be recorded finished")
    trace.assert_order(edges)
    killed = {name for kind, name, pid in trace.lines() if pid == first.pid}
    twice = {name for name, n in trace.ends().items() if n > 1}
    assert twice <= killed, f"{twice - killed} ran twice without a lost worker"
    assert trace.ends()["c13"] == 1 and trace.starts()["c13"] == 2  # killed mid-run, run again once
    nothing_left(conn, one, two)


def test_a_broken_release_in_a_batch_leaves_its_batch_mates_released(conn: redis.Redis, queue: Queue) -> None:
    """complete.lua ends two jobs in one call; the first's dependents key has the wrong type:
    the second's dependent is released all the same, in that step."""
    from conveyor import calls, scripts
    from conveyor.protocol import Code

    a, b = queue.enqueue("jobs:add", 1, 1), queue.enqueue("jobs:add", 2, 2)
    da = queue.enqueue("jobs:add", 3, 3, depends_on=[a])
    db = queue.enqueue("jobs:add", 4, 4, depends_on=[b])
    conn.delete(queue.keys.dependents(a.id))
    conn.set(queue.keys.dependents(a.id), "not a set")
    [reply] = scripts.execute(conn, lambda p: calls.claim(p, queue.keys, "w1", 2, 2, 60_000, "w1-", 0, False, 60))
    claimed = dict(zip(reply[3::13], reply[4::13]))  # id -> execution ID (claim.lua's rows)
    assert set(claimed) == {a.id.encode(), b.id.encode()}, reply
    done = [(a.id, claimed[a.id.encode()].decode(), b"2"), (b.id, claimed[b.id.encode()].decode(), b"4")]
    [codes] = scripts.execute(conn, lambda p: calls.complete(p, queue.keys, "w1", 60, done))
    assert codes == [Code.OK, Code.OK]
    assert db.refresh().status is JobStatus.QUEUED
    assert da.refresh().status is JobStatus.DEFERRED  # its release waits for the scheduler's check
