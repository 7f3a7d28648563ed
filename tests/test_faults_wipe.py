"""A Redis that loses everything (FLUSHALL, a restart without persistence) while the fleet runs:
execution IDs never repeat, so a run from before the wipe cannot pass for a new one; workers,
queues and producers register again; registries never outlive their jobs."""

from __future__ import annotations

import json
import signal

from conveyor import JobStatus, Queue, keys
from jobs_faults import executions
from support import cli, fetch, wait_status, wait_until, worker_id


def test_a_run_from_before_a_wipe_cannot_record_over_the_new_job(queue: Queue, conn, redis_url, tmp_path,
                                                                 spawn_worker) -> None:
    path = str(tmp_path / "runs")
    queue.enqueue("jobs_faults:record_after", path, "old", 1.5, job_id="nightly-report")
    w = spawn_worker("--concurrency", "2", "--lease-seconds", "1.5")
    wait_status(conn, "nightly-report", JobStatus.STARTED)
    old_exec = fetch(conn, "nightly-report").execution_id

    conn.flushall()  # Redis lost everything; the old run goes on in the worker
    queue.enqueue("jobs_faults:record_after", path, "new", 3.0, job_id="nightly-report")
    wait_until(lambda: fetch(conn, "nightly-report").status is JobStatus.STARTED, 10, "the new job to start")
    new_exec = fetch(conn, "nightly-report").execution_id
    assert new_exec != old_exec
    wait_until(lambda: executions(path)["old"] == 1, 10, "the old run to end")
    w.wait_log(f"execution {old_exec} no longer holds the lease")
    assert fetch(conn, "nightly-report").status is JobStatus.STARTED, "the old result did not land on the new job"

    done = wait_status(conn, "nightly-report", JobStatus.FINISHED, timeout=15)
    assert done.result == "new" and done.execution_id == new_exec
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0


def test_after_a_wipe_workers_and_queues_register_again(queue: Queue, conn, redis_url, spawn_worker) -> None:
    w = spawn_worker("-q", "default,mail", "--lease-seconds", "0.9")
    wid = worker_id(w)
    wait_until(lambda: conn.zscore(keys.DEFAULT.workers, wid), 10, "the worker's registration")
    conn.flushall()
    wait_until(lambda: conn.zscore(keys.DEFAULT.workers, wid), 10, "the worker to register again")
    data = json.loads(cli(redis_url, "info", "--json").stdout)
    assert sorted(q["name"] for q in data["queues"]) == ["default", "mail"]
    assert [x["id"] for x in data["workers"]] == [wid]

    # A long-lived producer's queue is known again too, and job show finds its jobs.
    conn.flushall()
    other = Queue("reports", connection=conn)
    job = other.enqueue("jobs:add", 1, 2)
    assert b"reports" in conn.smembers(keys.DEFAULT.queues)
    show = cli(redis_url, "job", "show", job.id)
    assert show.returncode == 0 and "reports" in show.stdout, show.stderr
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0


def test_registry_entries_go_with_their_jobs_without_new_completions(queue: Queue, conn, spawn_worker) -> None:
    jobs = [queue.enqueue("jobs:add", i, i, result_ttl=1) for i in range(3)]
    failed = queue.enqueue("jobs:fail", failure_ttl=1)
    w = spawn_worker("--lease-seconds", "0.9")
    for j in jobs:
        wait_status(conn, j.id, JobStatus.FINISHED)
    wait_status(conn, failed.id, JobStatus.FAILED)
    assert conn.zcard(queue.keys.finished) == 3 and conn.zcard(queue.keys.failed) == 1
    # No completion follows: housekeeping alone must drop the entries once the jobs expire.
    wait_until(lambda: conn.zcard(queue.keys.finished) == 0 and conn.zcard(queue.keys.failed) == 0, 5,
               "the registries to forget expired jobs")
    assert not any(conn.exists(queue.keys.job(j.id)) for j in jobs)
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
