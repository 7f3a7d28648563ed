"""What a running job can know about itself: ``conveyor.current_job()``."""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class JobContext:
    id: str
    execution_id: str
    queue: str
    attempt: int  # 1 for the first run, 2 after the first retry, ...
    # Set by the worker's loop once it lost the job's lease: another worker may run
    # the job now, and this execution's outcome will be discarded. Long sync jobs
    # should check it and stop early (async jobs are cancelled outright).
    lease_lost: bool = field(default=False, compare=False)


_current: ContextVar[JobContext | None] = ContextVar("conveyor_current_job", default=None)


def current_job() -> JobContext | None:
    """The job the calling code runs in, or None outside a job."""
    return _current.get()
