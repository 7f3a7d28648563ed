"""Typed errors. Lua scripts return numeric codes (:class:`conveyor.protocol.Code`); :func:`for_code`
turns one into the exception a client sees."""

from __future__ import annotations

from typing import Any

from . import protocol


class ConveyorError(Exception):
    """Base class of every error Conveyor raises on purpose."""


class InvalidJobId(ConveyorError, ValueError):
    pass


class InvalidQueueName(ConveyorError, ValueError):
    pass


class InvalidFunction(ConveyorError, ValueError):
    pass


class ForbiddenFunction(InvalidFunction):
    """A job target this worker's allow-list (or, without one, the standard-library rule) refuses."""


class PickleRefused(ConveyorError):
    """A pickled job was read without permission to unpickle (it would run code from Redis)."""


class InvalidArgument(ConveyorError, ValueError):
    """An option passed to enqueue (TTL, timeout, if_exists...) is out of range."""


class SerializationError(ConveyorError, TypeError):
    pass


class NoSuchJob(ConveyorError, LookupError):
    pass


class JobExists(ConveyorError):
    def __init__(self, job_ids: list[str], queue: str) -> None:
        self.job_ids = job_ids
        shown = ", ".join(repr(j) for j in job_ids[:5]) + (" ..." if len(job_ids) > 5 else "")
        super().__init__(
            f"job ID {shown} already exists in queue {queue!r}; "
            "pass if_exists='ignore' to get the existing job instead"
        )


class InvalidTransition(ConveyorError):
    """The job is not in a state that allows the requested change."""


class MalformedJob(ConveyorError, ValueError):
    """A job hash in Redis that cannot be read (corrupted, or written by hand)."""


class ConfigError(ConveyorError, ValueError):
    """A Redis URL, TLS file or key prefix that cannot be used, named in one line."""


class NotReplicated(ConveyorError):
    """The job was enqueued on the master, but fewer replicas than asked confirmed it in time."""

    def __init__(self, jobs: list[Any], acked: int, wanted: int, timeout_ms: int) -> None:
        self.jobs = jobs  # the Job objects, enqueued all the same
        self.job_ids = job_ids = [j.id for j in jobs]
        self.acked = acked
        self.wanted = wanted
        super().__init__(
            f"{len(job_ids)} job(s) enqueued, but only {acked} of {wanted} replica(s) confirmed them within "
            f"{timeout_ms} ms: a failover now could lose them (they are queued on the master and will run)")


class RedisFull(ConveyorError):
    """Redis refused to store more (maxmemory reached with policy noeviction): nothing was written."""


# The exception a client sees for each code; None: not an error (OK), or one only the worker
# that sent the call acts on (STALE, DUPLICATE: another execution owns the job, or this one
# was recorded already).
EXCEPTIONS: dict[protocol.Code, type[ConveyorError] | None] = {
    protocol.Code.OK: None,
    protocol.Code.STALE: None,
    protocol.Code.DUPLICATE: None,
    protocol.Code.MISSING: NoSuchJob,
    protocol.Code.WRONG_STATE: InvalidTransition,
    protocol.Code.EXISTS: JobExists,
}


def for_code(code: int, *args: Any) -> ConveyorError:
    """The exception a client raises for a script's error code, built from ``args`` (the message;
    for EXISTS the job IDs and the queue). A code that is no error to a client is a bug here."""
    cls = EXCEPTIONS[protocol.Code(code)]
    if cls is None:
        raise ValueError(f"code {protocol.Code(code).name} is not an error")
    return cls(*args)


class JobFailed(ConveyorError):
    """A waited job failed for good (retries used up, abandoned, or malformed); it carries the
    remote exception's type name, message and traceback text."""

    def __init__(self, job_id: str, exc_type: str, message: str, traceback: str) -> None:
        self.job_id, self.exc_type, self.message, self.traceback = job_id, exc_type, message, traceback
        super().__init__(f"job {job_id!r} failed: {exc_type}: {message}")


class JobCanceled(ConveyorError):
    """A waited job was canceled (before it ran, or stopped on request)."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job {job_id!r} was canceled")


class WaitTimeout(ConveyorError, TimeoutError):
    """A wait ended before the job did (the job itself goes on)."""


class ProgressError(ConveyorError, ValueError):
    """A progress value or meta dict a job cannot report (not a number, not JSON, too big, or
    reported where no worker can carry it)."""
