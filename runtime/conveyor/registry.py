"""Registries: which jobs of a queue are prefetched, started, scheduled, finished, failed or canceled.

Every listing returns plain job IDs. A started job's execution ID is a field of
its own (see :meth:`Registry.executions`), never glued to the ID.

Each reading is one :mod:`conveyor.steps` operation, so :class:`Registry` (sync, as
properties) and :class:`AsyncRegistry` (awaited methods) share every line of it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import steps, wire
from .protocol import Field, Status

if TYPE_CHECKING:
    from .queue import QueueBase

# Scored by a deadline in ms (a lease's, or when a scheduled job is due) and listed whatever it
# is; the registries of ended jobs are scored by expiry in seconds.
_DEADLINES = (Status.PREFETCHED, Status.STARTED, Status.SCHEDULED, Status.DEFERRED)  # scored in ms


@dataclass(frozen=True)
class Execution:
    job_id: str
    execution_id: str | None
    worker: str | None
    lease_deadline: float  # seconds since the epoch


class RegistryBase:
    """One registry of one queue, as operations (:mod:`conveyor.steps`)."""

    def __init__(self, queue: QueueBase[Any], name: str) -> None:
        self.queue = queue
        self.name = name
        self.key = queue.keys.registry(name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.queue.name!r}, {self.name!r})"

    def _live_min(self) -> float:
        # Leases are listed whatever their deadline (an expired one still marks a
        # started job until it is reaped); ended jobs only while they are kept.
        return float("-inf") if self.name in _DEADLINES else time.time()

    def _ids_steps(self) -> steps.Steps[list[str]]:
        low = self._live_min()
        [ids] = yield from steps.execute(lambda p: p.zrangebyscore(self.key, low, "+inf"))
        return [i.decode() for i in ids]

    def _count_steps(self) -> steps.Steps[int]:
        low = self._live_min()
        [n] = yield from steps.execute(lambda p: p.zcount(self.key, low, "+inf"))
        return wire.integer(n)

    def _contains_steps(self, job_id: str) -> steps.Steps[bool]:
        low = self._live_min()
        [score] = yield from steps.execute(lambda p: p.zscore(self.key, job_id))
        return score is not None and float(score) >= low

    def _executions_steps(self) -> steps.Steps[list[Execution]]:
        low = self._live_min()
        [entries] = yield from steps.execute(lambda p: p.zrangebyscore(self.key, low, "+inf", withscores=True))
        k = self.queue.keys
        if not entries:
            return []
        replies = yield from steps.execute(lambda p: [p.hmget(k.job(j.decode()), Field.EXECUTION_ID, Field.WORKER)
                                                      for j, _ in entries])
        scale = 1000 if self.name in _DEADLINES else 1
        return [
            Execution(job_id.decode(), exec_id.decode() if exec_id else None, worker.decode() if worker else None,
                      score / scale)
            for (job_id, score), (exec_id, worker) in zip(entries, replies)
        ]


class Registry(RegistryBase):
    """A registry read with the sync client (``queue.failed.job_ids``)."""

    @property
    def job_ids(self) -> list[str]:
        return steps.run(self._ids_steps(), self.queue.connection)

    @property
    def count(self) -> int:
        return steps.run(self._count_steps(), self.queue.connection)

    def __len__(self) -> int:
        return self.count

    def __contains__(self, job_id: str) -> bool:
        return steps.run(self._contains_steps(job_id), self.queue.connection)

    def executions(self) -> list[Execution]:
        """For the prefetched and started registries: who holds each job, under which execution ID."""
        return steps.run(self._executions_steps(), self.queue.connection)


class AsyncRegistry(RegistryBase):
    """A registry read with the asyncio client (``await queue.failed.job_ids()``)."""

    async def job_ids(self) -> list[str]:
        return await steps.arun(self._ids_steps(), self.queue.connection)

    async def count(self) -> int:
        return await steps.arun(self._count_steps(), self.queue.connection)

    async def contains(self, job_id: str) -> bool:
        return await steps.arun(self._contains_steps(job_id), self.queue.connection)

    async def executions(self) -> list[Execution]:
        """As :meth:`Registry.executions`."""
        return await steps.arun(self._executions_steps(), self.queue.connection)
