"""What a worker knows about one job it holds (:class:`Claimed`), and how it ended (:class:`Ended`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ..context import JobContext
from .execution import STOPPED, Outcome, ThreadCall


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
    recorded_start: bool = False  # Redis says started (the claim started it, or start.lua did)
    suspect: bool = False  # recovered from a lost worker: runs apart from other suspects
    lease_until: float = 0.0  # monotonic: by this worker's clock the lease holds until then
    started: float = 0.0
    ctx: JobContext | None = None
    call: ThreadCall | None = None
    task: asyncio.Task[None] | None = None
    lost: bool = False  # Redis says another execution holds the job now: final
    lapsed: bool = False  # this worker's clock says the lease ran out; a renewal may still win it back
    malformed: str | None = None
    lingering: bool = False  # timed out or stopped in a thread that has not returned yet


@dataclass
class Ended:
    job: Claimed
    outcome: Outcome
    duration: float
    retry_in: float | None = None  # seconds until the retry; None: the outcome is final
    not_before: float = 0.0  # monotonic: Redis refused it; try again from then
    at: float = 0.0  # monotonic: when the job ended (an outcome's linger counts from then)

    @property
    def kind(self) -> str:
        if self.outcome.ok:
            return "complete"
        if self.outcome.exc_type == STOPPED:
            return "stop"
        return "fail" if self.retry_in is None else "retry"
