"""Prometheus metrics of a real worker process, scraped over HTTP and parsed with
prometheus_client's own text parser: values move as real jobs move."""

from __future__ import annotations

import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import jobs_obs
from conveyor import JobStatus, Queue, Retry, __version__, keys
from conveyor.embedded import free_port
from support import fetch, wait_until

# -- helpers --------------------------------------------------------------------------------


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape_text(port: int) -> str:
    status, body = get(port, "/metrics")
    assert status == 200, f"/metrics answered {status}: {body}"
    return body


def scrape(port: int) -> list[Any]:
    return list(text_string_to_metric_families(scrape_text(port)))


def value(families: list[Any], sample: str, **labels: str) -> float:
    """Sum of the samples named `sample` whose labels include `labels` (0 if none)."""
    return sum(
        s.value for f in families for s in f.samples
        if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())
    )


def samples(families: list[Any], sample: str) -> list[Any]:
    return [s for f in families for s in f.samples if s.name == sample]


@pytest.fixture
def metrics_worker(spawn_worker: Callable[..., Any]) -> Callable[..., tuple[Any, int]]:
    """Start a worker serving /metrics on a free port; return it once /readyz says 200."""

    def start(*args: str, **kw: Any) -> tuple[Any, int]:
        port = free_port()
        w = spawn_worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1", *args, **kw)

        def ready() -> bool:
            if w.proc.poll() is not None:
                return True
            try:
                return get(port, "/readyz", timeout=0.5)[0] == 200
            except OSError:
                return False

        wait_until(ready, 15, "the worker's /readyz to answer 200", interval=0.05)
        assert w.proc.poll() is None, f"worker exited ({w.proc.returncode}):\n{w.log()}"
        return w, port

    return start


def wait_metric(port: int, sample: str, at_least: float, what: str = "", timeout: float = 10.0, **labels: str) -> list[Any]:
    """Poll /metrics until `sample{labels}` >= at_least; return that scrape."""
    got: dict[str, Any] = {}

    def check() -> bool:
        got["fams"] = scrape(port)
        return value(got["fams"], sample, **labels) >= at_least

    wait_until(check, timeout, what or f"{sample}{labels} >= {at_least}", interval=0.05)
    return got["fams"]


# -- job counters --------------------------------------------------------------------------


def test_successful_job_moves_started_succeeded_and_run_time(queue: Queue, conn, metrics_worker) -> None:
    w, port = metrics_worker()
    before = scrape(port)
    assert value(before, "conveyor_jobs_started_total", queue="default") == 0
    assert value(before, "conveyor_jobs_succeeded_total", queue="default") == 0
    assert value(before, "conveyor_job_run_seconds_count", outcome="succeeded") == 0

    job = queue.enqueue("jobs:add", 2, 3)
    after = wait_metric(port, "conveyor_jobs_succeeded_total", 1, queue="default")
    assert fetch(conn, job).result == 5
    assert value(after, "conveyor_jobs_started_total", queue="default") == 1
    assert value(after, "conveyor_jobs_succeeded_total", queue="default") == 1
    assert value(after, "conveyor_job_run_seconds_count", queue="default", outcome="succeeded") == 1
    assert value(after, "conveyor_job_wait_seconds_count", queue="default") == 1
    assert value(after, "conveyor_jobs_failed_total") == 0
    assert value(after, "conveyor_jobs_retried_total") == 0

    queue.enqueue("jobs:async_add", 1, 1)
    again = wait_metric(port, "conveyor_jobs_succeeded_total", 2, queue="default")
    assert value(again, "conveyor_jobs_started_total", queue="default") == 2
    assert value(again, "conveyor_job_run_seconds_count", queue="default", outcome="succeeded") == 2


def test_failing_job_moves_failed(queue: Queue, conn, metrics_worker) -> None:
    w, port = metrics_worker()
    job = queue.enqueue("jobs:fail", "nope")
    fams = wait_metric(port, "conveyor_jobs_failed_total", 1, queue="default")
    assert fetch(conn, job).status is JobStatus.FAILED
    assert value(fams, "conveyor_jobs_failed_total", queue="default") == 1
    assert value(fams, "conveyor_jobs_started_total", queue="default") == 1
    assert value(fams, "conveyor_job_run_seconds_count", queue="default", outcome="failed") == 1
    assert value(fams, "conveyor_jobs_succeeded_total") == 0
    assert value(fams, "conveyor_jobs_retried_total") == 0


