"""End to end in one breath: enqueue, a real worker process, results back."""

from conveyor import Job, JobStatus, Queue


def test_worker_runs_sync_async_and_failing_jobs(queue: Queue, run_burst, conn) -> None:
    ok = queue.enqueue("jobs:add", 2, 3)
    aok = queue.enqueue("jobs:async_add", 4, 5)
    bad = queue.enqueue("jobs:fail", "kaput")
    w = run_burst()
    assert Job.fetch(ok.id, connection=conn).result == 5
    assert Job.fetch(aok.id, connection=conn).result == 9
    failed = Job.fetch(bad.id, connection=conn)
    assert failed.status is JobStatus.FAILED
    assert failed.exc_info.type == "ValueError" and failed.exc_info.message == "kaput"
    assert "raise ValueError(message)" in failed.exc_info.traceback
    assert "3 jobs (2 finished, 1 failed)" in w.log()
