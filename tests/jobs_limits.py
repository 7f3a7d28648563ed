"""Job functions for the flow-control tests: each execution appends its own start and end
times to a file outside Redis (one O_APPEND write each), so rates and overlaps are measured
from what ran, not from Conveyor's bookkeeping.

Lines: "start <tag> <time>" and "end <tag> <time>"; read them back with `events(path)`.
"""

from __future__ import annotations

import time
from pathlib import Path

from joblog import append


def timed(path: str, tag: str, seconds: float = 0.0) -> str:
    append(path, f"start {tag} {time.time():.6f}")
    if seconds:
        time.sleep(seconds)
    append(path, f"end {tag} {time.time():.6f}")
    return tag


def events(path: Path) -> list[tuple[str, str, float]]:
    """(start|end, tag, time) in file order."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        kind, tag, at = line.split()
        out.append((kind, tag, float(at)))
    return out


def starts(path: Path) -> list[float]:
    return sorted(at for kind, _, at in events(path) if kind == "start")


def max_overlap(path: Path) -> int:
    """The most jobs running at once, from their own start and end records (an end at the same
    instant as a start counts first: the slot was free)."""
    timeline = sorted((at, 0 if kind == "end" else 1) for kind, _, at in events(path))
    running = peak = 0
    for _, is_start in timeline:
        running += 1 if is_start else -1
        peak = max(peak, running)
    return peak
