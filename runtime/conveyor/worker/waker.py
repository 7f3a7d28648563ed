"""The idle worker's wait for work: BLPOP on the queues' wake lists.

While the worker's loop has nothing to do it sets :attr:`Waker.idle`; the waker then blocks
in Redis until a token arrives on a wake list (an enqueue, a retry, a recovered job) and
wakes the loop, which claims at once. On a Cluster one waker per hash slot (a BLPOP cannot
cross slots), each on its own connection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.crc import key_slot
from redis.exceptions import RedisError

from ..connection import cause
from .link import IDLE_BLOCK, LinkDown, RedisLink

log = logging.getLogger("conveyor.worker")


class Waker:
    def __init__(self, link: RedisLink, wake_keys: list[str], *, running: Callable[[], bool],
                 room: Callable[[], int], wake: Callable[[], None]) -> None:
        self.link = link
        self.wake_keys = wake_keys
        self.idle = asyncio.Event()  # set by the worker's loop while it waits for work
        self._running = running  # False once the worker stops: no more waiting for work
        self._room = room  # free slots here
        self._wake = wake

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
        """Block in Redis until a queue gets work, then let the loop claim it."""
        complained = False
        while self._running() and not self.link.closing:
            await self.idle.wait()
            try:
                token = await self.link.blpop(wake_keys, IDLE_BLOCK)
                complained = False
                if token and not self._room():
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
            self._wake()
