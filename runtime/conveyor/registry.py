"""Registries: which jobs of a queue are prefetched, started, scheduled, finished, failed or canceled.

Every listing returns plain job IDs. A started job's execution ID is a field of
its own (see :meth:`Registry.executions`), never glued to the ID.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import scripts, wire
from .protocol import Field, Status

if TYPE_CHECKING:
    from .queue import Queue

# Scored by a deadline in ms (a lease's, or when a scheduled job is due) and listed whatever it
# is; the registries of ended jobs are scored by expiry in seconds.
_DEADLINES = (Status.PREFETCHED, Status.STARTED, Status.SCHEDULED, Status.DEFERRED)  # scored in ms


@dataclass(frozen=True)
class Execution:
    job_id: str
    execution_id: str | None
    worker: str | None
    lease_deadline: float  # seconds since the epoch


class Registry:
    def __init__(self, queue: Queue, name: str) -> None:
        self.queue = queue
        self.name = name
        self.key = queue.keys.registry(name)

    def _live_min(self) -> str:
        # Leases are listed whatever their deadline (an expired one still marks a
        # started job until it is reaped); ended jobs only while they are kept.
        return "-inf" if self.name in _DEADLINES else repr(time.time())

    @property
    def job_ids(self) -> list[str]:
        ids = self.queue.connection.zrangebyscore(self.key, self._live_min(), "+inf")
        return [i.decode() for i in ids]

    @property
    def count(self) -> int:
        return wire.integer(self.queue.connection.zcount(self.key, self._live_min(), "+inf"))

    def __len__(self) -> int:
        return self.count

    def __contains__(self, job_id: str) -> bool:
        return job_id in self.job_ids

    def executions(self) -> list[Execution]:
        """For the prefetched and started registries: who holds each job, under which execution ID."""
        conn = self.queue.connection
        entries = conn.zrangebyscore(self.key, self._live_min(), "+inf", withscores=True)
        k = self.queue.keys
        replies = scripts.execute(conn, lambda p: [p.hmget(k.job(j.decode()), Field.EXECUTION_ID, Field.WORKER)
                                                   for j, _ in entries])
        out = []
        for (job_id, score), (exec_id, worker) in zip(entries, replies):
            out.append(
                Execution(
                    job_id.decode(),
                    exec_id.decode() if exec_id else None,
                    worker.decode() if worker else None,
                    score / 1000 if self.name in _DEADLINES else score,
                )
            )
        return out
