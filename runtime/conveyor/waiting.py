"""Waiting on jobs: ``job.wait()``, ``Queue.wait_all()`` and their asyncio twins.

A wait is woken by the step that ends the job, never by polling it: the waiter subscribes to
the queue's ended channel (:attr:`conveyor.keys.QueueKeys.ended_channel`), then watch.lua
marks the jobs as waited on and reads them in one step, so a job either had ended by then
(read here) or is announced when it ends (complete, fail, cancel, a lost worker's last
delivery, purge). Only marked jobs are announced: a queue nobody waits on pays no PUBLISH.

Every client (one redis-py client object) keeps one pub/sub connection, shared by all its
waits, whatever their number: :class:`Hub` here (a reader thread), :class:`conveyor.waiting_aio.AsyncHub`
(a reader task). A dropped pub/sub connection is made again and every wait re-reads its jobs
(an announcement may have been missed); so does a wait left without news for
:data:`RECHECK` seconds (a job deleted by hand, or failed by ``doctor --fix``, is never announced).

The logic of one wait is :func:`wait_steps`, shared by both clients as :mod:`conveyor.steps`
operations plus two of its own (:class:`Subscribe`, :class:`Sleep`).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple

from . import calls, errors, scripts
from .connection import is_cluster
from .job import JobData, Progress
from .protocol import Field, Status
from .steps import Pipeline

log = logging.getLogger("conveyor.waiting")

RECHECK = 10.0  # seconds a wait trusts the channel alone before reading its jobs again
SUBSCRIBE_GRACE = 1.0  # seconds a wait with a shorter timeout still gives its subscription
CHUNK = 500  # jobs per watch.lua call: a bounded reply and a short script
_ENDED = {Status.FINISHED, Status.FAILED, Status.CANCELED}
_PROGRESS = Field.PROGRESS.encode()
ProgressCallback = Callable[[Progress], object]


class Subscribe(NamedTuple):
    """Be subscribed to these channels (confirmed by Redis) within ``seconds``; replies a bool."""

    channels: Sequence[str]
    seconds: float | None


class Sleep(NamedTuple):
    """Wait for news of the wait's jobs up to ``seconds``; replies True if some came."""

    seconds: float


class Watch:
    """One wait's mailbox, filled by a hub's reader: ended job IDs, progress, "read them all again"."""

    def __init__(self, jobs: Sequence[JobData]) -> None:
        self.keys = {(j.keyspace.queue(j.queue).ended_channel, j.id) for j in jobs}
        self._lock = threading.Lock()
        self.ended: set[str] = set()
        self.progress: list[tuple[str, float, bytes]] = []  # job ID, Redis time, JSON
        self.recheck = False
        self.notify: Callable[[], None] = lambda: None  # the hub's wake-up (an Event's set)

    def post(self, kind: str, job_id: str, rest: bytes) -> None:
        with self._lock:
            if kind == "e":
                self.ended.add(job_id)
            elif kind == "p":
                at, _, body = rest.partition(b" ")
                try:
                    self.progress.append((job_id, float(at), body))
                except ValueError:  # not one of ours (anyone may publish): read the job instead
                    self.recheck = True
            else:
                self.recheck = True
        self.notify()

    def take(self) -> tuple[set[str], list[tuple[str, float, bytes]], bool]:
        with self._lock:
            out = (self.ended, self.progress, self.recheck)
            self.ended, self.progress, self.recheck = set(), [], False
        return out


def parse(data: bytes) -> tuple[str, str, bytes] | None:
    """An announcement "KIND ID [REST]" as (kind, job ID, rest); None if it is none of ours."""
    parts = data.split(b" ", 2)
    if len(parts) < 2:
        return None
    return parts[0].decode(errors="replace"), parts[1].decode(errors="replace"), parts[2] if len(parts) > 2 else b""


