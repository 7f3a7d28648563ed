"""The JobQueue schema's pieces about how much work the fleet takes on: autoscaling (how
many workers) and limits (how fast each queue is drained). Part of
:mod:`conveyor_operator.crd`, which assembles the CRD."""

from __future__ import annotations

import re

from .openapi import integer, rule, string

# conveyor.limits.Rate.parse: N/s, N/m or N/h, N from 1 to 999999999 (within its bound).
RATE_PATTERN = r"^[1-9][0-9]{0,8}/[smh]$"
MAX_LIMIT = 1_000_000_000  # conveyor.limits.MAX_VALUE

LIMITS = {
    "type": "object",
    "description": "Flow control of every queue in spec.queues, fleet-wide, enforced by each claim in Redis. "
                   "The workers write it to the queues when they start (--limit-* options): the spec wins at every "
                   "rollout, over `conveyor queue set`, and a limit left out here is cleared. Without spec.limits "
                   "the workers leave the queues' limits as they are.",
    "properties": {
        "rate": string("At most N jobs of each queue start per second, minute or hour across all workers "
                       "(a token bucket): N/s, N/m or N/h.", max_length=16, pattern=RATE_PATTERN),
        "burst": integer(1, MAX_LIMIT, None, "With rate: starts allowed at once after a quiet spell (default: "
                                             "100 ms worth of the rate, at least 1)."),
        "maxConcurrency": integer(1, MAX_LIMIT, None, "At most this many jobs of each queue running (or "
                                                      "prefetched) across all workers."),
    },
    "x-kubernetes-validations": [
        rule("!has(self.burst) || has(self.rate)", "limits.burst needs limits.rate", "FieldValueInvalid"),
    ],
}

AUTOSCALING = {
    "type": "object",
    "default": {},
    "description": "Queue-depth autoscaling by the operator. Every pollSeconds it reads the demand from Redis "
                   "(jobs ready, held by a worker and scheduled-and-due, over spec.queues) and sets the worker "
                   "Deployment's replicas to ceil(demand / targetJobsPerWorker) within [minReplicas, maxReplicas]: "
                   "up at once, down only to the highest recommendation of the last "
                   "scaleDownStabilizationSeconds. Turning it on starts from the current replicas, turning it off "
                   "returns to spec.workers.replicas. An HPA or KEDA ScaledObject on the worker Deployment takes "
                   "precedence (condition Autoscaling=False, ExternalAutoscaler).",
    "properties": {
        "enabled": {"type": "boolean", "default": False},
        "minReplicas": integer(0, 1000, 1, "Fewest workers; 0 scales to zero when there is nothing to do "
                                           "(the first job wakes the fleet within one poll)."),
        "maxReplicas": integer(1, 1000, 10, "Most workers."),
        "targetJobsPerWorker": integer(1, 1000000, 20, "Jobs (ready + running + prefetched + due) per worker "
                                                       "to aim for."),
        "pollSeconds": integer(1, 3600, 5, "How often to read the demand."),
        "scaleDownStabilizationSeconds": integer(0, 86400, 300, "Scale down only to the highest recommendation "
                                                                "of this many seconds (no flapping after a dip)."),
    },
    "x-kubernetes-validations": [
        rule("self.minReplicas <= self.maxReplicas", "autoscaling.minReplicas must be <= autoscaling.maxReplicas",
              "FieldValueInvalid"),
    ],
}

REPLICAS_WHILE_AUTOSCALING = ("spec.workers.replicas cannot change while spec.autoscaling.enabled (the operator "
                              "sets the workers from the queue depth): change autoscaling.minReplicas or "
                              "maxReplicas, or set autoscaling.enabled: false first")


def limits_problems(limits: dict[str, object] | None) -> list[str]:
    """What the LIMITS schema refuses, as messages (the operator checks specs itself too)."""
    if limits is None:
        return []
    out = []
    rate = limits.get("rate")
    if rate is not None and not (isinstance(rate, str) and re.fullmatch(RATE_PATTERN, rate)):
        out.append(f"spec.limits.rate must be N/s, N/m or N/h (N from 1), got {rate!r}")
    for key in ("burst", "maxConcurrency"):
        v = limits.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_LIMIT):
            out.append(f"spec.limits.{key} must be a whole number 1..{MAX_LIMIT}, got {v!r}")
    if "burst" in limits and "rate" not in limits:
        out.append("limits.burst needs limits.rate")
    return out
