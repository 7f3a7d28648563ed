"""The idle worker's wait for work: BLPOP on the queues' wake lists.

While the worker's loop has nothing to do it sets :attr:`Waker.idle`; the waker then blocks
in Redis until a token arrives on a wake list (an enqueue, a retry, a recovered job).

On one server (or a Sentinel master) the claim goes out with the BLPOP, in one write
(:meth:`Flow.pickup_claim`, :meth:`RedisLink.blpop_then`): Redis runs it the moment the
BLPOP returns, so a job starts one round trip after its enqueue instead of two. Meanwhile
the loop's steps claim nothing: one claim at a time never starts more jobs than there are
slots. The claim's leases are counted from the BLPOP's send, so the block is kept within a
third of a lease (renewals, every third of a lease, keep them ahead of the clock).

On a Cluster one waker per hash slot (a BLPOP cannot cross slots), each on its own
connection, waking the loop, which then claims: several claims out at once could not be
sized against the same free slots.

The wake lists of queues held off by their limits are left out (see throttle.py), and the
block ends when the first such throttle does, so the loop claims from that queue on time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.crc import key_slot
from redis.exceptions import RedisError, ResponseError

from ..connection import cause
from .flow import Flow
from .link import IDLE_BLOCK, LinkDown, RedisLink
from .throttle import Throttles

log = logging.getLogger("conveyor.worker")


class Waker:
    def __init__(self, link: RedisLink, wake_keys: list[str], *, running: Callable[[], bool],
                 room: Callable[[], int], wake: Callable[[], None], kick: Callable[[], None] = lambda: None,
                 flow: Flow | None = None, throttles: Throttles | None = None) -> None:
        self.link = link
        self.wake_keys = wake_keys
        self.idle = asyncio.Event()  # set by the worker's loop while it waits for work
        self._running = running  # False once the worker stops: no more waiting for work
        self._room = room  # free slots here
        self._wake = wake  # work may be waiting: the loop claims
        self._kick = kick  # the loop has something to do (a pickup's jobs to record), no claim needed
        self._flow = flow  # None: no claim with the BLPOP (a Cluster)
        self._block = min(IDLE_BLOCK, link.lease_seconds / 3)  # with a claim (see above)
        self._throttles = throttles

    def groups(self) -> list[list[str]]:
        """The wake lists, one group per BLPOP: all in one on a server, one per slot on a Cluster."""
        if not self.link.target.is_cluster:
            return [self.wake_keys]
        groups: dict[int, list[str]] = {}
        for key in self.wake_keys:
            groups.setdefault(key_slot(key.encode()), []).append(key)
        return list(groups.values())

    def tasks(self) -> list[asyncio.Task[None]]:
        return [asyncio.create_task(self.run(group), name="waker") for group in self.groups()]

    async def run(self, wake_keys: list[str]) -> None:
        """Block in Redis until a queue gets work, then let the loop claim it (or take in the
        claim sent with the BLPOP)."""
        complained = False
        while self._running() and not self.link.closing:
            await self.idle.wait()
            listen, block = self._listen(wake_keys)  # a throttle over: the loop claims (want_claim)
            if self._flow is not None and self._flow.claiming():
                self.idle.clear()  # a step is out or due and claims: wait until the loop is idle again
                continue
            claimed = 0
            if not listen:  # every queue here is throttled: its timer wakes the loop
                await self.link.nap(block)
                self.idle.clear()
                continue
            claim = self._flow.pickup_claim() if self._flow is not None else None
            try:
                if claim is not None and self._flow is not None:
                    token, claimed = await self._pickup(self._flow, listen, claim, min(block, self._block))
                else:
                    token = await self.link.blpop(listen, block)
                complained = False
                if token and not claimed and not self._room():
                    # Room filled up while we blocked: hand the token on to an idle worker.
                    await self.link.call("lpush", token[0], b"1")
            except LinkDown:
                if not self._running() or self.link.closing:
                    break  # the stop closed the connection under the BLPOP
                await self.link.wait_up()
            except RedisError as exc:
                if not self._running():
                    break
                if not complained:
                    log.error("waiting for work failed: %s; retrying every second", cause(exc))
                    complained = True
                await self.link.nap(1.0)
            self.idle.clear()
            if claim is None:  # a pickup has woken the flow itself, if more may be waiting
                self._wake()

    def _listen(self, wake_keys: list[str]) -> tuple[list[str], float]:
        """The wake lists to block on, and for how long at most (until the first throttle ends)."""
        if self._throttles is None:
            return wake_keys, IDLE_BLOCK
        wait = self._throttles.wait()
        block = IDLE_BLOCK if wait is None else min(IDLE_BLOCK, max(0.01, wait))  # 0 would block forever
        return self._throttles.listening(wake_keys), block

    async def _pickup(self, flow: Flow, wake_keys: list[str], claim: Callable[[Any], None],
                      block: float) -> tuple[Any, int]:
        """The BLPOP with the flow's claim behind it: (the token, how many jobs the claim brought)."""
        sent = time.monotonic()
        try:
            token, reply = await self.link.blpop_then(wake_keys, block, claim)
        except BaseException:
            flow.pickup_lost()  # no reply: it may have run (the next step disowns it)
            self._kick()  # a stopping loop waits for this
            raise
        claimed = flow.picked_up(reply, sent)  # wakes the flow if more may be waiting
        self._kick()
        if isinstance(token, ResponseError):  # a wake list of the wrong type (the claim ran all the same)
            raise token
        return token, claimed