class Routes:
    """(channel, job ID) -> the watches waiting on it; a hub's reader posts to them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str], set[Watch]] = {}

    def add(self, watch: Watch) -> None:
        with self._lock:
            for key in watch.keys:
                self._by_key.setdefault(key, set()).add(watch)

    def remove(self, watch: Watch) -> None:
        with self._lock:
            for key in watch.keys:
                if (found := self._by_key.get(key)) is not None:
                    found.discard(watch)
                    if not found:
                        del self._by_key[key]

    def empty(self) -> bool:
        with self._lock:
            return not self._by_key

    def deliver(self, channel: str, data: bytes) -> None:
        parsed = parse(data)
        if parsed is None:
            return
        kind, job_id, rest = parsed
        with self._lock:
            watches = list(self._by_key.get((channel, job_id), ()))
        for watch in watches:
            watch.post(kind, job_id, rest)

    def recheck_all(self) -> None:
        """The pub/sub connection was lost and made again: announcements may have been missed."""
        with self._lock:
            watches = {w for ws in self._by_key.values() for w in ws}
        for watch in watches:
            watch.post("r", "", b"")


def channel_text(channel: Any) -> str:
    return channel.decode() if isinstance(channel, bytes) else str(channel)


def outcome(job: JobData) -> Any:
    """An ended job's result, or the exception a wait raises for it."""
    status = job.status_text
    if status == Status.FINISHED:
        return _Result(job.result)
    if status == Status.CANCELED:
        return errors.JobCanceled(job.id)
    info = job.exc_info
    return errors.JobFailed(job.id, info.type if info else "", info.message if info else "",
                            info.traceback if info else "")


class _Result(NamedTuple):
    value: Any


def _hash(flat: Any) -> dict[bytes, bytes]:
    return {flat[i]: flat[i + 1] for i in range(0, len(flat), 2)}


def wait_steps(jobs: Sequence[JobData], timeout: float | None, watch: Watch,
               on_progress: ProgressCallback | None = None) -> Generator[Any, Any, list[Any]]:
    """Wait until every job ended, or raise :class:`~conveyor.errors.WaitTimeout`. Returns per
    job its result, or the exception that stands for its end (JobFailed, JobCanceled,
    NoSuchJob). Each job snapshot is reloaded as it ends. The caller has routed ``watch``."""
    deadline = None if timeout is None else time.monotonic() + timeout

    def left() -> float | None:
        return None if deadline is None else deadline - time.monotonic()

    channels = sorted({channel for channel, _ in watch.keys})
    # At least a moment to subscribe: a job that ended already is returned even with timeout=0.
    remaining = left()
    subscribed = yield Subscribe(channels, None if remaining is None else max(remaining, SUBSCRIBE_GRACE))
    results: dict[int, Any] = {}
    seen: dict[str, float] = {}  # job ID -> time of the last progress handed to on_progress
    pending = dict(enumerate(jobs))

    def report(job_id: str, at: float, body: Any) -> None:
        if on_progress is not None and at > seen.get(job_id, -1.0):
            seen[job_id] = at
            if (p := Progress.parse(job_id, body, at)) is not None:
                on_progress(p)

    def read(which: list[int]) -> Generator[Any, Any, None]:
        groups: dict[tuple[str, str], list[int]] = {}
        for i in which:
            groups.setdefault((jobs[i].keyspace.prefix, jobs[i].queue), []).append(i)
        batches = [(jobs[g[0]], g[n:n + CHUNK]) for g in groups.values() for n in range(0, len(g), CHUNK)]
        replies = yield Pipeline(lambda p: [calls.watch(p, j.keyspace.queue(j.queue), [jobs[i].id for i in part])
                                            for j, part in batches])
        for (_, part), reply in zip(batches, scripts.raise_first(replies)):
            for i, flat in zip(part, reply):
                job = jobs[i]
                if not flat:
                    results[i] = errors.NoSuchJob(f"job {job.id!r} no longer exists in queue {job.queue!r}")
                    del pending[i]
                    continue
                raw = _hash(flat)
                job._load(raw)
                if (p := job.progress) is not None and p.updated_at is not None:
                    report(job.id, p.updated_at, raw.get(_PROGRESS))
                if job.status_text in _ENDED:
                    results[i] = outcome(job)
                    del pending[i]

    yield from read(list(pending))
    if pending and not subscribed:
        raise _timeout([jobs[i] for i in pending], timeout)
    index: dict[str, list[int]] = {}  # a job may be passed twice
    for i, job in pending.items():
        index.setdefault(job.id, []).append(i)
    while pending:
        remaining = left()
        if remaining is not None and remaining <= 0:
            raise _timeout([jobs[i] for i in pending], timeout)
        news = yield Sleep(RECHECK if remaining is None else min(remaining, RECHECK))
        ended, progress, recheck = watch.take()
        for job_id, at, body in progress:
            report(job_id, at, body)
        if recheck or not news and (remaining is None or remaining > RECHECK):
            again = list(pending)
        else:
            again = [i for j in ended for i in index.get(j, ()) if i in pending]
        if again:
            yield from read(again)
    return [results[i] for i in range(len(jobs))]


