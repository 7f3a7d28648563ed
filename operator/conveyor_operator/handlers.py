"""Thin kopf handlers: every event ends in one Reconciler.reconcile() call.

Run with ``python -m conveyor_operator`` (or ``kopf run -m conveyor_operator.handlers``).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from . import crd, pods
from .k8s import Api
from .reconcile import Reconciler
from .settings import Settings

SETTINGS = Settings.from_env()
_reconciler: Reconciler | None = None
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
def configure(settings: kopf.OperatorSettings, logger: logging.Logger, **_: Any) -> None:
    # Keep kopf's bookkeeping in our own annotations, out of the JobQueue's status.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=crd.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=crd.GROUP, key="last-handled-configuration")
    settings.persistence.finalizer = f"{crd.GROUP}/finalizer"  # kopf needs one to stop the timer on deletion
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.execution.max_workers = 16
    # A JobQueue being deleted goes once its resync timer has exited. A timer caught inside a
    # pass (reading Redis) is re-checked after this many seconds; kopf's default is 60.
    settings.background.cancellation_polling = 1.0
    reconciler()  # fail fast on bad credentials
    logger.info("conveyor operator: namespaces=%s default image=%r resync=%ss",
                ",".join(SETTINGS.namespaces) or "*", SETTINGS.default_image, SETTINGS.resync_seconds)


def _events(body: Any):
    def post(type_: str, reason: str, message: str) -> None:
        kopf.event(body, type=type_, reason=reason, message=message)
    return post


@kopf.on.resume(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.create(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.update(crd.GROUP, crd.VERSION, crd.PLURAL)
def reconcile(body: kopf.Body, retry: int, **_: Any) -> None:
    outcome = reconciler().reconcile(dict(body), _events(body))
    if outcome.problem:
        reason, message = outcome.problem
        if outcome.permanent:
            raise kopf.PermanentError(f"{reason}: {message}")
        raise kopf.TemporaryError(f"{reason}: {message}", delay=SETTINGS.backoff(retry))


@kopf.timer(crd.GROUP, crd.VERSION, crd.PLURAL, interval=SETTINGS.resync_seconds, initial_delay=SETTINGS.resync_seconds)
def resync(body: kopf.Body, logger: logging.Logger, **_: Any) -> None:
    """Repair drift in the owned objects and refresh status and queue depth; never raises."""
    try:
        reconciler().reconcile(dict(body), _events(body))
    except Exception as exc:  # the next tick tries again
        logger.warning("resync failed: %s", exc)


@kopf.on.delete(crd.GROUP, crd.VERSION, crd.PLURAL, optional=True)
def deleted(body: kopf.Body, **_: Any) -> None:
    # Owned objects go with the JobQueue (ownerReferences); only forget our lock and TLS files.
    reconciler().forget(body.get("metadata", {}).get("uid", "") or body.get("metadata", {}).get("name", ""))


# Watching only: an event handler puts no finalizer on pods and writes nothing to them.
@kopf.on.event("v1", "pods", labels=pods.POD_LABELS)
def worker_pod(event: kopf.RawEvent, logger: logging.Logger, **_: Any) -> None:
    """A worker pod deleted or its container terminated: release its workers' jobs now."""
    try:
        pod_watcher().handle(str(event.get("type") or ""), dict(event.get("object") or {}))
    except Exception as exc:  # event handlers are not retried: the lease still recovers the jobs
        logger.warning("pod recovery failed: %s", exc)


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    """Remove the private TLS files (they would go at exit anyway)."""
    if _reconciler is not None:
        _reconciler.close()
