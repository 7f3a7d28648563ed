"""The flow's memory of what Redis refused (an error reply to one part of a step: a full Redis,
a key of the wrong type): a backoff per part, and one log line per kind instead of one per attempt."""

from __future__ import annotations

import logging
import time

from ..connection import cause

log = logging.getLogger("conveyor.worker")

_RETRY_FIRST, _RETRY_MAX = 0.1, 5.0  # seconds: backoff of a part Redis refused


class Refusals:
    """Backoff and one log line per kind of refusal, instead of a line per attempt."""

    def __init__(self) -> None:
        self._delay: dict[str, float] = {}
        self.until: dict[str, float] = {}

    def refused(self, part: str, exc: BaseException) -> float:
        delay = self._delay.get(part)
        if delay is None:
            log.error("Redis refused the worker's %s: %s; keeping it and retrying with backoff", part.replace(":", " of queue "),
                      cause(exc))
            delay = _RETRY_FIRST
        self._delay[part] = min(delay * 2, _RETRY_MAX)
        until = self.until[part] = time.monotonic() + delay
        return until

    def accepted(self, part: str) -> None:
        if self._delay.pop(part, None) is not None:
            log.info("Redis accepts the worker's %s again", part.replace(":", " of queue "))
        self.until.pop(part, None)

    def blocked(self, part: str) -> bool:
        return self.until.get(part, 0.0) > time.monotonic()

    def next_retry(self) -> float | None:
        return min(self.until.values(), default=None)