def test_retried_job_counts_one_retry_then_one_failure(queue: Queue, conn, metrics_worker) -> None:
    w, port = metrics_worker()
    job = queue.enqueue("jobs:fail", "twice", retry=Retry(max=1, intervals=[0]))
    fams = wait_metric(port, "conveyor_jobs_failed_total", 1, queue="default")
    done = fetch(conn, job)
    assert done.status is JobStatus.FAILED and done.retries == 1
    assert value(fams, "conveyor_jobs_retried_total", queue="default") == 1
    assert value(fams, "conveyor_jobs_failed_total", queue="default") == 1
    assert value(fams, "conveyor_jobs_started_total", queue="default") == 2
    assert value(fams, "conveyor_job_run_seconds_count", queue="default", outcome="retried") == 1
    assert value(fams, "conveyor_job_run_seconds_count", queue="default", outcome="failed") == 1
    assert value(fams, "conveyor_jobs_succeeded_total") == 0


# -- sampled queue depths and fleet counters ------------------------------------------------


def test_queue_depth_shows_jobs_waiting_for_a_slot(queue: Queue, conn, redis_url, metrics_worker) -> None:
    key = f"test:hold:{uuid.uuid4().hex}"
    w, port = metrics_worker("--concurrency", "1", "--prefetch", "0", "--lease-seconds", "0.6")
    holder = queue.enqueue("jobs_obs:hold", redis_url, key, 30)
    wait_until(lambda: conn.llen(f"{key}:running"), 10, "the holding job to run")
    waiting = [queue.enqueue("jobs:add", i, i) for i in range(3)]

    def depth(state: str) -> float:
        return value(scrape(port), "conveyor_queue_jobs", queue="default", state=state)

    wait_until(lambda: depth("ready") == 3, 5, "conveyor_queue_jobs{state=ready} == 3", interval=0.05)
    fams = scrape(port)
    assert value(fams, "conveyor_queue_jobs", queue="default", state="claimed") == 1
    assert value(fams, "conveyor_queue_jobs", queue="default", state="scheduled") == 0
    assert value(fams, "conveyor_jobs_started_total", queue="default") == 1

    jobs_obs.release(redis_url, key)
    wait_until(lambda: all(fetch(conn, j).status is JobStatus.FINISHED for j in [holder, *waiting]), 10,
               "all four jobs to finish")
    wait_until(lambda: depth("ready") == 0 and depth("claimed") == 0, 5, "the sampled depth to drain", interval=0.05)


def test_orphans_recovered_rises_when_a_second_worker_recovers_a_killed_workers_job(
        queue: Queue, conn, redis_url, spawn_worker, metrics_worker) -> None:
    key = f"test:slow-once:{uuid.uuid4().hex}"
    job = queue.enqueue("jobs_obs:slow_once", redis_url, key, 30)
    doomed = spawn_worker("--lease-seconds", "1")
    wait_until(lambda: conn.get(key) == b"1", 10, "the first execution to run")

    rescuer, port = metrics_worker("--lease-seconds", "1")
    before = scrape(port)
    assert value(before, "conveyor_orphans_recovered_total", queue="default") == 0
    assert value(before, "conveyor_reaped_total", queue="default") == 0

    doomed.signal(signal.SIGKILL)
    doomed.wait(5)
    fams = wait_metric(port, "conveyor_orphans_recovered_total", 1, queue="default")
    assert value(fams, "conveyor_orphans_recovered_total", queue="default") == 1
    assert value(fams, "conveyor_reaped_total", queue="default") == 1
    wait_until(lambda: fetch(conn, job).status is JobStatus.FINISHED, 10, "the recovered job to finish")
    done = fetch(conn, job)
    assert done.result == 2 and done.orphaned == 1


# -- worker identity and scheduler ----------------------------------------------------------


