"""``python -m conveyor_operator`` / ``conveyor-operator``: ``kopf run`` with our handlers.

Settings come from the environment (see conveyor_operator.settings): the namespaces to
watch (CONVEYOR_OPERATOR_NAMESPACES, comma-separated; all when empty), the default
worker image, the resync interval. kopf's liveness endpoint is served on
CONVEYOR_OPERATOR_LIVENESS_PORT (8080) at /healthz, the operator's metrics on
CONVEYOR_OPERATOR_METRICS_PORT (8081) at /metrics. With CONVEYOR_OPERATOR_PEERING set (a
ClusterKopfPeering name) replicas elect an active one (conveyor_operator.leader); without
it the operator runs standalone. Extra arguments go to ``kopf run``.
"""

from __future__ import annotations

import sys

from .leader import priority
from .settings import Settings


def kopf_args(settings: Settings, extra: list[str]) -> list[str]:
    # A distinct priority per replica: kopf pauses only lower-priority peers (see leader.py).
    peering = [f"--peering={settings.peering}", f"--priority={priority()}"] if settings.peering else ["--standalone"]
    args = ["run", *peering, "-m", "conveyor_operator.handlers",
            f"--liveness=http://0.0.0.0:{settings.liveness_port}/healthz"]
    if settings.namespaces:
        for ns in settings.namespaces:
            args += ["--namespace", ns]
    else:
        args.append("--all-namespaces")
    return args + extra


def main(argv: list[str] | None = None) -> None:
    from kopf.cli import main as kopf_main

    extra = list(sys.argv[1:] if argv is None else argv)
    kopf_main(args=kopf_args(Settings.from_env(), extra), prog_name="conveyor-operator")


if __name__ == "__main__":
    main()
