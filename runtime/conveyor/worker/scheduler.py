"""The scheduler that every `--with-scheduler` worker runs and exactly one leads per queue.

Leadership is a lease lock per queue (``SET NX PX`` with the worker's token), renewed
and released only by its owner (token-checked Lua). A candidate that finds the lock
taken retries the moment it would expire, so a dead leader is replaced within the
lock TTL. Moving due jobs is one idempotent Lua step (``promote``): even two leaders
at once cannot enqueue a job twice.

Wake-ups follow the next due time: the leader sleeps until the earliest scheduled
job, the next cron tick or the next lock renewal, and any enqueue_at/enqueue_in or
delayed retry publishes on the queue's channel to wake it early.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from .. import keys, scripts
from ..periodic import CronJob
from ..queue import Queue

log = logging.getLogger("conveyor.scheduler")

_PROMOTE_BATCH = 1000


class Scheduler:
    def __init__(self, redis: Any, queues: tuple[str, ...], token: str, *, lock_seconds: float,
                 cron_jobs: list[CronJob], max_deliveries: int, failure_ttl: int, metrics: Any = None) -> None:
        self.redis = redis
        self.queues = queues
        self.token = token
        self.lock_ms = int(lock_seconds * 1000)
        self.keys = {q: keys.QueueKeys(q) for q in queues}
        self.cron = [c for c in cron_jobs if c.queue in queues]
        self.max_deliveries = max_deliveries
        self.failure_ttl = failure_ttl
        self.leading: set[str] = set()
        self.closing = False  # set by the worker before it cancels run()
        self.stats: dict[str, int] = {"promoted": 0, "cron_enqueued": 0, "reaped": 0, "abandoned": 0}
        self.metrics = metrics
        self._cron_seen: set[tuple[str, str]] = set()
        self._cron_done: dict[tuple[str, str], int] = {}  # last tick written (or found written)
        self._expected: dict[str, float] = {}  # the next due time per queue, as last seen

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(*(k.schedule_channel for k in self.keys.values()))
        try:
            next_election = 0.0
            while not self.closing:
                try:
                    if loop.time() >= next_election:
                        next_election = loop.time() + await self._elect()
                    wake_at = await self._tick()
                except (RedisError, OSError) as exc:
                    log.warning("scheduler step failed: %s; retrying", exc)
                    next_election, wake_at = loop.time() + 1.0, time.time() + 1.0
                except Exception:  # a bug or a bad cron entry must not silently end the scheduler
                    log.exception("scheduler step failed; retrying in 5s")
                    next_election, wake_at = loop.time() + 5.0, time.time() + 5.0
                timeout = max(0.001, min(next_election - loop.time(), wake_at - time.time(), 1.0))
                try:
                    await pubsub.get_message(timeout=timeout)
                except (RedisError, OSError):
                    await asyncio.sleep(min(timeout, 1.0))
        finally:
            await self._release_all()
            try:
                await pubsub.aclose()
            except (RedisError, OSError):
                pass

    async def _elect(self) -> float:
        """Renew the locks we hold, try the others. Returns seconds until the next attempt."""
        queues = list(self.queues)

        def build(pipe: Any) -> None:
            for q in queues:
                lock = self.keys[q].scheduler_lock
                if q in self.leading:
                    scripts.lock_renew(pipe, [lock], [self.token, self.lock_ms])
                else:
                    pipe.set(lock, self.token, nx=True, px=self.lock_ms)
                    pipe.pttl(lock)

        replies = iter(await scripts.aexecute(self.redis, build))
        wait = self.lock_ms / 3000
        for q in queues:
            if q in self.leading:
                if not next(replies):
                    self.leading.discard(q)
                    log.warning("scheduler: lost the lead for queue %s", q)
                    self._changed()
            else:
                got, pttl = next(replies), next(replies)
                if got:
                    self.leading.add(q)
                    log.info("scheduler: leading queue %s", q)
                    self._changed()
                elif pttl and pttl > 0:
                    # Try again the moment the leader's lock would lapse.
                    wait = min(wait, pttl / 1000 + 0.005)
        return wait

    async def _tick(self) -> float:
        """Promote due jobs, reap expired leases and enqueue cron ticks for the queues we lead.

        Returns when to look again (epoch seconds).
        """
        now = time.time()
        wake_at = now + self.lock_ms / 1000
        led = [q for q in self.queues if q in self.leading]
        if not led:
            return wake_at

        def build(pipe: Any) -> None:
            for q in led:
                k = self.keys[q]
                scripts.promote(pipe, [k.scheduled, k.ready, k.wake], [k.job_prefix, _PROMOTE_BATCH])
                scripts.reap(pipe, [k.leases, k.ready, k.failed, k.wake, k.stats],
                             [k.job_prefix, k.claimed_prefix, 100, self.max_deliveries, self.failure_ttl])

        replies = iter(await scripts.aexecute(self.redis, build))
        for q in led:
            moved, next_due = next(replies)
            if moved and self.metrics is not None and q in self._expected:
                # How late this promotion ran past the due time we woke up for.
                self.metrics.lag.labels(q).set(max(0.0, now - self._expected[q]))
            requeued, abandoned = next(replies)
            self.stats["promoted"] += moved
            log_reaped(q, requeued, abandoned)
            self.stats["reaped"] += len(requeued)
            self.stats["abandoned"] += len(abandoned)
            if moved >= _PROMOTE_BATCH:
                wake_at = now  # more are due: go again at once
            elif next_due >= 0:
                wake_at = min(wake_at, next_due / 1000)
            self._expected[q] = next_due / 1000 if next_due >= 0 else now
        for entry in self.cron:
            if entry.queue in self.leading:
                await self._cron(entry, now)
                wake_at = min(wake_at, entry.next_tick(now))
        return wake_at

    async def _cron(self, entry: CronJob, now: float) -> None:
        k = self.keys[entry.queue]
        tick = entry.last_tick(now)
        if self._cron_done.get((entry.queue, entry.name), -1) >= tick:
            return
        if (entry.queue, entry.name) not in self._cron_seen:
            # A schedule seen for the first time starts with its next tick.
            await self.redis.hsetnx(k.cron, entry.name, tick)
            self._cron_seen.add((entry.queue, entry.name))
        # The client side encodes the job; the tick guard makes the write happen once per tick.
        q = Queue(entry.queue, connection=self.redis)
        data = Queue.prepare_data(entry.func, entry.args, entry.kwargs, job_id=entry.job_id(tick), timeout=entry.timeout)
        batch = q.encode_batch([data], "ignore", guard=(entry.name, tick))
        [reply] = await scripts.aexecute(self.redis, lambda p: scripts.enqueue(p, batch.keys, batch.argv))
        self._cron_done[(entry.queue, entry.name)] = tick
        if reply[0] == 1 and (len(reply) == 1 or reply[1] == 1):
            self.stats["cron_enqueued"] += 1
            log.info("cron %s: enqueued tick %d as job %s", entry.name, tick, entry.job_id(tick))

    async def _release_all(self) -> None:
        for q in list(self.leading):
            try:
                await scripts.aexecute(self.redis, lambda p, q=q: scripts.lock_release(p, [self.keys[q].scheduler_lock], [self.token]))
            except (RedisError, OSError):
                pass
        self.leading.clear()
        self._changed()

    def _changed(self) -> None:
        if self.metrics is not None:
            for q in self.queues:
                self.metrics.leader.labels(q).set(1 if q in self.leading else 0)


def log_reaped(queue: str, requeued: list[bytes], abandoned: list[bytes]) -> None:
    for raw in requeued:
        job_id = raw.decode()
        log.warning("job %s recovered from an expired lease (worker lost); back at the head of queue %s",
                    job_id, queue, extra={"job_id": job_id, "queue": queue, "event": "recover"})
    for raw in abandoned:
        job_id = raw.decode()
        log.error("job %s abandoned: its worker was lost too many times; moved to failed", job_id,
                  extra={"job_id": job_id, "queue": queue, "event": "abandon"})