def test_worker_info_and_scheduler_leader(queue: Queue, conn, metrics_worker) -> None:
    w, port = metrics_worker("--with-scheduler", "--concurrency", "3", "--pool", "thread")
    fams = wait_metric(port, "conveyor_scheduler_leader", 1, "this worker to lead queue default", queue="default")
    leader = samples(fams, "conveyor_scheduler_leader")
    assert [(s.labels, s.value) for s in leader] == [({"queue": "default"}, 1.0)]

    [info] = samples(fams, "conveyor_worker_info")
    assert info.value == 1
    assert info.labels["pool"] == "thread"
    assert info.labels["concurrency"] == "3"
    assert info.labels["version"] == __version__
    registered = [wid.decode() for wid in conn.zrange(keys.DEFAULT.workers, 0, -1)]
    assert registered == [info.labels["worker"]]
    assert value(fams, "conveyor_concurrency_slots") == 3
    # Stamped by the once-a-second heartbeat, so it may trail /readyz by a beat.
    fams = wait_metric(port, "conveyor_worker_ready", 1, timeout=5)
    assert value(fams, "conveyor_redis_up") == 1


def test_worker_without_scheduler_reports_no_leadership(queue: Queue, metrics_worker) -> None:
    w, port = metrics_worker("--pool", "async", "--concurrency", "7")
    fams = scrape(port)
    assert value(fams, "conveyor_scheduler_leader") == 0
    [info] = samples(fams, "conveyor_worker_info")
    assert info.labels["pool"] == "async" and info.labels["concurrency"] == "7"


# -- naming and labels ----------------------------------------------------------------------


def test_no_job_ids_in_labels_and_conventional_names(queue: Queue, conn, metrics_worker) -> None:
    w, port = metrics_worker("--with-scheduler", "--lease-seconds", "0.6")
    jobs = [
        queue.enqueue("jobs:add", 1, 2),
        queue.enqueue("jobs:fail", "x"),
        queue.enqueue("jobs:fail", "y", retry=Retry(max=1, intervals=[0])),
        queue.enqueue("jobs:async_add", 3, 4),
        queue.enqueue_in(0.2, "jobs:add", 5, 6),
        queue.enqueue("jobs:add", 7, 8, unique_key="only-once"),
    ]
    queue.enqueue("jobs:add", 7, 8, unique_key="only-once")  # suppressed: returns the first
    custom = queue.enqueue("jobs:add", 9, 9, job_id="my-custom-job-id")
    jobs.append(custom)
    ids = {j.id for j in jobs}
    terminal = (JobStatus.FINISHED, JobStatus.FAILED)
    wait_until(lambda: all(fetch(conn, j).status in terminal for j in jobs), 15, "every job to end")
    # The sampled fleet counters have caught up with the enqueues and the duplicate.
    fams = wait_metric(port, "conveyor_duplicate_enqueues_suppressed_total", 1, queue="default")
    fams = wait_metric(port, "conveyor_queue_enqueued_total", len(jobs), queue="default")
    text = scrape_text(port)

    labelled = [s for f in fams for s in f.samples if s.labels]
    assert len(labelled) > 20  # there is something to check
    allowed = {"queue", "outcome", "state", "le", "worker", "version", "pool", "concurrency", "policy",
               "reason", "limit",  # flow control: rate/concurrency, rate_per_second/max_concurrency
               # prometheus_client's standard python_info and python_gc_* series
               "implementation", "major", "minor", "patchlevel", "generation"}
    for s in labelled:
        assert set(s.labels) <= allowed, f"{s.name} has unexpected labels {s.labels}"
        for label, v in s.labels.items():
            for job_id in ids:
                assert job_id not in v, f"{s.name} label {label}={v!r} carries job ID {job_id}"
    for job_id in ids:
        assert job_id not in text

    # Ours are conveyor_*; process_* and python_* are prometheus_client's standard collectors.
    standard = ("conveyor_", "process_", "python_")
    assert fams and all(f.name.startswith(standard) for f in fams), [f.name for f in fams]
    counters = [f for f in fams if f.type == "counter"]
    assert len(counters) >= 10
    for f in counters:
        assert all(s.name.endswith("_total") for s in f.samples), f"{f.name}: {[s.name for s in f.samples]}"
    # Also counters without samples yet (their TYPE line is all there is).
    type_lines = [line.split() for line in text.splitlines() if line.startswith("# TYPE ")]
    assert type_lines
    for _, _, name, kind in type_lines:
        assert name.startswith(standard), name
        if kind == "counter":
            assert name.endswith("_total"), f"counter {name} does not end in _total"
