"""Flow control as a worker sees it: the queues whose limits (:mod:`conveyor.limits`) cut its
last claim short, and when to claim from them again.

claim.lua enforces the limits for the whole fleet; this only keeps one worker from asking
while the answer cannot change. A throttled queue is neither claimed from nor listened to
(its wake list is left out of the idle BLPOP: enqueues to it would only wake workers into
the same limit), until:

- rate: its next token is due (claim.lua says in how many ms);
- concurrency: a job of it ends here (the round trip that records the end then claims the
  freed slot, before any other worker hears of it), or _CONCURRENCY_POLL has passed (a slot
  freed by another worker, whose own next claim usually takes it first).

Queues without limits never get here: their claims carry no throttle, and a worker serving
several queues keeps claiming the others at full speed while one is throttled. A timer wakes
the worker's loop when a throttle ends.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

from redis.exceptions import ResponseError

from .. import calls, keys
from ..connection import cause
from ..limits import declared
from ..protocol import Throttle
from ..settings import WorkerSettings
from .link import LinkDown, RedisLink
from .metrics import WorkerMetrics

_CONCURRENCY_POLL = 0.25  # seconds: how long a concurrency-bound queue waits for a slot freed elsewhere
_MAX_WAIT = 1.0  # seconds: a slow rate (N/h) is asked again this often, so a limit changed live takes effect


class Throttles:
    def __init__(self, metrics: WorkerMetrics, wake: Callable[[], None], wake_keys: dict[str, str]) -> None:
        self.metrics = metrics
        self._queue_of = wake_keys  # wake list -> its queue
        self._wake = wake  # a throttle ended: claim again
        self._held: dict[str, tuple[str, float, float]] = {}  # queue -> (reason, since, until), monotonic
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def blocked(self, queue: str) -> bool:
        held = self._held.get(queue)
        if held is None:
            return False
        if held[2] > time.monotonic():
            return True
        self._end(queue)
        return False

    def claimed(self, queue: str, throttle: list[Any]) -> None:
        """claim.lua's throttle value for `queue`: [] (the limits did not cut the claim) or
        [reason, ms until the next token]."""
        if not throttle:
            if queue in self._held:
                self._end(queue)
            return
        reason = throttle[0].decode()
        now = time.monotonic()
        until = now + (min(_MAX_WAIT, int(throttle[1]) / 1000) if reason == Throttle.RATE else _CONCURRENCY_POLL)
        since = self._held[queue][1] if queue in self._held else now
        self._held[queue] = (reason, since, until)
        self.metrics.throttled.labels(queue, reason).inc()
        self._arm(until)

    def freed(self, queue: str) -> None:
        """A job of `queue` ended here (or was handed back): a concurrency slot is free."""
        held = self._held.get(queue)
        if held is not None and held[0] == Throttle.CONCURRENCY:
            self._end(queue)

    def wait(self) -> float | None:
        """Seconds until the first throttle ends (None: none is held)."""
        self._expire()
        if not self._held:
            return None
        return max(0.0, min(h[2] for h in self._held.values()) - time.monotonic())

    def _expire(self) -> None:
        """Forget the throttles whose time has come, and have the loop claim from their queues
        (the timer may not have run yet; the idle worker must not block on them meanwhile)."""
        now = time.monotonic()
        ended = [q for q, h in self._held.items() if h[2] <= now]
        for queue in ended:
            self._end(queue)
        if ended:
            self._wake()

    def ended_any(self) -> bool:
        """A throttle's time has come (its queue may be claimed again)."""
        now = time.monotonic()
        return any(h[2] <= now for h in self._held.values())

    def listening(self, wake_keys: list[str]) -> list[str]:
        """The wake lists the idle worker listens to: not those of throttled queues."""
        if not self._held:
            return wake_keys
        now = time.monotonic()
        return [k for k in wake_keys if self._held.get(self._queue_of.get(k, ""), ("", 0.0, 0.0))[2] <= now]

    def _end(self, queue: str) -> None:
        reason, since, _ = self._held.pop(queue)
        self.metrics.throttled_seconds.labels(queue, reason).inc(max(0.0, time.monotonic() - since))

    def _arm(self, until: float) -> None:
        if self._timer is not None and self._timer_at <= until:
            return
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + max(0.0, until - time.monotonic()), self._fire)
        self._timer_at = until

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = time.monotonic()
        later = [h[2] for h in self._held.values() if h[2] > now]
        if later:
            self._arm(min(later))
        self._wake()


def sample_limits(into: dict[tuple[str, str], float], queue: str, reply: Any) -> None:
    """Housekeeping's HMGET of a queue's rate, period_ms and max_concurrency, into the
    conveyor_queue_limit sample (a limit cleared loses its series)."""
    for name in ("rate_per_second", "max_concurrency"):
        into.pop((queue, name), None)
    if not isinstance(reply, list):
        return  # a limits key of the wrong type: the claims report it
    rate, period, max_c = (_number(v) for v in reply)
    if rate and period:
        into[(queue, "rate_per_second")] = rate * 1000 / period
    if max_c is not None:
        into[(queue, "max_concurrency")] = max_c


def _number(raw: Any) -> float | None:
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


async def declare_limits(link: RedisLink, settings: WorkerSettings) -> str | None:
    """Write the settings' limits (a JobQueue's spec.limits) to every queue served, before the
    first claim; None when done (or none to write), else why not, in one line."""
    if settings.limits is None:
        return None
    space, pairs = keys.Keyspace(settings.prefix), declared(settings.limits)
    try:
        replies = await link.roundtrip(lambda p: [calls.limits(p, space.queue(q), pairs) for q in settings.queues])
    except LinkDown as exc:
        return f"could not write the queues' limits: Redis did not answer ({exc})"
    for queue, reply in zip(settings.queues, replies):
        if isinstance(reply, ResponseError):
            return f"could not write the limits of queue {queue}: {cause(reply)}"
    return None
