"""First contact (issue 12, items 10 and 11): metrics that exist at 0 from the start, the
worker's default metrics port, `conveyor enqueue`, `conveyor info --watch` and "no queues
yet", and the smaller rough edges, each through the real CLI or a real worker process."""

from __future__ import annotations

import queue as queue_mod
import re
import signal
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

import jobs_first
from conveyor import InvalidArgument, JobStatus, Queue, Retry
from conveyor.embedded import free_port
from conveyor.settings import DEFAULT_METRICS_PORT, WorkerSettings
from support import WORKER_ENV, cli, fetch, wait_until

ROOT = Path(__file__).resolve().parents[1]


def ok(url: str, *args: str) -> str:
    res = cli(url, *args)
    assert res.returncode == 0, f"conveyor {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res.stdout


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


# -- metrics (item 10) ------------------------------------------------------------------------


def scrape(port: int) -> list[Any] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            return list(text_string_to_metric_families(resp.read().decode()))
    except OSError:
        return None


def test_every_counter_and_histogram_exists_at_zero_for_each_served_queue(spawn_worker: Callable[..., Any]) -> None:
    port = free_port()
    w = spawn_worker("-q", "mail,reports", "--metrics-port", str(port), "--metrics-host", "127.0.0.1")

    def sampled() -> list[Any] | None:
        assert w.proc.poll() is None, f"worker exited ({w.proc.returncode}):\n{w.log()}"
        families = scrape(port)
        # The fleet counters come from the first housekeeping sample of Redis; wait for it.
        depth = [s for f in families or [] if f.name == "conveyor_queue_jobs" for s in f.samples]
        return families if {s.labels["queue"] for s in depth} == {"mail", "reports"} else None

    families = wait_until(sampled, 20, "the worker to serve a sampled /metrics", interval=0.05)
    ours = [f for f in families if f.name.startswith("conveyor_") and f.type in ("counter", "histogram")]
    assert len(ours) >= 14
    empty = sorted(f.name for f in ours if not f.samples)
    assert not empty, f"counters/histograms with no series before their first event: {empty}"
    for f in ours:
        labelled = [s for s in f.samples if "queue" in s.labels]
        if labelled:
            assert {s.labels["queue"] for s in labelled} == {"mail", "reports"}, f.name
        # No job ran: every counter and every histogram count is 0 (bucket/sum/count alike).
        assert all(s.value == 0 for s in f.samples if not s.name.endswith("roundtrips_total")), f.name
    run = [s for f in ours if f.name == "conveyor_job_run_seconds" for s in f.samples if s.name.endswith("_count")]
    assert {(s.labels["queue"], s.labels["outcome"]) for s in run} == {
        (q, o) for q in ("mail", "reports") for o in ("succeeded", "failed", "retried", "stopped")}
    names = {f.name for f in families}
    # Process and Python collectors, on the worker's own registry.
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_open_fds",
                 "python_info", "python_gc_collections"):
        assert name in names, f"{name} missing from /metrics"


def test_default_metrics_port_is_not_node_exporters_and_matches_the_crd() -> None:
    assert DEFAULT_METRICS_PORT == WorkerSettings(redis_url="redis://localhost:6379/0").metrics_port == 9750
    res = subprocess.run([sys.executable, "-m", "conveyor", "worker", "--help"], capture_output=True, text=True,
                         timeout=30, env={k: v for k, v in WORKER_ENV.items() if k != "CONVEYOR_METRICS_PORT"})
    assert re.search(r"--metrics-port\s+INTEGER\s+Port for /metrics[^\]]*default:\s+9750\]", res.stdout, re.S), res.stdout
    for path in (ROOT / "crds" / "jobqueues.conveyor.dev.yaml",
                 ROOT / "charts" / "conveyor" / "files" / "crds" / "jobqueues.conveyor.dev.yaml"):
        crd = yaml.safe_load(path.read_text())
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert spec["properties"]["metrics"]["properties"]["port"]["default"] == DEFAULT_METRICS_PORT, path


# -- conveyor enqueue ---------------------------------------------------------------------------


