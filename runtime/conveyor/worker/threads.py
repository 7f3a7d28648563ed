"""The thread pool for sync jobs, built for many short jobs.

concurrent.futures plus asyncio.wrap_future costs several loop callbacks and a
self-pipe write per job. Here threads take jobs from one inbox and hand outcomes
back in batches: the loop is woken once for however many jobs ended meanwhile.

A slot need not wait for the loop between two jobs either: the loop *stages* buffered
jobs, and a thread whose job just ended takes the oldest staged one and runs it at once.
The protocol between the loop and the threads, all under one lock (``JobThreads._lock``):

- Only the loop stages calls, takes them back (:meth:`unstage`, :meth:`remove`, :meth:`close`)
  and reads what ended (:meth:`collect`).
- A thread takes a staged call only as the successor of the call it just ran, in the same
  critical section that reports that call's end: the loop learns of the end and of the
  start together, so the slot passes from one job to the next and is never counted free.
  An idle thread never takes a staged call: it waits on the inbox, which only the loop
  fills, for a slot the loop counted free. So no more jobs run than the loop has slots.
- A thread takes a staged call only while the stage is open and ``may_start(tag, now)``
  holds (the lease); otherwise it leaves the call for the loop and waits on the inbox.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from ..context import JobContext
from .execution import Outcome, ThreadCall, from_exception

# (the call that ended, its outcome, the staged call its thread took next, or None)
Done = tuple[ThreadCall, Outcome, ThreadCall | None]


class JobThreads:
    def __init__(self, size: int, on_done: Callable[[list[Done]], None],
                 may_start: Callable[[Any, float], bool]) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_done = on_done
        # Called by a thread, under the lock, with a staged call's tag and time.monotonic():
        # it may read only what the loop never lowers (a lease deadline that renewals extend).
        self._may_start = may_start
        self._inbox: queue.SimpleQueue[ThreadCall | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done: list[Done] = []
        self._staged: collections.deque[ThreadCall] = collections.deque()
        self._open = True  # False once the worker stops: no thread starts a staged call
        self._notified = False
        self._threads = [
            threading.Thread(target=self._work, name=f"conveyor-job-{i}", daemon=True) for i in range(size)
        ]
        for t in self._threads:
            t.start()

    # -- the loop's side ---------------------------------------------------------------------

    @staticmethod
    def prepare(func: Callable[..., Any], ser: str, payload: bytes | None, allow_pickle: bool, tag: Any,
                ctx: JobContext | None = None) -> ThreadCall:
        call = ThreadCall(func, ser, payload, allow_pickle, ctx)
        call.tag = tag
        return call

    def submit(self, call: ThreadCall) -> ThreadCall:
        """Run a call in a slot the loop counted free (an idle thread takes it)."""
        self._inbox.put(call)
        return call

    def stage(self, call: ThreadCall) -> bool:
        """Offer a call to the next thread that finishes. False once the stage is closed."""
        with self._lock:
            if self._open:
                self._staged.append(call)
            return self._open

    @property
    def staged(self) -> int:
        return len(self._staged)

    def staged_tags(self) -> list[Any]:
        with self._lock:
            return [c.tag for c in self._staged]

    def unstage(self) -> ThreadCall | None:
        """The oldest staged call, taken back (for a free slot, or to hand back)."""
        with self._lock:
            return self._staged.popleft() if self._staged else None

    def remove(self, tag: Any) -> bool:
        """Take back the staged call of this tag. False if none (a thread took it, or it never was)."""
        with self._lock:
            for call in self._staged:
                if call.tag is tag:
                    self._staged.remove(call)
                    return True
        return False

    def take_back(self, which: Callable[[Any], bool]) -> list[Any]:
        """Take back the staged calls whose tag ``which`` selects; returns their tags."""
        with self._lock:
            out = [c for c in self._staged if which(c.tag)]
            for call in out:
                self._staged.remove(call)
        return [c.tag for c in out]

    def close(self) -> list[Any]:
        """No thread starts a staged call from now on; returns the tags of those still staged."""
        with self._lock:
            self._open = False
            tags = [c.tag for c in self._staged]
            self._staged.clear()
        return tags

    def collect(self) -> None:
        """Hand what ended (and what threads took) to on_done now, instead of at the next callback."""
        self._deliver()

    def shutdown(self) -> None:
        """Let idle threads exit; a thread still inside a job is abandoned (daemon)."""
        self.close()
        for _ in self._threads:
            self._inbox.put(None)

    # -- the threads' side -------------------------------------------------------------------

    def _work(self) -> None:
        call = self._inbox.get()
        while call is not None:
            try:
                outcome = call()
                _checkpoint()
            except BaseException as exc:  # a timeout/stop interrupt that landed just after the job ended
                outcome = from_exception(exc)
            try:
                call = self._ended(call, outcome)
            except RuntimeError:  # the loop has closed: the worker is gone
                return
            del outcome  # an idle thread keeps nothing of its last job (its result) alive
            if call is None:
                call = self._inbox.get()

    def _ended(self, call: ThreadCall, outcome: Outcome) -> ThreadCall | None:
        """Report the end of ``call`` and take the next staged call in one critical section."""
        with self._lock:
            nxt = None
            now = time.monotonic()
            if self._open and self._staged and self._may_start(self._staged[0].tag, now):
                nxt = self._staged.popleft()
                nxt.started = now
            self._done.append((call, outcome, nxt))
            notify, self._notified = not self._notified, True
        if notify:
            self._loop.call_soon_threadsafe(self._deliver)
        return nxt

    def _deliver(self) -> None:  # on the loop
        with self._lock:
            done, self._done, self._notified = self._done, [], False
        if done:
            self._on_done(done)


def _checkpoint() -> None:
    """Entering a Python function lets a pending async exception (an interrupt aimed at the
    job that just ended: it can only be set before the call is done) surface here, inside the
    try, rather than in the hand-off's critical section."""
