"""What a running job can know about itself, and report: ``conveyor.current_job()``."""

from __future__ import annotations

import json
import math
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from .errors import ProgressError

MAX_MESSAGE = 200  # characters of a progress message kept
MAX_META = 4096  # bytes of a job's meta dict, JSON-encoded


class Outbox:
    """Reports of running jobs not yet written to Redis, by execution ID: the worker takes them
    with the round trip it makes next anyway (conveyor.worker.progress), so a job may report
    as often as it likes; the latest value wins. Empty unless some job reports."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: dict[str, JobContext] = {}


OUTBOX = Outbox()


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
    # False in a process-pool child: nothing carries its reports to the worker's round trips.
    reporting: bool = field(default=True, compare=False)
    set_meta_value: dict[str, Any] | None = field(default=None, compare=False, repr=False)
    # Encoded reports waiting for the worker's next round trip (under OUTBOX.lock).
    pending_progress: str | None = field(default=None, compare=False, repr=False)
    pending_meta: str | None = field(default=None, compare=False, repr=False)

    def set_progress(self, value: float, message: str | None = None) -> None:
        """Report how far the job is: a fraction (0.5) or a count (120), and an optional message.
        Written with the worker's next round trip (no round trip of its own); waiters get it."""
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ProgressError(f"progress must be a finite number (a fraction or a count), got {value!r}")
        if message is not None and not isinstance(message, str):
            raise ProgressError(f"progress message must be a string or None, got {type(message).__name__}")
        self._post(progress=json.dumps({"value": value, "message": None if message is None else message[:MAX_MESSAGE]}))

    def set_meta(self, meta: dict[str, Any]) -> None:
        """Replace the job's small meta dict (JSON, at most 4 KiB encoded); written as progress is."""
        if not isinstance(meta, dict):
            raise ProgressError(f"meta must be a dict, got {type(meta).__name__}")
        try:
            encoded = json.dumps(meta, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ProgressError(f"meta must be JSON-able: {exc}") from None
        if len(encoded.encode()) > MAX_META:
            raise ProgressError(f"meta is {len(encoded.encode())} bytes as JSON; the limit is {MAX_META}")
        self.set_meta_value = json.loads(encoded)
        self._post(meta=encoded)

    @property
    def meta(self) -> dict[str, Any]:
        """What this execution last set with :meth:`set_meta` (a copy), {} if nothing."""
        return dict(self.set_meta_value or {})

    def _post(self, progress: str | None = None, meta: str | None = None) -> None:
        if not self.reporting:
            raise ProgressError("progress and meta cannot be reported from a process-pool job (--pool process): "
                                "its child process has no link to the worker's round trips; use --pool thread or "
                                "--pool async")
        with OUTBOX.lock:
            if progress is not None:
                self.pending_progress = progress
            if meta is not None:
                self.pending_meta = meta
            OUTBOX.items[self.execution_id] = self


_current: ContextVar[JobContext | None] = ContextVar("conveyor_current_job", default=None)


def current_job() -> JobContext | None:
    """The job the calling code runs in, or None outside a job."""
    return _current.get()