def test_enqueue_command_runs_on_a_real_worker(redis_url: str, conn: redis.Redis, run_burst: Callable[..., Any]) -> None:
    job_id = ok(redis_url, "enqueue", "jobs:add", "1", "2", "-q", "default").strip()
    assert re.fullmatch(r"\S+", job_id), job_id
    echo_id = ok(redis_url, "enqueue", "jobs_first:takes_anything", '"ada"', "[1, 2]", "n=3", 'flag=true',
                 "--kwargs", '{"x": {"y": null}}', "--job-id", "echo-1", "--timeout", "5").strip()
    assert echo_id == "echo-1"
    later = ok(redis_url, "enqueue", "jobs:add", "--delay", "3600", "--", "-1", "2").strip()
    assert fetch(conn, later).status is JobStatus.SCHEDULED
    run_burst()
    assert fetch(conn, job_id).result == 3
    echo = fetch(conn, echo_id)
    assert echo.result == {"args": ["ada", [1, 2]], "kwargs": {"x": {"y": None}, "n": 3, "flag": True}}
    assert echo.timeout == 5


def test_enqueue_command_says_how_to_write_a_string(redis_url: str, conn: redis.Redis) -> None:
    res = cli(redis_url, "enqueue", "jobs_first:send_email", "ada")
    assert res.returncode == 2
    assert last_line(res.stderr) == ("Error: argument 'ada' is not a JSON value; write a string as '\"ada\"' "
                                     "(numbers, true/false/null, lists and objects as in JSON)")
    res = cli(redis_url, "enqueue", "jobs:add", "a=1", "2")
    assert res.returncode == 2
    assert last_line(res.stderr) == "Error: positional argument '2' follows a keyword argument"
    res = cli(redis_url, "enqueue", "my app:add", "1")
    assert res.returncode == 2
    assert last_line(res.stderr) == "Error: invalid function path 'my app:add': expected 'package.module:function'"
    assert conn.keys("*") == []  # nothing was written


@pytest.mark.parametrize("args", [("enqueue", "jobs:add", "1"), ("info", "--watch")], ids=" ".join)
@pytest.mark.parametrize("url", ["localhost:6379", "redis://127.0.0.1:1/0"], ids=["no scheme", "redis down"])
def test_new_commands_fail_in_one_line(args: tuple[str, ...], url: str) -> None:
    res = cli(url, *args, timeout=60)
    assert res.returncode != 0
    lines = (res.stdout + res.stderr).splitlines()
    assert len(lines) == 1, res.stdout + res.stderr
    expected = ("Error: unsupported Redis URL localhost:6379: expected redis://" if "//" not in url
                else "Error: cannot reach Redis at redis://127.0.0.1:1/0")
    assert lines[0].startswith(expected), lines[0]


# -- conveyor info ------------------------------------------------------------------------------


def test_info_on_an_empty_redis_says_no_queues_yet(redis_url: str) -> None:
    out = ok(redis_url, "info")
    assert out == "no queues yet: a queue appears when a job is first enqueued on it\n\nno live workers\n"


def test_info_watch_refreshes_until_ctrl_c(redis_url: str, queue: Queue) -> None:
    queue.enqueue("jobs:add", 1, 2)
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "info", "--watch", "0.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**WORKER_ENV, "CONVEYOR_REDIS_URL": redis_url})
    lines: queue_mod.Queue[str] = queue_mod.Queue()
    # A reader thread, so the test polls with a deadline instead of blocking on readline.
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    seen: list[str] = []

    def drain() -> int:
        while not lines.empty():
            seen.append(lines.get())
        return sum(1 for line in seen if line.startswith("Every 0.2s: conveyor info"))

    try:
        wait_until(lambda: drain() >= 2 or proc.poll() is not None, 30, "two frames of info --watch")
        assert drain() >= 2, f"exited {proc.returncode}: {''.join(seen)}{proc.stderr.read()}"  # type: ignore[union-attr]
        assert not any("\033" in line for line in seen), "screen-clearing codes written to a pipe"
        frame = "".join(seen).split("Every 0.2s")[1]
        assert re.search(r"^default\s+1\s+0", frame, re.M), frame
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    assert code == 0, stderr
    assert "Aborted" not in stderr and "Traceback" not in stderr, stderr


