"""Jobs ended per second over the last minutes, from the 10-second buckets complete.lua and
fail.lua count (the queue's rate hash), drawn as a small inline SVG: no script, no library."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..protocol import Status

BUCKET = 10  # seconds, as _lib.lua's count_ended
POINTS = 60  # ten minutes
WIDTH, HEIGHT = 240, 40


@dataclass(frozen=True)
class Series:
    finished: list[float]  # jobs/s per bucket, oldest first (the bucket in progress left out)
    failed: list[float]

    @property
    def last_minute(self) -> tuple[float, float]:
        n = 60 // BUCKET
        return sum(self.finished[-n:]) / n, sum(self.failed[-n:]) / n

    def svg_points(self) -> tuple[str, str, float]:
        """Polyline points of both lines on one scale, and that scale's top in jobs/s."""
        top = max([*self.finished, *self.failed, 0.0])
        top = _nice(top)

        def points(values: list[float]) -> str:
            step = WIDTH / max(1, len(values) - 1)
            return " ".join(f"{i * step:.1f},{HEIGHT - (v / top) * (HEIGHT - 2) - 1:.1f}" for i, v in enumerate(values))

        return points(self.finished), points(self.failed), top


def _nice(top: float) -> float:
    if top <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(top))
    return float(next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= top))


def fields(now: float) -> tuple[list[str], int]:
    """The rate-hash fields of the last POINTS complete buckets, and the first bucket's number."""
    first = int(now // BUCKET) - POINTS
    names = [f"{kind}:{b}" for kind in (Status.FINISHED, Status.FAILED) for b in range(first, first + POINTS)]
    return names, first


def series(values: list[Any]) -> Series:
    """HMGET of fields() → per-second rates."""
    nums = [float(v) / BUCKET if v not in (None, b"") and _isnum(v) else 0.0 for v in values]
    return Series(nums[:POINTS], nums[POINTS:])


def _isnum(v: Any) -> bool:
    try:
        float(v)
    except (TypeError, ValueError):
        return False
    return True
