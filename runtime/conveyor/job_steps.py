"""What the job calls ask of Redis, as :mod:`conveyor.steps` operations: one copy for the sync
:class:`~conveyor.Job` and the asyncio :class:`~conveyor.aio.AsyncJob`."""

from __future__ import annotations

import json
import time
from typing import Any, Protocol

from . import calls, errors, keys, wire
from .protocol import Code, Status
from .steps import Pause, Steps, execute
from .validation import check_allow_pickle, check_job_id

DEFAULT_FAILURE_TTL = 7 * 24 * 3600


class Held(Protocol):
    """What an operation needs of a job snapshot."""

    id: str
    queue: str
    keyspace: keys.Keyspace

    @property
    def key(self) -> str: ...


def read(job: Held) -> Steps[dict[bytes, Any]]:
    """The job's hash, now (refresh)."""
    [raw] = yield from execute(lambda p: p.hgetall(job.key))
    if not raw:
        raise errors.NoSuchJob(f"job {job.id!r} no longer exists in queue {job.queue!r}")
    return wire.byte_hash(raw)


def cancel(job: Held, timeout: float, db: int) -> Steps[dict[bytes, Any]]:
    """cancel.lua; for a prefetched job, ask the worker that holds it (on database ``db``'s
    command channel) and wait for its answer. Returns the job's hash after the cancel."""
    k = job.keyspace.queue(job.queue)
    deadline = time.monotonic() + timeout
    asked = False
    while True:
        [(code, *rest)] = yield from execute(lambda p: calls.cancel(p, k, job.id, DEFAULT_FAILURE_TTL))
        if code == Code.OK:
            return (yield from read(job))
        if code == Code.MISSING:
            raise errors.for_code(code, f"job {job.id!r} does not exist in queue {job.queue!r}")
        status, holder = rest[0].decode(), rest[1].decode()
        if status == Status.CANCELED and asked:  # the worker holding it did it
            return (yield from read(job))
        if status == Status.STARTED and asked:
            raise errors.for_code(
                code, f"job {job.id!r} started on worker {holder} before the cancel reached it; "
                "use 'conveyor job stop' to stop it")
        if status != Status.PREFETCHED:
            hint = "; use 'conveyor job stop' for a started job" if status == Status.STARTED else ""
            raise errors.for_code(
                code, f"job {job.id!r} is {status}; only a queued, scheduled, deferred or prefetched job can be canceled{hint}")
        if not asked:
            yield from send_command(db, "cancel", job.queue, job.id, job.keyspace)
            asked = True
        if time.monotonic() > deadline:
            raise errors.ConveyorError(
                f"job {job.id!r} is prefetched by worker {holder}, which did not act on the cancel within "
                f"{timeout:g}s; if that worker is gone, the job returns to its queue when its lease expires")
        yield Pause(0.02)  # another process decides: poll its answer


def requeue(job: Held) -> Steps[dict[bytes, Any]]:
    """requeue.lua for one failed job; its hash after."""
    yield from requeue_jobs(job.queue, [job.id], job.keyspace)
    return (yield from read(job))


def fetch(job_id: str, queue: str | None, allow_pickle: bool, space: keys.Keyspace) -> Steps[tuple[str, dict[bytes, Any]]]:
    """(queue, hash) of a job by its plain ID; without ``queue``, every known queue is searched."""
    check_job_id(job_id)
    check_allow_pickle(allow_pickle)
    if queue is None:
        queue = yield from find_queue(job_id, space)
    [raw] = yield from execute(lambda p: p.hgetall(space.queue(queue).job(job_id)))
    if not raw:
        raise errors.NoSuchJob(f"no job {job_id!r} in queue {queue!r}")
    return queue, wire.byte_hash(raw)


def find_queue(job_id: str, space: keys.Keyspace) -> Steps[str]:
    [members] = yield from execute(lambda p: p.smembers(space.queues))
    names = sorted(n.decode() for n in wire.byte_set(members))
    hits = yield from execute(lambda p: [p.exists(space.queue(name).job(job_id)) for name in names])
    found = [name for name, hit in zip(names, hits) if hit]
    if not found:
        raise errors.NoSuchJob(f"no job {job_id!r} in any queue ({', '.join(names) or 'none known'})")
    if len(found) > 1:
        raise errors.ConveyorError(f"job ID {job_id!r} exists in queues {found}; pass queue= to choose")
    return found[0]


def requeue_jobs(queue: str, job_ids: list[str], space: keys.Keyspace) -> Steps[int]:
    """Requeue failed jobs of one queue; raises if any is unknown or not failed (the others still move)."""
    k = space.queue(queue)
    [codes] = yield from execute(lambda p: calls.requeue(p, k, job_ids))
    return _all_done(queue, job_ids, codes, "is not failed; only failed jobs can be requeued")


def delete_jobs(queue: str, job_ids: list[str], space: keys.Keyspace) -> Steps[int]:
    """Delete ended jobs of one queue; raises if any is unknown or has not ended (the others go)."""
    k = space.queue(queue)
    [codes] = yield from execute(lambda p: calls.delete(p, k, job_ids))
    return _all_done(queue, job_ids, codes, "has not ended; cancel or stop it before deleting it")


def _all_done(queue: str, job_ids: list[str], codes: list[int], wrong_state: str) -> int:
    """How many jobs a per-job script moved; raises naming those it refused (MISSING first)."""
    for code, what in ((Code.MISSING, None), (Code.WRONG_STATE, wrong_state)):
        refused = ", ".join(repr(j) for j, c in zip(job_ids, codes) if c == code)
        if refused:
            raise errors.for_code(code, f"no job {refused} in queue {queue!r}" if what is None else f"job {refused} {what}")
    return len(job_ids)


def send_command(db: int, cmd: str, queue: str, job_id: str, space: keys.Keyspace) -> Steps[int]:
    """Publish a fleet command on database ``db``'s channel; how many workers heard it."""
    message = json.dumps({"cmd": cmd, "queue": queue, "job_id": job_id})
    [heard] = yield from execute(lambda p: p.publish(space.commands(db), message))
    return int(heard)
