"""Operator settings, read from the environment once at start."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...] = ()       # empty: watch every namespace
    default_image: str = ""                # for JobQueues that name no image
    resync_seconds: float = 10.0           # resync loop: queue depth from Redis (drift: the watch)
    redis_timeout: float = 2.0             # connecting to a JobQueue's Redis for its depth
    liveness_port: int = 8080              # kopf's /healthz
    retry_cap_seconds: float = 300.0       # backoff cap for Degraded JobQueues
    metrics_port: int = 8081               # the operator's own /metrics; 0: not served
    peering: str = ""                      # a ClusterKopfPeering to elect a leader in; "": standalone
    peering_lifetime: int = 15             # seconds a silent leader is trusted: bounds the failover

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        ns = tuple(n.strip() for n in env.get("CONVEYOR_OPERATOR_NAMESPACES", "").split(",") if n.strip())
        return cls(
            namespaces=ns,
            default_image=env.get("CONVEYOR_OPERATOR_DEFAULT_IMAGE", "").strip(),
            resync_seconds=float(env.get("CONVEYOR_OPERATOR_RESYNC_SECONDS", "10")),
            redis_timeout=float(env.get("CONVEYOR_OPERATOR_REDIS_TIMEOUT", "2")),
            liveness_port=int(env.get("CONVEYOR_OPERATOR_LIVENESS_PORT", "8080")),
            retry_cap_seconds=float(env.get("CONVEYOR_OPERATOR_RETRY_CAP_SECONDS", "300")),
            metrics_port=int(env.get("CONVEYOR_OPERATOR_METRICS_PORT", "8081")),
            peering=env.get("CONVEYOR_OPERATOR_PEERING", "").strip(),
            peering_lifetime=max(2, int(env.get("CONVEYOR_OPERATOR_PEERING_LIFETIME", "15"))),
        )

    def backoff(self, retry: int) -> float:
        """Seconds before retry number ``retry`` (0-based) of a Degraded JobQueue: 1, 2, 4 ... cap."""
        return float(min(self.retry_cap_seconds, 2 ** min(retry, 20)))
