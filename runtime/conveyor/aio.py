"""The asyncio client: :class:`AsyncQueue` and :class:`AsyncJob`, on redis-py's asyncio client.

Every check, encoding, script call and reply reading is the sync client's own
(:class:`~conveyor.queue.QueueBase`, :mod:`conveyor.job_steps`, driven by
:func:`conveyor.steps.arun` instead of :func:`~conveyor.steps.run`), so both raise the
same errors and write the same jobs; a FastAPI handler awaits instead of blocking its loop.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from . import job_steps, keys, steps, waiting, waiting_aio, wire
from . import limits as flow
from .batch import EnqueueData
from .connection import aconnect, db_of
from .job import JobData, Progress
from .queue import QueueBase
from .registry import AsyncRegistry
from .retry import Retry
from .validation import delay_due, when_due


class AsyncJob(JobData):
    """A snapshot of one job, as :class:`~conveyor.Job`, with its calls awaited."""

    def __init__(self, job_id: str, queue: str, connection: Any, raw: dict[bytes, Any], *,
                 allow_pickle: bool = False, prefix: str = keys.DEFAULT_PREFIX) -> None:
        super().__init__(job_id, queue, raw, allow_pickle=allow_pickle, prefix=prefix)
        self.connection = connection

    async def ttl(self) -> int:
        """Seconds until Redis forgets this job: -1 kept forever, -2 already gone."""
        return wire.integer(await self.connection.ttl(self.key))

    async def refresh(self) -> AsyncJob:
        self._load(await steps.arun(job_steps.read(self), self.connection))
        return self

    async def cancel(self, timeout: float = 10.0) -> None:
        """As :meth:`conveyor.Job.cancel`."""
        self._load(await steps.arun(job_steps.cancel(self, timeout, db_of(self.connection)), self.connection))

    async def requeue(self) -> None:
        """Put a failed job back on its queue, with a fresh retry budget."""
        self._load(await steps.arun(job_steps.requeue(self), self.connection))

    async def wait(self, timeout: float | None = None, *,
                   on_progress: Callable[[Progress], object] | None = None) -> Any:
        """As :meth:`conveyor.Job.wait`; waits of one client share one pub/sub connection, so
        ``asyncio.gather`` over many jobs opens no connection per job."""
        return waiting.unwrap((await waiting_aio.wait_async(self.connection, [self], timeout, on_progress))[0])

    @classmethod
    async def fetch(cls, job_id: str, connection: Any = None, *, queue: str | None = None,
                    redis_url: str | None = None, allow_pickle: bool = False, prefix: str | None = None) -> AsyncJob:
        """As :meth:`conveyor.Job.fetch`."""
        conn = aconnect(redis_url, connection)
        space = keys.Keyspace.of(prefix)
        found, raw = await steps.arun(job_steps.fetch(job_id, queue, allow_pickle, space), conn)
        return cls(job_id, found, conn, raw, allow_pickle=allow_pickle, prefix=space.prefix)


class AsyncQueue(QueueBase[AsyncRegistry]):
    """A named queue, as :class:`~conveyor.Queue` (same options, same errors), for asyncio code:
    ``await queue.enqueue(...)``. ``connection``: a ``redis.asyncio`` client."""

    _connect = staticmethod(aconnect)
    _registry = AsyncRegistry

    def _job(self, job_id: str, raw: dict[bytes, Any]) -> AsyncJob:
        return AsyncJob(job_id, self.name, self.connection, raw, allow_pickle=self.allow_pickle,
                        prefix=self.keyspace.prefix)

    async def _write(self, items: list[EnqueueData], if_exists: str, due_ms: int | None = None) -> list[AsyncJob]:
        return await steps.arun(self._write_steps(items, if_exists, due_ms, None), self.connection)

    async def enqueue(
        self,
        func: Callable[..., Any] | str,
        *args: Any,
        job_id: str | None = None,
        timeout: float | None = None,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
        retry: Retry | None = None,
        max_deliveries: int | None = None,
        unique_key: str | None = None,
        unique_ttl: int | None = None,
        depends_on: Iterable[Any] = (),
        on_dependency_failure: str = "cancel",
        if_exists: str = "error",
        **kwargs: Any,
    ) -> AsyncJob:
        """As :meth:`conveyor.Queue.enqueue`."""
        data = EnqueueData(func, args, kwargs, job_id, timeout, result_ttl, failure_ttl,
                           retry, max_deliveries, unique_key, unique_ttl, depends_on, on_dependency_failure)
        return (await self._write([data], if_exists))[0]

    async def enqueue_call(self, func: Callable[..., Any] | str, args: Iterable[Any] = (),
                           kwargs: dict[str, Any] | None = None, *, if_exists: str = "error", **options: Any) -> AsyncJob:
        return (await self._write([self.prepare_data(func, args, kwargs, **options)], if_exists))[0]

    async def enqueue_in(self, delay: float | dt.timedelta, func: Callable[..., Any] | str, *args: Any,
                         **kwargs: Any) -> AsyncJob:
        """As :meth:`conveyor.Queue.enqueue_in`."""
        jobs = await steps.arun(self._due(delay_due(delay), func, args, kwargs), self.connection)
        return jobs[0]  # type: ignore[no-any-return]

    async def enqueue_at(self, when: dt.datetime, func: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> AsyncJob:
        """As :meth:`conveyor.Queue.enqueue_at`."""
        jobs = await steps.arun(self._due(when_due(when), func, args, kwargs), self.connection)
        return jobs[0]  # type: ignore[no-any-return]

    async def enqueue_many(self, items: Iterable[EnqueueData], *, if_exists: str = "error") -> list[AsyncJob]:
        """Write a whole batch in one round trip, atomically: all of it or, on error, none."""
        return await self._write(list(items), if_exists)

    async def fetch_job(self, job_id: str) -> AsyncJob:
        return await AsyncJob.fetch(job_id, self.connection, queue=self.name, allow_pickle=self.allow_pickle,
                                    prefix=self.keyspace.prefix)

    async def count(self) -> int:
        """Jobs waiting to run (ready, and recovered from lost workers)."""
        return await steps.arun(self._count_steps(), self.connection)

    async def job_ids(self) -> list[str]:
        """IDs of the jobs waiting to run, next first."""
        return await steps.arun(self._ids_steps(), self.connection)

    async def requeue(self, *job_ids: str) -> int:
        """Put failed jobs back on this queue (fresh retry budget). Returns how many moved."""
        return await steps.arun(job_steps.requeue_jobs(self.name, list(job_ids), self.keyspace), self.connection)

    async def requeue_all_failed(self) -> int:
        """Put every failed job of this queue back (fresh retry budget). Returns how many moved."""
        return await steps.arun(self._requeue_all_failed_steps(), self.connection)

    async def worker_job_ids(self, worker_id: str) -> list[str]:
        """IDs of the jobs of this queue a worker holds a lease on."""
        return await steps.arun(self._worker_ids_steps(worker_id), self.connection)

    async def wait_all(self, jobs: Sequence[JobData], timeout: float | None = None, *,
                       return_exceptions: bool = False,
                       on_progress: Callable[[Progress], object] | None = None) -> list[Any]:
        """As :meth:`conveyor.Queue.wait_all`."""
        results = await waiting_aio.wait_async(self.connection, list(jobs), timeout, on_progress)
        return waiting.values(results, return_exceptions)

    async def set_limits(self, *, rate: flow.Rate | str | None | flow.Keep = flow.KEEP,
                         max_concurrency: int | None | flow.Keep = flow.KEEP,
                         burst: int | None | flow.Keep = flow.KEEP) -> flow.Limits:
        """As :meth:`conveyor.Queue.set_limits`."""
        return await steps.arun(flow.set_steps(self.keys, flow.changes(rate, max_concurrency, burst)), self.connection)

    async def limits(self) -> flow.Limits:
        return await steps.arun(flow.read_steps(self.keys), self.connection)

    async def aclose(self) -> None:
        """Close the client this queue made from a URL (not one passed in)."""
        await self.connection.aclose()
