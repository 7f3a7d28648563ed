"""Prometheus metrics of one worker (prefix conveyor_, base units, no job IDs in labels).

Counters of this worker's own work are updated as jobs move. Queue depths and the
fleet-wide counters kept in Redis (enqueued, duplicates suppressed, orphans
recovered, abandoned) are sampled by the worker's housekeeping round trip and served
from that sample, so a scrape never touches Redis.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..protocol import THROTTLES

# Seconds: from sub-millisecond no-ops to the default 180 s timeout and beyond.
RUN_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180, 600, 1800)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600)

# "claimed" = prefetched + started (held by some worker).
DEPTH_STATES = ("ready", "recovered", "prefetched", "started", "claimed", "scheduled", "failed")

disable_created_metrics()  # the _created series double every counter for no use here
FLEET_COUNTERS = {
    "enqueued": ("conveyor_queue_enqueued", "Jobs enqueued on the queue (fleet-wide, from Redis)"),
    "duplicates_suppressed": ("conveyor_duplicate_enqueues_suppressed",
                              "Enqueues that returned an existing job because of its unique_key (fleet-wide)"),
    "orphans_recovered": ("conveyor_orphans_recovered",
                          "Jobs returned to their queue after their worker's lease expired (fleet-wide)"),
    "abandoned": ("conveyor_jobs_abandoned", "Jobs failed as abandoned after losing max_deliveries workers (fleet-wide)"),
}


class _Sampled(Collector):
    """Serves the last sample of queue depths and fleet counters."""

    def __init__(self) -> None:
        self.depth: dict[tuple[str, str], float] = {}
        self.fleet: dict[tuple[str, str], float] = {}
        self.limits: dict[tuple[str, str], float] = {}

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        depth = GaugeMetricFamily("conveyor_queue_jobs", "Jobs in a queue by state, as last sampled",
                                  labels=["queue", "state"])
        for (queue, state), value in sorted(self.depth.items()):
            depth.add_metric([queue, state], value)
        yield depth
        limits = GaugeMetricFamily("conveyor_queue_limit", "A queue's flow control as last sampled (rate_per_second, "
                                   "max_concurrency); no series: no such limit", labels=["queue", "limit"])
        for (queue, limit), value in sorted(self.limits.items()):
            limits.add_metric([queue, limit], value)
        yield limits
        # A field Redis has never incremented is 0 fleet-wide: shown as 0 for every sampled
        # queue, so rate() sees it. A queue not sampled yet has no series at all rather than
        # a 0 that would read as a reset (and a false spike) once the real count arrives.
        sampled = sorted({q for q, _ in self.depth} | {q for q, _ in self.fleet})
        for field, (name, doc) in FLEET_COUNTERS.items():
            family = CounterMetricFamily(name, doc, labels=["queue"])
            for queue in sampled:
                family.add_metric([queue], self.fleet.get((queue, field), 0.0))
            yield family


class QueueMetrics:
    """One queue's labelled children, resolved once: labels() per job costs a lock and a dict."""

    def __init__(self, m: WorkerMetrics, queue: str) -> None:
        self.started = m.started.labels(queue)
        self.succeeded = m.succeeded.labels(queue)
        self.failed = m.failed.labels(queue)
        self.retried = m.retried.labels(queue)
        self.stopped = m.stopped.labels(queue)
        self.wait_time = m.wait_time.labels(queue)
        self.run_time = {o: m.run_time.labels(queue, o) for o in ("succeeded", "failed", "retried", "stopped")}
        # Resolving a child is what makes its series exist (at 0): these are here so that a
        # served queue's counters are scraped before their first event, not only after.
        self.released = m.released.labels(queue)
        self.reaped = m.reaped.labels(queue)
        for reason in THROTTLES:
            m.throttled.labels(queue, reason)
            m.throttled_seconds.labels(queue, reason)


