"""Queue-depth autoscaling decisions: pure, no I/O (the scaler module does the reading and writing).

Demand is what a JobQueue's workers have to do now: jobs ready (and recovered), held by a
worker (prefetched or running), and scheduled jobs already due. One worker takes
``targetJobsPerWorker`` of it, so the recommendation is ``ceil(demand / target)`` clamped to
``[minReplicas, maxReplicas]``.

Like the HorizontalPodAutoscaler: a higher recommendation applies at once; a lower one only
as the highest recommendation seen within the last ``scaleDownStabilizationSeconds``, so a
short dip never removes workers that the next burst needs. Until a whole window has been
observed (the operator just started, or autoscaling was just turned on) nothing is scaled
down below the current replicas: the replicas the fleet had are the evidence for that time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_POLL_SECONDS = 5


@dataclass(frozen=True)
class Policy:
    min_replicas: int = 1
    max_replicas: int = 10
    target: int = 20                 # jobs per worker
    poll_seconds: float = DEFAULT_POLL_SECONDS
    window_seconds: float = 300.0    # scale-down stabilization

    @classmethod
    def of(cls, spec: dict[str, Any]) -> Policy:
        """From a defaulted spec's ``autoscaling``."""
        a = spec.get("autoscaling") or {}
        return cls(int(a.get("minReplicas", 1)), int(a.get("maxReplicas", 10)),
                   max(1, int(a.get("targetJobsPerWorker", 20))),
                   max(1.0, float(a.get("pollSeconds", DEFAULT_POLL_SECONDS))),
                   max(0.0, float(a.get("scaleDownStabilizationSeconds", 300))))


@dataclass(frozen=True)
class Sample:
    at: float      # monotonic seconds
    demand: int


@dataclass(frozen=True)
class Decision:
    desired: int
    recommended: int   # what the demand alone asks for (clamped), before stabilization
    reason: str        # ScaleUp, ScaleDown, Stabilizing, Steady
    message: str


def clamp(n: int, policy: Policy) -> int:
    return max(policy.min_replicas, min(policy.max_replicas, n))


def recommend(demand: int, policy: Policy) -> int:
    return clamp(math.ceil(max(0, demand) / policy.target), policy)


def window(samples: Iterable[Sample], now: float, policy: Policy) -> list[Sample]:
    """The samples still inside the stabilization window (what a tracker keeps)."""
    return [s for s in samples if s.at >= now - policy.window_seconds]


def decide(samples: Sequence[Sample], now: float, current: int, policy: Policy, since: float) -> Decision:
    """The replicas to run now. ``samples`` are demand readings, the newest last (at least one);
    ``current`` the Deployment's replicas; ``since`` when observation began."""
    if not samples:
        raise ValueError("decide() needs at least one demand sample")
    demand = samples[-1].demand
    rec = recommend(demand, policy)
    what = f"demand {demand} at {policy.target} jobs per worker"
    if rec > current:
        return Decision(rec, rec, "ScaleUp", f"{what} needs {rec} workers (was {current})")
    # The highest recommendation within the window; before a full window, also the current count.
    held = max(recommend(s.demand, policy) for s in window(samples, now, policy))
    if now - since < policy.window_seconds:
        held = max(held, clamp(current, policy))
    if held < current:
        return Decision(held, rec, "ScaleDown", f"{what} needs {rec} workers, {held} within the last "
                                                f"{policy.window_seconds:g}s (was {current})")
    if rec < current:
        return Decision(current, rec, "Stabilizing", f"{what} needs {rec} workers; keeping {current} until "
                                                     f"{policy.window_seconds:g}s of lower demand")
    return Decision(current, rec, "Steady", f"{what} needs {rec} workers")
