"""Jobs as stored in Redis, and the client-side view of one."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, overload

import redis

from . import errors, job_steps, keys, steps, wire
from .connection import connect, db_of
from .job_steps import DEFAULT_FAILURE_TTL as DEFAULT_FAILURE_TTL  # re-exported
from .protocol import ENQUEUE_FIELDS as ENQUEUE_FIELDS  # re-exported, as are RUN_FIELDS and JobStatus
from .protocol import RUN_FIELDS as RUN_FIELDS
from .protocol import Field as F
from .protocol import JobStatus as JobStatus
from .serializers import Serializer, reader

DEFAULT_RESULT_TTL = 500
_ATTEMPTS, _PAYLOAD, _RESULT = F.ATTEMPTS.encode(), F.PAYLOAD.encode(), F.RESULT.encode()
_PROGRESS, _META = F.PROGRESS.encode(), F.META.encode()

@dataclass(frozen=True)
class ExcInfo:
    type: str
    message: str
    traceback: str

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True)
class Progress:
    """What a running job last reported (``current_job().set_progress``): a fraction (0-1) or a
    count, an optional message, and when Redis stored it (seconds since the epoch)."""

    job_id: str
    value: float
    message: str | None
    updated_at: float | None

    @classmethod
    def parse(cls, job_id: str, raw: Any, at: float | None) -> Progress | None:
        """From the stored JSON; None when unset or unreadable (written by hand)."""
        try:
            data = json.loads(raw)
            return cls(job_id, float(data["value"]), data.get("message"), at)
        except (TypeError, ValueError, KeyError):
            return None


@dataclass(frozen=True)
class Attempt:
    number: int
    execution_id: str | None
    started_at: float | None
    ended_at: float | None
    exc_type: str | None  # None: the attempt succeeded
    exc_message: str | None
    worker: str | None = None  # who ran it (not recorded before the dashboard came)


def _num(value: Any) -> float | None:
    return float(value) if value not in (None, "") else None


@overload
def _s(raw: dict[bytes, Any], field: str) -> str | None: ...
@overload
def _s(raw: dict[bytes, Any], field: str, default: str) -> str: ...
def _s(raw: dict[bytes, Any], field: str, default: str | None = None) -> str | None:
    value = raw.get(field.encode())
    if value is None:
        return default
    # A value cut mid-character (or written by hand) must not make the job unreadable.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _f(raw: dict[bytes, Any], field: str) -> float | None:
    value = raw.get(field.encode())
    return float(value) if value not in (None, b"", "") else None


class JobData:
    """What a snapshot of one job says, read from its hash: no I/O (:class:`Job` and
    :class:`~conveyor.aio.AsyncJob` add the calls to Redis, sync and asyncio).

    ``allow_pickle``: decode ``args``, ``kwargs`` and ``result`` of a pickled job. Off
    unless asked, because the job hash names its own serializer and unpickling runs
    code from whoever can write to Redis; without it they raise :class:`PickleRefused`.
    """

    def __init__(self, job_id: str, queue: str, raw: dict[bytes, bytes], *,
                 allow_pickle: bool = False, prefix: str = keys.DEFAULT_PREFIX) -> None:
        self.id = job_id
        self.queue = queue
        self.keyspace = keys.Keyspace(prefix)
        self.allow_pickle = allow_pickle
        self._load(raw)

    def _load(self, raw: dict[bytes, bytes]) -> None:
        # Fields are decoded when read: building a Job (10,000 from enqueue_many) stays cheap.
        self._raw = raw

    @property
    def func_path(self) -> str | None:
        return _s(self._raw, F.FUNC)

    @property
    def status(self) -> JobStatus:
        """The job's state; a hash corrupted to an unknown status raises MalformedJob."""
        raw = _s(self._raw, F.STATUS)
        try:
            return JobStatus(raw)
        except ValueError:
            raise errors.MalformedJob(f"job {self.id!r} has an unknown status {raw!r}") from None

    @property
    def status_text(self) -> str:
        """The status as stored, even when it is not a known one (for inspection)."""
        return _s(self._raw, F.STATUS) or "-"

    @property
    def suspect(self) -> bool:
        """Recovered from a lost worker and not yet proven harmless: it runs apart from others."""
        return _s(self._raw, F.SUSPECT) == "1"

    @property
    def execution_id(self) -> str | None:
        """The current (or last) attempt's execution ID; never part of the job ID."""
        return _s(self._raw, F.EXECUTION_ID)

    @property
    def worker(self) -> str | None:
        return _s(self._raw, F.WORKER)

    @property
    def enqueued_at(self) -> float | None:
        return _f(self._raw, F.ENQUEUED_AT)

    @property
    def started_at(self) -> float | None:
        return _f(self._raw, F.STARTED_AT)

    @property
    def ended_at(self) -> float | None:
        return _f(self._raw, F.ENDED_AT)

    @property
    def timeout(self) -> float | None:
        """Seconds the job may run; None means the worker's default."""
        return _f(self._raw, F.TIMEOUT)

    @property
    def result_ttl(self) -> int | None:
        """The job's own result TTL; None means the worker's policy (500 s by default)."""
        value = _s(self._raw, F.RESULT_TTL, "")
        return int(value) if value else None

    @property
    def failure_ttl(self) -> int | None:
        """The job's own failure TTL; None means the worker's policy (7 days by default)."""
        value = _s(self._raw, F.FAILURE_TTL, "")
        return int(value) if value else None

    @property
    def deliveries(self) -> int:
        """How many times a worker has claimed this job."""
        return int(_s(self._raw, F.DELIVERIES, "0"))

    @property
    def retries(self) -> int:
        """Exception retries so far (attempts that failed and were tried again)."""
        return int(_s(self._raw, F.RETRIES, "0"))

    @property
    def orphaned(self) -> int:
        """Times its worker was lost and the job was recovered from an expired lease."""
        return int(_s(self._raw, F.ORPHANED, "0"))

    @property
    def due_at(self) -> float | None:
        """When a scheduled job becomes ready (seconds since the epoch)."""
        due = _f(self._raw, F.DUE_AT)
        return due / 1000 if due is not None else None

    @property
    def depends_on(self) -> list[str]:
        """The jobs this one waited (or waits) for, as "queue:id"."""
        return _s(self._raw, F.DEPENDS_ON, "").split()

    @property
    def attempts(self) -> list[Attempt]:
        """Every attempt that ended in an exception or a lost worker, then the successful one."""
        raw = self._raw.get(_ATTEMPTS)
        if not raw:
            return []
        return [
            Attempt(
                int(a["n"]), a.get("execution_id") or None, _num(a.get("started_at")), _num(a.get("ended_at")),
                a.get("exc_type") or None, a.get("exc_message") or None, a.get("worker") or None,
            )
            for a in json.loads(raw.decode(errors="replace") if isinstance(raw, bytes) else raw)
        ]

    @property
    def serializer_name(self) -> str:
        return _s(self._raw, F.SER, "json")

    @property
    def exc_info(self) -> ExcInfo | None:
        exc_type = _s(self._raw, F.EXC_TYPE)
        if not exc_type:
            return None
        return ExcInfo(exc_type, _s(self._raw, F.EXC_MESSAGE, ""), _s(self._raw, F.EXC_TRACEBACK, ""))

    @property
    def progress(self) -> Progress | None:
        """The latest progress its code reported, as of this snapshot (None: none reported)."""
        raw = self._raw.get(_PROGRESS)
        return None if raw is None else Progress.parse(self.id, raw, _f(self._raw, F.PROGRESS_AT))

    @property
    def meta(self) -> dict[str, Any]:
        """The small dict its code set (``current_job().set_meta``); {} when none or unreadable."""
        raw = self._raw.get(_META)
        try:
            value = json.loads(raw) if raw is not None else {}
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    @property
    def key(self) -> str:
        return self.keyspace.queue(self.queue).job(self.id)

    @property
    def args(self) -> list[Any]:
        return self._payload()[0]

    @property
    def kwargs(self) -> dict[str, Any]:
        return self._payload()[1]

    def _payload(self) -> tuple[list[Any], dict[str, Any]]:
        data = self._reader().loads(self._raw[_PAYLOAD])
        return data["a"], data["k"]

    def _reader(self) -> Serializer:
        return reader(self.serializer_name, allow_pickle=self.allow_pickle, what=f"job {self.id!r}")

    @property
    def result(self) -> Any:
        """The return value of a finished job (``None`` until it finishes)."""
        raw = self._raw.get(_RESULT)
        if raw is None:
            return None
        return self._reader().loads(raw)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} queue={self.queue} status={self.status.value} func={self.func_path}>"


