"""Progress and meta (current_job().set_progress / set_meta) with real worker processes: a
waiter sees the reports in order and the last one, `conveyor job show` and its --json print
them, reports ride round trips the worker makes anyway, and a process-pool job is refused
with one clear error rather than losing its reports."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from conveyor import JobContext, JobFailed, Progress, ProgressError, Queue
from conveyor.aio import AsyncQueue
from conveyor.context import OUTBOX
from conveyor.embedded import free_port
from support import WorkerProcess, cli, fetch, wait_until, worker_id
from test_pickup import settled

# Housekeeping every 0.5 s: a long job's progress is written at least that often.
SHORT_LEASE = ("--lease-seconds", "1.5")


def test_a_waiter_sees_progress_in_order_and_the_last_one(
        redis_url: str, conn: redis.Redis, queue: Queue, spawn_worker: Callable[..., WorkerProcess],
        tmp_path: Path) -> None:
    spawn_worker(*SHORT_LEASE)
    trace = tmp_path / "runs"
    job = queue.enqueue("jobs_wait:steps", str(trace), 6, 0.25)
    seen: list[Progress] = []
    assert job.wait(timeout=30, on_progress=seen.append) == 6
    values = [p.value for p in seen]
    print(f"\nprogress seen by the waiter: {values}")
    assert len(seen) >= 2, seen  # 1.5 s of reports, written every 0.5 s at least
    assert values == sorted(values) and len(set(values)) == len(values)
    assert seen[-1].value == 1.0 and seen[-1].message == "step 6 of 6" and seen[-1].job_id == job.id
    assert all(p.updated_at for p in seen)
    assert len(trace.read_text().splitlines()) == 6
    # The ended job keeps its last report and meta.
    assert job.progress is not None and (job.progress.value, job.progress.message) == (1.0, "step 6 of 6")
    assert job.meta == {"done": 6, "unit": "rows"}

    shown = cli(redis_url, "job", "show", job.id)
    assert shown.returncode == 0, shown.stderr
    progress_line = next(line for line in shown.stdout.splitlines() if line.startswith("progress"))
    assert "1 step 6 of 6 (" in progress_line
    assert any(line.startswith("meta") and '{"done": 6, "unit": "rows"}' in line for line in shown.stdout.splitlines())
    data = json.loads(cli(redis_url, "job", "show", job.id, "--json").stdout)
    assert data["progress"]["value"] == 1.0 and data["progress"]["message"] == "step 6 of 6"
    assert data["meta"] == {"done": 6, "unit": "rows"}


def test_progress_of_a_running_job_is_seen_by_job_show(
        redis_url: str, conn: redis.Redis, queue: Queue, spawn_worker: Callable[..., WorkerProcess],
        tmp_path: Path) -> None:
    spawn_worker(*SHORT_LEASE)
    job = queue.enqueue("jobs_wait:steps", str(tmp_path / "runs"), 20, 0.2)

    def reported() -> Progress | None:
        p = fetch(conn, job).progress
        return p if p is not None and 0 < p.value < 1 else None

    p = wait_until(reported, 15, "a report of the running job")
    assert p.message is not None and p.message.startswith("step ")
    shown = cli(redis_url, "job", "show", job.id)
    assert "status        started" in shown.stdout and "progress" in shown.stdout, shown.stdout


def test_reports_ride_the_round_trips_the_worker_makes_anyway(
        conn: redis.Redis, queue: Queue, spawn_worker: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    """1,000 reports in a tight loop cost no round trip: a job's outcome and the next BLPOP+claim,
    two, as for a job that reports nothing (test_pickup); the last value is the one written."""
    port = free_port()
    w = spawn_worker("--concurrency", "1", "--lease-seconds", "60", "--metrics-port", str(port),
                     "--metrics-host", "127.0.0.1")
    worker_id(w)
    trace = tmp_path / "runs"
    warm = queue.enqueue("jobs_wait:add", str(trace), 0, 0)
    assert warm.wait(timeout=20) == 0
    before = settled(port)
    job = queue.enqueue("jobs_wait:many_reports", str(trace), 1000)
    assert job.wait(timeout=20) == 1000
    assert settled(port) - before == 2, w.log()
    assert job.progress is not None and job.progress.value == 1000


def test_an_async_job_reports_progress(redis_url: str, spawn_worker: Callable[..., WorkerProcess],
                                       tmp_path: Path) -> None:
    spawn_worker(*SHORT_LEASE)
    trace = tmp_path / "runs"

    async def main() -> tuple[int, list[float]]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            q = AsyncQueue("default", connection=client)
            job = await q.enqueue("jobs_wait:async_steps", str(trace), 4, 0.3)
            seen: list[Progress] = []
            result = await job.wait(timeout=30, on_progress=seen.append)
            return result, [p.value for p in seen]
        finally:
            await client.aclose()

    result, values = asyncio.run(main())
    assert result == 4 and values[-1] == 1.0 and values == sorted(values), values
    assert trace.read_text().splitlines() == ["async done"]


def test_a_process_pool_job_is_refused_progress_with_one_clear_error(
        queue: Queue, spawn_worker: Callable[..., WorkerProcess], tmp_path: Path) -> None:
    spawn_worker("--pool", "process", "--concurrency", "1")
    trace = tmp_path / "runs"
    job = queue.enqueue("jobs_wait:report_in_child", str(trace))
    with pytest.raises(JobFailed) as caught:
        job.wait(timeout=60)
    assert caught.value.exc_type == "conveyor.errors.ProgressError"
    assert "process-pool job" in caught.value.message
    assert trace.read_text().splitlines() == ["child"]


def test_bad_reports_get_one_clear_error() -> None:
    ctx = JobContext("j", "e-1", "default", 1)
    for bad in ("half", float("nan"), True, None):
        with pytest.raises(ProgressError, match="progress must be a finite number"):
            ctx.set_progress(bad)  # type: ignore[arg-type]
    with pytest.raises(ProgressError, match="progress message must be a string"):
        ctx.set_progress(0.5, message=3)  # type: ignore[arg-type]
    with pytest.raises(ProgressError, match="meta must be a dict"):
        ctx.set_meta([1, 2])  # type: ignore[arg-type]
    with pytest.raises(ProgressError, match="meta must be JSON-able"):
        ctx.set_meta({"when": object()})
    with pytest.raises(ProgressError, match=r"meta is \d+ bytes as JSON; the limit is 4096"):
        ctx.set_meta({"blob": "x" * 5000})
    assert "e-1" not in OUTBOX.items  # nothing refused was queued for the worker
    ctx.set_progress(3, message="m" * 500)
    ctx.set_progress(4)
    assert OUTBOX.items.pop("e-1") is ctx and ctx.pending_progress == '{"value": 4, "message": null}'
