"""The scheduler that every `--with-scheduler` worker runs and exactly one leads per queue.

Leadership is a lease lock per queue (``SET NX PX`` with the worker's token), renewed
and released only by its owner (token-checked Lua). A candidate that finds the lock
taken retries the moment it would expire, so a dead leader is replaced within the
lock TTL. Moving due jobs is one idempotent Lua step (``promote``): even two leaders
at once cannot enqueue a job twice.

Wake-ups follow the next due time: the leader sleeps until the earliest scheduled
job, the next cron tick or the next lock renewal, and any enqueue_at/enqueue_in or
delayed retry publishes on the queue's channel to wake it early.

Round trips go through the worker's link: an outage is logged once (by the link), and
each reply is handled on its own. The leader reaps expired leases only once reaping is
safe (a whole lease after Redis came back, see RedisLink.reap_allowed).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from redis.exceptions import RedisError

from .. import batch, calls, deps, keys, scripts, steps
from ..periodic import CronJob
from ..queue import Queue
from ..serializers import get_serializer
from .link import LinkDown, RedisLink, RefusalLog

log = logging.getLogger("conveyor.scheduler")

_PROMOTE_BATCH = 1000
CRON_INFO_TTL = 7 * 86400  # seconds


class Scheduler:
    def __init__(self, link: RedisLink, space: keys.Keyspace, queues: tuple[str, ...], token: str, *, lock_seconds: float,
                 cron_jobs: list[CronJob], max_deliveries: int, failure_ttl: int, metrics: Any = None) -> None:
        self.link = link
        self.redis = link.redis
        self.serializer = get_serializer(None)  # cron jobs use the default, as Queue() does
        self.queues = queues
        self.token = token
        self.lock_ms = int(lock_seconds * 1000)
        self.space = space
        self.keys = {q: space.queue(q) for q in queues}
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
        self.refusals = RefusalLog("scheduler")
        # One step at a time: promote_now() must count every promotion run() made before it.
        self._step = asyncio.Lock()
        self._reported = 0  # promotions promote_now() has already reported

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        pubsub = None
        try:
            next_election = 0.0
            while not self.closing:
                if not await self.link.wait_up():
                    break
                try:
                    if pubsub is None:
                        pubsub = self.link.pubsub()
                        await pubsub.subscribe(*(k.schedule_channel for k in self.keys.values()))
                    async with self._step:
                        if loop.time() >= next_election:
                            next_election = loop.time() + await self._elect()
                        wake_at = await self._tick()
                except (LinkDown, RedisError, OSError):
                    # The link logs an outage once; a broken subscription is made anew.
                    await self._drop(pubsub)
                    pubsub = None
                    next_election, wake_at = loop.time() + 0.5, time.time() + 0.5
                    continue
                except Exception:  # a bug or a bad cron entry must not silently end the scheduler
                    log.exception("scheduler step failed; retrying in 5s")
                    next_election, wake_at = loop.time() + 5.0, time.time() + 5.0
                timeout = max(0.001, min(next_election - loop.time(), wake_at - time.time(), 1.0))
                try:
                    await pubsub.get_message(timeout=timeout) if pubsub else await self.link.nap(timeout)
                except (RedisError, OSError):
                    await self._drop(pubsub)
                    pubsub = None
        finally:
            await self._release_all()
            await self._drop(pubsub)

    async def promote_now(self) -> int:
        """One election and one step, now; returns how many due jobs moved to their queues.

        For a burst worker about to exit: jobs already due run before it does (as RQ's
        burst scheduler does), instead of waiting for a scheduler that will not come.
        Counts what run() moved since the last call too: the burst worker may have found
        its queues empty just before run() filled them.
        """
        async with self._step:
            await self._elect()
            await self._tick()
        moved, self._reported = self.stats["promoted"] - self._reported, self.stats["promoted"]
        return moved

    @staticmethod
    async def _drop(pubsub: Any) -> None:
        if pubsub is not None:
            try:
                await pubsub.aclose()
            except (RedisError, OSError):
                pass
        return None


    async def _elect(self) -> float:
        """Renew the locks we hold, take free ones. Returns seconds until the next attempt."""
        queues = list(self.queues)

        def build(pipe: Any) -> None:
            for q in queues:
                calls.lock_renew(pipe, self.keys[q].scheduler_lock, self.token, self.lock_ms)

        replies = await self.link.roundtrip(build)
        wait = self.lock_ms / 3000
        for q, reply in zip(queues, replies):
            if self.refusals.refused(f"leader lock of queue {q}", reply):
                continue
            held = reply[0] == 1
            if q in self.leading and not held:
                self.leading.discard(q)
                log.warning("scheduler: lost the lead for queue %s", q)
                self._changed()
            elif held and q not in self.leading:
                self.leading.add(q)
                log.info("scheduler: leading queue %s", q)
                self._changed()
            elif not held and reply[1] > 0:
                # Try again the moment the leader's lock would lapse.
                wait = min(wait, reply[1] / 1000 + 0.005)
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

        reap = self.link.reap_allowed()
        now_ms = int(now * 1000)

        def build(pipe: Any) -> None:
            for q in led:
                k = self.keys[q]
                calls.promote(pipe, k, _PROMOTE_BATCH, self.failure_ttl)
                if reap:
                    calls.reap(pipe, k, self.max_deliveries, self.failure_ttl)
                # Dependencies (conveyor/deps.py): two reads, acted on only when not empty.
                pipe.lrange(k.outbox, 0, deps.OUTBOX_BATCH - 1)
                pipe.zrangebyscore(k.deferred, "-inf", now_ms, start=0, num=deps.SWEEP_BATCH)

        replies = iter(await self.link.roundtrip(build))
        for q in led:
            promoted = next(replies)
            if reap and (reaped := read_reaped(self.refusals, q, next(replies))):
                requeued, abandoned = reaped
                self.stats["reaped"] += len(requeued)
                self.stats["abandoned"] += len(abandoned)
            outbox, due = next(replies), next(replies)
            if (outbox or due) and not isinstance(outbox, Exception) and not isinstance(due, Exception):
                handed, checked = await steps.arun(deps.tend(self.space, q, self.failure_ttl, outbox, due), self.redis)
                if handed >= deps.OUTBOX_BATCH or checked >= deps.SWEEP_BATCH:
                    wake_at = now  # more to do: go again at once
            if self.refusals.refused(f"promotion of queue {q}", promoted):
                continue
            moved, next_due = promoted
            if moved and self.metrics is not None and q in self._expected:
                # How late this promotion ran past the due time we woke up for.
                self.metrics.lag.labels(q).set(max(0.0, now - self._expected[q]))
            self.stats["promoted"] += moved
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
            await self.link.call("hsetnx", k.cron, entry.name, tick)
            self._cron_seen.add((entry.queue, entry.name))
        # The client side encodes the job; the tick guard makes the write happen once per tick.
        data = Queue.prepare_data(entry.func, entry.args, entry.kwargs, job_id=entry.job_id(tick), timeout=entry.timeout)
        encoded = batch.encode_batch(batch.Encoding(k, self.serializer), [data], "ignore", guard=(entry.name, tick))
        info = json.dumps({"schedule": entry.schedule, "func": entry.func, "last": tick, "next": entry.next_tick(now)})

        def build(p: Any) -> None:
            scripts.enqueue(p, encoded.keys, encoded.argv)
            # For the dashboard; a week without a tick (the schedule removed) and it goes.
            p.hset(k.cron_info, entry.name, info)
            p.expire(k.cron_info, CRON_INFO_TTL)

        reply, *_ = await self.link.roundtrip(build)
        if self.refusals.refused(f"cron tick of {entry.name}", reply):
            return
        self._cron_done[(entry.queue, entry.name)] = tick
        if reply[0] == 1 and (len(reply) == 1 or reply[1] == 1):
            self.stats["cron_enqueued"] += 1
            log.info("cron %s: enqueued tick %d as job %s", entry.name, tick, entry.job_id(tick))

    async def _release_all(self) -> None:
        # Every queue, not only those in self.leading: a stop can land after Redis granted
        # a lock and before its reply was read. The release is token-checked, so a lock
        # held by another worker is never touched.
        def build(pipe: Any) -> None:
            for q in self.queues:
                calls.lock_release(pipe, self.keys[q].scheduler_lock, self.token)

        try:
            await scripts.aexecute_each(self.redis, build)
        except (RedisError, OSError):
            pass
        self.leading.clear()
        self._changed()

    def _changed(self) -> None:
        if self.metrics is not None:
            for q in self.queues:
                self.metrics.leader.labels(q).set(1 if q in self.leading else 0)


def read_reaped(refusals: RefusalLog, queue: str, reply: Any) -> tuple[list[bytes], list[bytes]] | None:
    """A reap call's reply (housekeeping's or the leader's): the jobs it recovered and
    abandoned, each logged; None when Redis refused the call (logged once by ``refusals``)."""
    if refusals.refused(f"reaping of queue {queue}", reply):
        return None
    requeued, abandoned = reply
    _log_reaped(queue, requeued, abandoned)
    return requeued, abandoned


def _log_reaped(queue: str, requeued: list[bytes], abandoned: list[bytes]) -> None:
    for raw in requeued:
        job_id = raw.decode()
        log.warning("job %s recovered from an expired lease (worker lost); back at the head of queue %s",
                    job_id, queue, extra={"job_id": job_id, "queue": queue, "event": "recover"})
    for raw in abandoned:
        job_id = raw.decode()
        log.error("job %s abandoned: its worker was lost too many times; moved to failed", job_id,
                  extra={"job_id": job_id, "queue": queue, "event": "abandon"})

