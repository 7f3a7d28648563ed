"""One reconcile pass for a JobQueue: desired objects applied, problems found, status written.

Used by every kopf handler (create, update, resume) and by the watch on the objects a
JobQueue owns (watch.py), so the same code creates, updates and repairs. It never raises for
what a user can fix (missing Secret, unreachable Redis, no image): it reports it as
``Outcome.problem``, which sets Degraded and lets the caller retry with backoff.

The resync loop calls :meth:`Reconciler.refresh` instead: queue depth read through the kept
Redis client and written only when it changed, and a full pass only when something the
watch cannot see moved (the Redis URL in a Secret, a Redis problem appearing or clearing).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conveyor.keys import DEFAULT_PREFIX

from . import builders, crd
from .builders import Owner
from .k8s import Api, ApiError, NotFound
from .redis_access import REDIS_PROBLEMS, RedisAccess
from .scaler import Scaler
from .settings import Settings
from .spec import defaulted, problems
from .status import DEGRADED, conditions_for, deployment_problem, merge_conditions, now, set_condition, total_depth
from .tlsfiles import TlsFileStore

EventFn = Callable[[str, str, str], None]  # (type, reason, message)

# Finalizers earlier versions had kopf put on every JobQueue (ours, and kopf's default name):
# removed from every JobQueue the operator sees, since nothing would ever remove them once
# the operator is uninstalled and deleting the JobQueue (or its namespace) would hang.
LEGACY_FINALIZERS = (f"{crd.GROUP}/finalizer", "kopf.zalando.org/KopfFinalizerMarker")


@dataclass
class Seen:
    """What the last full pass of a JobQueue found, for the resync's cheap check."""

    digest: str                              # fingerprint of a URL read from a Secret ("" otherwise)
    problem: str | None                      # the Degraded reason, None when healthy
    queues: list[dict[str, Any]] | None      # status.queues as written


@dataclass
class Outcome:
    problem: tuple[str, str] | None = None   # (reason, message)
    permanent: bool = False                  # retrying cannot help until the spec changes
    status: dict[str, Any] = field(default_factory=dict)


