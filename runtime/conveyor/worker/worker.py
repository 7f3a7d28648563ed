"""The worker: leases jobs, runs them, records how they ended.

It is composed of parts with one job each, wired here:

- :class:`~.link.RedisLink` — every round trip, and Redis's health (outages, silence);
- :class:`~.runner.Runner` — the jobs held here: slots, prefetch buffer, pools, timeouts;
- :class:`~.flow.Flow` — the claim/record loop: one pipeline per turn, replies one by one;
- :class:`~.fleet.Housekeeping` and :class:`~.fleet.Commands` — leases, reaping,
  registration, sampling; ``job stop`` / ``cancel``;
- :class:`~.waker.Waker` — an idle worker's BLPOP on its queues' wake lists, with its claim;
- :class:`~.scheduler.Scheduler` — with ``--with-scheduler``.

Its life is one explicit :class:`Phase`.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import gc
import logging
import os
import secrets
import signal
import socket
import time

from redis.exceptions import RedisError

from .. import __version__, keys, logs, periodic, routing
from ..connection import cause
from ..errors import ConveyorError
from ..settings import WorkerSettings
from .fleet import Commands, Housekeeping
from .flow import Flow
from .health import HealthServer, Heartbeat
from .link import LinkDown, RedisLink, RedisUnreachable
from .metrics import WorkerMetrics
from .runner import Runner
from .scheduler import Scheduler
from .throttle import declare_limits
from .waker import Waker

log = logging.getLogger("conveyor.worker")

_TICK = 0.05  # seconds between scans for timed-out thread jobs and lapsed leases
_ABANDON_AFTER = 5.0  # seconds after the shutdown timeout before giving up on an unreachable Redis
_LINGER_LONG = 0.008  # seconds: the longest an outcome of long jobs waits for company before its round trip


class Phase(enum.Enum):
    STARTING = "starting"  # waiting for Redis
    RUNNING = "running"  # claiming and running jobs
    DRAINING = "draining"  # stop requested: nothing new starts; running jobs get the shutdown timeout
    HANDING_BACK = "handing back"  # shutdown timeout reached: unfinished jobs go back to their queues
    ABANDONING = "abandoning"  # Redis did not take the hand-back in time: exit anyway
    CLOSED = "closed"


class Worker:
    def __init__(self, settings: WorkerSettings) -> None:
        s = self.settings = settings
        self.id = s.name or f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
        self.stats: collections.Counter[str] = collections.Counter()
        self.phase = Phase.STARTING
        self.metrics = WorkerMetrics(worker_id=self.id, version=__version__, pool=s.pool,
                                     concurrency=s.concurrency, queues=s.queues)
        self.heartbeat = Heartbeat(stale_after=30.0)
        self.scheduler: Scheduler | None = None
        self._wakeup = asyncio.Event()  # the loop has something to do
        self._stopping = asyncio.Event()
        self._closing = asyncio.Event()
        self.space = keys.Keyspace(s.prefix)
        self.link = RedisLink(s.target(), lease_seconds=s.lease_seconds, metrics=self.metrics,
                              closing=self._closing, stats=self.stats)
        self.runner = Runner(s, self.metrics, self.stats, self._wakeup.set)
        self.flow = Flow(self.id, s, self.link, self.runner, self.metrics, self.stats, self._wakeup.set)
        self.housekeeping = Housekeeping(self.id, s, self.link, self.runner, self.metrics, self.stats,
                                         lambda: self.phase.value, self._work_found)
        self.waker = Waker(self.link, [self.space.queue(q).wake for q in s.queues],
                           running=lambda: self.phase is Phase.RUNNING, room=self.runner.room,
                           wake=self._work_found, kick=self._wakeup.set, throttles=self.flow.throttles,
                           flow=None if self.link.target.is_cluster else self.flow)
        self.health = HealthServer(self.metrics.registry, alive=self.heartbeat.alive, ready=self.readiness)

    # -- running -----------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or, with burst, until the queues are empty). Returns the exit code."""
        try:
            return asyncio.run(self.main())
        finally:
            logs.flush()  # the lines of the loop's last turn (a batched handler holds them back)

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        try:
            s = self.settings
            cron_jobs = periodic.load_all(s.cron_modules, s.cron_files) if s.with_scheduler else []
        except ConveyorError as exc:
            log.error("%s", exc)
            return 2
        periodic.log_schedules(cron_jobs, self.settings.queues, time.time())
        self.runner.open()
        helpers: list[asyncio.Task[None]] = [asyncio.create_task(self._beat(), name="beat")]
        self._serve_health()
        code: int | None = None
        try:
            code = await self._start()
            if code is None:
                helpers += self._start_helpers(cron_jobs)
                # What start-up made lives as long as the worker: out of every collection, so
                # the collections that per-job garbage triggers stay short (pickup p99).
                gc.freeze()
                await self._loop()
        finally:
            await self._close(helpers)
            if code != 1:  # 1: the error logged is the last line, no summary of a worker that never started
                self._log_summary()
        return code or 0

    async def _start(self) -> int | None:
        """Connect and check Redis: None to go on, else the exit code (0: a stop came first)."""
        s = self.settings
        try:
            if not await self.link.connect(self._stopping, s.connect_timeout):
                return 0
        except RedisUnreachable as exc:
            log.error("worker %s: %s", self.id, exc)
            return 1
        if not self._policy_ok():
            return 2
        if (problem := await declare_limits(self.link, s)) is not None:
            log.error("worker %s: %s", self.id, problem)
            return 1
        self.phase = Phase.RUNNING if self.phase is Phase.STARTING else self.phase
        log.info("worker %s serving %s (pool=%s, concurrency=%d%s)",
                 self.id, ",".join(s.queues), s.pool, s.concurrency, ", burst" if s.burst else "")
        return None

    def _serve_health(self) -> None:
        s = self.settings
        if s.metrics_port:
            port = self.health.start(s.metrics_host, s.metrics_port)
            if port:
                log.info("serving /metrics, /healthz and /readyz on %s:%d", s.metrics_host, port)

    def _start_helpers(self, cron_jobs: list[periodic.CronJob]) -> list[asyncio.Task[None]]:
        s = self.settings
        helpers = [asyncio.create_task(self.link.watch(), name="watch"),
                   asyncio.create_task(self.housekeeping.run(), name="housekeeping"),
                   asyncio.create_task(Commands(self.link, self.runner, self.space).run(), name="commands"),
                   asyncio.create_task(self._ticks(), name="ticks")]
        if not s.burst:
            helpers += self.waker.tasks()
        if s.with_scheduler:
            self.scheduler = Scheduler(self.link, self.space, s.queues, self.id, lock_seconds=s.scheduler_lock_seconds,
                                       cron_jobs=cron_jobs, max_deliveries=s.max_deliveries,
                                       failure_ttl=s.failure_ttl, metrics=self.metrics)
            helpers.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
        return helpers

    async def _close(self, helpers: list[asyncio.Task[None]]) -> None:
        # The event, not only the cancel, ends the helpers: redis-py can swallow a
        # CancelledError that lands inside a command, and a loop must not go on.
        self._closing.set()
        if self.scheduler is not None:
            self.scheduler.closing = True
        for task in helpers:
            task.cancel()
        await self._end_helpers(helpers)
        self.runner.close()
        self.health.stop()
        await self.housekeeping.unregister()
        await self.link.close()
        self.phase = Phase.CLOSED

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
                self.metrics.prefetched.set(self.runner.buffered())
            await self._nap(1.0)

    async def _ticks(self) -> None:
        while not self._closing.is_set():
            await self._nap(_TICK)
            self.runner.tick()

    # -- stopping ------------------------------------------------------------------------------

    def request_stop(self, sig: int | None = None) -> None:
        """Stop claiming; hand back prefetched jobs now and running ones after the shutdown timeout.

        A second request skips the wait.
        """
        name = f" on {signal.Signals(sig).name}" if sig else ""
        if self.phase in (Phase.DRAINING, Phase.HANDING_BACK, Phase.ABANDONING):
            log.warning("worker %s: second stop request%s, handing back %d running jobs now", self.id, name,
                        len(self.runner.running))
            self._give_up()
            return
        starting = self.phase is Phase.STARTING
        if not starting:  # first: from here on nothing new starts, not even in a job thread
            self.runner.stop_accepting()
            self.runner.sync()
        running = len(self.runner.running) if not starting else 0
        log.info("worker %s stopping%s: no new jobs; %d running get up to %gs", self.id, name, running,
                 self.settings.shutdown_timeout)
        self.phase = Phase.DRAINING
        self._stopping.set()
        if starting:
            return
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
                unrecorded = len(r.ended) + len(r.release) + r.buffered() + len(r.cancels)
                log.error("worker %s: Redis did not take the hand-back within %gs of the shutdown timeout; "
                          "exiting with %d outcomes unrecorded (their leases expire and the jobs are recovered)",
                          self.id, _ABANDON_AFTER, unrecorded)
                return
            self._wakeup.clear()
            if flow.pickup is not None and self.phase is not Phase.RUNNING and not self.link.cut:
                # A stop must not wait out the waker's BLPOP, nor let its claim run: cut the
                # connection (Redis then drops the unread claim, unless it had just run: the
                # waker records it as lost and the next step disowns it).
                await self.link.cut_blocking()
            r.fill()
            worked = flow.has_work()
            if worked:
                if r.ended and self.phase is Phase.RUNNING:
                    await self._linger()
                if not await flow.step():
                    await self.link.wait_up(self._wakeup)  # a stop or the abandon timer wakes it too
                    continue
            if r.idle and not r.buffered():
                if self.phase is not Phase.RUNNING and flow.pickup is None:
                    return
                if self.settings.burst and not flow.want_claim:
                    if await self._promoted_before_exit():
                        continue
                    return
            if not worked:
                if not flow.want_claim and r.room():
                    self.waker.idle.set()
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

        Only while the prefetch buffer keeps every slot busy (waiting must never leave a
        slot without work, so a claim is never held back when slots need it) or the queues
        are empty, only while nothing but starts and outcomes waits (hand-backs and cancels
        go at once), and never once the worker stops. It lasts flush_linger, or for longer
        jobs until the oldest outcome is 3/4 of their average length old, up to _LINGER_LONG:
        about one job's worth of outcomes per round trip, however the slots' ends are spread
        (in step, all slots end within a few ms; spread evenly, a shorter wait carries few).
        """
        r, s = self.runner, self.settings
        if not s.flush_linger or not r.ended:
            return
        target = max(1, min(s.max_batch, (s.concurrency + r.prefetch()) // 4))
        bound = max(s.flush_linger, min(_LINGER_LONG, (r.avg_duration or 0.0) * 0.75))
        deadline = max(time.monotonic() + s.flush_linger, min(e.at for e in r.ended) + bound)
        # Slots need no claim while the buffer holds a turn's worth, nor when the queues were
        # found empty (a wake for new work sets want_claim and ends the wait at once).
        while (len(r.ended) < target and r.running and (r.buffered() >= target or not self.flow.want_claim)
               and not (r.release or r.cancels) and self.phase is Phase.RUNNING):
            remaining = deadline - time.monotonic()
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

