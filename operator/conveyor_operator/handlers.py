"""Thin kopf handlers: every event ends in one Reconciler.reconcile() call.

Run with ``python -m conveyor_operator`` (or ``kopf run -m conveyor_operator.handlers``).

No handler needs a finalizer (no timers or daemons, the delete handler is optional), so
deleting a JobQueue never waits for the operator, running or not; the periodic resync is
one operator-level loop (conveyor_operator.resync) over a kopf index of the JobQueues, and
the autoscaler's polls a second one over the same index. Changes to the objects a JobQueue
owns reconcile it through conveyor_operator.watch (event handlers: no finalizer either).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
from collections.abc import Callable
from typing import Any

import kopf

from . import crd, fleet, metrics, pods, resync, watch
from .autoscale import Policy
from .k8s import Api
from .leader import LEADERSHIP
from .reconcile import LEGACY_FINALIZERS, Reconciler
from .settings import Settings
from .spec import defaulted

SETTINGS = Settings.from_env()
_reconciler: Reconciler | None = None
_resync: tuple[list[asyncio.Task[None]], concurrent.futures.ThreadPoolExecutor] | None = None
_pod_watcher: pods.PodWatcher | None = None


def reconciler() -> Reconciler:
    global _reconciler
    if _reconciler is None:
        _reconciler = Reconciler(Api(), SETTINGS)
    return _reconciler


def pod_watcher() -> pods.PodWatcher:
    global _pod_watcher
    if _pod_watcher is None:
        _pod_watcher = pods.PodWatcher(reconciler().api, reconciler(), _events)
    return _pod_watcher


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, logger: kopf.Logger, **_: Any) -> None:
    # Keep kopf's bookkeeping in our own annotations, out of the JobQueue's status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=crd.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=crd.GROUP, key="last-handled-configuration")
    # The finalizer earlier versions had kopf put on every JobQueue (for a per-object timer).
    # Nothing requires one now, so kopf releases it from each JobQueue it sees, even one
    # already being deleted; released() removes it and kopf's default one explicitly.
    settings.persistence.finalizer = LEGACY_FINALIZERS[0]
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 16
    watch.configure(settings)
    reconciler()  # fail fast on bad credentials
    fleet.configure(SETTINGS, settings, logger)
    logger.info("conveyor operator: namespaces=%s default image=%r resync=%ss",
                ",".join(SETTINGS.namespaces) or "*", SETTINGS.default_image, SETTINGS.resync_seconds)


def _events(body: Any) -> Callable[[str, str, str], None]:
    def post(type_: str, reason: str, message: str) -> None:
        try:
            reconciler().api.post_event(dict(body), type_, reason, message)
        except Exception as exc:  # an Event is worth a log line, never a failed pass
            logging.getLogger(__name__).warning("could not post Event %s: %s", reason, exc)
    return post


@kopf.on.resume(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.create(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.update(crd.GROUP, crd.VERSION, crd.PLURAL)
def reconcile(body: kopf.Body, retry: int, **_: Any) -> None:
    outcome = metrics.reconciled(reconciler().reconcile, dict(body), _events(body))
    if outcome.problem:
        reason, message = outcome.problem
        if outcome.permanent:
            raise kopf.PermanentError(f"{reason}: {message}")
        raise kopf.TemporaryError(f"{reason}: {message}", delay=SETTINGS.backoff(retry))


@kopf.index(crd.GROUP, crd.VERSION, crd.PLURAL)
def jobqueues(body: kopf.Body, uid: str, **_: Any) -> dict[str, dict[str, Any]]:
    """Every JobQueue as last seen, by uid, for the resync loop (kopf drops deleted ones)."""
    return {uid: copy.deepcopy(dict(body))}


# kopf passes the indexes as extra keyword arguments, which its ActivityFn protocol leaves to
# **kwargs: a handler that names them does not match the protocol, though kopf calls it fine.
@kopf.on.startup()  # type: ignore[arg-type]
async def start_resync(jobqueues: kopf.Index[str, dict[str, Any]],
                       hpa_targets: kopf.Index[tuple[str, str], str], keda_targets: kopf.Index[tuple[str, str], str],
                       logger: logging.Logger, **_: Any) -> None:
    global _resync
    # Its own threads: JobQueues with a slow Redis must not hold up kopf's handlers.
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="conveyor-resync")
    reconciler().scaler.autoscalers = watch.autoscalers(hpa_targets, keda_targets)

    def bodies() -> list[dict[str, Any]]:  # none while another replica leads: kopf pauses only its own watchers
        return [body for store in list(jobqueues.values()) for body in store] if LEADERSHIP.active else []

    def lookup(uid: str) -> dict[str, Any] | None:
        return next(iter(list(jobqueues.get(uid, []))), None)

    def find(namespace: str, name: str) -> str | None:
        return next((b["metadata"].get("uid") for b in bodies()
                     if b["metadata"].get("namespace") == namespace and b["metadata"].get("name") == name), None)

    def refresh(body: dict[str, Any]) -> None:
        metrics.resynced(reconciler().refresh, body, _events(body))

    def repair(body: dict[str, Any], confirm: bool) -> None:
        if confirm:  # an owned object deleted: maybe by the garbage collector, its JobQueue gone
            meta = body["metadata"]
            body = reconciler().api.get(crd.API_VERSION, crd.KIND, meta.get("namespace"), meta["name"]) or {}
            fresh = body.get("metadata") or {}
            if fresh.get("uid") != meta.get("uid") or fresh.get("deletionTimestamp"):
                return
        metrics.reconciled(reconciler().reconcile, body, _events(body))

    def autoscale(body: dict[str, Any]) -> None:
        metrics.counted("autoscale", reconciler().autoscale, body, _events(body))

    def poll_seconds(body: dict[str, Any]) -> float | None:
        spec = defaulted(body.get("spec"))
        return Policy.of(spec).poll_seconds if (spec.get("autoscaling") or {}).get("enabled") else None

    watch.start(watch.Trigger(lookup, find, repair, executor, logger))
    metrics.JOBQUEUES.set_function(lambda: sum(len(store) for store in list(jobqueues.values())))
    tasks = [asyncio.create_task(resync.run(bodies, refresh, SETTINGS.resync_seconds, executor, logger)),
             # Autoscaled JobQueues polled every pollSeconds (>= 1): same index, no finalizer.
             asyncio.create_task(resync.run_polled(bodies, autoscale, poll_seconds, executor, logger))]
    _resync = (tasks, executor)


@kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL)
def released(event: kopf.RawEvent, body: kopf.Body, **_: Any) -> None:
    """A JobQueue gone: forget its TLS files (no finalizer, so no delete handler ran). Else
    drop the finalizers earlier versions added (seen first on resume), so upgrading the
    operator does not leave JobQueues whose deletion hangs once it is uninstalled."""
    meta = body.get("metadata", {})
    if event.get("type") == "DELETED":
        reconciler().forget(meta.get("uid", "") or meta.get("name", ""))
    else:
        reconciler().release(dict(body))


@kopf.on.delete(crd.GROUP, crd.VERSION, crd.PLURAL, optional=True)
def deleted(body: kopf.Body, **_: Any) -> None:
    # Runs only while something else's finalizer holds the JobQueue. Owned objects go with it
    # (ownerReferences); only forget our lock and TLS files.
    reconciler().forget(body.get("metadata", {}).get("uid", "") or body.get("metadata", {}).get("name", ""))


# Watching only: an event handler puts no finalizer on pods and writes nothing to them.
@kopf.on.event("v1", "pods", labels=pods.POD_LABELS)
def worker_pod(event: kopf.RawEvent, logger: kopf.Logger, **_: Any) -> None:
    """A worker pod deleted or its container terminated: release its workers' jobs now."""
    try:
        pod_watcher().handle(str(event.get("type") or ""), dict(event.get("object") or {}))
    except Exception as exc:  # event handlers are not retried: the lease still recovers the jobs
        metrics.ERRORS.labels("pod_recovery").inc()
        logger.warning("pod recovery failed: %s", exc)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    """Stop the resync loop and the watch's pending passes; close the Redis clients; remove
    the private TLS files (they would go at exit anyway)."""
    await watch.stop()
    if _resync is not None:
        tasks, executor = _resync
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        executor.shutdown(wait=False, cancel_futures=True)
    if _reconciler is not None:
        _reconciler.close()