class Job(JobData):
    """A snapshot of one job. ``refresh()`` reloads it; attributes never hit Redis."""

    def __init__(self, job_id: str, queue: str, connection: redis.Redis, raw: dict[bytes, bytes], *,
                 allow_pickle: bool = False, prefix: str = keys.DEFAULT_PREFIX) -> None:
        super().__init__(job_id, queue, raw, allow_pickle=allow_pickle, prefix=prefix)
        self.connection = connection

    @property
    def ttl(self) -> int:
        """Seconds until Redis forgets this job: -1 kept forever, -2 already gone."""
        return wire.integer(self.connection.ttl(self.key))

    def refresh(self) -> Job:
        self._load(steps.run(job_steps.read(self), self.connection))
        return self

    def cancel(self, timeout: float = 10.0) -> None:
        """Take a waiting job off its queue for good; it ends as ``canceled`` and never runs.

        A queued or scheduled job is canceled at once. A prefetched one is held by a worker,
        which alone knows whether it has started it: the worker is asked, and this waits up
        to ``timeout`` seconds for its answer.
        """
        self._load(steps.run(job_steps.cancel(self, timeout, db_of(self.connection)), self.connection))

    def requeue(self) -> None:
        """Put a failed job back on its queue, with a fresh retry budget."""
        self._load(steps.run(job_steps.requeue(self), self.connection))

    def wait(self, timeout: float | None = None, *, on_progress: Callable[[Progress], object] | None = None) -> Any:
        """Block until the job ends; return its result. Raises :class:`~conveyor.JobFailed` (the remote
        exception's type, message and traceback) once it failed for good (a retry is not the end),
        :class:`~conveyor.JobCanceled`, :class:`~conveyor.NoSuchJob` if it is gone, or
        :class:`~conveyor.WaitTimeout` after ``timeout`` seconds (None: no limit). Woken by the
        step that ends the job (pub/sub, one connection per client), not by polling.
        ``on_progress`` gets each :class:`Progress` the job reports meanwhile, in order."""
        from . import waiting  # it builds on this module

        return waiting.unwrap(waiting.wait_sync(self.connection, [self], timeout, on_progress)[0])

    @classmethod
    def fetch(
        cls,
        job_id: str,
        connection: redis.Redis | None = None,
        *,
        queue: str | None = None,
        redis_url: str | None = None,
        allow_pickle: bool = False,
        prefix: str | None = None,
    ) -> Job:
        """Load a job by its plain ID. Without ``queue``, every known queue is searched.
        ``allow_pickle=True`` lets it decode a pickled job (see :class:`Job`); ``prefix``:
        the key prefix (default CONVEYOR_PREFIX or ``conveyor``)."""
        conn = connect(redis_url, connection)
        space = keys.Keyspace.of(prefix)
        found, raw = steps.run(job_steps.fetch(job_id, queue, allow_pickle, space), conn)
        return cls(job_id, found, conn, raw, allow_pickle=allow_pickle, prefix=space.prefix)


def requeue_jobs(conn: redis.Redis, queue: str, job_ids: list[str], space: keys.Keyspace = keys.DEFAULT) -> int:
    """Requeue failed jobs of one queue; raises if any is unknown or not failed (the others still move)."""
    return steps.run(job_steps.requeue_jobs(queue, job_ids, space), conn)


def delete_jobs(conn: redis.Redis, queue: str, job_ids: list[str], space: keys.Keyspace = keys.DEFAULT) -> int:
    """Delete ended jobs (finished, failed, canceled) of one queue; raises if any is unknown or
    has not ended (the others are deleted)."""
    return steps.run(job_steps.delete_jobs(queue, job_ids, space), conn)


def send_command(conn: redis.Redis, cmd: str, queue: str, job_id: str, space: keys.Keyspace = keys.DEFAULT) -> int:
    """Publish a fleet command on this database's channel; returns how many workers heard it."""
    return steps.run(job_steps.send_command(db_of(conn), cmd, queue, job_id, space), conn)
