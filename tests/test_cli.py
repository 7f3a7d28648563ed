"""The operator CLI (`python -m conveyor ...`) run as a real subprocess against a real
redis-server and real worker processes: info, job show/stop/cancel, requeue, purge,
and the worker's JSON log lines."""

from __future__ import annotations

import json
import re
import signal
import uuid
from typing import Any

import pytest
import redis

import jobs_obs
from conveyor import Job, JobStatus, NoSuchJob, Queue, Retry, keys
from support import cli, fetch, wait_until


def ok(redis_url: str, *args: str, **kw: Any) -> str:
    res = cli(redis_url, *args, **kw)
    assert res.returncode == 0, f"conveyor {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def status_of(conn: redis.Redis, job: Job) -> JobStatus:
    return fetch(conn, job).status


@pytest.fixture
def key() -> str:
    return f"test:obs:{uuid.uuid4().hex}"


def wait_listening(conn: redis.Redis, n: int = 1) -> None:
    """Workers subscribe to the command channel as they start; wait for that."""
    channel = keys.DEFAULT.commands(0)
    wait_until(lambda: dict(conn.pubsub_numsub(channel)).get(channel.encode(), 0) >= n, 10,
               "a worker to listen for commands")


# -- info -----------------------------------------------------------------------------------


def build_fleet(queue: Queue, conn: redis.Redis, redis_url: str, key: str, spawn_worker: Any) -> dict[str, Any]:
    """One of each: finished, failed, started (held), 2 ready, scheduled, canceled; one worker
    with the scheduler and one slot."""
    done = queue.enqueue("jobs:add", 1, 2)
    bad = queue.enqueue("jobs:fail", "for info")
    w = spawn_worker("--concurrency", "1", "--prefetch", "0", "--with-scheduler")
    wait_until(lambda: status_of(conn, done) is JobStatus.FINISHED and status_of(conn, bad) is JobStatus.FAILED,
               10, "the first two jobs to end")
    held = queue.enqueue("jobs_obs:hold", redis_url, key, 30)
    wait_until(lambda: conn.llen(f"{key}:running"), 10, "the held job to run")
    ready = [queue.enqueue("jobs:add", i, i) for i in range(2)]
    later = queue.enqueue_in(3600, "jobs:add", 0, 0)
    gone = queue.enqueue("jobs:add", 9, 9)
    gone.cancel()
    worker_id = fetch(conn, held).worker
    assert worker_id
    wait_until(lambda: conn.get(queue.keys.scheduler_lock) == worker_id.encode(), 10, "the scheduler lock")
    wait_until(lambda: conn.zscore(keys.DEFAULT.workers, worker_id), 10, "the worker's registration")
    return {"worker": w, "worker_id": worker_id, "held": held, "ready": ready, "later": later}