def _timeout(jobs: Sequence[JobData], timeout: float | None) -> errors.WaitTimeout:
    first = jobs[0]
    more = f" and {len(jobs) - 1} more" if len(jobs) > 1 else ""
    return errors.WaitTimeout(f"job {first.id!r}{more} did not end within {timeout:g}s "
                              f"(status {first.status_text}); the job goes on")


def unwrap(result: Any) -> Any:
    """A result as a wait returns it; an exception raised."""
    if isinstance(result, BaseException):
        raise result
    return result.value


def values(results: list[Any], return_exceptions: bool) -> list[Any]:
    """wait_all's list: results, and exceptions in place (or the first one raised)."""
    if not return_exceptions:
        for r in results:
            if isinstance(r, BaseException):
                raise r
    return [r if isinstance(r, BaseException) else r.value for r in results]


# -- the sync client's hub ---------------------------------------------------------------------


class Hub:
    """One pub/sub connection per sync client, read by a daemon thread that routes announcements
    to the waits registered on :attr:`routes`."""

    def __init__(self, client: Any) -> None:
        self.routes = Routes()
        self._pubsub = client.pubsub(node=client.get_default_node()) if is_cluster(client) else client.pubsub()
        self._lock = threading.Lock()
        self._confirmed: dict[str, threading.Event] = {}
        self._thread: threading.Thread | None = None

    def subscribe(self, channels: Sequence[str], seconds: float | None) -> bool:
        with self._lock:
            new = [c for c in channels if c not in self._confirmed]
            for c in new:
                self._confirmed[c] = threading.Event()
            if new:
                self._pubsub.subscribe(*new)
            if self._thread is None:
                self._thread = threading.Thread(target=self._read, name="conveyor-waits", daemon=True)
                self._thread.start()
        deadline = None if seconds is None else time.monotonic() + seconds
        for c in channels:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not self._confirmed[c].wait(left):
                return False
        return True

    def _read(self) -> None:
        delay = 0.05
        broken = False
        while True:
            try:
                message = self._pubsub.get_message(timeout=1.0)
            except Exception as exc:  # noqa: BLE001 - a closed client breaks redis-py in more ways than RedisError
                with self._lock:
                    if self.routes.empty():  # nobody waits: drop it; the next wait subscribes anew
                        with contextlib.suppress(Exception):
                            self._pubsub.reset()
                        self._confirmed.clear()
                        self._thread = None
                        return
                if not broken:
                    log.warning("waits lost their pub/sub connection (%s); reconnecting", exc)
                broken = True
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.05
            if message is None:
                continue
            channel = channel_text(message["channel"])
            if message["type"] == "message":
                self.routes.deliver(channel, message["data"])
            elif message["type"] == "subscribe":
                with self._lock:
                    event = self._confirmed.get(channel)
                if event is not None:
                    event.set()
                if broken:  # resubscribed after a drop: re-read every wait's jobs
                    broken = False
                    self.routes.recheck_all()


_HUBS: weakref.WeakKeyDictionary[Any, Hub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def hub_for(client: Any) -> Hub:
    with _HUBS_LOCK:
        hub = _HUBS.get(client)
        if hub is None:
            hub = _HUBS[client] = Hub(client)
        return hub


def wait_sync(client: Any, jobs: Sequence[JobData], timeout: float | None,
              on_progress: ProgressCallback | None = None) -> list[Any]:
    """Drive :func:`wait_steps` on a sync client."""
    hub = hub_for(client)
    watch = Watch(jobs)
    news = threading.Event()
    watch.notify = news.set
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
                reply = hub.subscribe(op.channels, op.seconds)
            elif isinstance(op, Sleep):
                reply = news.wait(op.seconds)
                news.clear()
            else:
                reply = scripts.execute_each(client, op.build)
    finally:
        hub.routes.remove(watch)
