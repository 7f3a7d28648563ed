"""Retry policies: how many times a failing job runs again, and after how long.

    Retry(max=3, intervals=[1, 5, 30])          # 1 s, 5 s, then 30 s (the last repeats)
    Retry(max=5, backoff=Backoff(base=1, factor=2, cap=300), jitter=0.2)
    Retry(max=3, retry_on=[ConnectionError], dont_retry_on=[PermissionError])

A zero delay puts the job straight back on its queue; any other delay makes it a
scheduled job, moved back by the scheduler when due (run workers with
--with-scheduler). A job may also ``raise RetryLater(delay)`` to ask for a retry
with its own delay; that counts against ``max`` (3 when the job has no policy).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidArgument

DEFAULT_RETRY_LATER_MAX = 3


class RetryLater(Exception):
    """Raise from a job to have it run again after ``delay`` seconds."""

    def __init__(self, delay: float = 0.0, reason: str = "") -> None:
        if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
            raise InvalidArgument(f"RetryLater delay must be seconds >= 0, got {delay!r}")
        self.delay = float(delay)
        super().__init__(reason or f"retry requested in {delay:g}s")


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: base * factor ** (retry - 1), never more than cap seconds."""

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0

    def __post_init__(self) -> None:
        if not self.base > 0 or not self.factor >= 1 or not self.cap >= self.base:
            raise InvalidArgument(f"invalid backoff {self}: need base > 0, factor >= 1, cap >= base")


def _type_name(t: Any) -> str:
    if isinstance(t, str):
        return t
    if isinstance(t, type) and issubclass(t, BaseException):
        return f"{t.__module__}.{t.__qualname__}"
    raise InvalidArgument(f"retry_on/dont_retry_on take exception classes or 'module.Name' strings, got {t!r}")


@dataclass(frozen=True)
class Retry:
    max: int
    intervals: tuple[float, ...] = (0.0,)
    backoff: Backoff | None = None
    jitter: float = 0.0
    retry_on: tuple[str, ...] = field(default=())
    dont_retry_on: tuple[str, ...] = field(default=())

    def __init__(
        self,
        max: int,
        intervals: Iterable[float] | float | None = None,
        backoff: Backoff | bool | None = None,
        jitter: float = 0.0,
        retry_on: Iterable[Any] = (),
        dont_retry_on: Iterable[Any] = (),
    ) -> None:
        if isinstance(max, bool) or not isinstance(max, int) or max < 0:
            raise InvalidArgument(f"Retry max must be an integer >= 0, got {max!r}")
        if intervals is not None and backoff:
            raise InvalidArgument("Retry takes intervals or backoff, not both")
        if isinstance(intervals, (int, float)):
            intervals = [intervals]
        ivals = tuple(float(i) for i in (intervals if intervals is not None else [0.0]))
        if not ivals or any(i < 0 for i in ivals):
            raise InvalidArgument(f"Retry intervals must be seconds >= 0, got {list(ivals)}")
        if backoff is True:
            backoff = Backoff()
        if backoff is not None and backoff is not False and not isinstance(backoff, Backoff):
            raise InvalidArgument(f"backoff must be a Backoff or True, got {backoff!r}")
        if not 0 <= jitter <= 1:
            raise InvalidArgument(f"jitter is a fraction between 0 and 1, got {jitter!r}")
        object.__setattr__(self, "max", max)
        object.__setattr__(self, "intervals", ivals)
        object.__setattr__(self, "backoff", backoff or None)
        object.__setattr__(self, "jitter", float(jitter))
        object.__setattr__(self, "retry_on", tuple(_type_name(t) for t in retry_on))
        object.__setattr__(self, "dont_retry_on", tuple(_type_name(t) for t in dont_retry_on))

    def delay(self, retry_number: int) -> float:
        """Seconds to wait before retry number ``retry_number`` (1 for the first retry)."""
        if self.backoff is not None:
            b = self.backoff
            base = min(b.cap, b.base * b.factor ** (retry_number - 1))
        else:
            base = self.intervals[min(retry_number - 1, len(self.intervals) - 1)]
        if self.jitter and base:
            base *= 1 + self.jitter * random.uniform(-1, 1)
        return max(0.0, base)

    def applies_to(self, exc_names: Iterable[str]) -> bool:
        names = set(exc_names)
        if names & set(self.dont_retry_on):
            return False
        return not self.retry_on or bool(names & set(self.retry_on))

    def to_json(self) -> str:
        data: dict[str, Any] = {"max": self.max}
        if self.backoff is not None:
            data["backoff"] = [self.backoff.base, self.backoff.factor, self.backoff.cap]
        else:
            data["intervals"] = list(self.intervals)
        if self.jitter:
            data["jitter"] = self.jitter
        if self.retry_on:
            data["on"] = list(self.retry_on)
        if self.dont_retry_on:
            data["not_on"] = list(self.dont_retry_on)
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> Retry:
        d = json.loads(raw)
        backoff = Backoff(*d["backoff"]) if "backoff" in d else None
        return cls(d["max"], intervals=d.get("intervals") if backoff is None else None, backoff=backoff,
                   jitter=d.get("jitter", 0.0), retry_on=d.get("on", ()), dont_retry_on=d.get("not_on", ()))


def policy_retry(d: dict[str, Any]) -> Retry:
    """A Retry from the policy-file / JobQueue shape:
    {"max": 3, "intervals": [1, 5]} or {"max": 5, "backoff": {"base": 1, "factor": 2, "max": 300}, "jitter": 0.1}."""
    if not isinstance(d, dict) or "max" not in d:
        raise InvalidArgument(f"retry policy needs at least 'max', got {d!r}")
    unknown = set(d) - {"max", "intervals", "backoff", "jitter", "retry_on", "dont_retry_on"}
    if unknown:
        raise InvalidArgument(f"retry policy: unknown keys {sorted(unknown)}")
    backoff = d.get("backoff")
    if backoff is not None:
        if not isinstance(backoff, dict) or set(backoff) - {"base", "factor", "max"}:
            raise InvalidArgument(f"retry backoff takes base, factor and max, got {backoff!r}")
        backoff = Backoff(float(backoff.get("base", 1)), float(backoff.get("factor", 2)), float(backoff.get("max", 300)))
    return Retry(d["max"], intervals=d.get("intervals"), backoff=backoff, jitter=float(d.get("jitter", 0.0)),
                 retry_on=d.get("retry_on", ()), dont_retry_on=d.get("dont_retry_on", ()))


def retry_delay(policy: Retry | None, retries_so_far: int, exc_names: Iterable[str], requested: float | None) -> float | None:
    """Seconds until the next attempt, or None when the job should fail for good."""
    if requested is not None:  # RetryLater
        limit = policy.max if policy is not None else DEFAULT_RETRY_LATER_MAX
        return requested if retries_so_far < limit else None
    if policy is None or retries_so_far >= policy.max or not policy.applies_to(exc_names):
        return None
    return policy.delay(retries_so_far + 1)
