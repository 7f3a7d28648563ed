"""The asyncio client's waits: :func:`conveyor.waiting.wait_steps` driven on ``redis.asyncio``,
with one pub/sub connection per client and event loop (:class:`AsyncHub`, a reader task)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Sequence
from typing import Any

from . import routing, scripts
from .job import JobData
from .waiting import ProgressCallback, Routes, Sleep, Subscribe, Watch, channel_text, wait_steps

log = logging.getLogger("conveyor.waiting")


class AsyncHub:
    """The reader task of one client's pub/sub connection, and the batcher of its waits' reads:
    ``asyncio.gather`` over many waits sends their watch.lua calls together, in one pipeline
    on one connection, instead of one connection of the pool per concurrent wait."""

    def __init__(self, client: Any) -> None:
        self.routes = Routes()
        self.loop = asyncio.get_running_loop()
        self._client = client
        self._pubsub = routing.apubsub(client, ignore_subscribe_messages=False)
        self._confirmed: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._batch: list[tuple[Callable[[Any], object], int, asyncio.Future[list[Any]]]] = []
        self._flushing = False

    async def execute(self, build: Callable[[Any], object]) -> list[Any]:
        """Run ``build``'s commands with every other read queued meanwhile; its own replies."""
        future: asyncio.Future[list[Any]] = self.loop.create_future()
        self._batch.append((build, len(routing.record(build)), future))
        if not self._flushing:
            self._flushing = True
            self.loop.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._batch:
                batch, self._batch = self._batch, []
                try:
                    replies = await scripts.aexecute_each(self._client, lambda p: [b(p) for b, _, _ in batch])
                except Exception as exc:  # a dropped connection: every wait of the batch raises it
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                at = 0
                for _, n, future in batch:
                    if not future.done():
                        future.set_result(replies[at:at + n])
                    at += n
        finally:
            self._flushing = False

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
            except Exception as exc:  # noqa: BLE001 - a closed client breaks redis-py in more ways than RedisError
                if self.routes.empty():  # nobody waits: end; the next wait starts a reader again
                    self._task = None
                    self._confirmed.clear()
                    with contextlib.suppress(Exception):
                        await self._pubsub.reset()
                    return
                if not broken:
                    log.warning("waits lost their pub/sub connection (%s); reconnecting", exc)
                broken = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                with contextlib.suppress(Exception):
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
                reply = await hub.execute(op.build)
    finally:
        hub.routes.remove(watch)
