"""The operator's running state: made by its kopf startup handler, kept in kopf's memo, closed
by its cleanup handler.

kopf passes a ``memo`` to every handler: the operator's own to startup, cleanup and login
handlers, and to resource handlers a shallow copy of it per object, made when kopf first sees
the object (after the startup handlers have run). The startup handler puts one
:class:`OperatorState` in it under :data:`MEMO_KEY`, and every handler reads it with
:func:`of`. Nothing is made at import time: importing conveyor_operator.handlers reads no
environment and connects to nothing.

The state holds what lives as long as the operator: the settings, the API client, the
Reconciler (and through it the kept Redis clients and TLS files), the pod watcher, the
watch's trigger, the leadership, the resync loops and their threads, the metrics server.
Prometheus metric objects stay module-level in conveyor_operator.metrics, as prometheus_client
means them to be.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import crd, fleet, k8s, metrics, resync, watch
from .autoscale import Policy
from .k8s import Api
from .leader import Leadership
from .pods import PodWatcher
from .reconcile import EventFn, Outcome, Reconciler
from .settings import Settings
from .spec import defaulted

MEMO_KEY = "conveyor"
log = logging.getLogger("conveyor_operator.state")

Body = dict[str, Any]
JobQueues = kopf.Index[str, Body]
Targets = kopf.Index[tuple[str, str], str]


def of(memo: Mapping[Any, Any]) -> OperatorState:
    """The operator's state, from any handler's ``memo``."""
    found = memo.get(MEMO_KEY)
    if not isinstance(found, OperatorState):
        raise RuntimeError("the operator's state is not in kopf's memo: its startup handler has not run")
    return found


@dataclass
class OperatorState:
    settings: Settings
    api: Api
    reconciler: Reconciler
    jobqueues: JobQueues                # kopf's index of every JobQueue, by uid (handlers.jobqueues)
    logger: logging.Logger = log
    leadership: Leadership = field(default_factory=Leadership)
    # Its own threads for the resync and the watch's passes: JobQueues with a slow Redis must
    # not hold up kopf's handlers.
    executor: concurrent.futures.ThreadPoolExecutor = field(default_factory=lambda: concurrent.futures.ThreadPoolExecutor(
        max_workers=8, thread_name_prefix="conveyor-resync"))
    trigger: watch.Trigger = field(init=False)
    pods: PodWatcher = field(init=False)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    metrics_server: metrics.Server | None = None

    def __post_init__(self) -> None:
        self.trigger = watch.Trigger(self.lookup, self.find, self.repair, self.executor, self.logger)
        self.pods = PodWatcher(self.api, self.reconciler, self.events)

    @classmethod
    def create(cls, kopf_settings: kopf.OperatorSettings, jobqueues: JobQueues, *autoscalers: Targets,
               logger: logging.Logger = log) -> OperatorState:
        """On kopf's event loop. Reads the settings and the credentials: kopf.LoginError without
        any, so the operator fails at startup, not at its first call."""
        settings = Settings.from_env()
        api = Api(asyncio.get_running_loop(), lambda: k8s.login(kopf_settings))
        reconciler = Reconciler(api, settings)
        reconciler.scaler.autoscalers = watch.autoscalers(*autoscalers)
        return cls(settings, api, reconciler, jobqueues, logger)

    async def start(self, kopf_settings: kopf.OperatorSettings) -> None:
        """The metrics endpoint, the peering (in a thread: it calls the API), the loops. Again
        if kopf retries the startup handler (the peering failed): without a second endpoint."""
        if self.metrics_server is None:
            self.metrics_server = metrics.serve(self.settings.metrics_port)
        await asyncio.to_thread(fleet.configure, self.settings, kopf_settings, self.api, self.leadership, self.logger)
        metrics.JOBQUEUES.set_function(lambda: sum(len(store) for store in list(self.jobqueues.values())))
        self.tasks = [
            asyncio.create_task(resync.run(self.bodies, self.refresh, self.settings.resync_seconds, self.executor,
                                           self.logger)),
            # Autoscaled JobQueues polled every pollSeconds (>= 1): same index, no finalizer.
            asyncio.create_task(resync.run_polled(self.bodies, self.autoscale, poll_seconds, self.executor,
                                                  self.logger))]

    async def close(self) -> None:
        """Stop the loops and the watch's pending passes; close the Redis clients and the API
        client; remove the private TLS files; stop the metrics endpoint."""
        await self.trigger.stop()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.reconciler.close()
        await self.api.close()
        self.leadership.unfollow()
        if self.metrics_server is not None:
            await asyncio.to_thread(metrics.stop, self.metrics_server)

    # --- what the handlers, the loops and the watch act with ------------------------------------

    def events(self, body: Body) -> EventFn:
        def post(type_: str, reason: str, message: str) -> None:
            try:
                self.api.post_event(dict(body), type_, reason, message)
            except Exception as exc:  # an Event is worth a log line, never a failed pass
                log.warning("could not post Event %s: %s", reason, exc)
        return post

    def bodies(self) -> list[Body]:
        """Every JobQueue; none while another replica leads (kopf pauses only its own watchers)."""
        return [body for store in list(self.jobqueues.values()) for body in store] if self.leadership.active else []

    def lookup(self, uid: str) -> Body | None:
        return next(iter(list(self.jobqueues.get(uid, []))), None)

    def find(self, namespace: str, name: str) -> str | None:
        return next((b["metadata"].get("uid") for b in self.bodies()
                     if b["metadata"].get("namespace") == namespace and b["metadata"].get("name") == name), None)

    def reconcile(self, body: Body) -> Outcome:
        return metrics.reconciled(self.reconciler.reconcile, body, self.events(body))

    def refresh(self, body: Body) -> None:
        metrics.resynced(self.reconciler.refresh, body, self.events(body))

    def repair(self, body: Body, confirm: bool) -> None:
        """The watch's pass. ``confirm``: an owned object was deleted, maybe by the garbage
        collector after its JobQueue: reconcile only if the JobQueue is still there."""
        if confirm:
            meta = body["metadata"]
            body = self.api.get(crd.API_VERSION, crd.KIND, meta.get("namespace"), meta["name"]) or {}
            fresh = body.get("metadata") or {}
            if fresh.get("uid") != meta.get("uid") or fresh.get("deletionTimestamp"):
                return
        self.reconcile(body)

    def autoscale(self, body: Body) -> None:
        metrics.counted("autoscale", self.reconciler.autoscale, body, self.events(body))

    def forget(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        self.reconciler.forget(meta.get("uid", "") or meta.get("name", ""))


def poll_seconds(body: Body) -> float | None:
    """How often the autoscaling loop polls this JobQueue (None: never, not autoscaled)."""
    spec = defaulted(body.get("spec"))
    return Policy.of(spec).poll_seconds if (spec.get("autoscaling") or {}).get("enabled") else None