def test_info_json_lists_counts_workers_current_jobs_and_leader(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    fleet = build_fleet(queue, conn, redis_url, key, spawn_worker)
    data = json.loads(ok(redis_url, "info", "--json"))

    [q] = [q for q in data["queues"] if q["name"] == "default"]
    assert {k: q[k] for k in ("ready", "scheduled", "started", "finished", "failed", "canceled")} == {
        "ready": 2, "scheduled": 1, "started": 1, "finished": 1, "failed": 1, "canceled": 1}
    assert q["scheduler_leader"] == fleet["worker_id"]

    [w] = data["workers"]
    assert w["id"] == fleet["worker_id"]
    assert w["pid"] == fleet["worker"].pid
    assert w["queues"] == ["default"]
    assert w["current_jobs"] == [fleet["held"].id]  # plain job IDs, no execution suffix
    assert ":" not in w["current_jobs"][0]
    assert w["scheduler"] is True
    assert (w["pool"], w["concurrency"], w["state"]) == ("thread", 1, "running")

    only = json.loads(ok(redis_url, "info", "--json", "-q", "default"))
    assert [q["name"] for q in only["queues"]] == ["default"]
    res = cli(redis_url, "info", "-q", "no-such-queue")
    assert res.returncode != 0 and "unknown queue" in res.stderr
    jobs_obs.release(redis_url, key)


def columns(header: str, names: list[str]) -> list[int]:
    starts = [header.index(n) for n in names]
    assert starts == sorted(starts) and starts[0] == 0
    return starts


def cell(row: str, starts: list[int], i: int) -> str:
    end = starts[i + 1] if i + 1 < len(starts) else len(row)
    return row[starts[i]:end].strip()


def test_info_prints_aligned_tables(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    fleet = build_fleet(queue, conn, redis_url, key, spawn_worker)
    out = ok(redis_url, "info")
    lines = out.splitlines()

    names = ["QUEUE", "READY", "RECOVERED", "SCHEDULED", "DEFERRED", "PREFETCHED", "STARTED", "FINISHED", "FAILED",
             "CANCELED", "SCHEDULER"]
    [hi] = [i for i, line in enumerate(lines) if line.startswith("QUEUE ")]
    starts = columns(lines[hi], names)
    [row] = [line for line in lines[hi + 1:] if line.startswith("default ")]
    for s in starts[1:]:  # every column begins where its header does, after a gap
        assert row[s - 2:s] == "  " and row[s] != " ", f"misaligned at {s}:\n{lines[hi]}\n{row}"
    assert [cell(row, starts, i) for i in range(len(names))] == [
        "default", "2", "0", "1", "0", "0", "1", "1", "1", "1", fleet["worker_id"]]

    wnames = ["WORKER", "QUEUES", "POOL", "CONC", "STATE", "SEEN", "CURRENT JOBS"]
    [wi] = [i for i, line in enumerate(lines) if line.startswith("WORKER ")]
    wstarts = columns(lines[wi], wnames)
    wrow = lines[wi + 1]
    assert cell(wrow, wstarts, 0) == fleet["worker_id"]
    assert cell(wrow, wstarts, 1) == "default"
    assert cell(wrow, wstarts, 6) == fleet["held"].id
    jobs_obs.release(redis_url, key)


def test_info_without_workers_says_so(queue: Queue, redis_url) -> None:
    queue.enqueue("jobs:add", 1, 1)
    out = ok(redis_url, "info")
    assert "no live workers" in out
    assert re.search(r"^default\s+1(\s+0){8}\s+none$", out, re.M), out


# -- job show -------------------------------------------------------------------------------


def test_job_show_json(queue: Queue, conn, redis_url, run_burst) -> None:
    good = queue.enqueue("jobs:add", 20, 22)
    bad = queue.enqueue("jobs:fail", "kaput", retry=Retry(max=1, intervals=[0]))
    run_burst()

    g = json.loads(ok(redis_url, "job", "show", good.id, "--json"))
    assert (g["id"], g["queue"], g["status"], g["func"]) == (good.id, "default", "finished", "jobs:add")
    assert g["result"] == 42 and g["error"] is None
    assert g["args"] == [20, 22] and g["attempts"] == []
    assert g["execution_id"] == fetch(conn, good).execution_id

    b = json.loads(ok(redis_url, "job", "show", bad.id, "--json"))
    assert b["status"] == "failed" and b["result"] is None
    assert b["error"] == {"type": "ValueError", "message": "kaput", "traceback": fetch(conn, bad).exc_info.traceback}
    assert b["error"]["traceback"].rstrip("\n").endswith("ValueError: kaput")
    assert b["retries"] == 1
    assert [a["exc_type"] for a in b["attempts"]] == ["ValueError", "ValueError"]
    assert [a["number"] for a in b["attempts"]] == [1, 2]
    assert len({a["execution_id"] for a in b["attempts"]}) == 2

    text = ok(redis_url, "job", "show", bad.id)
    assert re.search(r"^status\s+failed$", text, re.M), text
    assert "ATTEMPT" in text and "kaput" in text


def test_job_show_unknown_id_fails_clearly(queue: Queue, redis_url) -> None:
    queue.enqueue("jobs:add", 1, 1)
    res = cli(redis_url, "job", "show", "no-such-job", "--json")
    assert res.returncode != 0
    assert "no job" in res.stderr and "no-such-job" in res.stderr
    assert "Traceback" not in res.stderr and res.stdout == ""


# -- job stop -------------------------------------------------------------------------------


@pytest.mark.parametrize("pool,func", [("thread", "jobs_obs:spin_marked"), ("async", "jobs:async_sleep")])
def test_job_stop_stops_a_running_job_on_another_worker(queue: Queue, conn, redis_url, key, spawn_worker,
                                                        pool: str, func: str) -> None:
    args = (redis_url, key, 30) if func == "jobs_obs:spin_marked" else (30,)
    job = queue.enqueue(func, *args, retry=Retry(max=3, intervals=[0]))
    w = spawn_worker("--pool", pool, "--concurrency", "1", "--prefetch", "0")
    wait_until(lambda: status_of(conn, job) is JobStatus.STARTED, 10, "the job to start")
    if pool == "thread":
        wait_until(lambda: conn.llen(key), 10, "the job body to run")
    wait_listening(conn)

    out = ok(redis_url, "job", "stop", job.id)
    assert f"stopped {job.id}" in out and "canceled" in out
    stopped = fetch(conn, job)
    assert stopped.status is JobStatus.CANCELED
    assert stopped.exc_info is not None and stopped.exc_info.type == "JobStopped"
    if pool == "thread":
        wait_until(lambda: conn.get(f"{key}:raised") == b"JobStopped", 5, "JobStopped raised inside the job")

    # The one slot is free again; a retry would have been queued ahead of this job.
    nxt = queue.enqueue("jobs:add" if pool == "thread" else "jobs:async_add", 2, 2)
    wait_until(lambda: status_of(conn, nxt) is JobStatus.FINISHED, 10, "the worker to run the next job")
    assert fetch(conn, nxt).result == 4
    after = fetch(conn, job)
    assert after.status is JobStatus.CANCELED and after.retries == 0
    assert job.id in queue.canceled
    assert job.id not in queue.job_ids and job.id not in queue.scheduled and job.id not in queue.started
    assert w.proc.poll() is None
    assert "stopped on request" in w.log()


def test_job_stop_on_a_queued_job_points_to_cancel(queue: Queue, conn, redis_url) -> None:
    job = queue.enqueue("jobs:add", 1, 1)
    res = cli(redis_url, "job", "stop", job.id)
    assert res.returncode != 0
    assert "queued" in res.stderr and "job cancel" in res.stderr
    assert status_of(conn, job) is JobStatus.QUEUED and queue.job_ids == [job.id]


# -- job cancel -----------------------------------------------------------------------------


def test_job_cancel_queued_and_scheduled(queue: Queue, conn, redis_url) -> None:
    queued = queue.enqueue("jobs:add", 1, 1)
    keep = queue.enqueue("jobs:add", 2, 2)
    scheduled = queue.enqueue_in(3600, "jobs:add", 3, 3)

    assert f"canceled {queued.id}" in ok(redis_url, "job", "cancel", queued.id)
    assert f"canceled {scheduled.id}" in ok(redis_url, "job", "cancel", scheduled.id)

    assert status_of(conn, queued) is JobStatus.CANCELED
    assert status_of(conn, scheduled) is JobStatus.CANCELED
    assert queue.job_ids == [keep.id]
    assert scheduled.id not in queue.scheduled and queue.scheduled.count == 0
    assert queued.id in queue.canceled and scheduled.id in queue.canceled

    again = cli(redis_url, "job", "cancel", queued.id)
    assert again.returncode != 0 and "canceled" in again.stderr
    missing = cli(redis_url, "job", "cancel", "no-such-job")
    assert missing.returncode != 0 and "no job" in missing.stderr


# -- requeue --------------------------------------------------------------------------------


def test_requeue_one_and_all_failed(queue: Queue, conn, redis_url, run_burst) -> None:
    failed = [queue.enqueue("jobs:fail", f"f{i}") for i in range(3)]
    run_burst()
    assert all(status_of(conn, j) is JobStatus.FAILED for j in failed)

    out = ok(redis_url, "requeue", failed[0].id)
    assert f"requeued {failed[0].id} on queue default" in out
    assert status_of(conn, failed[0]) is JobStatus.QUEUED
    assert queue.job_ids == [failed[0].id]
    assert sorted(queue.failed.job_ids) == sorted(j.id for j in failed[1:])

    out = ok(redis_url, "requeue", "--all-failed", "-q", "default")
    assert "requeued 2 failed jobs of queue default" in out
    assert all(status_of(conn, j) is JobStatus.QUEUED for j in failed)
    assert sorted(queue.job_ids) == sorted(j.id for j in failed)
    assert queue.failed.count == 0

    not_failed = cli(redis_url, "requeue", failed[0].id)
    assert not_failed.returncode != 0 and "not failed" in not_failed.stderr
    usage = cli(redis_url, "requeue", "--all-failed")
    assert usage.returncode != 0 and "--queue" in usage.stderr


# -- purge ----------------------------------------------------------------------------------


def build_purge_scene(queue: Queue, conn: redis.Redis, redis_url: str, key: str, spawn_worker: Any) -> dict[str, Any]:
    bad = queue.enqueue("jobs:fail", "stays failed")
    spawn_worker("--concurrency", "1", "--prefetch", "0")
    wait_until(lambda: status_of(conn, bad) is JobStatus.FAILED, 10, "the failing job to fail")
    held = queue.enqueue("jobs_obs:hold", redis_url, key, 30)
    wait_until(lambda: conn.llen(f"{key}:running"), 10, "the held job to run")
    ready = [queue.enqueue("jobs:add", i, i) for i in range(3)]
    later = queue.enqueue_in(3600, "jobs:add", 0, 0)
    return {"bad": bad, "held": held, "ready": ready, "later": later}


def test_purge_without_yes_and_answer_no_aborts(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    scene = build_purge_scene(queue, conn, redis_url, key, spawn_worker)
    res = cli(redis_url, "purge", "default", "--scheduled", input="n\n")
    assert res.returncode != 0
    assert "Delete every ready and scheduled job of queue 'default'?" in res.stdout
    assert "Aborted" in res.stderr
    assert queue.job_ids == [j.id for j in scene["ready"]]
    assert queue.scheduled.job_ids == [scene["later"].id]
    assert all(status_of(conn, j) is JobStatus.QUEUED for j in scene["ready"])
    jobs_obs.release(redis_url, key)


def test_purge_yes_deletes_ready_then_scheduled_jobs_only(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    scene = build_purge_scene(queue, conn, redis_url, key, spawn_worker)

    out = ok(redis_url, "purge", "default", "--yes")
    assert "purged queue default: 3 ready jobs deleted" in out
    assert queue.count == 0
    for j in scene["ready"]:
        with pytest.raises(NoSuchJob):
            fetch(conn, j)
    assert queue.scheduled.job_ids == [scene["later"].id]
    assert status_of(conn, scene["later"]) is JobStatus.SCHEDULED
    assert status_of(conn, scene["held"]) is JobStatus.STARTED and scene["held"].id in queue.started
    assert status_of(conn, scene["bad"]) is JobStatus.FAILED and scene["bad"].id in queue.failed

    out = ok(redis_url, "purge", "default", "--yes", "--scheduled")
    assert "0 ready, 1 scheduled jobs deleted" in out
    assert queue.scheduled.count == 0
    with pytest.raises(NoSuchJob):
        fetch(conn, scene["later"])
    assert status_of(conn, scene["held"]) is JobStatus.STARTED
    assert status_of(conn, scene["bad"]) is JobStatus.FAILED

    jobs_obs.release(redis_url, key)  # the running job was untouched: it still finishes
    wait_until(lambda: status_of(conn, scene["held"]) is JobStatus.FINISHED, 20, "the held job to finish")
    assert fetch(conn, scene["held"]).result == "released"

    unknown = cli(redis_url, "purge", "no-such-queue", "--yes")
    assert unknown.returncode != 0 and "unknown queue" in unknown.stderr


# -- JSON logs ------------------------------------------------------------------------------


def json_lines(log: str) -> list[dict[str, Any]]:
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines
    records = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
        assert isinstance(rec, dict), line
        assert {"ts", "level", "logger", "message"} <= set(rec), rec
        records.append(rec)
    return records


def test_json_log_lines_carry_job_fields(queue: Queue, conn, run_burst) -> None:
    good = queue.enqueue("jobs:add", 1, 2)
    bad = queue.enqueue("jobs:fail", "logged")
    flaky = queue.enqueue("jobs:fail", "again", retry=Retry(max=1, intervals=[0]))
    w = run_burst("--log-format", "json")
    records = json_lines(w.log())

    by_job: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        if "job_id" in rec:
            by_job.setdefault(rec["job_id"], []).append(rec)
    assert set(by_job) == {good.id, bad.id, flaky.id}
    for job_id, recs in by_job.items():
        for rec in recs:
            assert rec["queue"] == "default" and rec["execution_id"], rec
            assert job_id in rec["message"]
            if rec["event"] != "start":
                assert isinstance(rec["duration"], float) and 0 <= rec["duration"] < 10, rec
            else:
                assert "duration" not in rec

    # At INFO, one line per attempt, when it ends ("start" lines are DEBUG), naming the function.
    assert [r["event"] for r in by_job[good.id]] == ["complete"]
    assert [r["event"] for r in by_job[bad.id]] == ["fail"]
    assert [r["event"] for r in by_job[flaky.id]] == ["retry", "fail"]
    assert {r["func"] for recs in by_job.values() for r in recs} == {"jobs:add", "jobs:fail"}
    # Each attempt has its own execution ID; the last one is what Redis holds.
    flaky_execs = [r["execution_id"] for r in by_job[flaky.id]]
    assert flaky_execs[0] != flaky_execs[1]
    assert flaky_execs[-1] == fetch(conn, flaky).execution_id
    assert by_job[good.id][-1]["execution_id"] == fetch(conn, good).execution_id
    assert by_job[bad.id][-1]["level"] == "warning"


def test_json_log_recovered_line_carries_job_fields(queue: Queue, conn, redis_url, key, spawn_worker) -> None:
    job = queue.enqueue("jobs_obs:slow_once", redis_url, key, 30)
    doomed = spawn_worker("--lease-seconds", "1")
    wait_until(lambda: conn.get(key) == b"1", 10, "the first execution to run")
    doomed.signal(signal.SIGKILL)
    doomed.wait(5)
    rescuer = spawn_worker("--lease-seconds", "1", "--log-format", "json")
    wait_until(lambda: status_of(conn, job) is JobStatus.FINISHED, 15, "the recovered job to finish")
    records = json_lines(rescuer.log())
    [recovered] = [r for r in records if "recovered" in r["message"]]
    assert job.id in recovered["message"]
    assert recovered.get("job_id") == job.id and recovered.get("queue") == "default"
