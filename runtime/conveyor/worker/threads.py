"""The thread pool for sync jobs, built for many short jobs.

concurrent.futures plus asyncio.wrap_future costs several loop callbacks and a
self-pipe write per job. Here threads take jobs from one inbox and hand outcomes
back in batches: the loop is woken once for however many jobs ended meanwhile.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

from ..context import JobContext
from .execution import Outcome, ThreadCall, from_exception


class JobThreads:
    def __init__(self, size: int, on_done: Callable[[list[tuple[ThreadCall, Outcome]]], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_done = on_done
        self._inbox: queue.SimpleQueue[ThreadCall | None] = queue.SimpleQueue()
        self._done: list[tuple[ThreadCall, Outcome]] = []
        self._lock = threading.Lock()
        self._notified = False
        self._threads = [
            threading.Thread(target=self._work, name=f"conveyor-job-{i}", daemon=True) for i in range(size)
        ]
        for t in self._threads:
            t.start()

    def submit(self, func: Callable[..., Any], ser: str, payload: bytes | None, allow_pickle: bool, tag: Any,
               ctx: JobContext | None = None) -> ThreadCall:
        call = ThreadCall(func, ser, payload, allow_pickle, ctx)
        call.tag = tag
        self._inbox.put(call)
        return call

    def _work(self) -> None:
        while True:
            call = self._inbox.get()
            if call is None:
                return
            try:
                outcome = call()
            except BaseException as exc:  # a timeout/stop interrupt that landed just after the job ended
                outcome = from_exception(exc)
            with self._lock:
                self._done.append((call, outcome))
                notify, self._notified = not self._notified, True
            if notify:
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop has closed: the worker is gone
                    return

    def _deliver(self) -> None:
        with self._lock:
            done, self._done, self._notified = self._done, [], False
        self._on_done(done)

    def close(self) -> None:
        """Let idle threads exit; a thread still inside a job is abandoned (daemon)."""
        for _ in self._threads:
            self._inbox.put(None)
