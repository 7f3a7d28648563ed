"""What a worker does for the fleet besides running jobs, on its own timers.

:class:`Housekeeping` (every third of a lease, one round trip): renew this worker's
leases, reap expired ones (any worker may; the scheduler leader does too) once reaping is
safe, register the worker and its queues (so a wiped Redis learns them again), drop
registry entries whose jobs expired, sample queue depths for the metrics, and warn when
scheduled jobs wait with no scheduler running. Every reply is handled on its own. The
registration names the worker's pod (POD_NAME, from the downward API) so the operator can
release a lost pod's jobs at once (``conveyor.admin.release_worker``), and its in-flight count.

:class:`Commands`: act on ``conveyor job stop`` / ``cancel`` for jobs held here, listening
on this database's own command channel.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

from redis.exceptions import RedisError, ResponseError

from .. import __version__, calls, depth, keys, scripts
from ..protocol import Limit
from ..settings import WorkerSettings
from . import progress
from .claimed import Claimed
from .link import DOWN_ERRORS, LinkDown, RedisLink, RefusalLog
from .metrics import DEPTH_STATES, WorkerMetrics
from .runner import Runner
from .scheduler import read_reaped
from .throttle import sample_limits

log = logging.getLogger("conveyor.worker")
POD_ENV = "POD_NAME"  # set by the Deployment from metadata.name; absent outside Kubernetes


class Housekeeping:
    def __init__(self, worker_id: str, settings: WorkerSettings, link: RedisLink, runner: Runner,
                 metrics: WorkerMetrics, stats: collections.Counter[str], state: Callable[[], str],
                 recovered: Callable[[], None] = lambda: None) -> None:
        self.id = worker_id
        self.settings = settings
        self.link = link
        self.runner = runner
        self.metrics = metrics
        self.stats = stats
        self._state = state
        self._recovered = recovered  # jobs are back on a queue: claim now, not at the next wake check
        self.space = keys.Keyspace(settings.prefix)
        self.keys = {q: self.space.queue(q) for q in settings.queues}
        self.lease_ms = int(settings.lease_seconds * 1000)
        self.started_at = time.time()
        self._warned: set[str] = set()
        self.refusals = RefusalLog("housekeeping")

    async def run(self) -> None:
        interval = self.settings.lease_seconds / 3
        while not self.link.closing:
            if await self.link.wait_up():
                try:
                    await self.round()
                except LinkDown:
                    pass
            await self.link.nap(interval)

    async def round(self) -> None:
        by_queue: dict[str, list[Claimed]] = {}
        for job in self.runner.held():
            by_queue.setdefault(job.queue, []).append(job)
        reap = self.link.reap_allowed()
        sent = time.monotonic()
        reports = progress.take()  # a lone long job's progress is written at least this often
        try:
            replies = iter(await self.link.roundtrip(lambda pipe: self._build(pipe, reports, by_queue, reap,
                                                                              time.time())))
        except LinkDown:
            progress.give_back(reports)
            raise
        finally:
            progress.sent(reports)
        for _ in reports:
            next(replies)
        self._read_renewals(replies, by_queue, sent)
        for queue in self.settings.queues:
            self._read_queue(queue, replies, reap)
        for part, reply in zip(("queue registration", "worker registration", "", "", ""), replies):
            if part:
                self.refusals.refused(part, reply)

    def _build(self, pipe: Any, reports: progress.Groups, by_queue: dict[str, list[Claimed]], reap: bool,
               now: float) -> None:
        """One round's commands; :meth:`_read_renewals` and :meth:`_read_queue` read them in order."""
        s = self.settings
        progress.queue_calls(pipe, self.keys, reports)
        ttl = max(10, int(s.lease_seconds * 2))
        for queue, jobs in by_queue.items():
            calls.renew(pipe, self.keys[queue], self.lease_ms, [(j.id, j.execution_id) for j in jobs])
        for k in self.keys.values():
            if reap:
                calls.reap(pipe, k, s.max_deliveries, s.failure_ttl)
            depth.queue(pipe, k, now)
            pipe.hgetall(k.stats)
            pipe.exists(k.scheduler_lock)
            pipe.hmget(k.limits, Limit.RATE, Limit.PERIOD_MS, Limit.MAX_CONCURRENCY)
            for registry in (k.finished, k.failed, k.canceled):
                pipe.zremrangebyscore(registry, "-inf", f"({now}")
        pipe.sadd(self.space.queues, *s.queues)
        pipe.hset(self.space.worker(self.id), mapping=self.registration())
        pipe.expire(self.space.worker(self.id), ttl)
        pipe.zadd(self.space.workers, {self.id: now + ttl})
        pipe.zremrangebyscore(self.space.workers, "-inf", now)

    def _read_renewals(self, replies: Iterator[Any], by_queue: dict[str, list[Claimed]], sent: float) -> None:
        for queue, jobs in by_queue.items():
            lost = next(replies)
            if self.refusals.refused(f"lease renewal of queue {queue}", lost):
                continue
            lost_execs = {i.decode() for i in lost}
            for job in jobs:
                if job.execution_id in lost_execs:
                    self.runner.lease_lost(job, "Redis says another execution holds it now")
                else:
                    self.runner.renewed(job, sent + self.settings.lease_seconds)

    def _read_queue(self, queue: str, replies: Iterator[Any], reap: bool) -> None:
        if reap and (reaped := read_reaped(self.refusals, queue, next(replies))):
            requeued, abandoned = reaped
            self.stats["orphans_recovered"] += len(requeued)
            if requeued:
                self._recovered()
            if requeued or abandoned:
                self.metrics.reaped.labels(queue).inc(len(requeued) + len(abandoned))
        counts = depth.counts([next(replies) for _ in depth.STATES])
        sampled = self.metrics.sampled
        if None not in counts.values():  # a key of the wrong type: keep the last sample
            sample = {state: n or 0 for state, n in counts.items()}
            sample["claimed"] = sample["prefetched"] + sample["started"]
            for state in DEPTH_STATES:
                sampled.depth[(queue, state)] = sample[state]
        stats, leader = next(replies), next(replies)
        sample_limits(sampled.limits, queue, next(replies))
        if isinstance(stats, dict):
            for name, value in stats.items():
                try:
                    sampled.fleet[(queue, name.decode())] = float(value)
                except ValueError:
                    pass  # a corrupted counter is not a reason to stop sampling
        for _ in range(3):
            next(replies)  # registry pruning: nothing to read
        self._check_scheduler(queue, counts["scheduled"] or 0, leader)

    def _check_scheduler(self, queue: str, scheduled: Any, leader: Any) -> None:
        if self.settings.with_scheduler or isinstance(leader, ResponseError):
            return
        if scheduled and not leader and queue not in self._warned:
            self._warned.add(queue)
            log.warning(
                "queue %s has %d scheduled jobs (delayed jobs or interval retries) and no scheduler "
                "is running: they will not run until a worker starts with --with-scheduler",
                queue, scheduled)
        elif leader:
            self._warned.discard(queue)

    def registration(self) -> dict[str, str]:
        s = self.settings
        return {
            "id": self.id, "host": socket.gethostname(), "pid": str(os.getpid()), "queues": ",".join(s.queues),
            "pool": s.pool, "concurrency": str(s.concurrency), "version": __version__,
            "started_at": repr(self.started_at), "last_seen": repr(time.time()),
            "scheduler": "1" if s.with_scheduler else "0", "state": self._state(),
            "inflight": str(len(self.runner.held())),  # running + prefetched, as of this round
            **({"pod": pod} if (pod := os.environ.get(POD_ENV, "").strip()) else {}),
        }

    async def unregister(self) -> None:
        try:
            await scripts.aexecute_each(self.link.redis, lambda p: (p.delete(self.space.worker(self.id)),
                                                                    p.zrem(self.space.workers, self.id)))
        except (*DOWN_ERRORS, RedisError):
            pass  # its registration expires on its own