# -- smaller ones (item 11) ---------------------------------------------------------------------


def test_requeue_without_arguments_says_what_to_give(redis_url: str) -> None:
    res = cli(redis_url, "requeue")
    assert res.returncode == 2
    assert last_line(res.stderr) == "Error: give the IDs of the failed jobs to requeue, or --all-failed --queue Q"


def test_burst_summary_counts_a_retried_attempt(queue: Queue, conn: redis.Redis, run_burst: Callable[..., Any]) -> None:
    job = queue.enqueue("jobs:fail", "once", retry=Retry(max=1, intervals=[3600]))
    w = run_burst()
    assert fetch(conn, job).status is JobStatus.SCHEDULED  # its retry waits; this burst ran one attempt
    assert re.search(r"stopped: 1 job \(0 finished, 0 failed, 1 retried\), ", w.log()), w.log()


def test_unstorable_result_message_is_grammatical(queue: Queue, conn: redis.Redis, run_burst: Callable[..., Any]) -> None:
    job = queue.enqueue("jobs:unserializable_result")
    run_burst()
    failed = fetch(conn, job)
    assert failed.exc_info.type == "ResultNotSerializable"
    assert failed.exc_info.message.startswith("the job returned an object that json cannot store: ")


def test_prepare_data_takes_a_tuple_or_list_and_refuses_a_string(queue: Queue, conn: redis.Redis,
                                                                  run_burst: Callable[..., Any]) -> None:
    with pytest.raises(InvalidArgument) as err:
        Queue.prepare_data(jobs_first.send_email, "abc")
    assert str(err.value) == ("args must be a tuple or list of the function's arguments, got str 'abc' "
                              "(one argument: args=('abc',))")
    with pytest.raises(InvalidArgument, match=r"^args must be a tuple or list .* got dict "):
        queue.enqueue_call(jobs_first.send_email, {"to": "x"})
    jobs = queue.enqueue_many([Queue.prepare_data(jobs_first.send_email, ["ada", "hi"]),
                               Queue.prepare_data(jobs_first.send_email, ("bob",), {"html": True})])
    run_burst()
    assert [fetch(conn, j).result for j in jobs] == ["ada|hi|False", "bob||True"]


def test_enqueue_refuses_keywords_the_function_cannot_take(queue: Queue, conn: redis.Redis,
                                                          run_burst: Callable[..., Any]) -> None:
    with pytest.raises(InvalidArgument) as err:
        queue.enqueue(jobs_first.send_email, "ada", timout=5)
    assert str(err.value) == ("send_email() got an unexpected keyword argument 'timout' "
                              "(did you mean timeout= as an enqueue option?)")
    # By import path too, when this process has the module; and a near parameter is named.
    with pytest.raises(InvalidArgument) as err:
        queue.enqueue_call("jobs_first:send_email", ("ada",), {"subjct": "hi"})
    assert str(err.value) == "send_email() got an unexpected keyword argument 'subjct' (did you mean subject=?)"
    with pytest.raises(InvalidArgument, match=r"^send_email\(\) got an unexpected keyword argument 'cc'$"):
        queue.enqueue_in(60, jobs_first.send_email, "ada", cc="bob")
    assert conn.keys(f"{queue.keys.job_prefix}*") == []
    # Accepted: real parameters, **kwargs, and a module this process never imported.
    fine = [queue.enqueue(jobs_first.send_email, "ada", subject="hi", html=True, timeout=5),
            queue.enqueue("jobs_first.takes_anything", anything=1)]
    nowhere = queue.enqueue("not_imported_here:func", whatever=1)
    assert "not_imported_here" not in sys.modules
    nowhere.cancel()
    run_burst()
    assert [fetch(conn, j).result for j in fine] == ["ada|hi|True", {"args": [], "kwargs": {"anything": 1}}]
