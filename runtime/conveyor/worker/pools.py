"""Where a job's code runs: the loop (async functions), the thread pool (sync functions under
--pool thread, the default) or the process pool (--pool process).

The runner decides when a job runs; :class:`Pools` only runs it and reports its outcome
through ``end``.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..context import JobContext, _current
from ..errors import InvalidFunction
from ..settings import WorkerSettings
from . import execution
from .claimed import Claimed
from .execution import JobTimeout, Outcome, ThreadCall, failure
from .threads import Done, JobThreads

if TYPE_CHECKING:
    from .procpool import ProcessPool


class Pools:
    def __init__(self, settings: WorkerSettings, end: Callable[[Claimed, Outcome], None]) -> None:
        self.settings = settings
        self._end = end
        self._async_funcs: dict[Any, bool] = {}
        self.threads: JobThreads | None = None
        self._procs: ProcessPool | None = None

    def open(self, threads_done: Callable[[list[Done]], None]) -> None:
        s = self.settings
        if s.pool == "thread":
            self.threads = JobThreads(s.concurrency, threads_done, may_start)
        elif s.pool == "process":
            from .procpool import ProcessPool  # multiprocessing (~1.5 MiB) only in process-pool workers

            self._procs = ProcessPool(s.concurrency, max_jobs_per_child=s.max_jobs_per_child, allow_pickle=s.allow_pickle,
                                      allow_modules=s.allow_modules)
            self._procs.start()

    def close(self) -> None:
        if self.threads:
            self.threads.shutdown()
        if self._procs:
            self._procs.close()

    def dispatch(self, job: Claimed) -> None:
        """Run a job that was just put in a slot, in the pool its function needs."""
        if job.malformed or job.func is None:
            return self._end(job, failure("MalformedJob", job.malformed or "job has no func field", retryable=False))
        try:
            func = execution.resolve(job.func, self.settings.allow_modules)
        except InvalidFunction as exc:
            return self._end(job, execution.import_failure(exc))
        if self._is_async(func):
            job.task = asyncio.create_task(self._run_async(func, job))
        elif self.threads is not None:
            job.call = self.threads.submit(
                self.threads.prepare(func, job.ser, job.payload, self.settings.allow_pickle, job, job.ctx))
        elif self._procs is not None:
            job.task = asyncio.create_task(self._run_process(job))
        else:
            self._end(job, failure("TypeError", f"{job.func} is not 'async def' and this worker runs --pool async"))

    def submit(self, call: ThreadCall) -> None:
        assert self.threads is not None
        self.threads.submit(call)

    def stage(self, buffer: collections.deque[Claimed], now: float) -> list[Claimed]:
        """Offer the buffer's oldest sync jobs to finishing threads, one per slot at most.
        Returns the jobs to hand back (their leases may have run out).

        Staging stops at the first job a thread cannot run as it is (malformed, async, not
        importable): it starts through Runner.fill, in its turn."""
        threads, back = self.threads, []
        while threads and buffer and threads.staged < self.settings.concurrency:
            job = buffer[0]
            if job.lost or job.lease_until <= now:
                buffer.popleft()
                if not job.lost:  # a lost job is dropped: someone else may run it now
                    back.append(job)
                continue
            func = self.thread_func(job)
            if func is None:
                break
            job.ctx = JobContext(job.id, job.execution_id, job.queue, job.retries + 1)
            job.call = threads.prepare(func, job.ser, job.payload, self.settings.allow_pickle, job, job.ctx)
            if not threads.stage(job.call):
                break
            buffer.popleft()
        return back

    def thread_func(self, job: Claimed) -> Callable[..., Any] | None:
        """The job's function if a pool thread runs it; None for anything else (or a failure).
        A suspect is never staged: claim.lua starts one only into a free slot, and so must we."""
        if self.threads is None or job.malformed or job.func is None or job.suspect:
            return None
        try:
            func = execution.resolve(job.func, self.settings.allow_modules)
        except InvalidFunction:
            return None
        return None if self._is_async(func) else func

    def _is_async(self, func: Any) -> bool:
        is_async = self._async_funcs.get(func)
        if is_async is None:
            is_async = self._async_funcs[func] = inspect.iscoroutinefunction(func)
        return is_async

    async def _run_async(self, func: Any, job: Claimed) -> None:
        _current.set(job.ctx)  # this task's own context
        end = self._end
        try:
            serializer = execution.serializer_for(job.ser, self.settings.allow_pickle)
            args, kwargs = execution.decode_call(serializer, job.payload)
        except execution.MalformedJob as exc:
            return end(job, execution.malformed(exc))
        deadline = asyncio.timeout(job.timeout)
        try:
            async with deadline:
                value = await func(*args, **kwargs)
        except TimeoutError as exc:
            if deadline.expired():  # ours, not a TimeoutError the job raised itself
                return end(job, timed_out(job))
            return end(job, execution.from_exception(exc))
        except SystemExit as exc:
            return end(job, failure("SystemExit", f"the job called sys.exit({exc.code!r})"))
        except Exception as exc:
            return end(job, execution.from_exception(exc))
        end(job, execution.encode_result(serializer, value))

    async def _run_process(self, job: Claimed) -> None:
        assert self._procs is not None and job.func is not None
        self._end(job, await self._procs.run(job.func, job.ser, job.payload, job.timeout, job.ctx))


def may_start(job: Claimed, now: float) -> bool:
    """Whether a job thread may start this staged job (called in the thread, under the stage's
    lock): only while its lease surely holds. lease_until only grows (renewals), so a stale
    read errs on the safe side."""
    return job.lease_until > now


def timed_out(job: Claimed, pool: str = "") -> Outcome:
    note = (" (thread pool: the job was interrupted at its next Python instruction; "
            "use --pool process to have it killed)") if pool == "thread" else ""
    return failure("JobTimeout", f"the job exceeded its timeout of {job.timeout:g}s{note}", cls=JobTimeout)
