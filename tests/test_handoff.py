"""A slot passes from one job to the next without waiting for the event loop (a job thread
takes the next staged job itself), and the outcomes of long-enough jobs wait a few ms for
company so one round trip records several. Neither may cost a guarantee: no more jobs run at
once than the worker has slots, each job runs once, a stop starts nothing new, a lease that
may have run out is never started, and an outcome's wait is bounded."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import signal
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import redis

from conveyor import JobStatus, Queue
from conveyor.worker.execution import Outcome, ThreadCall
from conveyor.worker.threads import Done, JobThreads
from support import fetch, wait_until

Run = tuple[str, str, str, float, float]  # job ID, execution ID, where it ran, body start, body end


def read_runs(path: Path) -> list[Run]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        job_id, exec_id, where, start, end = line.split()
        out.append((job_id, exec_id, where, float(start), float(end)))
    return out


def most_at_once(runs: list[Run]) -> int:
    """The most job bodies running at one moment (an end before a start at the same instant)."""
    events = sorted([(r[3], 1) for r in runs] + [(r[4], -1) for r in runs], key=lambda e: (e[0], e[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def assert_each_ran_once(conn: redis.Redis, runs: list[Run], ids: list[str]) -> None:
    counts = collections.Counter(r[0] for r in runs)
    assert sorted(counts) == sorted(ids), "every job ran"
    assert max(counts.values()) == 1, f"ran more than once: {[i for i, n in counts.items() if n > 1]}"
    for job_id in ids:
        job = fetch(conn, job_id)
        assert job.status is JobStatus.FINISHED and job.deliveries == 1, (job_id, job.status, job.deliveries)


def test_short_sync_and_async_jobs_never_outnumber_the_slots(queue: Queue, conn, tmp_path, run_burst) -> None:
    """Async jobs share the slots with sync ones: a thread that took a staged job for a slot an
    async job holds would show as a fifth body running at once."""
    path = tmp_path / "runs"
    funcs = (["jobs_handoff:nap"] * 8 + ["jobs_handoff:async_nap"] * 4) * 20
    ids = [j.id for j in queue.enqueue_many([Queue.prepare_data(f, (str(path), 0.005)) for f in funcs])]
    run_burst("--concurrency", "4")
    runs = read_runs(path)
    assert_each_ran_once(conn, runs, ids)
    assert most_at_once(runs) <= 4
    assert {r[2] for r in runs if r[2] != "loop"} and any(r[2] == "loop" for r in runs)


def test_many_short_sleep_jobs_run_once_each_within_the_slots(queue: Queue, conn, tmp_path, run_burst) -> None:
    path = tmp_path / "runs"
    ids = [j.id for j in queue.enqueue_many([Queue.prepare_data("jobs_handoff:nap", (str(path), 0.004))
                                             for _ in range(400)])]
    w = run_burst("--concurrency", "8", "--prefetch", "40")
    runs = read_runs(path)
    assert_each_ran_once(conn, runs, ids)
    assert most_at_once(runs) <= 8
    assert len({r[2] for r in runs}) <= 8  # one thread per slot
    assert "400 jobs" in w.log()


def test_a_stop_under_load_starts_nothing_new(queue: Queue, conn, tmp_path, spawn_worker) -> None:
    """After the stop, a slot's thread may finish the job it had (or had just taken) but starts
    no other one: per thread at most one body starts after the stop, and only as the successor
    of a job that ended before it. The jobs it never started go back to the queue, uncharged."""
    path = tmp_path / "runs"
    ids = [j.id for j in queue.enqueue_many([Queue.prepare_data("jobs_handoff:nap", (str(path), 0.02))
                                             for _ in range(600)])]
    w = spawn_worker("--concurrency", "4", "--shutdown-timeout", "20", "--log-format", "json")
    wait_until(lambda: len(read_runs(path)) >= 40, 30, "jobs flowing through the slots")
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    lines = [json.loads(line) for line in w.log().splitlines() if line.startswith("{")]
    stop_ts = next(rec["ts"] for rec in lines if "stopping on SIGTERM" in rec["message"])
    # The stamp is cut to the millisecond: the stop happened before its next millisecond.
    stop = dt.datetime.fromisoformat(stop_ts).timestamp() + 0.001
    runs = read_runs(path)
    by_thread: dict[str, list[Run]] = collections.defaultdict(list)
    for r in sorted(runs, key=lambda r: r[3]):
        by_thread[r[2]].append(r)
    for where, mine in by_thread.items():
        after = [i for i, r in enumerate(mine) if r[3] > stop]
        assert len(after) <= 1, f"{where} started {len(after)} jobs after the stop"
        if after and after[0] > 0:
            assert mine[after[0] - 1][4] < stop, f"{where} took a job after the stop"
    ran = {r[0] for r in runs}
    assert len(ran) == len(runs), "a job ran twice"
    assert len(ran) < len(ids), "the stop came before the end of the load"
    for job_id in ids:
        job = fetch(conn, job_id)
        if job_id in ran:
            assert job.status is JobStatus.FINISHED and job.deliveries == 1
        else:
            assert job.status is JobStatus.QUEUED and job.deliveries == 0, (job_id, job.status, job.deliveries)


def test_an_outcome_waits_for_company_only_a_few_ms(queue: Queue, conn, tmp_path, run_burst) -> None:
    """50 ms jobs on 16 slots with a deep buffer: waiting for a quarter of slots + buffer (29
    outcomes) would hold each outcome ~90 ms, and 3/4 of a job 37 ms; the bound (3/4 of a job,
    at most 8 ms, from the oldest outcome's end) keeps the typical wait to a few ms plus the
    round trip."""
    path = tmp_path / "runs"
    ids = [j.id for j in queue.enqueue_many([Queue.prepare_data("jobs_handoff:nap", (str(path), 0.05))
                                             for _ in range(300)])]
    run_burst("--concurrency", "16", "--prefetch", "100")
    runs = read_runs(path)
    assert_each_ran_once(conn, runs, ids)
    ended = {job_id: fetch(conn, job_id).ended_at for job_id in ids}
    waits = [ended[r[0]] - r[4] for r in runs]  # type: ignore[operator]
    assert min(waits) >= 0
    assert statistics.median(waits) < 0.02, f"median wait {statistics.median(waits) * 1000:.1f} ms"


# -- the thread/loop protocol, in one process --------------------------------------------------


class Tag:
    def __init__(self, name: str, lease_until: float) -> None:
        self.name, self.lease_until = name, lease_until


def _handoff(stage: list[Tag], close_first: bool = False) -> tuple[list[Done], JobThreads]:
    """One thread runs a short call while `stage` waits staged; what it reported, in order."""
    done: list[Done] = []
    ran = threading.Event()

    async def main() -> JobThreads:
        threads = JobThreads(1, done.extend, lambda tag, now: tag.lease_until > now)
        for tag in stage:
            assert threads.stage(JobThreads.prepare(lambda: None, "json", b'{"a":[],"k":{}}', False, tag))
        if close_first:
            threads.close()
        threads.submit(JobThreads.prepare(lambda: ran.wait(5), "json", b'{"a":[],"k":{}}', False, Tag("first", 0)))
        ran.set()
        deadline = time.monotonic() + 5
        while len(done) < 1 + (0 if close_first or not stage or stage[0].lease_until < time.monotonic() else 1):
            assert time.monotonic() < deadline, "the thread never reported"
            await asyncio.sleep(0.005)
        threads.shutdown()
        return threads

    return done, asyncio.run(main())


def _names(done: list[Done]) -> list[tuple[str, Any]]:
    return [(c.tag.name, n.tag.name if n else None) for c, _, n in done]


def test_a_finishing_thread_takes_the_staged_job_and_reports_both_at_once() -> None:
    done, _ = _handoff([Tag("next", time.monotonic() + 60)])
    assert _names(done) == [("first", "next"), ("next", None)]
    call, outcome, nxt = done[0]
    assert isinstance(call, ThreadCall) and isinstance(outcome, Outcome) and outcome.ok
    assert nxt is not None and nxt.started > 0


def test_a_staged_job_whose_lease_may_have_run_out_is_left_for_the_loop() -> None:
    done, threads = _handoff([Tag("lapsed", time.monotonic() - 1)])
    assert _names(done) == [("first", None)]
    assert threads.staged == 0  # shutdown closed the stage and handed it back


def test_a_closed_stage_starts_nothing() -> None:
    done, _ = _handoff([Tag("next", time.monotonic() + 60)], close_first=True)
    assert _names(done) == [("first", None)]


def test_close_hands_back_what_is_staged() -> None:
    async def main() -> list[Any]:
        threads = JobThreads(1, lambda done: None, lambda tag, now: True)
        tags = [Tag(str(i), 0) for i in range(3)]
        for tag in tags:
            threads.stage(JobThreads.prepare(lambda: None, "json", None, False, tag))
        back = threads.close()
        assert not threads.stage(JobThreads.prepare(lambda: None, "json", None, False, Tag("late", 0)))
        threads.shutdown()
        return [t.name for t in back]

    assert asyncio.run(main()) == ["0", "1", "2"]


def test_a_job_that_ran_in_a_thread_is_freed_without_the_garbage_collector() -> None:
    """No reference cycle between a job and its thread call: once the runner lets go of an
    ended job, both are freed by reference counting (a worker's memory stays flat under load)."""
    import collections
    import gc
    import weakref

    from conveyor.settings import WorkerSettings
    from conveyor.worker.claimed import Claimed
    from conveyor.worker.metrics import WorkerMetrics
    from conveyor.worker.runner import Runner

    async def main() -> tuple[weakref.ref[Claimed], weakref.ref[Any]]:
        settings = WorkerSettings(redis_url="redis://unused", queues=("default",), concurrency=1)
        metrics = WorkerMetrics(worker_id="w", version="0", pool="thread", concurrency=1, queues=("default",))
        runner = Runner(settings, metrics, collections.Counter(), lambda: None)
        runner.open()
        job = Claimed("default", "j1", "e1", "jobs:add", b'{"a":[1,2],"k":{}}', "json", 10.0, 1, None)
        job.recorded_start, job.lease_until = True, time.monotonic() + 60
        runner.accept([job])
        call = job.call
        assert call is not None
        deadline = time.monotonic() + 5
        while not runner.ended:
            assert time.monotonic() < deadline, "the job never ended"
            await asyncio.sleep(0.005)
        assert runner.ended[0].outcome.ok
        refs = weakref.ref(job), weakref.ref(call)
        runner.ended.clear()  # what the flow does once Redis recorded the outcome
        runner.close()
        return refs

    gc.disable()
    try:
        job_ref, call_ref = asyncio.run(main())
        assert job_ref() is None, "a cycle keeps the job alive until a GC"
        # The call may live on in its thread until that thread exits (close() only asks it to),
        # but never holds the job: nothing per job accumulates.
        call = call_ref()
        assert call is None or call.tag is None
    finally:
        gc.enable()
