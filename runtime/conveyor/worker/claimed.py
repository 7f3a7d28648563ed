"""What a worker knows about one job it holds (:class:`Claimed`, read from a claim reply by
:func:`parse_claim`), and how it ended (:class:`Ended`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ..context import JobContext
from ..protocol import RUN_FIELDS, Status
from .execution import STOPPED, Outcome, ThreadCall

_STARTED = Status.STARTED.encode()  # in claim.lua's reply


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


def parse_claim(queue: str, reply: list[Any], default_timeout: float, lease_until: float) -> list[Claimed]:
    """claim.lua's reply, from its fourth value on: id, execution ID, state, suspect, RUN_FIELDS."""
    width = 4 + len(RUN_FIELDS)
    out = []
    for i in range(3, len(reply), width):
        job_id, exec_id, state, suspect, func, payload, ser, timeout, deliveries, enqueued_at, retry, retries, due_at = (
            reply[i: i + width])
        try:
            job = Claimed(
                queue, job_id.decode(), exec_id.decode(), func.decode() if func else None, payload,
                ser.decode() if ser else "json", float(timeout) if timeout else default_timeout,
                int(deliveries or 0), float(enqueued_at) if enqueued_at else None, retry, int(retries or 0),
                float(due_at) if due_at else None)
            if not job.timeout > 0:
                raise ValueError(f"timeout must be positive, got {job.timeout}")
        except (ValueError, UnicodeDecodeError) as exc:  # a hand-edited or corrupted hash: fail only this job
            job = Claimed(queue, job_id.decode(errors="replace"), exec_id.decode(), None, None, "json",
                          default_timeout, 0, None)
            job.malformed = f"unreadable job field: {exc}"
        job.recorded_start = state == _STARTED
        job.suspect = suspect == b"1"
        job.lease_until = lease_until
        out.append(job)
    return out
