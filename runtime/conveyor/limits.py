"""Flow control per queue, fleet-wide: a rate (a token bucket: at most N starts per period) and
``max_concurrency`` (at most N jobs of the queue holding a lease across all workers).

They live in the queue's limits hash (:attr:`conveyor.keys.QueueKeys.limits`), written by
limits.lua and enforced by claim.lua, so no worker can exceed them. This module parses and
checks them, and holds the client's operations (sans-I/O, :mod:`conveyor.steps`) that
:class:`~conveyor.Queue` and :class:`~conveyor.aio.AsyncQueue` share.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Any, Final

from . import calls, steps
from .errors import ConfigError
from .keys import QueueKeys
from .protocol import Limit

PERIODS: Final = {"s": 1000, "m": 60_000, "h": 3_600_000}
_NAMES = {ms: unit for unit, ms in PERIODS.items()}
_RATE = re.compile(r"\s*(\d+)\s*/\s*([smh])\s*")
BURST_WINDOW_MS: Final = 100  # the default bucket holds this long's worth of starts (at least one)
MAX_VALUE: Final = 1_000_000_000


class Keep(enum.Enum):
    """A limit left as it is (the default of :meth:`Queue.set_limits`' arguments)."""

    KEEP = "keep"


KEEP: Final = Keep.KEEP


@dataclass(frozen=True)
class Rate:
    """At most ``count`` starts per ``period_ms``."""

    count: int
    period_ms: int

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``N/s``, ``N/m`` or ``N/h`` (N a positive integer)."""
        m = _RATE.fullmatch(text) if isinstance(text, str) else None
        if not m:
            raise ConfigError(f"rate {text!r} is not N/s, N/m or N/h (such as 100/s)")
        count = int(m.group(1))
        if not 0 < count <= MAX_VALUE:
            raise ConfigError(f"rate {text!r}: N must be between 1 and {MAX_VALUE}")
        return cls(count, PERIODS[m.group(2)])

    def default_burst(self) -> int:
        return max(1, math.ceil(self.count * min(self.period_ms, BURST_WINDOW_MS) / self.period_ms))

    def __str__(self) -> str:
        unit = _NAMES.get(self.period_ms)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.period_ms}ms"


@dataclass(frozen=True)
class Limits:
    """A queue's limits; None: no such limit."""

    rate: Rate | None = None
    max_concurrency: int | None = None
    burst: int | None = None  # the token bucket's size (with a rate)

    def __bool__(self) -> bool:
        return self.rate is not None or self.max_concurrency is not None

    def describe(self) -> str:
        parts = []
        if self.rate is not None:
            parts.append(f"rate {self.rate} (burst {self.burst or 1})")
        if self.max_concurrency is not None:
            parts.append(f"max concurrency {self.max_concurrency}")
        return ", ".join(parts) or "no limits"

    @classmethod
    def from_hash(cls, raw: dict[Any, Any]) -> Limits:
        f = {_text(k): _text(v) for k, v in raw.items()}
        rate = burst = max_c = None
        if (count := _int(f.get(Limit.RATE))) and (period := _int(f.get(Limit.PERIOD_MS))):
            rate, burst = Rate(count, period), _int(f.get(Limit.BURST))
        max_c = _int(f.get(Limit.MAX_CONCURRENCY))
        return cls(rate, max_c, burst)


def _text(v: Any) -> str:
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def check_rate(rate: Rate | str | None) -> Rate | None:
    if rate is None or isinstance(rate, Rate):
        return rate
    return Rate.parse(rate)


def check_count(value: int | None, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_VALUE:
        raise ConfigError(f"{what} must be a whole number between 1 and {MAX_VALUE}, got {value!r}")
    return value


def parse_rate(text: str, what: str = "rate") -> Rate | None:
    """A rate as typed on a command line: N/s, N/m, N/h, or none (no rate limit)."""
    if text.strip().lower() == "none":
        return None
    try:
        return Rate.parse(text)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def parse_count(text: str, what: str) -> int | None:
    """A positive whole number as typed on a command line, or none (no such limit)."""
    if text.strip().lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"{what} must be a whole number between 1 and {MAX_VALUE} or none, got {text!r}") from None
    return check_count(value, what)


def changes(rate: Rate | str | None | Keep = KEEP, max_concurrency: int | None | Keep = KEEP,
            burst: int | None | Keep = KEEP) -> list[tuple[str, str]]:
    """What limits.lua sets ("" clears), checked: raises ConfigError naming the bad value before
    anything is written. A new rate without a burst gets the default burst for it."""
    out: list[tuple[str, str]] = []
    new_burst = check_count(burst, "burst") if burst is not KEEP else None
    if rate is not KEEP:
        r = check_rate(rate)
        if r is None:
            out += [(Limit.RATE, ""), (Limit.PERIOD_MS, ""), (Limit.BURST, "")]
        else:
            out += [(Limit.RATE, str(r.count)), (Limit.PERIOD_MS, str(r.period_ms))]
            if burst is KEEP:
                out.append((Limit.BURST, str(r.default_burst())))
    if burst is not KEEP:
        out.append((Limit.BURST, str(new_burst) if new_burst is not None else ""))
    if max_concurrency is not KEEP:
        m = check_count(max_concurrency, "max_concurrency")
        out.append((Limit.MAX_CONCURRENCY, str(m) if m is not None else ""))
    return out


def declared(limits: Limits) -> list[tuple[str, str]]:
    """Exactly these limits (a limit None is cleared): what a JobQueue's workers write at start."""
    return changes(limits.rate, limits.max_concurrency, limits.burst if limits.burst is not None else KEEP)


def set_steps(k: QueueKeys, pairs: list[tuple[str, str]]) -> steps.Steps[Limits]:
    [raw] = yield from steps.execute(lambda p: calls.limits(p, k, pairs))
    return Limits.from_hash(dict(zip(raw[::2], raw[1::2])))


def read_steps(k: QueueKeys) -> steps.Steps[Limits]:
    [raw] = yield from steps.execute(lambda p: p.hgetall(k.limits))
    return Limits.from_hash(raw)
