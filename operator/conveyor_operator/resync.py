"""The operator-level resync loop: every JobQueue refreshed every resync interval.

A refresh reads the queue depth through the JobQueue's kept Redis client and writes status
only when it changed (Reconciler.refresh); it re-applies nothing. Drift in the owned objects
is repaired by the watch on them (watch.py). The refresh also re-reads a Redis URL kept in a
Secret, so rotating it still rolls the pods, and runs a full pass when a Redis-side problem
appears or clears, or while the last pass found another problem.

One loop for the whole operator, not a kopf timer per JobQueue: kopf puts a finalizer on
every object that has a timer or daemon, so that deleting a JobQueue (or its namespace)
waited for a running operator and hung for good without one (``helm uninstall`` keeps the
CRD and the JobQueues). The JobQueues come from a kopf index, filled from the operator's own
watch: no extra API calls, no finalizer.

The autoscaler polls the same way, from a second loop (:func:`run_polled`): each autoscaled
JobQueue every its own ``pollSeconds``, the others never.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
from collections.abc import Callable, Iterable
from typing import Any

Reconcile = Callable[[dict[str, Any]], None]


def due(bodies: Iterable[dict[str, Any]], busy: Iterable[str]) -> list[dict[str, Any]]:
    """The JobQueues to reconcile this tick: not being deleted (their children go with them;
    re-applying would race the garbage collector), not still in their previous pass (a slow
    Redis delays only its own JobQueue)."""
    busy = set(busy)
    return [b for b in bodies
            if not (b.get("metadata") or {}).get("deletionTimestamp") and _uid(b) not in busy]


def _uid(body: dict[str, Any]) -> str:
    meta = body.get("metadata") or {}
    return str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")


def _safely(act: Reconcile, logger: logging.Logger, what: str) -> Reconcile:
    def call(body: dict[str, Any]) -> None:
        try:
            act(body)
        except Exception as exc:  # the next tick tries again
            logger.warning("%s of %s/%s failed: %s", what, body["metadata"].get("namespace"),
                           body["metadata"].get("name"), exc)
    return call


async def run_polled(bodies: Callable[[], list[dict[str, Any]]], act: Reconcile,
                     period: Callable[[dict[str, Any]], float | None], executor: concurrent.futures.Executor,
                     logger: logging.Logger, tick: float = 0.1) -> None:
    """Until cancelled: ``act`` on each of ``bodies()`` whose ``period(body)`` (seconds; None:
    never) has passed since its last start and whose previous call has finished."""
    loop = asyncio.get_running_loop()
    in_flight: dict[str, asyncio.Future[None]] = {}
    started: dict[str, float] = {}
    safely = _safely(act, logger, "autoscaling poll")
    while True:
        now = loop.time()
        in_flight = {uid: f for uid, f in in_flight.items() if not f.done()}
        seen = set()
        for body in due(bodies(), in_flight):
            uid = _uid(body)
            seen.add(uid)
            every = period(body)
            if every is None or now - started.get(uid, -1e18) < every:
                continue
            started[uid] = now
            ctx = contextvars.copy_context()
            in_flight[uid] = loop.run_in_executor(executor, ctx.run, safely, body)
        started = {uid: t for uid, t in started.items() if uid in seen or uid in in_flight}
        await asyncio.sleep(tick)


async def run(bodies: Callable[[], list[dict[str, Any]]], reconcile: Reconcile, interval: float,
              executor: concurrent.futures.Executor, logger: logging.Logger) -> None:
    """Until cancelled: every ``interval`` seconds, ``reconcile`` (the refresh) each of
    ``bodies()`` due, in ``executor`` threads (it blocks on Redis, sometimes on the API)."""
    loop = asyncio.get_running_loop()
    in_flight: dict[str, asyncio.Future[None]] = {}
    safely = _safely(reconcile, logger, "resync")

    while True:
        await asyncio.sleep(interval)
        in_flight = {uid: f for uid, f in in_flight.items() if not f.done()}
        for body in due(bodies(), in_flight):
            # kopf.event() finds kopf's event queue through context variables: carry them over.
            ctx = contextvars.copy_context()
            in_flight[_uid(body)] = loop.run_in_executor(executor, ctx.run, safely, body)
