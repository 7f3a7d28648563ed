"""Watch, don't poll the API: a change to an object a JobQueue owns (its Deployment, policy
ConfigMap, metrics Service, PDB, ServiceMonitor) reconciles that JobQueue, so a Deployment
edited or a ConfigMap deleted by hand is repaired at once, not at the next resync; and the
HorizontalPodAutoscalers and KEDA ScaledObjects are kept in kopf indexes, which the
autoscaler asks instead of listing them on every poll.

Only kopf event and index handlers (registered in handlers.py, acting through the operator's
:class:`Trigger`): they put no finalizer on anything and write nothing to the objects they
see. Owned objects are found by the labels the builders put on them and mapped to their
JobQueue by the controller ownerReference (uid), looked up in the ``jobqueues`` index.

No reconcile loop: a pass applies every object with server-side apply, and applying what is
already there changes nothing (no new resourceVersion, no watch event), so a pass that
changed an object is followed by at most one more that changes nothing. Events are
coalesced per JobQueue for :data:`DEBOUNCE_SECONDS` (a rollout's status updates come in
bursts), and ADDED events are ignored: they are the initial listing (kopf's resume handlers
reconcile every JobQueue then) or an object the operator just created.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
from collections.abc import Callable
from typing import Any

import kopf

from . import builders, crd

OWNED_LABELS = {"app.kubernetes.io/managed-by": builders.MANAGED_BY, "app.kubernetes.io/name": "conveyor-worker"}
OWNED_RESOURCES = (("apps/v1", "deployments"), ("v1", "configmaps"), ("v1", "services"),
                   ("policy/v1", "poddisruptionbudgets"), ("monitoring.coreos.com/v1", "servicemonitors"))
DEBOUNCE_SECONDS = 0.2
_WORKER_SUFFIX = "-worker"  # builders.names(): the Deployment is "<jobqueue>-worker"

Body = dict[str, Any]


class Trigger:
    """Reconciles of JobQueues woken by events, coalesced per JobQueue and run in ``executor``
    threads (a pass blocks on the API and on Redis)."""

    def __init__(self, lookup: Callable[[str], Body | None], find: Callable[[str, str], str | None],
                 act: Callable[[Body, bool], None], executor: concurrent.futures.Executor,
                 logger: logging.Logger, delay: float = DEBOUNCE_SECONDS) -> None:
        self.lookup, self.find, self.act = lookup, find, act
        self.executor, self.logger, self.delay = executor, logger, delay
        self._pending: dict[str, bool] = {}  # uid -> confirm the JobQueue still exists first
        self._tasks: set[asyncio.Task[None]] = set()
        self._targets: dict[str, tuple[str, str]] = {}  # autoscaler uid -> (namespace, Deployment) it targeted

    def wake(self, uid: str, confirm: bool = False) -> None:
        """Reconcile the JobQueue ``uid`` soon (on kopf's event loop). ``confirm``: an owned
        object was deleted, maybe by the garbage collector after its JobQueue: re-read it."""
        if uid in self._pending:
            self._pending[uid] = self._pending[uid] or confirm
            return
        self._pending[uid] = confirm
        task = asyncio.get_running_loop().create_task(self._run(uid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wake_named(self, namespace: str, name: str) -> None:
        uid = self.find(namespace, name)
        if uid is not None:
            self.wake(uid)

    async def _run(self, uid: str) -> None:
        await asyncio.sleep(self.delay)
        confirm = self._pending.pop(uid, False)
        body = self.lookup(uid)
        if body is None or (body.get("metadata") or {}).get("deletionTimestamp"):
            return  # gone or going: its objects go with it
        # kopf.event() finds kopf's event queue through context variables: carry them over.
        ctx = contextvars.copy_context()
        try:
            await asyncio.get_running_loop().run_in_executor(self.executor, ctx.run, self.act, body, confirm)
        except Exception as exc:  # the next event or resync tries again
            meta = body.get("metadata") or {}
            self.logger.warning("reconcile of %s/%s after a change to its objects failed: %s",
                                meta.get("namespace"), meta.get("name"), exc)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def owned_changed(self, event: kopf.RawEvent) -> None:
        """An owned object modified (by hand, or its status by a controller) or deleted."""
        kind = event.get("type")
        if kind not in ("MODIFIED", "DELETED"):
            return
        uid = owner_uid(dict(event.get("object") or {}))
        if uid is not None:
            self.wake(uid, confirm=kind == "DELETED")

    def autoscaler_changed(self, event: kopf.RawEvent) -> None:
        """An HPA or ScaledObject came, went or changed target: the JobQueues whose Deployment it
        targets (now, and before) reconcile, so the Autoscaling condition and the replicas follow."""
        obj: dict[str, Any] = dict(event.get("object") or {})
        meta = obj.get("metadata") or {}
        uid, namespace = str(meta.get("uid") or meta.get("name")), str(meta.get("namespace") or "default")
        dep = deployment_of(obj)
        before = self._targets.pop(uid, None)
        if dep is not None and event.get("type") != "DELETED":
            self._targets[uid] = (namespace, dep)
        now = (namespace, dep) if dep is not None else None
        for ns, d in {t for t in (before, now) if t is not None}:
            if d.endswith(_WORKER_SUFFIX):
                self.wake_named(ns, d[:-len(_WORKER_SUFFIX)])


def owner_uid(obj: Body) -> str | None:
    """The uid of the JobQueue controlling ``obj`` (the reference builders.Owner writes)."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == crd.KIND and str(ref.get("apiVersion", "")).startswith(crd.GROUP + "/") \
                and ref.get("controller") and ref.get("uid"):
            return str(ref["uid"])
    return None


def configure(settings: kopf.OperatorSettings) -> None:
    """Filter the owned kinds' watch streams on the server: the handlers' label filter alone
    is applied by kopf after every ConfigMap and Service in the cluster crossed the wire."""
    selector = ",".join(f"{k}={v}" for k, v in OWNED_LABELS.items())
    for gv, plural in OWNED_RESOURCES:
        settings.watching.label_selectors[gv, plural] = selector


# --- other autoscalers ---------------------------------------------------------------------------

def deployment_of(body: Body) -> str | None:
    """The Deployment an HPA or a ScaledObject scales (both default to apps/v1 Deployment)."""
    ref = (body.get("spec") or {}).get("scaleTargetRef") or {}
    name = ref.get("name")
    if name and ref.get("kind", "Deployment") == "Deployment" and str(ref.get("apiVersion", "apps/v1")).startswith("apps/"):
        return str(name)
    return None


def target(body: Body, namespace: str, name: str, kind: str) -> dict[tuple[str, str], str] | None:
    """The index entry of an HPA or ScaledObject: (namespace, Deployment) -> "Kind/name"."""
    dep = deployment_of(body)
    return {(namespace, dep): f"{kind}/{name}"} if dep else None


def autoscalers(*indexes: kopf.Index[tuple[str, str], str]) -> Callable[[str, str], list[str]]:
    """The scaler's view of the indexes (read from its threads: kopf changes them on its loop,
    so a read that races a change is retried)."""
    def lookup(namespace: str, deployment: str) -> list[str]:
        for _ in range(5):
            try:
                return [v for index in indexes for v in list(index.get((namespace, deployment), []))]
            except RuntimeError:  # changed during iteration
                continue
        return []
    return lookup