class WorkerMetrics:
    def __init__(self, *, worker_id: str, version: str, pool: str, concurrency: int,
                 queues: Iterable[str] = ()) -> None:
        r = self.registry = CollectorRegistry()
        # process_* (CPU, memory, open fds) and python_* (version, GC): the worker's registry is
        # its own, so the collectors the default registry carries must be added by hand.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.started = Counter("conveyor_jobs_started", "Jobs this worker started", ["queue"], registry=r)
        self.succeeded = Counter("conveyor_jobs_succeeded", "Jobs that finished successfully", ["queue"], registry=r)
        self.failed = Counter("conveyor_jobs_failed", "Jobs that failed for good", ["queue"], registry=r)
        self.retried = Counter("conveyor_jobs_retried", "Failed attempts that will be retried", ["queue"], registry=r)
        self.stopped = Counter("conveyor_jobs_stopped", "Running jobs stopped on request", ["queue"], registry=r)
        self.released = Counter("conveyor_jobs_handed_back", "Jobs handed back to their queue at shutdown",
                                ["queue"], registry=r)
        self.run_time = Histogram("conveyor_job_run_seconds", "Time a job ran", ["queue", "outcome"],
                                  buckets=RUN_BUCKETS, registry=r)
        self.wait_time = Histogram("conveyor_job_wait_seconds", "Time from enqueue (or due time) to start",
                                   ["queue"], buckets=WAIT_BUCKETS, registry=r)
        self.in_flight = Gauge("conveyor_jobs_in_flight", "Jobs running on this worker now", registry=r)
        self.slots = Gauge("conveyor_concurrency_slots", "Jobs this worker runs at once", registry=r)
        self.slots.set(concurrency)
        self.prefetched = Gauge("conveyor_jobs_prefetched", "Jobs claimed and waiting for a free slot", registry=r)
        self.leases_lost = Counter("conveyor_leases_lost", "Executions whose lease this worker lost", registry=r)
        self.stale = Counter("conveyor_stale_completions_rejected",
                             "Outcomes rejected because another execution owned the job", registry=r)
        self.reaped = Counter("conveyor_reaped", "Expired leases this worker's reaper recovered", ["queue"], registry=r)
        self.leader = Gauge("conveyor_scheduler_leader", "1 while this worker leads the queue's scheduler",
                            ["queue"], registry=r)
        self.lag = Gauge("conveyor_scheduler_lag_seconds", "How late the scheduler moved the last due job",
                         ["queue"], registry=r)
        self.throttled = Counter("conveyor_queue_throttled", "Claims the queue's limits cut short, by reason "
                                 "(rate, concurrency)", ["queue", "reason"], registry=r)
        self.throttled_seconds = Counter("conveyor_queue_throttled_seconds",
                                         "Time this worker held off claiming from the queue because of its limits",
                                         ["queue", "reason"], registry=r)
        self.roundtrips = Counter("conveyor_redis_roundtrips", "Redis round trips made by this worker", registry=r)
        self.redis_up = Gauge("conveyor_redis_up", "1 while Redis answers this worker", registry=r)
        self.ready = Gauge("conveyor_worker_ready", "1 while the worker is ready (claiming)", registry=r)
        self.maxmemory_policy = Gauge("conveyor_redis_maxmemory_policy",
                                      "1 for Redis's maxmemory-policy (anything but noeviction can delete jobs)",
                                      ["policy"], registry=r)
        info = Info("conveyor_worker", "This worker", registry=r)
        info.info({"worker": worker_id, "version": version, "pool": pool, "concurrency": str(concurrency)})
        self.sampled = _Sampled()
        r.register(self.sampled)
        self._queues: dict[str, QueueMetrics] = {}
        # Every counter and histogram of a served queue exists at 0 from the first scrape:
        # rate() over a series that does not exist yet is "no data", which alerts miss.
        for queue in queues:
            self.of(queue)

    def of(self, queue: str) -> QueueMetrics:
        q = self._queues.get(queue)
        if q is None:
            q = self._queues[queue] = QueueMetrics(self, queue)
        return q
