"""The dashboard's actions: each goes through the same Lua transition as the CLI and the
client (requeue.lua, cancel.lua, the worker's stop command, delete.lua, purge.lua), so a race
with a worker can never corrupt a job; the page is told what happened, in one line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from .. import admin, errors, keys
from ..job import Job, delete_jobs, requeue_jobs
from ..validation import check_queue_name
from . import reads

ACTION_TIMEOUT = 5.0  # seconds a cancel or stop waits for the worker that holds the job


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str


def _job(conn: redis.Redis, space: keys.Keyspace, queue: str, job_id: str) -> Job:
    return Job.fetch(job_id, conn, queue=queue, prefix=space.prefix)


def requeue(conn: redis.Redis, space: keys.Keyspace, queue: str, job_id: str) -> str:
    requeue_jobs(conn, queue, [job_id], space)
    return f"job {job_id} is back on queue {queue}"


def requeue_type(conn: redis.Redis, space: keys.Keyspace, queue: str, exc_type: str) -> str:
    if not exc_type:
        raise errors.InvalidArgument("no exception type given")
    found, scanned = reads.failed_of_type(conn, space.queue(queue), exc_type, limit=10**9)
    moved = 0
    for i in range(0, len(found), 500):
        moved += requeue_jobs(conn, queue, found[i:i + 500], space)
    return f"{moved} failed job(s) of type {exc_type} back on queue {queue} (of {scanned} failed)"


def cancel(conn: redis.Redis, space: keys.Keyspace, queue: str, job_id: str) -> str:
    _job(conn, space, queue, job_id).cancel(timeout=ACTION_TIMEOUT)
    return f"job {job_id} canceled; it will not run"


def stop(conn: redis.Redis, space: keys.Keyspace, queue: str, job_id: str) -> str:
    job = admin.stop_job(_job(conn, space, queue, job_id), timeout=ACTION_TIMEOUT)
    return f"job {job_id} stopped: it is {job.status.value}"


def delete(conn: redis.Redis, space: keys.Keyspace, queue: str, job_id: str) -> str:
    delete_jobs(conn, queue, [job_id], space)
    return f"job {job_id} deleted"


def purge(conn: redis.Redis, space: keys.Keyspace, queue: str, include_scheduled: bool) -> str:
    ready, scheduled = admin.purge(conn, queue, include_scheduled, space)
    return f"purged queue {queue}: {ready} waiting" + (f" and {scheduled} scheduled" if include_scheduled else "") + \
        " job(s) deleted"


JOB_ACTIONS: dict[str, Callable[[redis.Redis, keys.Keyspace, str, str], str]] = {
    "requeue": requeue, "cancel": cancel, "stop": stop, "delete": delete,
}


def run(action: Callable[..., str], conn: redis.Redis, space: keys.Keyspace, queue: str, *args: Any) -> Outcome:
    """Run one action; a refusal (the job moved on meanwhile, it does not exist, a queue name
    that cannot be) is a message, not an error page."""
    try:
        return Outcome(True, action(conn, space, check_queue_name(queue), *args))
    except errors.ConveyorError as exc:
        return Outcome(False, str(exc))
    except redis.RedisError as exc:
        return Outcome(False, f"Redis refused: {exc}")