class Commands:
    """Fleet commands (``conveyor job stop`` / ``cancel``) for jobs this worker holds."""

    def __init__(self, link: RedisLink, runner: Runner, space: keys.Keyspace) -> None:
        self.link = link
        self.runner = runner
        self.channel = space.commands(link.db)

    async def run(self) -> None:
        while not self.link.closing:
            if not await self.link.wait_up():
                return
            pubsub = self.link.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                while not self.link.closing:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None:
                        self.handle(msg["data"])
            except (*DOWN_ERRORS, RedisError):
                await self.link.nap(1.0)
            finally:
                try:
                    await pubsub.aclose()
                except (*DOWN_ERRORS, RedisError):
                    pass

    def handle(self, data: bytes) -> None:
        try:
            cmd = json.loads(data)
            action, queue, job_id = cmd["cmd"], cmd["queue"], cmd["job_id"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed command: %r", data[:200])
            return
        job = self.runner.find(queue, job_id)
        if action not in ("stop", "cancel") or job is None:
            return
        extra = {"job_id": job_id, "execution_id": job.execution_id, "queue": queue, "event": action}
        if self.runner.cancel_buffered(job):
            log.info("canceling job %s (execution %s) before it starts, on request", job_id, job.execution_id,
                     extra=extra)
        elif action == "stop" and self.runner.is_running(job):
            log.info("stopping job %s (execution %s) on request", job_id, job.execution_id, extra=extra)
            self.runner.stop(job)
