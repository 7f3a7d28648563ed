"""dashboards/conveyor-grafana.json only queries metrics a real worker exports, with the
type each query assumes."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conveyor import Job, JobStatus, Queue, Retry
from conveyor.embedded import free_port
from support import wait_until

DASHBOARD = Path(__file__).resolve().parent.parent / "dashboards" / "conveyor-grafana.json"
METRIC = re.compile(r"conveyor_[a-z0-9_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dash.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep theirs inside


def exprs(dash: dict[str, Any]) -> list[str]:
    out = [t["expr"] for p in all_panels(dash) for t in p.get("targets", []) if t.get("expr")]
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        if isinstance(q, dict):
            q = q.get("query")
        if isinstance(q, str) and "conveyor_" in q:
            out.append(q)
    return out


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def test_dashboard_is_valid_json_with_panels() -> None:
    dash = load()
    panels = list(all_panels(dash))
    assert dash.get("title") and dash.get("uid")
    assert len(panels) >= 5
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids {ids}"
    for p in panels:
        if p.get("type") == "row":
            continue
        assert p.get("title"), p
        assert p.get("targets"), f"panel {p.get('title')!r} has no queries"
        for t in p["targets"]:
            assert METRIC.search(t.get("expr", "")), f"panel {p['title']!r} target {t.get('refId')} queries nothing of ours"
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]


@pytest.fixture
def exported(queue: Queue, conn, spawn_worker) -> dict[str, str]:
    """Names a real worker exports after running a few jobs: metric name -> type, with
    counters under their `_total` name and histograms also under `_bucket/_sum/_count`."""
    port = free_port()
    w = spawn_worker("--with-scheduler", "--lease-seconds", "0.6", "--metrics-port", str(port),
                     "--metrics-host", "127.0.0.1")
    jobs = [
        queue.enqueue("jobs:add", 1, 2),
        queue.enqueue("jobs:fail", "x"),
        queue.enqueue("jobs:fail", "y", retry=Retry(max=1, intervals=[0])),
        queue.enqueue_in(0.1, "jobs:add", 3, 4),
    ]
    wait_until(lambda: all(Job.fetch(j.id, connection=conn).status in (JobStatus.FINISHED, JobStatus.FAILED)
                           for j in jobs), 15, "the jobs to end")

    def sampled() -> str | None:
        code, body = get(port, "/metrics")
        return body if code == 200 and 'conveyor_queue_enqueued_total{queue="default"}' in body else None

    text = wait_until(sampled, 10, "the fleet counters to be sampled", interval=0.05)
    assert w.proc.poll() is None
    names: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        names[fam.name] = fam.type
        if fam.type == "counter":
            names[fam.name + "_total"] = "counter"
        for s in fam.samples:
            names.setdefault(s.name, fam.type)
    return names


def test_every_dashboard_metric_is_exported_by_a_worker(exported: dict[str, str]) -> None:
    used = set()
    for expr in exprs(load()):
        for name in METRIC.findall(expr):
            base = name
            for suffix in HISTOGRAM_SUFFIXES:
                if name.endswith(suffix) and exported.get(name[: -len(suffix)]) == "histogram":
                    base = name[: -len(suffix)]
            used.add(base)
    assert len(used) >= 15
    missing = sorted(n for n in used if n not in exported)
    assert not missing, f"the dashboard queries metrics no worker exports: {missing}"
    # The labelled job metrics really carry samples (the jobs above ran on this worker).
    for name in ("conveyor_jobs_started_total", "conveyor_jobs_succeeded_total", "conveyor_jobs_failed_total",
                 "conveyor_jobs_retried_total", "conveyor_job_run_seconds_bucket", "conveyor_job_wait_seconds_bucket",
                 "conveyor_queue_jobs", "conveyor_queue_enqueued_total", "conveyor_scheduler_leader"):
        assert name in exported, name


def test_dashboard_functions_fit_metric_types(exported: dict[str, str]) -> None:
    for expr in exprs(load()):
        for name in re.findall(r"\b(?:rate|increase|irate)\(\s*(conveyor_[a-z0-9_]+)", expr):
            assert name.endswith("_total") or name.endswith("_bucket"), f"rate/increase over {name}: {expr}"
            assert exported.get(name) in ("counter", "histogram"), f"{name} is {exported.get(name)}: {expr}"
        if "histogram_quantile" in expr:
            buckets = METRIC.findall(expr)
            assert buckets and all(b.endswith("_bucket") for b in buckets), expr
            assert all(exported.get(b[: -len("_bucket")]) == "histogram" for b in buckets), expr
            assert re.search(r"by \([^)]*\ble\b", expr), f"histogram_quantile without 'le' grouping: {expr}"
