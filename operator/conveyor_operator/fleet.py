"""Start-up of what running a fleet of operator replicas needs: with CONVEYOR_OPERATOR_PEERING,
kopf's peering (conveyor_operator.leader); the metrics endpoint (metrics.serve) is started
just before. Called from the operator's startup (conveyor_operator.state), in a thread: it
calls the API."""

from __future__ import annotations

import kopf

from .k8s import Api
from .leader import Leadership, ensure_peering
from .settings import Settings


def configure(settings: Settings, kopf_settings: kopf.OperatorSettings, api: Api, leadership: Leadership,
              logger: kopf.Logger) -> None:
    if settings.peering:
        # kopf starts its peering only after every startup handler has returned, so these hold.
        kopf_settings.peering.clusterwide = True  # one election also when watching a list of namespaces
        kopf_settings.peering.lifetime = settings.peering_lifetime
        ensure_peering(api, settings.peering)  # kopf only patches it: a missing one pauses it for good
        leadership.follow_kopf()
    logger.info("conveyor operator: metrics on port %s, %s", settings.metrics_port or "(off)",
                f"peering {settings.peering!r} (lifetime {settings.peering_lifetime}s, priority "
                f"{kopf_settings.peering.priority})" if settings.peering else "standalone")
