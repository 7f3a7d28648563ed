"""The worker: leases jobs, runs them, records how they ended.

All Redis traffic for state changes goes through one loop (:meth:`Worker._loop`):
each turn sends one pipeline holding the outcomes of every job that ended since
the last turn plus a claim for the room that freed up, so under load one round
trip serves many jobs. An idle worker blocks in BLPOP on its queues' wake lists
and claims the moment a token arrives.

While jobs are short, the worker claims a few more than it runs (prefetch), so a
slot that frees up starts its next job without waiting for Redis. Prefetched
jobs hold leases like running ones and go back to the head of their queue at
shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
import os
import secrets
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import __version__, errors, keys, periodic, scripts
from ..connection import client_options, error_line, mask_url
from ..context import JobContext, _current
from ..errors import ConveyorError, InvalidFunction
from ..retry import Retry, retry_delay
from ..job import RUN_FIELDS
from ..settings import WorkerSettings
from .health import HealthServer, Heartbeat
from .metrics import WorkerMetrics
from . import execution
from .execution import STOPPED, JobTimeout, Outcome, ThreadCall, failure
from .fleet import FleetDuties
from .procpool import ProcessPool
from .scheduler import Scheduler
from .threads import JobThreads

log = logging.getLogger("conveyor.worker")

_DOWN = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError)
_IDLE_BLOCK = 5.0  # seconds an idle worker blocks before re-checking its queues anyway
_CONNECT_TIMEOUT = 5.0  # seconds to open a connection to Redis
_COMMAND_TIMEOUT = 30.0  # seconds for any one round trip (the largest batch takes milliseconds)
_SHORT_JOB = 0.1  # seconds: jobs shorter than this on average are worth prefetching
_OUTCOMES = {"complete": "succeeded", "fail": "failed", "retry": "retried", "stop": "stopped"}  # metric labels
_DEADLINE_TICK = 0.05  # seconds between timeout scans of thread-pool jobs
_ABANDON_AFTER = 5.0  # seconds after the shutdown timeout before giving up on an unreachable Redis
_PREFETCH_WORK = 0.05  # seconds of work a worker holds ready beyond its running jobs


@dataclass(eq=False)
class Claimed:
    queue: str
    id: str
    execution_id: str
    func: str | None
    payload: bytes | None
    ser: str
    timeout: float
    deliveries: int
    enqueued_at: float | None
    retry: bytes | None = None
    retries: int = 0
    due_at: float | None = None  # ms, for scheduled jobs and delayed retries
    started: float = 0.0
    ctx: JobContext | None = None
    call: ThreadCall | None = None
    task: asyncio.Task[None] | None = None
    lost: bool = False
    malformed: str | None = None
    lingering: bool = False  # timed out or stopped in a thread that has not returned yet


@dataclass
class Ended:
    job: Claimed
    outcome: Outcome
    duration: float
    retry_in: float | None = None  # seconds until the retry; None: the outcome is final

    @property
    def kind(self) -> str:
        if self.outcome.ok:
            return "complete"
        if self.outcome.exc_type == STOPPED:
            return "stop"
        return "fail" if self.retry_in is None else "retry"


class Worker(FleetDuties):
    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.id = settings.name or f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(3)}"
        self.keys = {q: keys.QueueKeys(q) for q in settings.queues}
        self.stats: collections.Counter[str] = collections.Counter()
        self._lease_ms = int(settings.lease_seconds * 1000)
        self._running: dict[tuple[str, str], Claimed] = {}
        self._buffer: collections.deque[Claimed] = collections.deque()
        self._lingering = 0  # timed-out threads that still hold a slot
        self._ended: list[Ended] = []
        self._release: list[Claimed] = []
        self._want_claim = True
        self._claim_left = 0  # IDs the last claim left on the ready lists
        self._filling = False
        self._stopping = False
        self._giving_up = False
        self._abandoning = False
        self._closing = False
        self._redis_lost = False
        self._housekeeping_failed = False
        self._avg_duration: float | None = None
        self._async_funcs: dict[Any, bool] = {}
        self._threads: JobThreads | None = None
        self._procs: ProcessPool | None = None
        self.scheduler: Scheduler | None = None
        self.metrics = WorkerMetrics(worker_id=self.id, version=__version__, pool=settings.pool,
                                     concurrency=settings.concurrency)
        self.heartbeat = Heartbeat(stale_after=30.0)
        self._connected = False
        self.started_at = time.time()

    # -- running -----------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped (or, with burst, until the queues are empty). Returns the exit code."""
        return asyncio.run(self.main())

    async def main(self) -> int:
        loop = asyncio.get_running_loop()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()  # set while the loop waits for a wake token
        self._stop_event = asyncio.Event()
        self._close_event = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig)
        s = self.settings
        try:
            cron_jobs = self._cron_jobs() if s.with_scheduler else []
        except ConveyorError as exc:
            log.error("%s", exc)
            return 2
        options = {**client_options(s.redis_url), "socket_connect_timeout": _CONNECT_TIMEOUT}
        # Timeouts so a partitioned Redis (no reset, just silence) is noticed, not waited on forever.
        self.redis = aioredis.Redis.from_url(s.redis_url, socket_timeout=_COMMAND_TIMEOUT, **options)
        # BLPOP parks a connection; it gets one of its own, allowed to wait out the block.
        self._blocking = aioredis.Redis.from_url(s.redis_url, socket_timeout=_IDLE_BLOCK + _CONNECT_TIMEOUT, **options)
        if s.pool == "thread":
            self._threads = JobThreads(s.concurrency, self._threads_done)
        elif s.pool == "process":
            self._procs = ProcessPool(s.concurrency, max_jobs_per_child=s.max_jobs_per_child, allow_pickle=s.allow_pickle, allow_modules=s.allow_modules)
            self._procs.start()
        helpers: list[asyncio.Task[None]] = [asyncio.create_task(self._beat(), name="beat")]
        health = HealthServer(self.metrics.registry, alive=self.heartbeat.alive, ready=self.readiness)
        if s.metrics_port:
            port = health.start(s.metrics_host, s.metrics_port)
            if port:
                log.info("serving /metrics, /healthz and /readyz on %s:%d", s.metrics_host, port)
        try:
            if not await self._connect():
                return 0
            log.info(
                "worker %s serving %s (pool=%s, concurrency=%d%s)",
                self.id, ",".join(s.queues), s.pool, s.concurrency, ", burst" if s.burst else "",
            )
            helpers += [asyncio.create_task(self._housekeeping(), name="housekeeping"), asyncio.create_task(self._commands(), name="commands")]
            if self._threads is not None:
                helpers.append(asyncio.create_task(self._deadlines(), name="deadlines"))
            if not s.burst:
                helpers.append(asyncio.create_task(self._waker(), name="waker"))
            if s.with_scheduler:
                self.scheduler = Scheduler(self.redis, s.queues, self.id, lock_seconds=s.scheduler_lock_seconds,
                                           cron_jobs=cron_jobs, max_deliveries=s.max_deliveries,
                                           failure_ttl=s.failure_ttl,
                                           metrics=self.metrics)
                helpers.append(asyncio.create_task(self.scheduler.run(), name="scheduler"))
            await self._loop()
        finally:
            # The flag, not only the cancel, ends the helpers: redis-py can swallow a
            # CancelledError that lands inside a command, and a loop must not go on.
            self._closing = True
            self._close_event.set()
            if self.scheduler is not None:
                self.scheduler.closing = True
            for task in helpers:
                task.cancel()
            await self._end_helpers(helpers)
            if self._threads:
                self._threads.close()
            if self._procs:
                self._procs.close()
            health.stop()
            await self._unregister()
            await self.redis.aclose()
            await self._blocking.aclose()
            self._log_summary()
        return 0

    async def _end_helpers(self, helpers: list[asyncio.Task[None]], limit: float = 5.0) -> None:
        """Wait for the cancelled helpers, ending a parked BLPOP by closing its connection.

        redis-py loses a cancel that lands in a connection's handshake and then blocks for
        the whole BLPOP; a closed socket ends the command whatever state it is in.
        """
        deadline = asyncio.get_running_loop().time() + limit
        pending = set(helpers)
        while pending and (left := deadline - asyncio.get_running_loop().time()) > 0:
            await self._blocking.connection_pool.disconnect()
            _, pending = await asyncio.wait(pending, timeout=min(0.1, left))
        if pending:
            log.warning("worker %s: %s did not end within %gs of closing", self.id,
                        ", ".join(sorted(t.get_name() for t in pending)), limit)

    def readiness(self) -> tuple[bool, str]:
        """Ready = connected to Redis and claiming. Read by the health thread."""
        if self._stopping:
            return False, "draining: stopping after a signal"
        if not self._connected:
            return False, "not connected to Redis yet"
        if self._redis_lost or self._housekeeping_failed:
            return False, "Redis is unreachable"
        return True, "ready"

    async def _beat(self) -> None:
        while not self._closing:
            self.heartbeat.beat()
            self.metrics.ready.set(1 if self.readiness()[0] else 0)
            self.metrics.in_flight.set(len(self._running))
            self.metrics.prefetched.set(len(self._buffer))
            await self._nap(1.0)

    def _cron_jobs(self) -> list[periodic.CronJob]:
        for module in self.settings.cron_modules:
            periodic.load_module(module)
        jobs = periodic.registered()
        for path in self.settings.cron_files:
            jobs += periodic.load_file(path)
        return jobs

    def request_stop(self, sig: int | None = None) -> None:
        """Stop claiming; hand back prefetched jobs now and running ones after the shutdown timeout.

        A second request skips the wait.
        """
        name = f" on {signal.Signals(sig).name}" if sig else ""
        if self._stopping:
            log.warning("worker %s: second stop request%s, handing back %d running jobs now",
                        self.id, name, len(self._running))
            self._give_up()
            return
        log.info("worker %s stopping%s: no new jobs; %d running get up to %gs", self.id, name,
                 len(self._running), self.settings.shutdown_timeout)
        self._stopping = True
        self._stop_event.set()
        self._release.extend(self._buffer)
        self._buffer.clear()
        asyncio.get_running_loop().call_later(self.settings.shutdown_timeout, self._give_up)
        self._wakeup.set()

    def _give_up(self) -> None:
        """Shutdown timeout reached: every unfinished job goes back to its queue."""
        if self._giving_up:
            return
        self._giving_up = True
        # If Redis cannot take the hand-back either, do not hang past the grace period.
        asyncio.get_running_loop().call_later(_ABANDON_AFTER, self._abandon)
        for job in list(self._running.values()):
            self._forget(job)
            if job.task is not None:
                job.task.cancel()
            self._release.append(job)
        self._wakeup.set()

    def _abandon(self) -> None:
        self._abandoning = True
        self._wakeup.set()

    def _free_slots(self) -> int:
        return max(0, self.settings.concurrency - len(self._running) - self._lingering)

    def _room(self) -> int:
        """How many more jobs to claim: free slots plus the prefetch allowance, minus what is buffered."""
        if self._stopping:
            return 0
        return max(0, self._free_slots() + self._prefetch() - len(self._buffer))

    def _prefetch(self) -> int:
        """Jobs to hold beyond the running ones. Adaptive unless --prefetch is set: while jobs
        are short, about _PREFETCH_WORK seconds of work (at least `concurrency` jobs, at most
        max_batch); none for long jobs, which gain nothing and would sit leased here while
        another worker idles."""
        if self.settings.prefetch is not None:
            return self.settings.prefetch
        avg, c = self._avg_duration, self.settings.concurrency
        if avg is None or avg >= _SHORT_JOB:
            return 0
        return min(self.settings.max_batch, max(c, int(_PREFETCH_WORK * c / max(avg, 1e-6))))

    async def _loop(self) -> None:
        while True:
            if self._abandoning:
                unrecorded = len(self._ended) + len(self._release) + len(self._buffer)
                log.error("worker %s: Redis did not take the hand-back within %gs of the shutdown timeout; "
                          "exiting with %d outcomes unrecorded (their leases expire and the jobs are recovered)",
                          self.id, _ABANDON_AFTER, unrecorded)
                return
            self._wakeup.clear()
            self._fill_slots()
            worked = await self._step()
            if not self._running and not self._ended and not self._release:
                if self._stopping:
                    return
                if self.settings.burst and not self._want_claim and not self._buffer:
                    return
            if not worked:
                if not self._want_claim and self._room():
                    self._idle.set()
                await self._wakeup.wait()

    def _fill_slots(self) -> None:
        """Start buffered jobs in free slots: no round trip between one job and the next."""
        if self._filling:
            return
        self._filling = True
        try:
            while self._buffer and self._free_slots():
                job = self._buffer.popleft()
                if not job.lost:  # its lease ran out while it waited here; someone else has it
                    self._start(job)
        finally:
            self._filling = False

    async def _step(self) -> bool:
        """One round trip: record ended jobs, hand back released ones, claim for free room.

        Returns False when there was nothing to do.
        """
        if not self._ended and not self._release and not (self._want_claim and self._room()):
            return False
        s = self.settings
        if self._ended and not self._stopping:
            await self._linger()
        ended, self._ended = self._ended[: s.max_batch], self._ended[s.max_batch :]
        release, self._release = self._release, []
        want = self._room()
        try:
            claimed = await self._transact(ended, release, want)
        except (*_DOWN, RedisError) as exc:
            self._ended[:0] = ended
            self._release[:0] = release
            if isinstance(exc, _DOWN):
                await self._redis_down(exc)
            else:
                log.error("Redis refused a worker step: %s; retrying", exc)
                await self._pause(1.0)
            return True
        if self._stopping:  # a claim that was in flight when the stop came: straight back
            self._release.extend(claimed)
        else:
            self._buffer.extend(claimed)
        if want and len(claimed) < want and not self._claim_left:
            self._want_claim = False
        return True

    async def _linger(self) -> None:
        """Let a few more jobs end before the round trip, so one trip records several.

        Only while the prefetch buffer keeps every slot busy: waiting must never
        leave a slot without work.
        """
        target = max(1, min(self.settings.max_batch, (self.settings.concurrency + self._prefetch()) // 4))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.flush_linger
        while len(self._ended) < target and self._running and len(self._buffer) >= target:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except asyncio.TimeoutError:
                return

    async def _transact(self, ended: list[Ended], release: list[Claimed], want: int) -> list[Claimed]:
        queues = self.settings.queues
        groups: dict[tuple[str, str], list[Any]] = {}
        for e in ended:
            groups.setdefault((e.job.queue, e.kind), []).append(e)
        for job in release:
            groups.setdefault((job.queue, "release"), []).append(job)

        def build(pipe: Any) -> None:
            for (queue, kind), group in groups.items():
                k = self.keys[queue]
                args: list[Any] = [k.job_prefix]
                if kind == "complete":
                    args.append(self.settings.result_ttl)
                    for e in group:
                        args += (e.job.id, e.job.execution_id, e.outcome.result)
                    scripts.complete(pipe, [k.leases, k.claimed(self.id), k.finished], args)
                elif kind in ("fail", "stop"):
                    args += ("failed" if kind == "fail" else "canceled", self.settings.failure_ttl)
                    for e in group:
                        o = e.outcome
                        args += (e.job.id, e.job.execution_id, o.exc_type, o.exc_message, o.traceback)
                    scripts.fail(pipe, [k.leases, k.claimed(self.id), k.failed if kind == "fail" else k.canceled], args)
                elif kind == "retry":
                    args.append(k.schedule_channel)
                    for e in group:
                        o = e.outcome
                        args += (e.job.id, e.job.execution_id, o.exc_type, o.exc_message, o.traceback,
                                 int(e.retry_in * 1000))  # type: ignore[operator]
                    scripts.retry(pipe, [k.leases, k.claimed(self.id), k.ready, k.scheduled, k.wake], args)
                else:
                    for job in group:
                        args += (job.id, job.execution_id)
                    scripts.release(pipe, [k.ready, k.leases, k.claimed(self.id), k.wake], args)
            if want:
                self._claim_cmd(pipe, queues[0], want)

        replies = await self._pipeline(build)
        for ((queue, kind), group), codes in zip(groups.items(), replies):
            for item, code in zip(group, codes):
                if kind == "release":
                    self._released(item, code)
                else:
                    self._recorded(item, code)
        self._claim_left = 0
        claimed = self._parse_claim(queues[0], replies[-1]) if want else []
        # Later queues only when the earlier ones ran short: strict priority.
        for queue in queues[1:]:
            if len(claimed) >= want:
                break
            reply = (await self._pipeline(lambda p, q=queue: self._claim_cmd(p, q, want - len(claimed))))[0]
            claimed += self._parse_claim(queue, reply)
        return claimed

    async def _pipeline(self, build: Any) -> list[Any]:
        self.stats["redis_roundtrips"] += 1
        self.metrics.roundtrips.inc()
        return await scripts.aexecute(self.redis, build)

    def _claim_cmd(self, pipe: Any, queue: str, n: int) -> None:
        k = self.keys[queue]
        scripts.claim(pipe, [k.ready, k.leases, k.claimed(self.id), k.wake, k.seq],
                      [k.job_prefix, n, self._lease_ms, self.id, *RUN_FIELDS])

    def _parse_claim(self, queue: str, reply: list[Any]) -> list[Claimed]:
        self._claim_left += reply[0]
        width = 2 + len(RUN_FIELDS)
        default_timeout = self.settings.default_timeout
        out = []
        for i in range(1, len(reply), width):
            job_id, exec_id, func, payload, ser, timeout, deliveries, enqueued_at, retry, retries, due_at = reply[i : i + width]
            try:
                job = Claimed(
                    queue,
                    job_id.decode(),
                    exec_id.decode(),
                    func.decode() if func else None,
                    payload,
                    ser.decode() if ser else "json",
                    float(timeout) if timeout else default_timeout,
                    int(deliveries or 0),
                    float(enqueued_at) if enqueued_at else None,
                    retry,
                    int(retries or 0),
                    float(due_at) if due_at else None,
                )
                if not job.timeout > 0:
                    raise ValueError(f"timeout must be positive, got {job.timeout}")
            except (ValueError, UnicodeDecodeError) as exc:  # a hand-edited or corrupted hash: fail only this job
                job = Claimed(queue, job_id.decode(errors="replace"), exec_id.decode(), None, None, "json",
                              default_timeout, 0, None)
                job.malformed = f"unreadable job field: {exc}"
            out.append(job)
        return out

    def _recorded(self, e: Ended, code: int) -> None:
        job, kind, m = e.job, e.kind, self.metrics.of(e.job.queue)
        extra = {"job_id": job.id, "execution_id": job.execution_id, "queue": job.queue,
                 "duration": round(e.duration, 6), "event": kind}
        if code in (errors.OK, errors.DUPLICATE):
            outcome = _OUTCOMES[kind]
            self.stats["finished" if kind == "complete" else outcome] += 1
            getattr(m, outcome).inc()
            m.run_time[outcome].observe(e.duration)
            o = e.outcome
            if kind == "complete":
                log.info("job %s finished (execution %s, queue %s, %.3fs)", job.id, job.execution_id, job.queue,
                         e.duration, extra=extra)
            elif kind == "retry":
                log.warning("job %s failed (execution %s, queue %s, %.3fs): %s: %s; retry %d in %gs", job.id,
                            job.execution_id, job.queue, e.duration, o.exc_type, o.exc_message,
                            job.retries + 1, e.retry_in, extra=extra)
            elif kind == "stop":
                log.warning("job %s stopped on request (execution %s, queue %s, %.3fs)", job.id,
                            job.execution_id, job.queue, e.duration, extra=extra)
            else:
                log.warning("job %s failed (execution %s, queue %s, %.3fs): %s: %s", job.id, job.execution_id,
                            job.queue, e.duration, o.exc_type, o.exc_message, extra=extra)
        elif code == errors.STALE:
            self.stats["stale_completions"] += 1
            self.metrics.stale.inc()
            log.warning("job %s: execution %s no longer holds the lease; its outcome was discarded",
                        job.id, job.execution_id, extra=extra)
        else:
            self.stats["vanished"] += 1
            log.warning("job %s vanished from queue %s while it ran (deleted?); outcome dropped", job.id, job.queue)

    def _released(self, job: Claimed, code: int) -> None:
        if code == errors.OK:
            self.stats["released"] += 1
            self.metrics.released.labels(job.queue).inc()
            log.info("job %s handed back to queue %s (execution %s)", job.id, job.queue, job.execution_id,
                     extra={"job_id": job.id, "execution_id": job.execution_id, "queue": job.queue, "event": "release"})
        else:
            log.warning("job %s: execution %s no longer held it; nothing to hand back", job.id, job.execution_id)

    # -- executing -------------------------------------------------------------------

    def _start(self, job: Claimed) -> None:
        self._running[(job.queue, job.id)] = job
        job.started = time.monotonic()
        job.ctx = JobContext(job.id, job.execution_id, job.queue, job.retries + 1)
        m = self.metrics.of(job.queue)
        m.started.inc()
        ready_at = max(job.enqueued_at or 0.0, (job.due_at or 0.0) / 1000)
        if ready_at:
            m.wait_time.observe(max(0.0, time.time() - ready_at))
        if log.isEnabledFor(logging.INFO):
            log.info("job %s started (execution %s, queue %s)", job.id, job.execution_id, job.queue,
                     extra={"job_id": job.id, "execution_id": job.execution_id, "queue": job.queue, "event": "start"})
        if job.malformed or job.func is None:
            return self._end(job, failure("MalformedJob", job.malformed or "job has no func field", retryable=False))
        try:
            func = execution.resolve(job.func, self.settings.allow_modules)
        except InvalidFunction as exc:
            return self._end(job, execution.import_failure(exc))
        is_async = self._async_funcs.get(func)
        if is_async is None:
            is_async = self._async_funcs[func] = inspect.iscoroutinefunction(func)
        if is_async:
            job.task = asyncio.create_task(self._run_async(func, job))
        elif self._threads is not None:
            job.call = self._threads.submit(func, job.ser, job.payload, self.settings.allow_pickle, job, job.ctx)
        elif self._procs is not None:
            job.task = asyncio.create_task(self._run_process(job))
        else:
            self._end(job, failure("TypeError", f"{job.func} is not 'async def' and this worker runs --pool async"))

    def _end(self, job: Claimed, outcome: Outcome) -> None:
        if self._running.get((job.queue, job.id)) is not job:
            return  # already handed back or timed out
        self._forget(job)
        duration = time.monotonic() - job.started
        avg = self._avg_duration
        self._avg_duration = duration if avg is None else avg * 0.9 + duration * 0.1
        retry_in = None
        if not outcome.ok and outcome.retryable:
            try:
                policy = Retry.from_json(job.retry) if job.retry else self.settings.default_retry
            except (ValueError, KeyError, TypeError, ConveyorError) as exc:
                log.error("job %s has an unreadable retry policy (%s); not retrying", job.id, exc)
                policy = None
            retry_in = retry_delay(policy, job.retries, outcome.exc_names, outcome.retry_after)
        self._ended.append(Ended(job, outcome, duration, retry_in))
        self._wakeup.set()
        self._fill_slots()

    def _forget(self, job: Claimed) -> None:
        del self._running[(job.queue, job.id)]

    async def _run_async(self, func: Any, job: Claimed) -> None:
        _current.set(job.ctx)  # this task's own context
        try:
            serializer = execution.serializer_for(job.ser, self.settings.allow_pickle)
            args, kwargs = execution.decode_call(serializer, job.payload)
        except execution.MalformedJob as exc:
            return self._end(job, execution.malformed(exc))
        deadline = asyncio.timeout(job.timeout)
        try:
            async with deadline:
                value = await func(*args, **kwargs)
        except TimeoutError as exc:
            if deadline.expired():  # ours, not a TimeoutError the job raised itself
                return self._end(job, _timeout(job))
            return self._end(job, execution.from_exception(exc))
        except SystemExit as exc:
            return self._end(job, failure("SystemExit", f"the job called sys.exit({exc.code!r})"))
        except Exception as exc:
            return self._end(job, execution.from_exception(exc))
        self._end(job, execution.encode_result(serializer, value))

    async def _run_process(self, job: Claimed) -> None:
        assert self._procs is not None and job.func is not None
        self._end(job, await self._procs.run(job.func, job.ser, job.payload, job.timeout, job.ctx))

    def _threads_done(self, done: list[tuple[ThreadCall, Outcome]]) -> None:
        for call, outcome in done:
            job: Claimed = call.tag
            if job.lingering:
                job.lingering = False
                self._lingering -= 1
                self._wakeup.set()
            else:
                self._end(job, outcome)

    async def _deadlines(self) -> None:
        """Time out thread-pool jobs. One scan every _DEADLINE_TICK instead of a timer per
        job: at thousands of jobs a second, per-job timers cost more than the scan."""
        while not self._closing:
            await self._nap(_DEADLINE_TICK)
            now = time.monotonic()
            for job in [j for j in self._running.values() if j.call is not None and now - j.started >= j.timeout]:
                self._thread_timeout(job)

    def _thread_timeout(self, job: Claimed) -> None:
        if self._running.get((job.queue, job.id)) is not job or job.call is None:
            return
        job.call.interrupt(JobTimeout)
        # The thread keeps its slot until it really returns: honest capacity.
        job.lingering = True
        self._lingering += 1
        self._end(job, _timeout(job, "thread"))

    # -- waiting for work -------------------------------------------------------------

    async def _waker(self) -> None:
        """Block in Redis until a queue gets work, then let the loop claim it."""
        wake_keys = [self.keys[q].wake for q in self.settings.queues]
        while not self._stopping and not self._closing:
            await self._idle.wait()
            try:
                self.stats["redis_roundtrips"] += 1
                self.metrics.roundtrips.inc()
                token = await self._blocking.blpop(wake_keys, timeout=_IDLE_BLOCK)
                if token and not self._room():
                    # Room filled up while we blocked: hand the token on to an idle worker.
                    await self.redis.lpush(token[0], b"1")
            except _DOWN as exc:
                if self._stopping or self._closing:
                    break  # the stop closed the connection under the BLPOP
                await self._redis_down(exc)
            except RedisError as exc:
                if self._stopping or self._closing:
                    break
                log.error("waiting for work failed: %s", exc)
                await self._pause(1.0)
            self._idle.clear()
            self._want_claim = True
            self._wakeup.set()

    # -- Redis availability ------------------------------------------------------------

    async def _connect(self) -> bool:
        """Wait for Redis with backoff; one message when it is unreachable, one when it is back."""
        delay, complained = 0.1, False
        while not self._stopping:
            try:
                await scripts.aload(self.redis)
                await self._blocking.ping()  # connect now: the first BLPOP must not do the handshake
                await self.redis.sadd(keys.QUEUES, *self.settings.queues)
                self._connected = True
                self.metrics.redis_up.set(1)
                if complained:
                    log.info("connected to Redis at %s", mask_url(self.settings.redis_url))
                return True
            except (*_DOWN, RedisError) as exc:
                if not complained:
                    log.error("cannot reach Redis at %s: %s; retrying with backoff",
                              mask_url(self.settings.redis_url), error_line(exc))
                    complained = True
                await self._pause(delay)
                delay = min(delay * 2, 10.0)
        return False

    async def _redis_down(self, exc: BaseException) -> None:
        if self._redis_lost:
            return await self._pause(1.0)  # another task is already waiting for it
        self._redis_lost = True
        self.metrics.redis_up.set(0)
        log.error("lost Redis at %s: %s; retrying with backoff", mask_url(self.settings.redis_url), error_line(exc))
        delay = 0.1
        while not self._closing and not self._abandoning:
            await asyncio.sleep(delay)
            try:
                await self.redis.ping()
                break
            except (*_DOWN, RedisError):
                delay = min(delay * 2, 5.0 if self._stopping else 10.0)
        else:
            return
        self._redis_lost = False
        self.metrics.redis_up.set(1)
        log.info("Redis at %s is back", mask_url(self.settings.redis_url))

    async def _nap(self, seconds: float) -> None:
        """Sleep, but wake at once when the worker closes."""
        try:
            await asyncio.wait_for(self._close_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    async def _pause(self, seconds: float) -> None:
        """Back off for a while, but not past a stop request."""
        try:
            await asyncio.wait_for(self._stop_event.wait(), seconds)
        except asyncio.TimeoutError:
            pass

    def _log_summary(self) -> None:
        s = self.stats
        done = s["finished"] + s["failed"]
        log.info(
            "worker %s stopped: %d jobs (%d finished, %d failed), %d Redis round trips (%.3f per job), "
            "%d handed back, %d stale completions",
            self.id, done, s["finished"], s["failed"], s["redis_roundtrips"],
            s["redis_roundtrips"] / done if done else 0.0, s["released"], s["stale_completions"],
        )


def _timeout(job: Claimed, pool: str = "") -> Outcome:
    note = (" (thread pool: the job was interrupted at its next Python instruction; "
            "use --pool process to have it killed)") if pool == "thread" else ""
    return failure("JobTimeout", f"the job exceeded its timeout of {job.timeout:g}s{note}", cls=JobTimeout)
