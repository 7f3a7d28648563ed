"""How many jobs a queue holds in each state: one pipeline fragment, read alike by the
worker's metrics, `conveyor info` and the operator's status."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .keys import QueueKeys

# In the order queue() sends them; "claimed" (prefetched + started) is derived where wanted.
STATES = ("ready", "recovered", "prefetched", "started", "scheduled", "failed", "deferred")


def queue(pipe: Any, k: QueueKeys, now: float) -> None:
    """Queue one command per STATES entry (failed: only jobs still kept at `now`, in seconds)."""
    pipe.llen(k.ready)
    pipe.llen(k.recovered)
    pipe.zcard(k.prefetched)
    pipe.zcard(k.leases)
    pipe.zcard(k.scheduled)
    pipe.zcount(k.failed, now, "+inf")
    pipe.zcard(k.deferred)


def due(pipe: Any, k: QueueKeys, now: float) -> None:
    """Queue one command: how many scheduled jobs are already due at `now` (seconds; the
    scheduled zset scores are due times in ms): work waiting for the scheduler's next move."""
    pipe.zcount(k.scheduled, "-inf", int(now * 1000))


def counts(replies: Sequence[Any]) -> dict[str, int | None]:
    """The replies of queue(), by state; None where Redis refused (a key of the wrong type)."""
    return {state: None if isinstance(r, Exception) else int(r) for state, r in zip(STATES, replies)}
