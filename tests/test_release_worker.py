"""Releasing a lost worker's jobs at once (release_worker.lua, ``conveyor worker release``),
instead of when their leases (15 s here) run out: real workers SIGKILLed or SIGSTOPped
mid-jobs, each job's runs recorded in a file outside Redis (tests/jobs_faults.py)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from conveyor import ConveyorError, JobStatus, Queue
from conveyor.admin import release_worker, workers_on_pod
from conveyor.keys import Keyspace
from support import cli, fetch, stale_completions, wait_status, wait_until, worker_id

LEASE = ("--lease-seconds", "15")
SPACE = Keyspace()


def runs(path: Path) -> list[tuple[str, int]]:
    """(tag, pid) of every run recorded so far."""
    if not path.exists():
        return []
    return [(t, int(p)) for t, p, _ in (line.split() for line in path.read_text().splitlines() if line)]


def held_by(conn: redis.Redis, job_ids: list[str], worker: str) -> dict[str, str]:
    """job ID -> status, for jobs this worker holds (prefetched or started)."""
    out = {}
    for jid in job_ids:
        job = fetch(conn, jid)
        if job.worker == worker and job.status in (JobStatus.STARTED, JobStatus.PREFETCHED):
            out[jid] = job.status.value
    return out


def test_sigkilled_worker_released_by_id_runs_its_jobs_elsewhere_within_3s(
        queue: Queue, conn: redis.Redis, redis_url: str, spawn_worker, tmp_path: Path) -> None:
    path = tmp_path / "runs"
    # Two that run until their lease is lost (a second run returns at once), two that wait prefetched.
    started = [queue.enqueue("jobs_faults:until_lease_lost", str(path), f"s{i}") for i in range(2)]
    prefetched = [queue.enqueue("jobs_faults:record", str(path), f"p{i}") for i in range(2)]
    ids = [j.id for j in started + prefetched]
    a = spawn_worker(*LEASE, "--concurrency", "2", "--prefetch", "2")
    a_id = worker_id(a)
    held = wait_until(lambda: len(h := held_by(conn, ids, a_id)) == 4 and h, 15, "A to hold all 4 jobs")
    assert held == {**{j.id: "started" for j in started}, **{j.id: "prefetched" for j in prefetched}}
    wait_until(lambda: len(runs(path)) == 2, 10, "both started jobs to run on A")
    # The registration counts them (running + prefetched) at each housekeeping round (every 5 s).
    wait_until(lambda: conn.hget(SPACE.worker(a_id), "inflight") == b"4", 8, "A's registration to count 4 jobs")
    assert conn.hget(SPACE.worker(a_id), "pod") is None  # no POD_NAME: not on Kubernetes

    b = spawn_worker(*LEASE, "--concurrency", "4")
    b_id = worker_id(b)
    own = queue.enqueue("jobs_faults:until_lease_lost", str(path), "b-own")
    wait_until(lambda: held_by(conn, [own.id], b_id), 10, "B to start its own job")
    own_exec = fetch(conn, own.id).execution_id

    a.signal(signal.SIGKILL)
    a.wait(5)
    # In-process (what the operator calls), so the figure is not a CLI's start-up; the CLI by ID
    # is the abandoned test's, by pod the stale one's.
    t0 = time.monotonic()
    [released] = release_worker(conn, a_id, "worker lost: pod conveyor-x-abc OOMKilled")
    assert released.line() == f"worker {a_id} queue default: 4 jobs requeued, 0 abandoned"

    def rerun() -> bool:
        counts = [t for t, pid in runs(path) if pid == b.pid]
        return all(f"s{i}" in counts and f"p{i}" in counts for i in range(2))

    wait_until(rerun, 10, "A's 4 jobs to run on B")
    elapsed = time.monotonic() - t0
    print(f"\n[release] worker released by ID -> its 4 jobs ran again on B: {elapsed:.2f}s (lease 15 s)")
    assert elapsed < 3, elapsed
    for jid in ids:
        wait_status(conn, jid, JobStatus.FINISHED, timeout=5)

    for j in started:  # charged once: one lost delivery, with the reason
        done = fetch(conn, j.id)
        assert done.worker == b_id and done.orphaned == 1 and done.deliveries == 2
        lost, ok = done.attempts
        assert (lost.exc_type, lost.exc_message) == ("WorkerLost", "worker lost: pod conveyor-x-abc OOMKilled")
        assert ok.exc_type is None
    for j in prefetched:  # never started on A: not charged
        done = fetch(conn, j.id)
        assert done.worker == b_id and done.orphaned == 0 and done.deliveries == 1
        assert done.attempts == []  # no lost delivery recorded
    # B's own job was not touched; A is gone from the registry.
    mine = fetch(conn, own.id)
    assert mine.status is JobStatus.STARTED and mine.execution_id == own_exec and mine.worker == b_id
    assert queue.worker_job_ids(b_id) == [own.id] and queue.worker_job_ids(a_id) == []
    assert not conn.exists(SPACE.worker(a_id)) and conn.zscore(SPACE.workers, a_id) is None
    assert [t for t, _ in runs(path)].count("b-own") == 1


@pytest.mark.slow
def test_sigstopped_worker_released_by_pod_its_late_outcome_is_stale(
        queue: Queue, conn: redis.Redis, redis_url: str, spawn_worker, tmp_path: Path) -> None:
    path = tmp_path / "runs"
    a = spawn_worker(*LEASE, "--concurrency", "1", env={"POD_NAME": "conveyor-x-abc"})
    a_id = worker_id(a)
    reg = wait_until(lambda: conn.hgetall(SPACE.worker(a_id)).get(b"pod"), 10, "A's registration")
    assert reg == b"conveyor-x-abc"
    # Start the job just after A's housekeeping round, so the next one (5 s on) cannot tell A
    # its lease is gone before the job ends: A's outcome then reaches Redis, late.
    seen = conn.hget(SPACE.worker(a_id), "last_seen")
    wait_until(lambda: conn.hget(SPACE.worker(a_id), "last_seen") != seen, 10, "a housekeeping round on A")
    round_at = time.monotonic()
    job = queue.enqueue("jobs_faults:record", str(path), "late", 1.0)  # records, then runs 1 s
    # Its code runs (not merely claimed in Redis: A might not have read the claim's reply yet).
    wait_until(lambda: runs(path) == [("late", a.pid)], 5, "the job's code to run on A")
    a.signal(signal.SIGSTOP)
    a_exec = fetch(conn, job.id).execution_id
    try:
        b = spawn_worker(*LEASE, env={"POD_NAME": "conveyor-x-def"})  # after: it would take the job first
        b_id = worker_id(b)
        # By pod, as the operator does (in-process: A must get its CONT well before its next round).
        assert workers_on_pod(conn, "conveyor-x-abc") == [a_id]
        [released] = release_worker(conn, a_id, "worker lost: pod conveyor-x-abc OOMKilled")
        assert released.requeued == [job.id]
        wait_until(lambda: held_by(conn, [job.id], b_id), 3, "B to run the job again")
    finally:
        a.signal(signal.SIGCONT)
    print(f"\n[release] SIGCONT {time.monotonic() - round_at:.2f}s after A's last housekeeping round (next at 5 s)")
    a.wait_log("no longer holds the lease", timeout=10)  # A's run ended; Redis refused its outcome
    done = wait_status(conn, job.id, JobStatus.FINISHED, timeout=10)
    assert done.worker == b_id and done.execution_id != a_exec
    lost, ok = done.attempts
    assert lost.exc_type == "WorkerLost" and lost.execution_id == a_exec
    assert lost.exc_message == "worker lost: pod conveyor-x-abc OOMKilled"
    assert sorted(pid for _, pid in runs(path)) == sorted([a.pid, b.pid])
    a.signal(signal.SIGTERM)
    a.wait(30)
    assert stale_completions(a.log()) == 1
    assert f"job {job.id} finished" not in a.log()


def test_release_at_max_deliveries_abandons_the_job(queue: Queue, conn: redis.Redis, redis_url: str,
                                                    spawn_worker) -> None:
    job = queue.enqueue("jobs:sleep", 30, max_deliveries=1)
    a = spawn_worker(*LEASE, "--concurrency", "1", env={"POD_NAME": "p"})
    a_id = worker_id(a)
    wait_until(lambda: held_by(conn, [job.id], a_id), 10, "the job to start on A")
    wait_until(lambda: conn.hget(SPACE.worker(a_id), "pod"), 10, "A's registration")
    a.signal(signal.SIGKILL)
    a.wait(5)
    out = cli(redis_url, "worker", "release", "--pod", "p", "--reason", "worker lost: pod p OOMKilled")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"worker {a_id} queue default: 0 jobs requeued, 1 abandoned"]
    done = fetch(conn, job.id)
    assert done.status is JobStatus.FAILED and done.exc_info.type == "Abandoned"
    assert "pod p OOMKilled" in done.exc_info.message
    assert queue.failed.job_ids == [job.id] and queue.started.job_ids == []
    # Released twice (the operator may see a pod's deletion and its OOM kill): nothing more happens.
    with pytest.raises(ConveyorError, match="unknown worker"):
        release_worker(conn, a_id, "again")
    assert fetch(conn, job.id).orphaned == 1


def test_release_by_id_from_the_cli_and_an_unknown_worker_or_pod_is_one_clear_line(
        redis_url: str, queue: Queue, conn: redis.Redis, spawn_worker) -> None:
    idle = spawn_worker(*LEASE)
    idle_id = worker_id(idle)
    wait_until(lambda: conn.exists(SPACE.worker(idle_id)), 10, "the worker's registration")
    idle.signal(signal.SIGKILL)
    idle.wait(5)
    out = cli(redis_url, "worker", "release", idle_id)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout.splitlines() == [f"worker {idle_id} queue default: 0 jobs requeued, 0 abandoned"]
    queue.enqueue("jobs:sleep", 1)
    out = cli(redis_url, "worker", "release", "nope")
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.strip().splitlines() == [
        "Error: unknown worker 'nope': not registered and holding no jobs (prefix 'conveyor')"]
    out = cli(redis_url, "worker", "release", "--pod", "gone-pod")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "Error: no worker is registered with pod 'gone-pod' (prefix 'conveyor')"]
    out = cli(redis_url, "worker", "release")
    assert out.returncode == 2 and "give either a WORKER_ID or --pod POD" in out.stderr
    assert queue.count == 1  # nothing else moved


@pytest.mark.slow
def test_inflight_by_pod_counts_the_jobs_each_pods_workers_hold(
        queue: Queue, conn: redis.Redis, spawn_worker, tmp_path: Path) -> None:
    """What the operator ranks worker pods by before a scale-down (pod-deletion-cost)."""
    from conveyor.admin import inflight_by_pod

    busy = spawn_worker(*LEASE, "--concurrency", "2", env={"POD_NAME": "conveyor-x-busy"})
    path = tmp_path / "runs"
    for tag in ("a", "b"):
        queue.enqueue("jobs_faults:record", str(path), tag, 30.0)  # records, then runs 30 s
    wait_until(lambda: sorted(runs(path)) == [("a", busy.pid), ("b", busy.pid)], 10, "both jobs running on busy")
    spawn_worker(*LEASE, env={"POD_NAME": "conveyor-x-idle"})
    # Each registration says what its worker holds as of its last round (every few seconds).
    wait_until(lambda: inflight_by_pod(conn) == {"conveyor-x-busy": 2, "conveyor-x-idle": 0}, 15,
               "the in-flight counts by pod")
