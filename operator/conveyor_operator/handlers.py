"""Thin kopf handlers: each reads the operator's state from kopf's memo (conveyor_operator.state)
and makes one call; every JobQueue event ends in one Reconciler.reconcile() call.

Run with ``python -m conveyor_operator`` (or ``kopf run -m conveyor_operator.handlers``).

No handler needs a finalizer (no timers or daemons, the delete handler is optional), so
deleting a JobQueue never waits for the operator, running or not; the periodic resync is
one operator-level loop (conveyor_operator.resync) over a kopf index of the JobQueues, and
the autoscaler's polls a second one over the same index. Changes to the objects a JobQueue
owns reconcile it through conveyor_operator.watch (event handlers: no finalizer either).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import kopf

from . import crd, metrics, pods, state, watch
from .reconcile import LEGACY_FINALIZERS


def configure(settings: kopf.OperatorSettings) -> None:
    """kopf's settings for this operator."""
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


# kopf passes the indexes as extra keyword arguments, which its ActivityFn protocol leaves to
# **kwargs: a handler that names them does not match the protocol, though kopf calls it fine.
@kopf.on.startup()  # type: ignore[arg-type]
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger,
                jobqueues: state.JobQueues, hpa_targets: state.Targets, keda_targets: state.Targets,
                **_: Any) -> None:
    configure(settings)
    if state.MEMO_KEY not in memo:  # kopf may retry a failed startup: one state
        try:
            memo[state.MEMO_KEY] = state.OperatorState.create(settings, jobqueues, hpa_targets, keda_targets,
                                                              logger=logger)
        except kopf.LoginError as exc:  # no credentials: stop now, not at the first call
            raise kopf.PermanentError(str(exc)) from exc
    running = state.of(memo)
    await running.start(settings)
    logger.info("conveyor operator: namespaces=%s default image=%r resync=%ss",
                ",".join(running.settings.namespaces) or "*", running.settings.default_image,
                running.settings.resync_seconds)


@kopf.on.login()
async def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials are the Api's (conveyor_operator.k8s): read again at each login."""
    return await state.of(memo).api.refresh()


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    if state.MEMO_KEY in memo:
        await state.of(memo).close()


@kopf.on.resume(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.create(crd.GROUP, crd.VERSION, crd.PLURAL)
@kopf.on.update(crd.GROUP, crd.VERSION, crd.PLURAL)
def reconcile(body: kopf.Body, retry: int, memo: kopf.Memo, **_: Any) -> None:
    running = state.of(memo)
    outcome = running.reconcile(dict(body))
    if outcome.problem:
        reason, message = outcome.problem
        if outcome.permanent:
            raise kopf.PermanentError(f"{reason}: {message}")
        raise kopf.TemporaryError(f"{reason}: {message}", delay=running.settings.backoff(retry))


@kopf.index(crd.GROUP, crd.VERSION, crd.PLURAL)
def jobqueues(body: kopf.Body, uid: str, **_: Any) -> dict[str, dict[str, Any]]:
    """Every JobQueue as last seen, by uid, for the resync loop (kopf drops deleted ones)."""
    return {uid: copy.deepcopy(dict(body))}


@kopf.on.event(crd.GROUP, crd.VERSION, crd.PLURAL)
def released(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A JobQueue gone: forget its TLS files (no finalizer, so no delete handler ran). Else
    drop the finalizers earlier versions added (seen first on resume), so upgrading the
    operator does not leave JobQueues whose deletion hangs once it is uninstalled."""
    if event.get("type") == "DELETED":
        state.of(memo).forget(body)
    else:
        state.of(memo).reconciler.release(dict(body))


@kopf.on.delete(crd.GROUP, crd.VERSION, crd.PLURAL, optional=True)
def deleted(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    # Runs only while something else's finalizer holds the JobQueue. Owned objects go with it
    # (ownerReferences); only forget our lock and TLS files.
    state.of(memo).forget(body)


# Watching only: an event handler puts no finalizer on pods and writes nothing to them.
@kopf.on.event("v1", "pods", labels=pods.POD_LABELS)
def worker_pod(event: kopf.RawEvent, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """A worker pod deleted or its container terminated: release its workers' jobs now."""
    try:
        state.of(memo).pods.handle(str(event.get("type") or ""), dict(event.get("object") or {}))
    except Exception as exc:  # event handlers are not retried: the lease still recovers the jobs
        metrics.ERRORS.labels("pod_recovery").inc()
        logger.warning("pod recovery failed: %s", exc)


# --- the watch (conveyor_operator.watch) ---------------------------------------------------------

async def owned_changed(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    """An object a JobQueue owns modified or deleted: that JobQueue reconciles soon."""
    state.of(memo).trigger.owned_changed(event)


for _gv, _plural in watch.OWNED_RESOURCES:
    kopf.on.event(_gv, _plural, labels=watch.OWNED_LABELS)(owned_changed)


# kopf types namespace as str | None for every resource; HPAs and ScaledObjects are namespaced,
# so here it is always a str (the ignores below are for that protocol mismatch only).
@kopf.index("autoscaling/v2", "horizontalpodautoscalers")  # type: ignore[arg-type]
def hpa_targets(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[tuple[str, str], str] | None:
    return watch.target(dict(body), namespace, name, "HorizontalPodAutoscaler")


@kopf.index("keda.sh/v1alpha1", "scaledobjects")  # type: ignore[arg-type]
def keda_targets(body: kopf.Body, namespace: str, name: str, **_: Any) -> dict[tuple[str, str], str] | None:
    return watch.target(dict(body), namespace, name, "ScaledObject")


@kopf.on.event("autoscaling/v2", "horizontalpodautoscalers")
@kopf.on.event("keda.sh/v1alpha1", "scaledobjects")
async def other_autoscaler(event: kopf.RawEvent, memo: kopf.Memo, **_: Any) -> None:
    state.of(memo).trigger.autoscaler_changed(event)
