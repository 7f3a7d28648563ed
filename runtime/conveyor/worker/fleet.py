"""What a worker does for the fleet besides running jobs, on its own timers.

Housekeeping (every third of a lease, one round trip): renew this worker's leases,
reap expired ones (any worker may; the scheduler leader does too), register the worker
for `conveyor info`, sample queue depths for the metrics, and warn when scheduled jobs
wait with no scheduler running. Commands: act on `conveyor job stop` for jobs running here.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from .. import __version__, keys, scripts
from ..connection import error_line
from .execution import STOPPED, JobStopped, failure
from .metrics import DEPTH_STATES
from .scheduler import log_reaped

if TYPE_CHECKING:
    from .worker import Claimed, Worker

log = logging.getLogger("conveyor.worker")


class FleetDuties:
    """Mixed into Worker; kept apart so worker.py is about claiming and running jobs."""

    async def _housekeeping(self: Worker) -> None:
        """Every third of a lease, in one round trip: renew our leases, reap expired ones
        (any worker may; the scheduler leader does too), register this worker, sample
        queue depths for the metrics, and look for a live scheduler."""
        interval = self.settings.lease_seconds / 3
        warned: set[str] = set()
        while not self._closing:
            try:
                await self._housekeeping_round(warned)
                self._housekeeping_failed = False
            except (RedisError, OSError) as exc:
                if not self._housekeeping_failed:
                    log.warning("housekeeping round trip failed: %s", error_line(exc))
                self._housekeeping_failed = True  # not ready, even while every slot is busy
                self.metrics.redis_up.set(0)
            await self._nap(interval)

    async def _housekeeping_round(self: Worker, warned: set[str]) -> None:
        by_queue: dict[str, list[Claimed]] = {}
        for job in (*self._running.values(), *self._buffer):
            by_queue.setdefault(job.queue, []).append(job)
        check = not self.settings.with_scheduler
        now = time.time()
        ttl = max(10, int(self.settings.lease_seconds * 2))

        def build(pipe: Any) -> None:
            for queue, jobs in by_queue.items():
                k = self.keys[queue]
                args: list[Any] = [k.job_prefix, self._lease_ms]
                for job in jobs:
                    args += (job.id, job.execution_id)
                scripts.renew(pipe, [k.leases], args)
            for k in self.keys.values():
                scripts.reap(pipe, [k.leases, k.ready, k.failed, k.wake, k.stats],
                             [k.job_prefix, k.claimed_prefix, 100, self.settings.max_deliveries, self.settings.failure_ttl])
                pipe.llen(k.ready)
                pipe.zcard(k.scheduled)
                pipe.zcard(k.leases)
                pipe.zcount(k.failed, now, "+inf")
                pipe.hgetall(k.stats)
                pipe.exists(k.scheduler_lock)
            pipe.hset(keys.worker(self.id), mapping=self._registration())
            pipe.expire(keys.worker(self.id), ttl)
            pipe.zadd(keys.WORKERS, {self.id: now + ttl})
            pipe.zremrangebyscore(keys.WORKERS, "-inf", now)

        replies = iter(await self._pipeline(build))
        self.metrics.redis_up.set(0 if self._redis_lost else 1)
        self.metrics.ready.set(1 if self.readiness()[0] else 0)
        for jobs in by_queue.values():
            lost_ids = {i.decode() for i in next(replies)}
            for job in jobs:
                if job.id in lost_ids and not job.lost:
                    self._lease_lost(job)
        sampled = self.metrics.sampled
        for queue in self.settings.queues:
            requeued, abandoned = next(replies)
            log_reaped(queue, requeued, abandoned)
            self.stats["orphans_recovered"] += len(requeued)
            if requeued or abandoned:
                self.metrics.reaped.labels(queue).inc(len(requeued) + len(abandoned))
            for state in DEPTH_STATES:
                sampled.depth[(queue, state)] = next(replies)
            for name, value in next(replies).items():
                sampled.fleet[(queue, name.decode())] = float(value)
            scheduled, leader = sampled.depth[(queue, "scheduled")], next(replies)
            if check and scheduled and not leader and queue not in warned:
                warned.add(queue)
                log.warning(
                    "queue %s has %d scheduled jobs (delayed jobs or interval retries) and no scheduler "
                    "is running: they will not run until a worker starts with --with-scheduler",
                    queue, scheduled)
            elif leader:
                warned.discard(queue)

    def _registration(self: Worker) -> dict[str, str]:
        s = self.settings
        return {
            "id": self.id, "host": socket.gethostname(), "pid": str(os.getpid()), "queues": ",".join(s.queues),
            "pool": s.pool, "concurrency": str(s.concurrency), "version": __version__,
            "started_at": repr(self.started_at), "last_seen": repr(time.time()),
            "scheduler": "1" if s.with_scheduler else "0", "state": "draining" if self._stopping else "running",
        }

    async def _unregister(self: Worker) -> None:
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.delete(keys.worker(self.id))
            pipe.zrem(keys.WORKERS, self.id)
            await pipe.execute()
        except (RedisError, OSError):
            pass  # its registration expires on its own

    async def _commands(self: Worker) -> None:
        """Listen for fleet commands; act on those naming a job this worker runs."""
        while not self._closing:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(keys.COMMANDS)
                while not self._closing:
                    msg = await pubsub.get_message(timeout=1.0)
                    if msg is not None:
                        self._command(msg["data"])
            except (RedisError, OSError):
                await self._pause(1.0)
            finally:
                try:
                    await pubsub.aclose()
                except (RedisError, OSError):
                    pass

    def _command(self: Worker, data: bytes) -> None:
        try:
            cmd = json.loads(data)
            action, queue, job_id = cmd["cmd"], cmd["queue"], cmd["job_id"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed command: %r", data[:200])
            return
        job = self._running.get((queue, job_id))
        if action != "stop" or job is None:
            return
        log.info("stopping job %s (execution %s) on request", job_id, job.execution_id,
                 extra={"job_id": job_id, "execution_id": job.execution_id, "queue": queue, "event": "stop"})
        stopped = failure(STOPPED, "stopped on request (conveyor job stop)", retryable=False)
        if job.task is not None:  # async or process pool: cancelling kills the child too
            job.task.cancel()
        elif job.call is not None:
            job.call.interrupt(JobStopped)
            job.lingering = True
            self._lingering += 1
        self._end(job, stopped)

    def _lease_lost(self: Worker, job: Claimed) -> None:
        job.lost = True
        if job.ctx is not None:
            job.ctx.lease_lost = True
        self.stats["leases_lost"] += 1
        self.metrics.leases_lost.inc()
        log.warning("lost the lease on job %s (execution %s): another worker may run it; this outcome "
                    "will be discarded", job.id, job.execution_id)
        if job.task is not None and self._running.get((job.queue, job.id)) is job:
            job.task.cancel()
            self._forget(job)
            self._wakeup.set()
