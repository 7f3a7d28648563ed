"""The operator's own Prometheus metrics, served on ``/metrics`` (CONVEYOR_OPERATOR_METRICS_PORT).

A registry of its own, not prometheus_client's global one: the page holds the series below
and the process' own (memory, CPU, open files), never what imported code registers globally. The other modules only increment: each hook is one line, so the operator's logic
stays readable without the metrics.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

log = logging.getLogger("conveyor_operator.metrics")
T = TypeVar("T")

disable_created_metrics()  # the *_created series double the page and nobody graphs them
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

RECONCILES = Counter("conveyor_operator_reconciles", "Reconcile passes of JobQueues, by outcome: ok, "
                     "degraded (a problem reported in the Degraded condition) or error (the pass raised)",
                     ["outcome"], registry=REGISTRY)
RESYNCS = Counter("conveyor_operator_resyncs", "Resync passes of JobQueues (queue depth read, status "
                  "refreshed; a full reconcile only when something changed)", registry=REGISTRY)
ERRORS = Counter("conveyor_operator_errors", "Operator steps that failed with an exception, by step "
                 "(reconcile, resync, autoscale, pod_recovery)", ["step"], registry=REGISTRY)
SCALE_DECISIONS = Counter("conveyor_operator_scale_decisions", "Replica changes the autoscaler applied to "
                          "worker Deployments, by direction (up, down)", ["direction"], registry=REGISTRY)
# Buckets around the operator's Redis timeout (2 s by default): a read near it is about to fail.
REDIS_READS = Histogram("conveyor_operator_redis_read_seconds", "Duration of the operator's Redis reads: "
                        "queue depth (every resync) and demand (every autoscaling poll)", ["read"],
                        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0),
                        registry=REGISTRY)
RELEASED_WORKERS = Counter("conveyor_operator_released_workers", "Workers released because their pod was "
                           "lost (deleted, evicted, OOM-killed)", registry=REGISTRY)
RELEASED_JOBS = Counter("conveyor_operator_released_jobs", "Jobs whose leases were released at once because "
                        "their worker's pod was lost (requeued or abandoned)", registry=REGISTRY)
JOBQUEUES = Gauge("conveyor_operator_jobqueues", "JobQueues the operator knows (in the namespaces it "
                  "watches)", registry=REGISTRY)
LEADER = Gauge("conveyor_operator_leader", "1 while this operator replica is the active one (always 1 when it "
               "runs standalone), 0 while it is paused in favour of another", registry=REGISTRY)


def reconciled(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` (a Reconciler.reconcile) counted by outcome: its Outcome.problem says degraded."""
    try:
        outcome = fn(*args)
    except Exception:
        RECONCILES.labels("error").inc()
        ERRORS.labels("reconcile").inc()
        raise
    RECONCILES.labels("degraded" if getattr(outcome, "problem", None) else "ok").inc()
    return outcome


def resynced(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` (a Reconciler.refresh) counted as a resync pass, its exceptions as errors."""
    RESYNCS.inc()
    return counted("resync", fn, *args)


def counted(step: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, its exceptions counted in ERRORS under ``step``."""
    try:
        return fn(*args)
    except Exception:
        ERRORS.labels(step).inc()
        raise


@contextlib.contextmanager
def redis_read(read: str) -> Iterator[None]:
    """Time a Redis read (failed ones too: a Redis that times out is what this should show)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        REDIS_READS.labels(read).observe(time.perf_counter() - start)


Server = tuple[WSGIServer, threading.Thread]


def serve(port: int) -> Server | None:
    """Serve /metrics on ``port`` (0: not at all) from a daemon thread; a port that cannot be
    bound is logged, and the operator runs on without metrics. :func:`stop` ends it."""
    if port <= 0:
        return None
    # Counters at 0 from the start, so rate() has a baseline before the first event of a kind.
    for outcome in ("ok", "degraded", "error"):
        RECONCILES.labels(outcome)
    for step in ("reconcile", "resync", "autoscale", "pod_recovery"):
        ERRORS.labels(step)
    for direction in ("up", "down"):
        SCALE_DECISIONS.labels(direction)
    try:
        server = start_http_server(port, registry=REGISTRY)
    except OSError as exc:
        # Reconciling matters more than its metrics: a taken port is an error line, not a
        # crash loop (a failed kopf startup handler would stop the operator).
        log.error("cannot serve the operator metrics on port %d (CONVEYOR_OPERATOR_METRICS_PORT): %s", port, exc)
        return None
    log.info("operator metrics on :%d/metrics", port)
    return server


def stop(server: Server) -> None:
    httpd, thread = server
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)