class Reconciler:
    def __init__(self, api: Api, settings: Settings, tls_files: TlsFileStore | None = None) -> None:
        self.api = api
        self.settings = settings
        self.tls_files = tls_files or TlsFileStore()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # JobQueues deleted (by uid, never reused): a resync pass still holding one's old body
        # must not re-create its objects or TLS files. A few dozen bytes per deletion.
        self._gone: set[str] = set()
        self._seen: dict[str, Seen] = {}
        self.redis = RedisAccess(api, settings, self.tls_files)
        self.scaler = Scaler(api)

    def _lock(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str) -> None:
        """The JobQueue is gone: its lock and its private TLS files (after any pass in flight)."""
        with self._lock(uid):
            self._gone.add(uid)
            self._seen.pop(uid, None)
            self.redis.drop(uid)
            self.tls_files.forget(uid)
        with self._locks_guard:
            self._locks.pop(uid, None)
        self.scaler.forget(uid)

    def release(self, body: dict[str, Any]) -> None:
        """Remove the LEGACY_FINALIZERS from a JobQueue (someone else's stay). A concurrent
        change to its finalizers fails the patch; the change's own event brings a retry."""
        meta = body.get("metadata") or {}
        current = list(meta.get("finalizers") or [])
        if any(f in LEGACY_FINALIZERS for f in current):
            try:
                self.api.remove_finalizers(crd.API_VERSION, crd.KIND, meta.get("namespace"), meta["name"], current,
                                           LEGACY_FINALIZERS)
            except NotFound:
                pass
            except ApiError as exc:
                if exc.status not in (409, 422):
                    raise

    def close(self) -> None:
        self.redis.close()
        self.tls_files.close()

    def redis_client(self, body: dict[str, Any]) -> tuple[Any | None, str, tuple[str, str] | None]:
        """The JobQueue's kept Redis client (shared: never close it), its key prefix, and the
        problem when there is none: the same client the depth read and the autoscaler use."""
        owner = Owner.of(body)
        spec = defaulted(body.get("spec"))
        if problems(spec, owner.name):
            return None, DEFAULT_PREFIX, ("InvalidSpec", "the JobQueue's spec is invalid")
        with self._lock(owner.uid or owner.name):
            return self._redis_client(owner, spec)

    def _redis_client(self, owner: Owner, spec: dict[str, Any]) -> tuple[Any | None, str, tuple[str, str] | None]:
        prefix = spec["redis"].get("prefix") or DEFAULT_PREFIX
        kept = self.redis.cached(owner.uid or owner.name)
        url: str | None
        if "url" in spec["redis"]:
            url, problem = spec["redis"]["url"], None
        elif kept is not None:
            # The resync re-reads a Secret's URL and replaces the client when it moved; a poll
            # every second must not read the Secret too.
            url, problem = kept.key[0], None
        else:
            url, problem = self.redis.url(owner, spec)
        if url is None:
            return None, prefix, problem
        conn, problem = self.redis.conn(owner, spec, url)
        return (conn.client if conn else None), prefix, problem

    def autoscale(self, body: dict[str, Any], event: EventFn | None = None) -> None:
        """One autoscaling poll (the operator's autoscale loop calls it every pollSeconds)."""
        owner = Owner.of(body)
        spec = defaulted(body.get("spec"))
        uid = owner.uid or owner.name
        if problems(spec, owner.name) or not spec["autoscaling"]["enabled"]:
            return
        with self._lock(uid):
            if uid in self._gone:
                return
            client, prefix, problem = self._redis_client(owner, spec)
            changed = self.scaler.poll(owner, spec, client, prefix, problem, event or (lambda *_: None))
            if changed:
                self._write_autoscaling(owner, spec)

    def _write_autoscaling(self, owner: Owner, spec: dict[str, Any]) -> None:
        current = self.api.get(crd.API_VERSION, crd.KIND, owner.namespace, owner.name)
        if current is None:
            return
        auto, cond = self.scaler.report(owner.uid or owner.name, spec)
        old = current.get("status") or {}
        status: dict[str, Any] = {"autoscaling": auto}
        if cond is not None:
            gen = int(old.get("observedGeneration") or current["metadata"].get("generation") or 0)
            status["conditions"] = set_condition(old.get("conditions"), cond, gen)
        try:
            self.api.patch_status(crd.API_VERSION, crd.KIND, owner.namespace, owner.name, status)
        except NotFound:
            pass

    def reconcile(self, body: dict[str, Any], event: EventFn | None = None) -> Outcome:
        owner = Owner.of(body)
        with self._lock(owner.uid or owner.name):
            if (owner.uid or owner.name) in self._gone:
                return Outcome()
            return self._reconcile(body, owner, event or (lambda *_: None))

    # -------------------------------------------------------------------------------------------

    def _reconcile(self, body: dict[str, Any], owner: Owner, event: EventFn) -> Outcome:
        spec = defaulted(body.get("spec"))
        generation = int(body["metadata"].get("generation") or 0)
        errors = problems(spec, owner.name)
        if errors:
            problem: tuple[str, str] | None = ("InvalidSpec", "; ".join(errors))
            return self._finish(body, owner, spec, problem, None, None, event, permanent=True)

        image = spec["workers"].get("image") or self.settings.default_image
        problem = None
        url, redis_problem = self.redis.url(owner, spec)
        # A URL from a Secret is fingerprinted into the pods' checksum: rotating it rolls them.
        digest = _fingerprint(url, spec)
        desired = [builders.configmap(owner, spec), builders.service(owner, spec), builders.pdb(owner, spec)]
        if image:
            try:
                replicas = self.scaler.prepare(owner, spec)
            except ApiError as exc:
                return self._finish(body, owner, spec, ("ApplyFailed", f"could not set the worker replicas: {exc}"),
                                    None, None, event, generation=generation)
            desired.append(builders.deployment(owner, spec, image, digest, replicas))
        else:
            problem = ("ImageMissing", "spec.workers.image is empty and the operator has no default image "
                                       "(set CONVEYOR_OPERATOR_DEFAULT_IMAGE)")
        try:
            for obj in desired:
                self.api.apply(obj)
            problem = problem or self._service_monitor(owner, spec, event)
        except ApiError as exc:
            problem = problem or ("ApplyFailed", f"could not apply the worker objects: {exc}")

        tls, tls_problem = self.redis.tls(owner, spec)
        problem = problem or redis_problem or tls_problem
        depth = None
        if url is not None and tls is not None:
            depth, depth_problem = self.redis.depth(owner, spec, url, tls)
            problem = problem or depth_problem
        deployment = self.api.get("apps/v1", "Deployment", owner.namespace, builders.names(owner.name)["deployment"])
        # What the operator found first (the likelier cause: an unreachable Redis also stalls
        # rollouts), then what the Deployment controller reports.
        problem = problem or deployment_problem(deployment)
        outcome = self._finish(body, owner, spec, problem, deployment, depth, event, generation=generation)
        self._seen[owner.uid or owner.name] = Seen(digest, problem[0] if problem else None, depth)
        return outcome

    # --- the resync --------------------------------------------------------------------------

    def refresh(self, body: dict[str, Any], event: EventFn | None = None) -> None:
        """The resync's pass: queue depth read through the kept client, written only when it
        changed. A full pass only when the last one found a problem the watch cannot see clear
        (anything but a Redis-side one), the URL in a Secret rotated (the pods roll), or a
        Redis-side problem appeared or cleared (Degraded and its Event follow)."""
        owner = Owner.of(body)
        uid = owner.uid or owner.name
        spec = defaulted(body.get("spec"))
        if problems(spec, owner.name):
            return  # only a spec change helps, and it comes with its own event
        with self._lock(uid):
            if uid in self._gone:
                return
            seen = self._seen.get(uid)
            if seen is None or (seen.problem is not None and seen.problem not in REDIS_PROBLEMS):
                self._reconcile(body, owner, event or (lambda *_: None))
                return
            url, problem = self.redis.url(owner, spec)
            depth = None
            if url is not None and _fingerprint(url, spec) == seen.digest:
                depth, problem = self.redis.depth(owner, spec, url)
            if _fingerprint(url, spec) != seen.digest or (problem[0] if problem else None) != seen.problem:
                self._reconcile(body, owner, event or (lambda *_: None))
                return
            if depth is not None and depth != seen.queues:
                try:
                    self.api.patch_status(crd.API_VERSION, crd.KIND, owner.namespace, owner.name,
                                          {"queues": depth, "depth": total_depth(depth), "depthObservedAt": now()})
                except NotFound:
                    return
                seen.queues = depth

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

    def _finish(self, body: dict[str, Any], owner: Owner, spec: dict[str, Any], problem: tuple[str, str] | None,
                deployment: dict[str, Any] | None, depth: list[dict[str, Any]] | None, event: EventFn,
                generation: int | None = None, permanent: bool = False) -> Outcome:
        old = body.get("status") or {}
        gen = int(body["metadata"].get("generation") or 0) if generation is None else generation
        auto, auto_cond = self.scaler.report(owner.uid or owner.name, spec) if spec.get("autoscaling") else (None, None)
        external = auto_cond is not None and auto_cond.reason == "ExternalAutoscaler"
        desired = None if spec.get("autoscaling", {}).get("enabled") or external \
            else spec.get("workers", {}).get("replicas")
        conds = merge_conditions(old.get("conditions"), conditions_for(problem=problem, desired=desired,
                                                                       deployment=deployment)
                                 + ([auto_cond] if auto_cond else []), gen)
        dstatus = (deployment or {}).get("status") or {}
        status: dict[str, Any] = {
            "observedGeneration": gen,
            "replicas": int(dstatus.get("replicas") or 0),
            "readyReplicas": int(dstatus.get("readyReplicas") or 0),
            "updatedReplicas": int(dstatus.get("updatedReplicas") or 0),
            "selector": builders.selector_string(owner.name),
            "conditions": conds,
            "autoscaling": auto,
        }
        if depth is not None:
            status["queues"] = depth
            status["depth"] = total_depth(depth)
            status["depthObservedAt"] = now()
        changed = {k: v for k, v in status.items() if k != "depthObservedAt" and old.get(k) != v}
        if changed:
            try:
                self.api.patch_status(crd.API_VERSION, crd.KIND, owner.namespace, owner.name, status)
            except NotFound:
                pass  # deleted meanwhile
        old_degraded: dict[str, Any] = next((c for c in old.get("conditions") or [] if c.get("type") == DEGRADED), {})
        if problem and (old_degraded.get("status") != "True" or old_degraded.get("reason") != problem[0]):
            event("Warning", problem[0], problem[1])
        elif not problem and old_degraded.get("status") == "True":
            event("Normal", "Recovered", f"no longer degraded ({old_degraded.get('reason')})")
        return Outcome(problem=problem, permanent=permanent, status=status)


def _fingerprint(url: str | None, spec: dict[str, Any]) -> str:
    """A URL read from a Secret, hashed for the pods' checksum ("" for a URL in the spec)."""
    return hashlib.sha256(url.encode()).hexdigest() if url and "secretRef" in spec["redis"] else ""
