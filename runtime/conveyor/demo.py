"""`conveyor demo`: a few jobs, one of them failing, through a real worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import click

from .connection import connect, mask_url
from .embedded import EmbeddedRedis
from .job import Job, JobStatus
from .queue import Queue

QUEUE = "demo"
ENDED = (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED)


def run_demo(redis_url: str | None) -> int:
    embedded = None
    if redis_url is None:
        embedded = EmbeddedRedis().start()
        redis_url = embedded.url
        click.echo(f"started a private redis-server on port {embedded.port} (pass --redis-url to use your own)")
    try:
        return _demo(redis_url)
    finally:
        if embedded is not None:
            embedded.stop()
            click.echo("stopped the private redis-server")


def _demo(url: str) -> int:
    conn = connect(url)
    q = Queue(QUEUE, connection=conn, result_ttl=60)
    jobs = [
        q.enqueue("conveyor.demo_jobs:add", 2, 3),
        q.enqueue("conveyor.demo_jobs:slow_square", 7),
        q.enqueue("conveyor.demo_jobs:slow_square", 12, seconds=0.8),
        q.enqueue("conveyor.demo_jobs:fetch_greeting", "conveyor"),
        q.enqueue("conveyor.demo_jobs:charge_card", 42.5),
    ]
    click.echo(f"enqueued {len(jobs)} jobs on queue {QUEUE!r} at {mask_url(url)}")
    cmd = [sys.executable, "-m", "conveyor", "worker", "--redis-url", url, "-q", QUEUE,
           "--concurrency", "4", "--burst", "--metrics-port", "0", "--log-level", "error"]
    click.echo("running: conveyor worker -q demo --concurrency 4 --burst")
    worker = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    t0 = time.monotonic()
    seen: dict[str, JobStatus] = {j.id: JobStatus.QUEUED for j in jobs}
    deadline = t0 + 60
    while True:
        for job in jobs:
            job.refresh()
            if job.status is not seen[job.id]:
                click.echo(f"  {time.monotonic() - t0:5.2f}s  {_name(job):<28} {seen[job.id].value} -> {job.status.value}")
                seen[job.id] = job.status
        if all(s in ENDED for s in seen.values()) or worker.poll() is not None or time.monotonic() > deadline:
            break
        time.sleep(0.05)  # a human-speed progress display, not synchronization
    code = worker.wait(timeout=30)
    for job in jobs:
        job.refresh()
    click.echo("")
    rows = [(_name(j), j.status.value, repr(j.result) if j.status is JobStatus.FINISHED else str(j.exc_info)) for j in jobs]
    widths = [max(len(r[i]) for r in rows + [("JOB", "STATUS", "RESULT / ERROR")]) for i in range(3)]
    for row in [("JOB", "STATUS", "RESULT / ERROR"), *rows]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    failed = [j for j in jobs if j.status is JobStatus.FAILED]
    click.echo("")
    click.echo(f"{len(jobs) - len(failed)} finished, {len(failed)} failed as intended (charge_card raises); "
               f"worker exited {code}")
    expected = all(j.status is JobStatus.FINISHED for j in jobs[:4]) and jobs[4].status is JobStatus.FAILED
    return 0 if expected and code == 0 else 1


def _name(job: Job) -> str:
    func = (job.func_path or "?").rsplit(":", 1)[-1]
    return f"{func}({', '.join(map(repr, job.args))})"
