"""One reconcile pass for a JobQueue: desired objects applied, problems found, status written.

Used by every kopf handler (create, update, resume and the resync timer), so the same
code repairs drift and refreshes status. It never raises for what a user can fix
(missing Secret, unreachable Redis, no image): it reports it as ``Outcome.problem``,
which sets Degraded and lets the caller retry with backoff.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import redis

from . import builders, crd
from .builders import Owner
from .k8s import Api, ApiError, NotFound
from .settings import Settings
from .spec import defaulted, problems
from .status import DEGRADED, conditions_for, merge_conditions, now, queue_depth

EventFn = Callable[[str, str, str], None]  # (type, reason, message)


@dataclass
class Outcome:
    problem: tuple[str, str] | None = None   # (reason, message)
    permanent: bool = False                  # retrying cannot help until the spec changes
    status: dict[str, Any] = field(default_factory=dict)


class Reconciler:
    def __init__(self, api: Api, settings: Settings) -> None:
        self.api = api
        self.settings = settings
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _lock(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str) -> None:
        with self._locks_guard:
            self._locks.pop(uid, None)

    def reconcile(self, body: dict[str, Any], event: EventFn | None = None) -> Outcome:
        owner = Owner.of(body)
        with self._lock(owner.uid or owner.name):
            return self._reconcile(body, owner, event or (lambda *_: None))

    # -------------------------------------------------------------------------------------------

    def _reconcile(self, body: dict[str, Any], owner: Owner, event: EventFn) -> Outcome:
        spec = defaulted(body.get("spec"))
        generation = int(body["metadata"].get("generation") or 0)
        errors = problems(spec, owner.name)
        if errors:
            problem = ("InvalidSpec", "; ".join(errors))
            return self._finish(body, owner, spec, problem, None, None, event, permanent=True)

        image = spec["workers"].get("image") or self.settings.default_image
        problem: tuple[str, str] | None = None
        url, redis_problem = self._redis_url(owner, spec)
        # A URL from a Secret is fingerprinted into the pods' checksum: rotating it rolls them.
        digest = hashlib.sha256(url.encode()).hexdigest() if url and "secretRef" in spec["redis"] else ""
        desired = [builders.configmap(owner, spec), builders.service(owner, spec), builders.pdb(owner, spec)]
        if image:
            desired.append(builders.deployment(owner, spec, image, digest))
        else:
            problem = ("ImageMissing", "spec.workers.image is empty and the operator has no default image "
                                       "(set CONVEYOR_OPERATOR_DEFAULT_IMAGE)")
        try:
            for obj in desired:
                self.api.apply(obj)
            problem = problem or self._service_monitor(owner, spec, event)
        except ApiError as exc:
            problem = problem or ("ApplyFailed", f"could not apply the worker objects: {exc}")

        problem = problem or redis_problem
        depth = None
        if url is not None:
            try:
                depth = queue_depth(url, list(spec["queues"]), timeout=self.settings.redis_timeout)
            except (redis.RedisError, OSError, ValueError) as exc:
                problem = problem or ("RedisUnreachable", f"cannot reach Redis: {exc}")
        deployment = self.api.get("apps/v1", "Deployment", owner.namespace, builders.names(owner.name)["deployment"])
        return self._finish(body, owner, spec, problem, deployment, depth, event, generation=generation)

    def _service_monitor(self, owner: Owner, spec: dict[str, Any], event: EventFn) -> tuple[str, str] | None:
        sm = builders.service_monitor(owner, spec)
        name = sm["metadata"]["name"]
        if builders.wants_service_monitor(spec):
            if not self.api.crd_exists("servicemonitors.monitoring.coreos.com"):
                event("Warning", "ServiceMonitorUnavailable",
                      "metrics.serviceMonitor.enabled is set but the ServiceMonitor CRD "
                      "(monitoring.coreos.com) is not installed; skipping it")
                return None
            self.api.apply(sm)
            return None
        # Asked before, not now: remove the one this JobQueue owns (and nobody else's).
        try:
            current = self.api.get(sm["apiVersion"], "ServiceMonitor", owner.namespace, name)
        except ApiError:  # the CRD is not installed: nothing to remove
            return None
        if current and any(r.get("uid") == owner.uid for r in current["metadata"].get("ownerReferences") or []):
            self.api.delete(sm["apiVersion"], "ServiceMonitor", owner.namespace, name)
        return None

    def _redis_url(self, owner: Owner, spec: dict[str, Any]) -> tuple[str | None, tuple[str, str] | None]:
        redis_spec = spec["redis"]
        if "url" in redis_spec:
            return redis_spec["url"], None
        ref = redis_spec["secretRef"]
        key = ref.get("key", "url")
        try:
            return self.api.secret_value(owner.namespace, ref["name"], key), None
        except NotFound:
            return None, ("SecretMissing", f'Secret "{ref["name"]}" (spec.redis.secretRef) was not found in namespace '
                                           f'"{owner.namespace}"; workers cannot start until it exists')
        except KeyError:
            return None, ("SecretKeyMissing", f'Secret "{ref["name"]}" has no key "{key}" (spec.redis.secretRef.key)')
        except ApiError as exc:
            return None, ("SecretUnreadable", f'cannot read Secret "{ref["name"]}": {exc}')

    def _finish(self, body: dict[str, Any], owner: Owner, spec: dict[str, Any], problem: tuple[str, str] | None,
                deployment: dict[str, Any] | None, depth: list[dict[str, Any]] | None, event: EventFn,
                generation: int | None = None, permanent: bool = False) -> Outcome:
        old = body.get("status") or {}
        gen = int(body["metadata"].get("generation") or 0) if generation is None else generation
        desired = None if spec.get("autoscaling", {}).get("enabled") else spec.get("workers", {}).get("replicas")
        conds = merge_conditions(old.get("conditions"), conditions_for(problem=problem, desired=desired,
                                                                       deployment=deployment), gen)
        dstatus = (deployment or {}).get("status") or {}
        status: dict[str, Any] = {
            "observedGeneration": gen,
            "replicas": int(dstatus.get("replicas") or 0),
            "readyReplicas": int(dstatus.get("readyReplicas") or 0),
            "updatedReplicas": int(dstatus.get("updatedReplicas") or 0),
            "selector": builders.selector_string(owner.name),
            "conditions": conds,
        }
        if depth is not None:
            status["queues"] = depth
            status["depth"] = sum(q["ready"] + q["scheduled"] for q in depth)
            status["depthObservedAt"] = now()
        changed = {k: v for k, v in status.items() if k != "depthObservedAt" and old.get(k) != v}
        if changed:
            try:
                self.api.patch_status(crd.API_VERSION, crd.KIND, owner.namespace, owner.name, status)
            except NotFound:
                pass  # deleted meanwhile
        old_degraded = next((c for c in old.get("conditions") or [] if c.get("type") == DEGRADED), {})
        if problem and (old_degraded.get("status") != "True" or old_degraded.get("reason") != problem[0]):
            event("Warning", problem[0], problem[1])
        elif not problem and old_degraded.get("status") == "True":
            event("Normal", "Recovered", f"no longer degraded ({old_degraded.get('reason')})")
        return Outcome(problem=problem, permanent=permanent, status=status)
