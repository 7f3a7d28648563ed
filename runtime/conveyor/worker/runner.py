"""The jobs a worker holds: its slots, its prefetch buffer, and every way a job ends.

A claimed job is either *buffered* (prefetched: leased to this worker, not running, not
charged a delivery) or *running* in a slot. A buffered job that moves into a slot is
started at once and listed in :attr:`Runner.starting` until the flow records its start
in Redis. When a job ends, its outcome waits in :attr:`Runner.ended` for the flow.

In the thread pool the oldest buffered sync jobs are *staged* (see threads.py): still
buffered, but a job thread that finishes takes the next one itself, so a slot does not
wait for the loop between two jobs. The runner learns of such a start together with the
end that freed the slot (:meth:`Runner._threads_done`) and records it like any other.
Every decision about one job (lease lost, cancel, renewal, stop) first collects what the
threads did (:meth:`Runner.sync`), so the runner's view of running jobs is exact.

The runner never talks to Redis: the flow turns its lists into round trips, and
housekeeping and commands report what they learn (lost leases, stop requests) to it.
It keeps its own clock on every lease: a lease it could not renew in time is treated as
lost at once, without waiting for Redis to say so.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable

from ..context import JobContext
from ..errors import ConveyorError
from ..retry import Retry, retry_delay
from ..settings import WorkerSettings
from .calltext import LazyCall
from .claimed import Claimed, Ended
from .execution import STOPPED, JobStopped, JobTimeout, Outcome, failure
from .metrics import WorkerMetrics
from .pools import Pools, timed_out
from .threads import Done, JobThreads

log = logging.getLogger("conveyor.worker")

_SHORT_JOB = 0.1  # seconds: jobs shorter than this on average are worth prefetching
_PREFETCH_WORK = 0.05  # seconds of work a worker holds ready beyond its running jobs


class Runner:
    def __init__(self, settings: WorkerSettings, metrics: WorkerMetrics, stats: collections.Counter[str],
                 wakeup: Callable[[], None]) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stats = stats
        self._wakeup = wakeup
        # By execution ID: after a wipe or a lost lease, one job ID can run here twice.
        self.running: dict[str, Claimed] = {}
        self.buffer: collections.deque[Claimed] = collections.deque()
        self.starting: list[Claimed] = []
        self.ended: list[Ended] = []
        self.release: list[Claimed] = []
        self.cancels: list[Claimed] = []  # buffered jobs to end as canceled before they start
        self.suspect: Claimed | None = None
        self.lingering = 0  # timed-out threads that still hold a slot
        self.avg_duration: float | None = None
        self.accepting = True  # False once the worker stops: nothing new starts
        self._filling = False
        self.pools = Pools(settings, self.end)

    @property
    def _threads(self) -> JobThreads | None:
        return self.pools.threads

    def open(self) -> None:
        self.pools.open(self._threads_done)

    def close(self) -> None:
        self.pools.close()

    @property
    def idle(self) -> bool:
        return not (self.running or self.ended or self.release or self.cancels or self.starting)

    def buffered(self) -> int:
        """Jobs held but not started: the buffer and the staged jobs."""
        return len(self.buffer) + (self._threads.staged if self._threads else 0)

    def _buffered_jobs(self) -> list[Claimed]:
        return [*(self._threads.staged_tags() if self._threads else ()), *self.buffer]

    def sync(self) -> None:
        """Collect what the job threads did since the loop last heard (ends, staged jobs taken)."""
        if self._threads:
            self._threads.collect()

    def held(self) -> list[Claimed]:
        """Every job this worker holds a lease on (for renewal)."""
        self.sync()
        return [j for j in (*self.running.values(), *self._buffered_jobs()) if not j.lost]

    # -- capacity ----------------------------------------------------------------------------

    def free_slots(self) -> int:
        return max(0, self.settings.concurrency - len(self.running) - self.lingering)

    def room(self) -> int:
        """How many more jobs to claim: free slots plus the prefetch allowance, minus what is buffered."""
        if not self.accepting:
            return 0
        return max(0, self.free_slots() + self.prefetch() - self.buffered())

    def start_now(self) -> int:
        """How many jobs of a claim sent now will find a free slot when its reply comes back.

        Slots only free up meanwhile (buffered jobs take at most the slots free now)."""
        return max(0, self.free_slots() - self.buffered())

    def prefetch(self) -> int:
        """Jobs to hold beyond the running ones. Adaptive unless --prefetch is set: while jobs
        are short, about _PREFETCH_WORK seconds of work (at least `concurrency` jobs, at most
        max_batch); none for long jobs, which gain nothing and would sit leased here while
        another worker idles."""
        if self.settings.prefetch is not None:
            return self.settings.prefetch
        avg, c = self.avg_duration, self.settings.concurrency
        if avg is None or avg >= _SHORT_JOB:
            return 0
        return min(self.settings.max_batch, max(c, int(_PREFETCH_WORK * c / max(avg, 1e-6))))

    # -- taking jobs in -----------------------------------------------------------------------

    def accept(self, jobs: list[Claimed]) -> None:
        """Jobs from a claim reply: those Redis started run now, the rest wait in the buffer."""
        for job in jobs:
            if job.suspect:
                self.suspect = job
            if not self.accepting:
                # A claim that was in flight when the stop came: its jobs go back un-run, not
                # charged (even one Redis already marked started): a stop starts nothing new.
                self.release.append(job)
            elif job.recorded_start:
                self._start(job)
            else:
                self.buffer.append(job)
        self.fill()

    def fill(self) -> None:
        """Start buffered jobs in free slots (staged ones first: they are the oldest), then
        stage more: no round trip between one job and the next."""
        if self._filling:
            return
        self._filling = True
        now = time.monotonic()
        try:
            while self.free_slots() and self.accepting:
                call = self._threads.unstage() if self._threads else None
                job = call.tag if call else self.buffer.popleft() if self.buffer else None
                if job is None:
                    break
                if job.lost:
                    continue  # its lease is gone; someone else may run it now
                if job.lease_until <= now:
                    self.release.append(job)  # not sure the lease still holds: never start it
                    continue
                job.started = now
                self._begin(job)
                if call:
                    self.pools.submit(call)
                else:
                    self.pools.dispatch(job)
            if self.accepting:
                self.release += self.pools.stage(self.buffer, now)
        finally:
            self._filling = False

    def _start(self, job: Claimed) -> None:
        """A job Redis started (claimed into a free slot)."""
        self.running[job.execution_id] = job
        job.started = time.monotonic()
        self._started(job)
        self.pools.dispatch(job)

    def _begin(self, job: Claimed) -> None:
        """A buffered job moves into a slot: its start is recorded by the flow's next step."""
        self.running[job.execution_id] = job
        self.starting.append(job)
        self._started(job)

    def _started(self, job: Claimed) -> None:
        if job.ctx is None:  # a staged job has had its own since it was staged
            job.ctx = JobContext(job.id, job.execution_id, job.queue, job.retries + 1)
        m = self.metrics.of(job.queue)
        m.started.inc()
        ready_at = max(job.enqueued_at or 0.0, (job.due_at or 0.0) / 1000)
        if ready_at:
            m.wait_time.observe(max(0.0, time.time() - ready_at))
        # At INFO a job is logged once, when it ends (with its call); its start only at DEBUG.
        if log.isEnabledFor(logging.DEBUG):
            log.debug("job %s started: %s (execution %s, queue %s)", job.id,
                      LazyCall(job.func, job.ser, job.payload, self.settings.log_args), job.execution_id, job.queue,
                      extra={"job_id": job.id, "execution_id": job.execution_id, "queue": job.queue, "event": "start",
                             "func": job.func})

    # -- ending ----------------------------------------------------------------------------

    def end(self, job: Claimed, outcome: Outcome) -> None:
        if self.running.get(job.execution_id) is not job:
            return  # already handed back or timed out
        self._forget(job)
        now = time.monotonic()
        duration = now - job.started
        avg = self.avg_duration
        self.avg_duration = duration if avg is None else avg * 0.9 + duration * 0.1
        retry_in = None
        if not outcome.ok and outcome.retryable:
            try:
                policy = Retry.from_json(job.retry) if job.retry else self.settings.default_retry
            except (ValueError, KeyError, TypeError, ConveyorError) as exc:
                log.error("job %s has an unreadable retry policy (%s); not retrying", job.id, exc)
                policy = None
            retry_in = retry_delay(policy, job.retries, outcome.exc_names, outcome.retry_after)
        self.ended.append(Ended(job, outcome, duration, retry_in, at=now))
        self._wakeup()
        self.fill()

    def _forget(self, job: Claimed) -> None:
        del self.running[job.execution_id]

    def done_with(self, job: Claimed) -> bool:
        """Redis has recorded how the job ended (or that it was handed back or lost).

        Returns True when that frees the suspect's place (another suspect may be claimed)."""
        if self.suspect is job:
            self.suspect = None
            return True
        return False

    def _threads_done(self, done: list[Done]) -> None:
        for call, outcome, nxt in done:
            if nxt is not None:  # the slot passed straight to a staged job: its start, then the end
                nxt.tag.started = nxt.started
                self._begin(nxt.tag)
            job: Claimed = call.tag
            # The thread is done with the call: break the job <-> call cycle so both go as soon
            # as the job does, not at the next garbage collection (flat memory under load).
            call.tag, job.call = None, None
            if job.lingering:
                job.lingering = False
                self.lingering -= 1
                self._wakeup()
            else:
                self.end(job, outcome)

    def tick(self) -> None:
        """Time out thread-pool jobs, and give up leases this worker's clock says ran out.

        One scan every few ms instead of a timer per job: at thousands of jobs a second,
        per-job timers cost more than the scan."""
        self.sync()
        now = time.monotonic()
        for job in list(self.running.values()):
            if job.call is not None and now - job.started >= job.timeout:
                self._thread_timeout(job)
            elif job.lease_until <= now and not (job.lost or job.lapsed):
                self._lapsed(job)
        # Never start a job whose lease may be gone: hand it back instead.
        lapsed = [j for j in self.buffer if j.lease_until <= now]
        for job in lapsed:
            self.buffer.remove(job)
        if self._threads:
            lapsed += self._threads.take_back(lambda j: j.lease_until <= now)
        self.release.extend(lapsed)
        if lapsed:
            log.warning("handing back %d prefetched jobs: their leases ran out before they could be renewed",
                        len(lapsed))
            self._wakeup()

    def _thread_timeout(self, job: Claimed) -> None:
        if self.running.get(job.execution_id) is not job or job.call is None:
            return
        job.call.interrupt(JobTimeout)
        # The thread keeps its slot until it really returns: honest capacity.
        job.lingering = True
        self.lingering += 1
        self.end(job, timed_out(job, "thread"))

    # -- what others report -----------------------------------------------------------------------

    def _lapsed(self, job: Claimed) -> None:
        """Redis did not renew the lease in time (silent or gone): treat the execution as lost now.

        Async and process-pool jobs are cancelled and handed back; a sync job in a thread cannot be
        stopped, so it is told (current_job().lease_lost) and its outcome counts only if the lease
        is still its own when Redis answers again."""
        job.lapsed = True
        if job.ctx is not None:
            job.ctx.lease_lost = True
        self.stats["leases_lost"] += 1
        self.metrics.leases_lost.inc()
        task = job.task
        cancel = task is not None
        log.warning("the lease on job %s (execution %s) ran out before it could be renewed: %s", job.id,
                    job.execution_id, "cancelled, it goes back to its queue" if cancel
                    else "the job is told; its outcome counts only if the lease is still its own")
        if task is not None:
            task.cancel()
            self._forget(job)
            self.release.append(job)
            self._wakeup()

    def renewed(self, job: Claimed, until: float) -> None:
        """Redis extended the lease (until: this worker's clock, conservatively)."""
        job.lease_until = max(job.lease_until, until)
        if job.lapsed and not job.lost and self.is_running(job):
            job.lapsed = False
            if job.ctx is not None:
                job.ctx.lease_lost = False
            log.info("the lease on job %s (execution %s) is its own again: Redis renewed it", job.id,
                     job.execution_id)

    def lease_lost(self, job: Claimed, why: str) -> None:
        """Another worker may run this job now: this execution's outcome will be discarded."""
        if job.lost:
            return
        if not self._unbuffer(job):  # not buffered: a thread may have taken it; collect that first
            self.sync()
        job.lost = True
        if job.ctx is not None:
            job.ctx.lease_lost = True
        self.stats["leases_lost"] += 1
        self.metrics.leases_lost.inc()
        running = self.running.get(job.execution_id) is job
        log.warning("lost the lease on job %s (execution %s): %s; %s", job.id, job.execution_id, why,
                    "another worker may run it; this outcome will be discarded" if running
                    else "it had not started here and will not")
        if running and job.task is not None:
            job.task.cancel()
            self._forget(job)
            self._wakeup()
        self.done_with(job)

    def _unbuffer(self, job: Claimed) -> bool:
        """Take a job out of the stage or the buffer: False if it is in neither (it started)."""
        if self._threads and self._threads.remove(job):
            return True
        try:
            self.buffer.remove(job)
        except ValueError:
            return False
        return True

    def find(self, queue: str, job_id: str) -> Claimed | None:
        """The live execution of a job held here (running first, then buffered)."""
        self.sync()
        for job in (*self.running.values(), *self._buffered_jobs()):
            if job.id == job_id and job.queue == queue and not job.lost:
                return job
        return None

    def is_running(self, job: Claimed) -> bool:
        self.sync()
        return self.running.get(job.execution_id) is job

    def stop(self, job: Claimed) -> None:
        """`conveyor job stop`: a running job is interrupted and ends canceled."""
        stopped = failure(STOPPED, "stopped on request (conveyor job stop)", retryable=False)
        if job.task is not None:  # async or process pool: cancelling kills the child too
            job.task.cancel()
        elif job.call is not None:
            job.call.interrupt(JobStopped)
            job.lingering = True
            self.lingering += 1
        self.end(job, stopped)

    def cancel_buffered(self, job: Claimed) -> bool:
        """A buffered job is cancelled before it starts (it never runs). False if it started."""
        if not self._unbuffer(job):
            return False
        self.cancels.append(job)
        self._wakeup()
        return True

    def stop_accepting(self) -> None:
        """The worker stops: nothing new starts from now on (no thread takes a staged job
        after this), and every buffered job goes back to its queue."""
        self.accepting = False
        if self._threads:
            self.release.extend(self._threads.close())
        self.release.extend(self.buffer)
        self.buffer.clear()

    def give_up(self) -> None:
        """Shutdown timeout reached: every unfinished job goes back to its queue."""
        self.sync()
        for job in list(self.running.values()):
            self._forget(job)
            if job.task is not None:
                job.task.cancel()
            self.release.append(job)
        self._wakeup()
