"""A poison pill takes down only itself: a job that kills its worker process (os._exit, as a
segfault or the OOM killer would) is abandoned after max_deliveries, and the innocent jobs
that died with it are retried apart from each other and finish."""

from __future__ import annotations

import collections

import redis

from conveyor import JobStatus, Queue
from jobs_faults import executions
from support import Supervisor, fetch

INNOCENTS = 60


def test_a_poison_pill_is_abandoned_alone(queue: Queue, conn: redis.Redis, tmp_path, spawn_worker) -> None:
    path = str(tmp_path / "runs")
    data = [Queue.prepare_data("jobs_faults:record", (path, f"i{i}", 0.05)) for i in range(INNOCENTS)]
    data.insert(INNOCENTS // 3, Queue.prepare_data("jobs_faults:pill", (path, "pill")))
    jobs = queue.enqueue_many(data)
    pill = jobs[INNOCENTS // 3]
    innocents = [j for j in jobs if j is not pill]

    fleet = Supervisor(spawn_worker, 2, "--concurrency", "4", "--lease-seconds", "1")
    try:
        fleet.until(lambda: all(fetch(conn, j).status in (JobStatus.FINISHED, JobStatus.FAILED) for j in jobs), 90,
                    "every job to end")
    finally:
        fleet.stop()
    statuses = collections.Counter(fetch(conn, j).status.value for j in innocents)
    ran = executions(path)
    pill_job = fetch(conn, pill)
    print(f"\npoison pill: {ran['pill']} runs, {len(fleet.deaths)} worker deaths, innocents {dict(statuses)}, "
          f"innocents run more than once: {sum(1 for i in range(INNOCENTS) if ran[f'i{i}'] > 1)}")
    assert pill_job.status is JobStatus.FAILED and pill_job.exc_info.type == "Abandoned"
    # Charged only for runs whose start Redis had recorded: a pill that dies before its start
    # lands (started from the prefetch buffer) costs one uncharged run, as a suspect after that.
    assert pill_job.orphaned == 3 and 3 <= ran["pill"] <= 4
    assert statuses == {"finished": INNOCENTS}, "no innocent job is abandoned with the pill"
    assert all(ran[f"i{i}"] >= 1 for i in range(INNOCENTS))
    assert all(fetch(conn, j).orphaned <= 1 for j in innocents), "an innocent is charged at most once"
    assert len(fleet.deaths) == ran["pill"]
