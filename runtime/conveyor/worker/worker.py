"""The worker: leases jobs, runs them, records how they ended.

It is composed of parts with one job each, wired here:

- :class:`~.link.RedisLink` — every round trip, and Redis's health (outages, silence);
- :class:`~.runner.Runner` — the jobs held here: slots, prefetch buffer, pools, timeouts;
- :class:`~.flow.Flow` — the claim/record loop: one pipeline per turn, replies one by one;
- :class:`~.fleet.Housekeeping` and :class:`~.fleet.Commands` — leases, reaping,
  registration, sampling; ``job stop`` / ``cancel``;
- :class:`~.scheduler.Scheduler` — with ``--with-scheduler``.

An idle worker blocks in BLPOP on its queues' wake lists and claims the moment a token
arrives. Its life is one explicit :class:`Phase`.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import os
import secrets
import signal
import socket
import time

from redis.crc import key_slot
from redis.exceptions import RedisError

from .. import __version__, keys, periodic, routing
from ..connection import cause
from ..errors import ConveyorError
from ..settings import WorkerSettings
from .fleet import Commands, Housekeeping
from .flow import Flow
from .health import HealthServer, Heartbeat
from .link import IDLE_BLOCK, LinkDown, RedisLink, RedisUnreachable
from .metrics import WorkerMetrics
from .runner import Runner
from .scheduler import Scheduler

log = logging.getLogger("conveyor.worker")

_TICK = 0.05  # seconds between scans for timed-out thread jobs and lapsed leases
_ABANDON_AFTER = 5.0  # seconds after the shutdown timeout before giving up on an unreachable Redis


class Phase(enum.Enum):
    STARTING = "starting"  # waiting for Redis
    RUNNING = "running"  # claiming and running jobs
    DRAINING = "draining"  # stop requested: nothing new starts; running jobs get the shutdown timeout
    HANDING_BACK = "handing back"  # shutdown timeout reached: unfinished jobs go back to their queues
    ABANDONING = "abandoning"  # Redis did not take the hand-back in time: exit anyway
    CLOSED = "closed"


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.id = settings.name or f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
        self.stats: collections.Counter[str] = collections.Counter()
        self.phase = Phase.STARTING
        self.metrics = WorkerMetrics(worker_id=self.id, version=__version__, pool=settings.pool,
                                     concurrency=settings.concurrency, queues=settings.queues)
        self.heartbeat = Heartbeat(stale_after=30.0)
        self.scheduler: Scheduler | None = None

    # -- running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or, with burst, until the queues are empty). Returns the exit code."""
        return asyncio.run(self.main())

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        s = self.settings
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # set while the loop waits for a wake token
        self._stopping = asyncio.Event()
        self._closing = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        try:
            cron_jobs = self._cron_jobs() if s.with_scheduler else []
        except ConveyorError as exc:
            log.error("%s", exc)
            return 2
        periodic.log_schedules(cron_jobs, s.queues, time.time())
        self.space = keys.Keyspace(s.prefix)
        self.link = RedisLink(s.target(), lease_seconds=s.lease_seconds, metrics=self.metrics,
                              closing=self._closing, stats=self.stats)
        self.runner = Runner(s, self.metrics, self.stats, self._wakeup.set)
        self.runner.open()
        self.flow = Flow(self.id, s, self.link, self.runner, self.metrics, self.stats)
        self.housekeeping = Housekeeping(self.id, s, self.link, self.runner, self.metrics, self.stats,
                                         lambda: self.phase.value, self._work_found)
        helpers: list[asyncio.Task[None]] = [asyncio.create_task(self._beat(), name="beat")]
        health = HealthServer(self.metrics.registry, alive=self.heartbeat.alive, ready=self.readiness)
        if s.metrics_port:
            port = health.start(s.metrics_host, s.metrics_port)
            if port:
                log.info("serving /metrics, /healthz and /readyz on %s:%d", s.metrics_host, port)
        code = 0
        try:
            try:
                if not await self.link.connect(self._stopping, s.connect_timeout):
                    return 0
            except RedisUnreachable as exc:
                log.error("worker %s: %s", self.id, exc)
                code = 1  # the error above is the last line: no summary of a worker that never started
                return code
            if not self._policy_ok():
                code = 2
                return code
            self.phase = Phase.RUNNING if self.phase is Phase.STARTING else self.phase
            log.info("worker %s serving %s (pool=%s, concurrency=%d%s)",
                     self.id, ",".join(s.queues), s.pool, s.concurrency, ", burst" if s.burst else "")
            helpers += [asyncio.create_task(self.link.watch(), name="watch"),
                        asyncio.create_task(self.housekeeping.run(), name="housekeeping"),
                        asyncio.create_task(Commands(self.link, self.runner, self.space).run(), name="commands"),
                        asyncio.create_task(self._ticks(), name="ticks")]
            if not s.burst:
                helpers += [asyncio.create_task(self._waker(group), name="waker") for group in self._wake_groups()]
            if s.with_scheduler:
                self.scheduler = Scheduler(self.link, self.space, s.queues, self.id, lock_seconds=s.scheduler_lock_seconds,
                                           cron_jobs=cron_jobs, max_deliveries=s.max_deliveries,
                                           failure_ttl=s.failure_ttl, metrics=self.metrics)
                helpers.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
            await self._loop()
        finally:
            # The event, not only the cancel, ends the helpers: redis-py can swallow a
            # CancelledError that lands inside a command, and a loop must not go on.
            self._closing.set()
            if self.scheduler is not None:
                self.scheduler.closing = True
            for task in helpers:
                task.cancel()
            await self._end_helpers(helpers)
            self.runner.close()
            health.stop()
            await self.housekeeping.unregister()
            await self.link.close()
            self.phase = Phase.CLOSED
            if code != 1:
                self._log_summary()
        return code

    def _policy_ok(self) -> bool:
        """An evicting Redis deletes queued jobs without a trace: warn, or refuse if asked."""
        policy = self.link.policy
        self.metrics.maxmemory_policy.labels(policy).set(1)
        if policy in ("noeviction", "unknown"):
            return True
        what = (f"Redis at {self.link.where} has maxmemory-policy {policy}: when it fills up "
                "it evicts keys, and evicted jobs are lost without a trace; set maxmemory-policy noeviction")
        if self.settings.require_noeviction:
            log.error("%s (refusing to start: --require-noeviction)", what)
            return False
        log.warning("%s (or start workers with --require-noeviction to refuse such a Redis)", what)
        return True

    async def _end_helpers(self, helpers: list[asyncio.Task[None]], limit: float = 5.0) -> None:
        """Wait for the cancelled helpers, ending a parked BLPOP by closing its connection.

        redis-py loses a cancel that lands in a connection's handshake and then blocks for
        the whole BLPOP; a closed socket ends the command whatever state it is in.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        pending = set(helpers)
        while pending and (left := deadline - loop.time()) > 0:
            await routing.adisconnect(self.link.blocking)
            _, pending = await asyncio.wait(pending, timeout=min(0.1, left))
        if pending:
            log.warning("worker %s: %s did not end within %gs of closing", self.id,
                        ", ".join(sorted(t.get_name() for t in pending)), limit)

    def readiness(self) -> tuple[bool, str]:
        """Ready = connected to Redis and claiming. Read by the health thread."""
        if self.phase in (Phase.DRAINING, Phase.HANDING_BACK, Phase.ABANDONING, Phase.CLOSED):
            return False, "draining: stopping after a signal"
        if self.phase is Phase.STARTING:
            return False, "not connected to Redis yet"
        if not self.link.up:
            return False, "Redis is unreachable"
        return True, "ready"

    async def _beat(self) -> None:
        while not self._closing.is_set():
            self.heartbeat.beat()
            self.metrics.ready.set(1 if self.readiness()[0] else 0)
            if self.phase is not Phase.STARTING:
                self.metrics.in_flight.set(len(self.runner.running))
                self.metrics.prefetched.set(len(self.runner.buffer))
            await self._nap(1.0)

    async def _ticks(self) -> None:
        while not self._closing.is_set():
            await self._nap(_TICK)
            self.runner.tick()

    def _cron_jobs(self) -> list[periodic.CronJob]:
        for module in self.settings.cron_modules:
            periodic.load_module(module)
        jobs = periodic.registered()
        for path in self.settings.cron_files:
            jobs += periodic.load_file(path)
        return jobs

    # -- stopping ------------------------------------------------------------------------------

    def request_stop(self, sig: int | None = None) -> None:
        """Stop claiming; hand back prefetched jobs now and running ones after the shutdown timeout.

        A second request skips the wait.
        """
        name = f" on {signal.Signals(sig).name}" if sig else ""
        running = len(self.runner.running) if self.phase is not Phase.STARTING else 0
        if self.phase in (Phase.DRAINING, Phase.HANDING_BACK, Phase.ABANDONING):
            log.warning("worker %s: second stop request%s, handing back %d running jobs now", self.id, name, running)
            self._give_up()
            return
        log.info("worker %s stopping%s: no new jobs; %d running get up to %gs", self.id, name, running,
                 self.settings.shutdown_timeout)
        starting = self.phase is Phase.STARTING
        self.phase = Phase.DRAINING
        self._stopping.set()
        if starting:
            return
        self.runner.accepting = False
        self.runner.hand_back_buffer()
        asyncio.get_running_loop().call_later(self.settings.shutdown_timeout, self._give_up)
        self._wakeup.set()

    def _give_up(self) -> None:
        """Shutdown timeout reached: every unfinished job goes back to its queue."""
        if self.phase is not Phase.DRAINING:
            return
        self.phase = Phase.HANDING_BACK
        # If Redis cannot take the hand-back either, do not hang past the grace period.
        asyncio.get_running_loop().call_later(_ABANDON_AFTER, self._abandon)
        self.runner.give_up()

    def _abandon(self) -> None:
        self.phase = Phase.ABANDONING
        self._wakeup.set()

    # -- the loop --------------------------------------------------------------------------------

    async def _loop(self) -> None:
        r, flow = self.runner, self.flow
        while True:
            if self.phase is Phase.ABANDONING:
                unrecorded = len(r.ended) + len(r.release) + len(r.buffer) + len(r.cancels)
                log.error("worker %s: Redis did not take the hand-back within %gs of the shutdown timeout; "
                          "exiting with %d outcomes unrecorded (their leases expire and the jobs are recovered)",
                          self.id, _ABANDON_AFTER, unrecorded)
                return
            self._wakeup.clear()
            r.fill()
            worked = flow.has_work()
            if worked:
                if r.ended and self.phase is Phase.RUNNING:
                    await self._linger()
                if not await flow.step():
                    await self.link.wait_up(self._wakeup)  # a stop or the abandon timer wakes it too
                    continue
            if r.idle and not r.buffer:
                if self.phase is not Phase.RUNNING:
                    return
                if self.settings.burst and not flow.want_claim:
                    if await self._promoted_before_exit():
                        continue
                    return
            if not worked:
                if not flow.want_claim and r.room():
                    self._idle.set()
                await self._wait(self._retry_in())

    async def _promoted_before_exit(self) -> bool:
        """A burst worker with the scheduler moves what is due and runs it before exiting."""
        if self.scheduler is None or self.phase is not Phase.RUNNING:
            return False
        try:
            moved = await self.scheduler.promote_now()
        except (LinkDown, RedisError) as exc:
            log.warning("burst: could not move due scheduled jobs before exiting: %s", cause(exc))
            return False
        if moved:
            log.info("burst: moved %d due scheduled jobs to their queues; running them before exiting", moved)
            self.flow.wake()
        return bool(moved)

    def _retry_in(self) -> float | None:
        """Seconds until something Redis refused may be tried again (None: nothing waits)."""
        times = [e.not_before for e in self.runner.ended]
        nxt = self.flow.refusals.next_retry()
        if nxt is not None:
            times.append(nxt)
        if not times:
            return None
        return max(0.001, min(times) - time.monotonic())

    async def _wait(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            pass

    async def _linger(self) -> None:
        """Let a few more jobs end before the round trip, so one trip records several.

        Only while the prefetch buffer keeps every slot busy: waiting must never
        leave a slot without work.
        """
        r, s = self.runner, self.settings
        target = max(1, min(s.max_batch, (s.concurrency + r.prefetch()) // 4))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + s.flush_linger
        while len(r.ended) < target and r.running and len(r.buffer) >= target:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                return

    def _work_found(self) -> None:
        self.flow.wake()
        self._wakeup.set()

    def _wake_groups(self) -> list[list[str]]:
        """The queues' wake lists, one group per BLPOP: all in one on a server; on a Cluster
        one per slot (a BLPOP cannot cross slots), each blocking on its own connection."""
        wake_keys = [self.space.queue(q).wake for q in self.settings.queues]
        if not self.link.target.is_cluster:
            return [wake_keys]
        groups: dict[int, list[str]] = {}
        for key in wake_keys:
            groups.setdefault(key_slot(key.encode()), []).append(key)
        return list(groups.values())

    async def _waker(self, wake_keys: list[str]) -> None:
        """Block in Redis until a queue gets work, then let the loop claim it."""
        complained = False
        while self.phase is Phase.RUNNING and not self._closing.is_set():
            await self._idle.wait()
            try:
                token = await self.link.blpop(wake_keys, IDLE_BLOCK)
                complained = False
                if token and not self.runner.room():
                    # Room filled up while we blocked: hand the token on to an idle worker.
                    await self.link.call("lpush", token[0], b"1")
            except LinkDown:
                if self.phase is not Phase.RUNNING or self._closing.is_set():
                    break  # the stop closed the connection under the BLPOP
                await self.link.wait_up()
            except RedisError as exc:
                if self.phase is not Phase.RUNNING:
                    break
                if not complained:
                    log.error("waiting for work failed: %s; retrying every second", cause(exc))
                    complained = True
                await self._nap(1.0)
            self._idle.clear()
            self.flow.wake()
            self._wakeup.set()

    async def _nap(self, seconds: float) -> None:
        """Sleep, but wake at once when the worker closes."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            pass

    def _log_summary(self) -> None:
        s = self.stats
        # Every attempt that ran counts: a burst that only ran an attempt to be retried, or a
        # stopped one, did run a job, and "0 jobs" would say it did nothing.
        done = s["finished"] + s["failed"] + s["retried"] + s["stopped"]
        parts = f"{s['finished']} finished, {s['failed']} failed" + "".join(
            f", {s[k]} {k}" for k in ("retried", "stopped") if s[k])
        log.info(
            "worker %s stopped: %d job%s (%s), %d Redis round trips (%.3f per job), "
            "%d handed back, %d stale completions",
            self.id, done, "" if done == 1 else "s", parts, s["redis_roundtrips"],
            s["redis_roundtrips"] / done if done else 0.0, s["released"], s["stale_completions"],
        )

