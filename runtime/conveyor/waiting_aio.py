"""The asyncio client's waits: :func:`conveyor.waiting.wait_steps` driven on ``redis.asyncio``,
with one pub/sub connection per client and event loop (:class:`AsyncHub`, a reader task)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from . import routing, scripts
from .job import JobData
from .waiting import ProgressCallback, Routes, Sleep, Subscribe, Watch, channel_text, wait_steps

log = logging.getLogger("conveyor.waiting")


class AsyncHub:
    def __init__(self, client: Any) -> None:
        self.routes = Routes()
        self.loop = asyncio.get_running_loop()
        self._pubsub = routing.apubsub(client, ignore_subscribe_messages=False)
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None

    async def subscribe(self, channels: Sequence[str], seconds: float | None) -> bool:
        new = [c for c in channels if c not in self._confirmed]
        for c in new:
            self._confirmed[c] = asyncio.Event()
        if new:
            await self._pubsub.subscribe(*new)
        if self._task is None:
            self._task = self.loop.create_task(self._read(), name="conveyor-waits")
        try:
            async with asyncio.timeout(seconds):
                for c in channels:
                    await self._confirmed[c].wait()
        except TimeoutError:
            return False
        return True

    async def _read(self) -> None:
        delay = 0.05
        broken = False
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except (RedisError, OSError) as exc:
                if not broken:
                    log.warning("waits lost their pub/sub connection (%s); reconnecting", exc)
                broken = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.connect()  # resubscribes (redis-py's on_connect)
                continue
            delay = 0.05
            if message is None:
                continue
            channel = channel_text(message["channel"])
            if message["type"] == "message":
                self.routes.deliver(channel, message["data"])
            elif message["type"] == "subscribe":
                if (event := self._confirmed.get(channel)) is not None:
                    event.set()
                if broken:
                    broken = False
                    self.routes.recheck_all()


_HUBS: weakref.WeakKeyDictionary[Any, AsyncHub] = weakref.WeakKeyDictionary()


def hub_for(client: Any) -> AsyncHub:
    hub = _HUBS.get(client)
    if hub is None or hub.loop is not asyncio.get_running_loop():
        hub = _HUBS[client] = AsyncHub(client)
    return hub


async def wait_async(client: Any, jobs: Sequence[JobData], timeout: float | None,
                     on_progress: ProgressCallback | None = None) -> list[Any]:
    """Drive :func:`conveyor.waiting.wait_steps` on an asyncio client."""
    hub = hub_for(client)
    watch = Watch(jobs)
    news = asyncio.Event()
    watch.notify = news.set  # posted by the hub's reader task, on this loop
    hub.routes.add(watch)
    try:
        steps = wait_steps(jobs, timeout, watch, on_progress)
        reply: Any = None
        while True:
            try:
                op = steps.send(reply)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
            if isinstance(op, Subscribe):
                reply = await hub.subscribe(op.channels, op.seconds)
            elif isinstance(op, Sleep):
                try:
                    async with asyncio.timeout(op.seconds):
                        await news.wait()
                    reply = True
                except TimeoutError:
                    reply = False
                news.clear()
            else:
                reply = await scripts.aexecute_each(client, op.build)
    finally:
        hub.routes.remove(watch)
