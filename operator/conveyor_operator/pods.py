"""Pod-aware recovery: a worker pod that is deleted, evicted or OOM-killed gives back its jobs
at once, instead of when their leases run out and some worker's reaper gets to them.

Workers register their pod name (POD_NAME, from the downward API) in Redis. When a worker
pod is gone (a DELETED watch event) or its worker container has terminated (OOMKilled, Error,
Completed; now, or in ``lastState`` after a restart), the operator finds the workers
registered with that pod name in the JobQueue's Redis and releases them
(``conveyor.admin.release_worker``), posting an Event on the JobQueue.

A worker that is running is never released: only workers that registered before the lost
container ended are (a restarted container's new worker registers after). A graceful
deletion is left alone until the pod is gone: the worker drains and hands back its jobs
itself on SIGTERM, and then unregisters, so nothing is left to release.

:func:`loss` is pure (tested on its own); :class:`PodWatcher` does the I/O.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from conveyor import admin
from conveyor.connection import describe
from conveyor.errors import ConveyorError

from . import builders, crd, metrics
from .k8s import Api
from .reconcile import EventFn, Reconciler
from .spec import defaulted

log = logging.getLogger("conveyor_operator.pods")
CONTAINER = "worker"  # builders.deployment's container
# The labels every worker pod of a JobQueue carries (builders.common_labels): kopf filters on them.
POD_LABELS = {"app.kubernetes.io/name": "conveyor-worker", "app.kubernetes.io/managed-by": builders.MANAGED_BY}
_HANDLED_MAX = 10000  # lost containers remembered (so one is released once), oldest forgotten first


@dataclass(frozen=True)
class Loss:
    """A worker pod's container that is gone, and which of its workers to release."""

    namespace: str
    pod: str
    jobqueue: str
    reason: str               # "deleted", "OOMKilled", "Error", ...
    before: float | None      # release only workers registered before this (epoch s); None: all
    key: str                  # this lost container instance, so it is handled once


def _epoch(stamp: Any) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _terminated(status: dict[str, Any]) -> tuple[dict[str, Any], str] | None:
    """The worker container's terminated state (now, else the last one) and where it was read."""
    for field in ("state", "lastState"):
        term = (status.get(field) or {}).get("terminated")
        if isinstance(term, dict):
            return term, field
    return None


def loss(event_type: str, pod: dict[str, Any]) -> Loss | None:
    """Why this pod's worker is lost, or None while it is not (pure)."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    name, jq = meta.get("name"), labels.get("app.kubernetes.io/instance")
    if not name or not jq or any(labels.get(k) != v for k, v in POD_LABELS.items()):
        return None
    ns, uid = meta.get("namespace") or "default", meta.get("uid") or name
    statuses = [c for c in ((pod.get("status") or {}).get("containerStatuses") or []) if c.get("name") == CONTAINER]
    found = _terminated(statuses[0]) if statuses else None
    if event_type == "DELETED":
        # The pod is gone, so is every worker that ran in it; say how its container ended, if known.
        why = (found[0].get("reason") or "terminated") if found and found[1] == "state" else None
        return Loss(ns, name, jq, f"deleted ({why})" if why else "deleted", None, f"{uid}/deleted")
    if found is None:
        return None
    term, field = found
    reason = str(term.get("reason") or f"exit code {term.get('exitCode', '?')}")
    if field == "lastState":  # restarted: only if the lost instance is newer than one already handled
        reason += f" (restart {int(statuses[0].get('restartCount') or 0)})"
    # The kubelet writes whole seconds, rounded down: a restarted container's worker starts after
    # the real end, so after this. (A lost worker that started in that last second, holding
    # next to nothing, is left to its leases: a live worker must never be released.)
    before = _epoch(term.get("finishedAt"))
    instance = term.get("containerID") or f"{field}:{term.get('finishedAt')}"
    return Loss(ns, name, jq, reason, before, f"{uid}/{instance}")


def _flag(args: list[str], name: str, default: int) -> int:
    """A worker flag from the Deployment's args (spec.workers.args may set --max-deliveries)."""
    for i, a in enumerate(args):
        if a == name and i + 1 < len(args) and args[i + 1].isdigit():
            return int(args[i + 1])
        if a.startswith(name + "=") and a.split("=", 1)[1].isdigit():
            return int(a.split("=", 1)[1])
    return default


class PodWatcher:
    """Acts on worker pod events: releases the workers of lost pods (see the module doc)."""

    def __init__(self, api: Api, reconciler: Reconciler, events: Callable[[dict[str, Any]], EventFn]) -> None:
        self.api = api
        self.reconciler = reconciler
        self.events = events
        self._handled: dict[str, None] = {}  # insertion-ordered set of Loss.key
        self._guard = threading.Lock()

    def handle(self, event_type: str, pod: dict[str, Any]) -> int:
        """Release the workers a lost pod leaves behind; returns how many were released."""
        lost = loss(event_type, pod)
        if lost is None:
            return 0
        with self._guard:
            if lost.key in self._handled:
                return 0
            self._handled[lost.key] = None
            while len(self._handled) > _HANDLED_MAX:
                self._handled.pop(next(iter(self._handled)))
        try:
            return self._release(lost)
        except Exception:
            with self._guard:  # not done: the next event of this pod tries again
                self._handled.pop(lost.key, None)
            raise

    def _release(self, lost: Loss) -> int:
        body = self.api.get(crd.API_VERSION, crd.KIND, lost.namespace, lost.jobqueue)
        if body is None:
            return 0  # its JobQueue is gone (the pod goes with it)
        client, prefix, problem = self.reconciler.redis_client(body)
        if client is None:
            log.warning("pod %s/%s lost (%s): cannot reach its Redis to release its workers: %s",
                        lost.namespace, lost.pod, lost.reason, problem[1] if problem else "?")
            return 0
        spec = defaulted(body.get("spec"))
        args = builders.worker_args(spec)
        post = self.events(body)
        released = 0
        try:
            for wid in admin.workers_on_pod(client, lost.pod, prefix, started_before=lost.before):
                try:
                    done = admin.release_worker(client, wid, f"worker lost: pod {lost.pod} {lost.reason}", prefix,
                                                _flag(args, "--max-deliveries", 3), spec["failureTTLSeconds"])
                except ConveyorError:
                    continue  # released meanwhile (another event of the same pod)
                jobs = sum(len(r.requeued) + len(r.abandoned) for r in done)
                metrics.RELEASED_WORKERS.inc()
                metrics.RELEASED_JOBS.inc(jobs)
                abandoned = sum(len(r.abandoned) for r in done)
                message = f"Released {jobs} jobs of worker {wid}: pod {lost.pod} {lost.reason}"
                if abandoned:
                    message += f" ({abandoned} abandoned: lost too many times)"
                log.info("%s/%s: %s", lost.namespace, lost.jobqueue, message)
                post("Warning" if abandoned else "Normal", "WorkerReleased", message)
                released += 1
        except (redis.RedisError, OSError) as exc:
            raise RuntimeError(f"releasing the workers of pod {lost.namespace}/{lost.pod}: {describe(exc)}") from exc
        return released  # the client is the JobQueue's kept one: not closed here
