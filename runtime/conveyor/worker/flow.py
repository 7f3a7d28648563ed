"""The claim/record flow: one pipeline per turn, every reply handled on its own.

Each step sends, in one round trip: the starts of buffered jobs that moved into a slot,
the outcomes of jobs that ended, the jobs handed back or cancelled, and a claim for the
room that freed up. Under load one round trip serves many jobs.

Nothing a command did is thrown away because a sibling failed: a refused outcome (a full
Redis, a key of the wrong type) is kept and retried with backoff, and a claim Redis
executed is always honoured. When Redis does not answer at all, everything is kept for
the next step and the link reconnects.
"""

from __future__ import annotations

import collections
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import NoScriptError, ResponseError

from .. import calls, keys
from ..connection import cause
from ..protocol import Code, Status
from ..settings import WorkerSettings
from . import progress, recorded
from .claimed import Claimed, Ended, parse_claim
from .link import LinkDown, RedisLink
from .metrics import WorkerMetrics
from .recorded import OUTCOMES as _OUTCOMES
from .refusals import Refusals
from .runner import Runner
from .throttle import Throttles

log = logging.getLogger("conveyor.worker")



class Flow:
    def __init__(self, worker_id: str, settings: WorkerSettings, link: RedisLink, runner: Runner,
                 metrics: WorkerMetrics, stats: collections.Counter[str], wakeup: Callable[[], None] = lambda: None) -> None:
        self.id = worker_id
        self.settings = settings
        self.link = link
        self.runner = runner
        self.metrics = metrics
        self.stats = stats
        self.keys = {q: keys.Keyspace(settings.prefix).queue(q) for q in settings.queues}
        self.lease_ms = int(settings.lease_seconds * 1000)
        self.want_claim = True
        self._wakes = 0  # bumped by wake(): a step that began before it must not clear want_claim
        self.claim_left = 0  # IDs the last claim left that this worker could take
        self.refusals = Refusals()
        self._wakeup = wakeup  # the worker's loop has something to do
        self.throttles = Throttles(metrics, self._throttle_ended, {k.wake: q for q, k in self.keys.items()})
        self._suspect_freed = False
        self._exec_prefix = f"{secrets.token_hex(8)}-"  # execution IDs: unique across restarts and wipes
        self._exec_seq = 0
        # Claims whose reply was lost (queue, first number, how many): Redis may have run them,
        # leasing jobs this worker does not know it holds. Handed back on the next step.
        self._unsure: list[tuple[str, int, int]] = []
        # The claim the waker sent behind its BLPOP (queue, args), until its reply is handled:
        # meanwhile a step claims nothing, so the two never start more jobs than there are slots.
        self.pickup: tuple[str, list[Any]] | None = None
        self._stepping = False  # a step's claim may be out: no pickup claim then either
        self._skip = 0  # leading queues the next step need not claim: a pickup just found them empty

    def wake(self) -> None:
        """Work may be waiting (a wake token, a reap, a stop): claim on the next step, even if a
        step already in flight comes back with nothing (its claim may have run before the work
        arrived)."""
        self.want_claim = True
        self._wakes += 1
        self._skip = 0

    def _throttle_ended(self) -> None:
        self.wake()
        self._wakeup()

    # -- one step ------------------------------------------------------------------------------

    def has_work(self) -> bool:
        r = self.runner
        if r.starting or r.release or r.cancels:
            return True
        # A claim whose reply was lost is undone (disown) when Redis answers. A stopping
        # worker does not wait for Redis for that alone: it started none of those jobs, and
        # their leases bring them back if the claim ran at all.
        if self._unsure and (r.accepting or self.link.up):
            return True
        now = time.monotonic()
        if any(e.not_before <= now for e in r.ended):
            return True
        return self.want_claim and self.pickup is None and r.room() > 0 and self._claimable() is not None

    def _claimable(self) -> str | None:
        return next((q for q in self.settings.queues[self._skip:] if self._open(q)), None)

    def _open(self, queue: str) -> bool:
        """Neither refused by Redis (backoff) nor held off by the queue's limits."""
        return not self.refusals.blocked(f"claim:{queue}") and not self.throttles.blocked(queue)

    async def step(self) -> bool:
        """One round trip: record starts and ended jobs, hand back released ones, claim.

        Returns False when Redis did not answer (everything is kept for the next step)."""
        self._stepping = True
        try:
            return await self._step()
        finally:
            self._stepping = False

    async def _step(self) -> bool:
        r, s = self.runner, self.settings
        now = time.monotonic()
        starting, r.starting = r.starting, []
        ready: list[Ended] = []
        waiting: list[Ended] = []
        for e in r.ended:  # outcomes Redis refused wait for their retry time
            (ready if e.not_before <= now and len(ready) < s.max_batch else waiting).append(e)
        r.ended = waiting
        release, r.release = r.release, []
        cancels, r.cancels = r.cancels, []
        want = r.room()
        wakes = self._wakes
        held = self.pickup is not None  # the waker's claim is out: this step claims nothing
        parts = self._parts(starting, ready, release, cancels)  # first: an end frees a limited queue's slot
        first = self._claimable() if want and not held else None
        self._skip = 0
        sent = time.monotonic()
        claim_args = self._claim_args(first, want) if first else None
        unsure, self._unsure = self._unsure, []
        reports = progress.take()  # what running jobs reported, written before their outcomes
        try:
            replies = await self.link.roundtrip(lambda p: self._build(p, unsure, reports, parts, first, claim_args))
        except LinkDown:
            progress.give_back(reports)
            r.starting[:0] = starting
            r.ended[:0] = ready
            r.release[:0] = release
            r.cancels[:0] = cancels
            self._unsure[:0] = unsure
            if first and claim_args:
                self._lost_claim(first, claim_args)
            return False
        finally:
            progress.sent(reports)
        for (queue, _, _), reply in zip(unsure, replies):
            self._disowned(queue, reply)
        replies = replies[len(unsure) + len(reports):]
        for (kind, queue, items), reply in zip(parts, replies):
            self._settle(kind, queue, items, reply)
        claimed = self._claimed(first, replies[-1], sent) if first else []
        # Later queues only when the earlier ones ran short: strict priority.
        for queue in s.queues[s.queues.index(first) + 1:] if first else ():
            if len(claimed) >= want or not r.accepting:
                break
            if not self._open(queue):
                continue
            args = self._claim_args(queue, want - len(claimed), suspects=r.suspect is None and not any(j.suspect for j in claimed))
            sent = time.monotonic()
            try:
                def claim_cmd(p: Any, q: str = queue, a: list[Any] = args) -> None:
                    self._claim_cmd(p, q, a)

                reply = (await self.link.roundtrip(claim_cmd))[0]
            except LinkDown:
                self._lost_claim(queue, args)
                break
            claimed += self._claimed(queue, reply, sent)
        if want and not held and len(claimed) < want and not self.claim_left and self._wakes == wakes:
            self.want_claim = False
        if self._suspect_freed:
            self.want_claim, self._suspect_freed = True, False
        return True

    def _parts(self, starting: list[Claimed], ended: list[Ended], release: list[Claimed],
               cancels: list[Claimed]) -> list[tuple[str, str, list[Any]]]:
        """Group the step's items by (kind, queue): one script call each, starts first so a
        job that started and ended within one step is recorded in order."""
        groups: dict[tuple[str, str], list[Any]] = {}
        for job in starting:
            groups.setdefault(("start", job.queue), []).append(job)
        for e in ended:
            groups.setdefault((e.kind, e.job.queue), []).append(e)
            self.throttles.freed(e.job.queue)
        for job in release:
            groups.setdefault(("release", job.queue), []).append(job)
            self.throttles.freed(job.queue)
        parts = [(kind, queue, items) for (kind, queue), items in groups.items()]
        return parts + [("cancel", job.queue, [job]) for job in cancels]  # cancel.lua takes one job

    def _build(self, pipe: Any, unsure: list[tuple[str, int, int]], reports: progress.Groups,
               parts: list[tuple[str, str, list[Any]]], first: str | None, claim_args: list[Any] | None) -> None:
        s = self.settings
        for queue, seq, n in unsure:  # first: the jobs handed back may be claimed again below
            calls.disown(pipe, self.keys[queue], self.id, self._exec_prefix, seq, n)
        progress.queue_calls(pipe, self.keys, reports)
        for kind, queue, items in parts:
            k = self.keys[queue]
            if kind == "start":
                calls.start(pipe, k, self.lease_ms, [(j.id, j.execution_id) for j in items])
            elif kind == "complete":
                calls.complete(pipe, k, self.id, s.result_ttl, [(e.job.id, e.job.execution_id, e.outcome.result)
                                                               for e in items])
            elif kind in ("fail", "stop"):
                calls.fail(pipe, k, self.id, Status.FAILED if kind == "fail" else Status.CANCELED, s.failure_ttl,
                           [(e.job.id, e.job.execution_id, e.outcome.exc_type, e.outcome.exc_message,
                             e.outcome.traceback) for e in items])
            elif kind == "retry":
                calls.retry(pipe, k, self.id, [(e.job.id, e.job.execution_id, e.outcome.exc_type, e.outcome.exc_message,
                                                e.outcome.traceback, int((e.retry_in or 0) * 1000)) for e in items])
            elif kind == "release":
                calls.release(pipe, k, self.id, [(j.id, j.execution_id) for j in items])
            else:
                calls.cancel(pipe, k, items[0].id, s.failure_ttl, items[0].execution_id)
        if first is not None and claim_args is not None:
            self._claim_cmd(pipe, first, claim_args)

    # -- replies ---------------------------------------------------------------------------------

    def _settle(self, kind: str, queue: str, items: list[Any], reply: Any) -> None:
        part = f"{'outcomes' if kind in _OUTCOMES else kind}:{queue}"
        if isinstance(reply, ResponseError):
            until = self.refusals.refused(part, reply)
            r = self.runner
            if kind == "start":
                r.starting.extend(items)
            elif kind == "release":
                r.release.extend(items)
            elif kind == "cancel":
                r.cancels.extend(items)
            else:
                for e in items:
                    e.not_before = until
                r.ended.extend(items)
            return
        self.refusals.accepted(part)
        if kind == "start":
            for job, code in zip(items, reply):
                if code in (Code.OK, Code.DUPLICATE):
                    job.recorded_start = True
                else:
                    self.runner.lease_lost(job, "it was taken back (canceled or recovered) just as it started")
        elif kind == "release":
            for job, code in zip(items, reply):
                self._released(job, code)
        elif kind == "cancel":
            self._canceled(items[0], reply[0])
        else:
            for e, code in zip(items, reply):
                self._recorded(e, code)

    def _claim_args(self, queue: str, n: int, suspects: bool | None = None) -> list[Any]:
        start_now = min(n, self.runner.start_now())
        if suspects is None:
            suspects = self.runner.suspect is None
        seq, self._exec_seq = self._exec_seq, self._exec_seq + n
        return [n, start_now, suspects and start_now > 0, seq]

    def _claim_cmd(self, pipe: Any, queue: str, a: list[Any]) -> None:
        n, start_now, suspects, seq = a
        calls.claim(pipe, self.keys[queue], self.id, n, start_now, self.lease_ms, self._exec_prefix, seq,
                    suspects, self.settings.failure_ttl)

    def _claimed(self, queue: str, reply: Any, sent: float) -> list[Claimed]:
        part = f"claim:{queue}"
        if isinstance(reply, ResponseError):
            self.refusals.refused(part, reply)
            return []
        self.refusals.accepted(part)
        self.claim_left = reply[0]
        self.throttles.claimed(queue, reply[2])
        bad = reply[1]
        for i in range(0, len(bad), 2):
            job_id = bad[i].decode(errors="replace")
            self.stats["failed"] += 1
            self.metrics.of(queue).failed.inc()
            log.warning("job %s failed: MalformedJob: %s (queue %s; it was never run)", job_id,
                        bad[i + 1].decode(errors="replace"), queue,
                        extra={"job_id": job_id, "queue": queue, "event": "fail"})
        jobs = parse_claim(queue, reply, self.settings.default_timeout, sent + self.settings.lease_seconds)
        self.runner.accept(jobs)
        return jobs

    def _lost_claim(self, queue: str, args: list[Any]) -> None:
        n, seq = args[0], args[3]
        last = self._unsure[-1] if self._unsure else None
        if last and last[0] == queue and last[1] + last[2] == seq:  # the one before it, also lost
            self._unsure[-1] = (queue, last[1], last[2] + n)
        else:
            self._unsure.append((queue, seq, n))

    # -- the claim an idle worker sends behind its BLPOP (waker.py) -----------------------------

    def claiming(self) -> bool:
        """A step is out, or due (a wake came after the loop went idle): it claims, not a pickup."""
        return self._stepping or self.want_claim

    def pickup_claim(self) -> Callable[[Any], None] | None:
        """What queues a claim for the waker to send with its BLPOP (one round trip to wake and claim):
        the first claimable queue's (strict priority), built as a step's, sized now for all the room;
        or None. Until :meth:`picked_up` or :meth:`pickup_lost` steps claim nothing."""
        r = self.runner
        # A suspect held here: its end must let a step claim the next one at once, not after this
        # claim's block.
        if self.pickup is not None or self.claiming() or not r.accepting or r.suspect is not None:
            return None
        want = r.room()
        first = self._claimable() if want else None
        if first is None:
            return None
        args = self._claim_args(first, want)
        self.pickup = (first, args)
        return lambda pipe: self._claim_cmd(pipe, first, args)

    def picked_up(self, reply: Any, sent: float) -> int:
        """The pickup claim's reply, taken in as a step's claim's is; returns how many jobs it brought.

        `sent`: when the BLPOP went out. The claim ran later, so leases counted from then are
        conservative, as a step's are."""
        if self.pickup is None:  # already given up as lost: the next step's disown takes its jobs back
            return 0
        (queue, args), self.pickup = self.pickup, None
        claimed = [] if isinstance(reply, NoScriptError) else self._claimed(queue, reply, sent)
        # More may be waiting: NOSCRIPT (it never ran: Redis restarted; a step claims, loading the
        # scripts), a full claim, IDs it left, or a later queue's (the token may be theirs).
        if isinstance(reply, NoScriptError) or len(claimed) >= args[0] or self.claim_left:
            self.wake()
        elif queue != self.settings.queues[-1]:
            self.wake()
            self._skip = self.settings.queues.index(queue) + 1  # it came back short: start after it
        if self.throttles.ended_any():  # the BLPOP's block ended with a throttle: claim its queue too
            self.wake()
        return len(claimed)

    def pickup_lost(self) -> None:
        """No reply (a dropped connection, a timeout, a stop cutting the BLPOP): the claim may have
        run, so the next step hands back what it leased (disown), as for a step's lost claim."""
        if self.pickup is not None:
            (queue, args), self.pickup = self.pickup, None
            self._lost_claim(queue, args)

    def _disowned(self, queue: str, reply: Any) -> None:
        if isinstance(reply, ResponseError):  # a key of the wrong type: the leases recover them
            log.warning("could not hand back the jobs of a claim whose reply was lost (queue %s): %s; "
                        "they run again when their leases expire", queue, cause(reply))
        elif reply:
            log.info("%d job(s) of queue %s handed back: Redis leased them to this worker but the reply "
                     "was lost", len(reply), queue, extra={"queue": queue, "event": "release"})
            self.wake()

    def _done_with(self, job: Claimed) -> None:
        if self.runner.done_with(job):
            self._suspect_freed = True  # the place for a suspect is free: look for the next one

    def _recorded(self, e: Ended, code: int) -> None:
        self._done_with(e.job)
        recorded.log_outcome(e, code, self.stats, self.metrics, self.settings)

    def _released(self, job: Claimed, code: int) -> None:
        self._done_with(job)
        if code == Code.OK:
            self.stats["released"] += 1
            self.metrics.released.labels(job.queue).inc()
            log.info("job %s handed back to queue %s (execution %s)", job.id, job.queue, job.execution_id,
                     extra={"job_id": job.id, "execution_id": job.execution_id, "queue": job.queue, "event": "release"})
        else:
            log.warning("job %s: execution %s no longer held it; nothing to hand back", job.id, job.execution_id)

    def _canceled(self, job: Claimed, code: int) -> None:
        self._done_with(job)
        if code == Code.OK:
            self.stats["canceled"] += 1
            log.info("job %s canceled before it started (execution %s, queue %s)", job.id, job.execution_id,
                     job.queue, extra={"job_id": job.id, "execution_id": job.execution_id, "queue": job.queue,
                                       "event": "cancel"})
