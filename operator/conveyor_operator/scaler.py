"""Queue-depth autoscaling, the I/O half (autoscale.py decides): demand read from Redis every
``pollSeconds``, the Deployment's replicas set, pods ranked for removal, status and Events.

Replicas are written with server-side apply under a field manager of their own
(``conveyor-autoscaler``), holding only ``spec.replicas``. The operator's full apply leaves
``replicas`` out while autoscaling is on, so the two never undo each other, and before it
first leaves them out the autoscaler takes the current value over (``prepare``): turning
autoscaling on never resets the fleet to the API's default of 1. Turning it off makes the
full apply set ``spec.workers.replicas`` again (forced, it takes the field back).

Another autoscaler (an autoscaling/v2 HorizontalPodAutoscaler, or a KEDA ScaledObject, on
the worker Deployment) wins: the operator then leaves replicas alone, whether or not its
own autoscaling is on, and says so in the ``Autoscaling`` condition. Which ones target a
Deployment comes from kopf indexes of them (watch.py), never from a list per poll.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from conveyor import admin
from conveyor.connection import describe

from . import builders, metrics
from .autoscale import Policy, Sample, clamp, decide, window
from .k8s import Api, ApiError
from .status import Cond, read_depth
from .status import demand as demand_of

log = logging.getLogger("conveyor_operator.scaler")
MANAGER = "conveyor-autoscaler"
CONDITION = "Autoscaling"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"

EventFn = Callable[[str, str, str], None]
Autoscalers = Callable[[str, str], list[str]]


@dataclass
class Track:
    """What the autoscaler remembers of one JobQueue (in memory: a restart starts a new window)."""

    since: float                                    # monotonic: observation began
    samples: list[Sample] = field(default_factory=list)
    status: dict[str, Any] | None = None            # status.autoscaling
    cond: Cond | None = None


def _stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def replicas_object(owner: builders.Owner, name: str, replicas: int) -> dict[str, Any]:
    """The autoscaler's whole apply: the worker Deployment's replicas (and its owner, the same
    value the operator applies: should the Deployment have gone meanwhile, an apply creating
    it would make an orphan. A real API server refuses such a partial Deployment anyway)."""
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": owner.namespace, "ownerReferences": [owner.reference()]},
            "spec": {"replicas": replicas}}


class Scaler:
    def __init__(self, api: Api, autoscalers: Autoscalers | None = None) -> None:
        self.api = api
        # (namespace, Deployment name) -> the other autoscalers targeting it; none known
        # without the operator's watch (a Reconciler used on its own).
        self.autoscalers: Autoscalers = autoscalers or (lambda namespace, deployment: [])
        self._tracks: dict[str, Track] = {}
        self._guard = threading.Lock()
        self._external: dict[str, list[str]] = {}

    def forget(self, uid: str) -> None:
        with self._guard:
            self._tracks.pop(uid, None)
            self._external.pop(uid, None)

    # --- other autoscalers -----------------------------------------------------------------

    def external(self, namespace: str, deployment: str) -> list[str]:
        """The HPAs and KEDA ScaledObjects that target the Deployment, as 'Kind/name': from the
        operator's watch of them (watch.py), so no API call per poll or pass."""
        return sorted(self.autoscalers(namespace, deployment))

    # --- called by every reconcile pass ------------------------------------------------------

    def prepare(self, owner: builders.Owner, spec: dict[str, Any]) -> int | None:
        """The replicas the operator's full apply of the Deployment carries: None to leave them
        out (another autoscaler's, or ours). Called under the JobQueue's lock."""
        name = builders.names(owner.name)["deployment"]
        uid = owner.uid or owner.name
        others = self.external(owner.namespace, name)
        with self._guard:
            self._external[uid] = others
        if others:
            return None
        if not spec["autoscaling"]["enabled"]:
            self.forget(uid)
            return int(spec["workers"]["replicas"])
        current = self.api.get("apps/v1", "Deployment", owner.namespace, name)
        if current is None:  # created with a first guess; the next poll corrects it
            return clamp(int(spec["workers"]["replicas"]), Policy.of(spec))
        # Take over the current value before the full apply stops carrying it.
        replicas = int((current.get("spec") or {}).get("replicas", 1))
        self.api.apply(replicas_object(owner, name, replicas), manager=MANAGER)
        return None

    def report(self, uid: str, spec: dict[str, Any]) -> tuple[dict[str, Any] | None, Cond | None]:
        """status.autoscaling and the Autoscaling condition, for the reconcile pass's status."""
        with self._guard:
            others = self._external.get(uid)
            track = self._tracks.get(uid)
        if others:
            return (track.status if track else None), Cond(
                CONDITION, False, "ExternalAutoscaler",
                f"{', '.join(others)} scales the worker Deployment; the operator leaves its replicas alone")
        if not spec["autoscaling"]["enabled"]:
            return None, None
        if track is None or track.cond is None:
            return None, Cond(CONDITION, True, "Starting", "waiting for the first demand reading")
        return track.status, track.cond

    # --- the poll ---------------------------------------------------------------------------

    def poll(self, owner: builders.Owner, spec: dict[str, Any], client: Any, prefix: str,
             problem: tuple[str, str] | None, event: EventFn) -> bool:
        """One autoscaling step for an enabled JobQueue, under its lock; True when status.autoscaling
        or the condition changed (the caller writes them)."""
        uid = owner.uid or owner.name
        name = builders.names(owner.name)["deployment"]
        policy = Policy.of(spec)
        deployment = self.api.get("apps/v1", "Deployment", owner.namespace, name)
        if deployment is None:
            return False  # reconcile creates it
        current = int((deployment.get("spec") or {}).get("replicas", 1))
        now = time.monotonic()
        with self._guard:
            track = self._tracks.setdefault(uid, Track(since=now))
        before = (track.status, track.cond)
        others = self.external(owner.namespace, name)
        with self._guard:
            known, self._external[uid] = self._external.get(uid), others
        if others:
            return known != others
        queues = None
        if client is not None:
            try:
                with metrics.redis_read("demand"):
                    queues = read_depth(client, list(spec["queues"]), prefix)
            except (redis.RedisError, OSError) as exc:
                problem = ("RedisUnreachable", describe(exc))
        if queues is None:
            why = problem[1] if problem else "no Redis client"
            track.cond = Cond(CONDITION, False, "DemandUnknown", f"cannot read the demand, keeping {current} "
                                                                 f"workers: {why}")
            return (track.status, track.cond) != before
        demand = demand_of(queues)
        track.samples = window(track.samples + [Sample(now, demand)], now, policy)
        decision = decide(track.samples, now, current, policy, track.since)
        last = (track.status or {}).get("lastScaleTime")
        if decision.desired != current:
            if decision.desired < current:
                self._rank_pods(owner, client, prefix)
            self.api.apply(replicas_object(owner, name, decision.desired), manager=MANAGER)
            metrics.SCALE_DECISIONS.labels("up" if decision.desired > current else "down").inc()
            last = _stamp()
            event("Normal", decision.reason, f"Scaled workers from {current} to {decision.desired}: {decision.message}")
            current = decision.desired
        track.status = {"desiredReplicas": decision.desired, "currentReplicas": current, "demand": demand,
                        "reason": decision.reason, **({"lastScaleTime": last} if last else {})}
        track.cond = Cond(CONDITION, True, decision.reason, decision.message)
        return (track.status, track.cond) != before

    def _rank_pods(self, owner: builders.Owner, client: Any, prefix: str) -> None:
        """Before a scale-down: each worker pod's deletion cost = the jobs its workers hold, so
        the ReplicaSet removes idle pods first. Best effort: a failure only loses the ranking."""
        try:
            inflight = admin.inflight_by_pod(client, prefix)
            pods = self.api.list_objects("v1", "Pod", owner.namespace, builders.selector_string(owner.name))
            for pod in pods:
                meta = pod.get("metadata") or {}
                if meta.get("deletionTimestamp"):
                    continue
                cost = str(inflight.get(meta.get("name", ""), 0))
                if (meta.get("annotations") or {}).get(DELETION_COST) != cost:
                    self.api.annotate("v1", "Pod", owner.namespace, meta["name"], {DELETION_COST: cost})
        except (ApiError, redis.RedisError, OSError) as exc:
            log.warning("%s/%s: could not rank worker pods for the scale-down: %s", owner.namespace, owner.name, exc)
