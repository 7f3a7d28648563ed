"""The client side: put jobs on a queue and look at what is there."""

from __future__ import annotations

import abc
import datetime as dt
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Generic, TypeVar

from redis.exceptions import ResponseError

from . import batch, deps, errors, job_steps, keys, scripts, steps, waiting, wire
from . import limits as flow
from .batch import EncodedBatch as EncodedBatch  # re-exported, as is EnqueueData
from .batch import EnqueueData as EnqueueData
from .connection import connect, is_cluster, refusal
from .job import Job, JobData, Progress, requeue_jobs
from .protocol import ENQUEUE_FIELDS, Code, Status
from .protocol import Field as F
from .registry import Registry, RegistryBase
from .retry import Retry
from .serializers import Serializer, get_serializer
from .validation import (
    check_allow_pickle,
    check_args,
    check_kwargs,
    check_queue_name,
    check_replicas,
    check_timeout,
    check_ttl,
    delay_due,
    when_due,
)

_STATUS, _ENQUEUED_AT, _DUE_AT = F.STATUS.encode(), F.ENQUEUED_AT.encode(), F.DUE_AT.encode()
_QUEUED, _SCHEDULED = Status.QUEUED.encode(), Status.SCHEDULED.encode()
_FIELD_NAMES = tuple(f.encode() for f in ENQUEUE_FIELDS)  # a returned Job's hash fields, by column

R = TypeVar("R", bound=RegistryBase)


class QueueBase(abc.ABC, Generic[R]):
    """What the sync :class:`Queue` and the asyncio :class:`~conveyor.aio.AsyncQueue` share:
    settings, checking and encoding, and every operation as :mod:`conveyor.steps`."""

    connection: Any
    # How the client is built from redis_url / connection: sync (connect) or asyncio (aconnect).
    _connect: Callable[[str | None, Any], Any]
    # How registries are read: sync properties (Registry) or awaited methods (AsyncRegistry).
    _registry: type[R]

    def __init__(
        self,
        name: str = "default",
        *,
        redis_url: str | None = None,
        connection: Any = None,
        serializer: str | Serializer | None = None,
        default_timeout: float | None = None,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
        allow_pickle: bool | None = None,
        prefix: str | None = None,
        min_replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        self.name = check_queue_name(name)
        self.keyspace = keys.Keyspace.of(prefix)
        self.min_replicas, self.replica_timeout = check_replicas(min_replicas, replica_timeout)
        self.connection = self._connect(redis_url, connection)
        self.serializer = get_serializer(serializer)
        self.allow_pickle = self.serializer.name == "pickle" if allow_pickle is None else check_allow_pickle(allow_pickle)
        self.default_timeout = check_timeout(default_timeout) if default_timeout is not None else None
        self.result_ttl = None if result_ttl is None else check_ttl("result_ttl", result_ttl)
        self.failure_ttl = None if failure_ttl is None else check_ttl("failure_ttl", failure_ttl)
        self.keys = self.keyspace.queue(name)
        self.encoding = batch.Encoding(self.keys, self.serializer, self.default_timeout, self.result_ttl,
                                       self.failure_ttl)
        # enqueue.lua's optional KEYS[6]; None on a Cluster (another slot than the queue's keys).
        self._queues_key = None if is_cluster(self.connection) else self.keyspace.queues

    @staticmethod
    def prepare_data(
        func: Callable[..., Any] | str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        job_id: str | None = None,
        timeout: float | None = None,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
        retry: Retry | None = None,
        max_deliveries: int | None = None,
        unique_key: str | None = None,
        unique_ttl: int | None = None,
        depends_on: Iterable[Any] = (),
        on_dependency_failure: str = "cancel",
    ) -> EnqueueData:
        return EnqueueData(func, check_args(args), check_kwargs(kwargs), job_id, timeout, result_ttl, failure_ttl,
                           retry, max_deliveries, unique_key, unique_ttl, depends_on, on_dependency_failure)

    def _due(self, due: float, func: Callable[..., Any] | str, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> steps.Steps[list[Any]]:
        """enqueue_in / enqueue_at: the job's own options taken out of ``kwargs``."""
        if_exists = kwargs.pop("if_exists", "error")
        options = {k: kwargs.pop(k) for k in batch.OPTION_NAMES if k in kwargs}
        data = self.prepare_data(func, args, kwargs, **options)
        return self._write_steps([data], if_exists, int(due * 1000), None)

    def _count_steps(self) -> steps.Steps[int]:
        k = self.keys
        return sum((yield from steps.execute(lambda p: (p.llen(k.recovered), p.llen(k.ready)))))

    def _ids_steps(self) -> steps.Steps[list[str]]:
        k = self.keys
        replies = yield from steps.execute(lambda p: (p.lrange(k.recovered, 0, -1), p.lrange(k.ready, 0, -1)))
        return [i.decode() for ids in replies for i in ids]

    def _requeue_all_failed_steps(self) -> steps.Steps[int]:
        ids = yield from self.failed._ids_steps()
        return (yield from job_steps.requeue_jobs(self.name, ids, self.keyspace)) if ids else 0

    def _worker_ids_steps(self, worker_id: str) -> steps.Steps[list[str]]:
        [ids] = yield from steps.execute(lambda p: p.smembers(self.keys.claimed(worker_id)))
        return sorted(i.decode() for i in ids)

    # -- registries (plain job IDs, never composite) ----------------------------------

    def registry(self, name: str) -> R:
        """``prefetched``, ``started``, ``scheduled``, ``deferred``, ``finished``, ``failed`` or ``canceled``."""
        return self._registry(self, name)

    @property
    def prefetched(self) -> R:
        """Jobs a worker holds in its buffer: claimed, not running yet."""
        return self.registry(Status.PREFETCHED)

    @property
    def started(self) -> R:
        return self.registry(Status.STARTED)

    @property
    def scheduled(self) -> R:
        return self.registry(Status.SCHEDULED)

    @property
    def deferred(self) -> R:
        """Jobs waiting for their dependencies (conveyor.deps)."""
        return self.registry(Status.DEFERRED)

    @property
    def finished(self) -> R:
        return self.registry(Status.FINISHED)

    @property
    def failed(self) -> R:
        return self.registry(Status.FAILED)

    @property
    def canceled(self) -> R:
        return self.registry(Status.CANCELED)

    def encode_batch(
        self, items: list[EnqueueData], if_exists: str, *, due_ms: int | None = None, guard: tuple[str, int] | None = None
    ) -> EncodedBatch:
        """Validate and encode a batch for enqueue.lua (:mod:`conveyor.batch`). Raises before anything is written."""
        return batch.encode_batch(self.encoding, items, if_exists, due_ms=due_ms, guard=guard)

    @abc.abstractmethod
    def _job(self, job_id: str, raw: dict[bytes, Any]) -> Any:
        """A returned job of this client's kind (:class:`Job` or :class:`~conveyor.aio.AsyncJob`)."""

    def _write_steps(
        self, items: list[EnqueueData], if_exists: str, due_ms: int | None, guard: tuple[str, int] | None
    ) -> steps.Steps[list[Any]]:
        """Check, encode and write a batch (enqueue.lua), then the returned jobs: one copy for
        the sync and the asyncio client. Raises before anything is written."""
        if not items:
            return []
        links = deps.plan_of(self, items, due_ms, guard)  # None: no job of the batch has dependencies
        if links is None:
            encoded = self.encode_batch(items, if_exists, due_ms=due_ms, guard=guard)
        else:
            encoded = yield from deps.encode(self, links, items, if_exists)
        # enqueue.lua adds the queue to the queues set, every time, not once: a Redis that was
        # wiped learns the queue again. On a Cluster that set is in another slot: a SADD apart.
        queues = self._queues_key
        keys_ = encoded.keys if queues is None else [*encoded.keys, queues]
        replies: list[Any]
        if queues is not None and not self.min_replicas:
            # One EVALSHA, no pipeline: the common case, and a round trip either way.
            replies = [(yield steps.Eval(scripts.enqueue, keys_, encoded.argv))]
        else:
            def build(pipe: Any) -> None:
                if queues is None:
                    pipe.sadd(self.keyspace.queues, self.name)
                scripts.enqueue(pipe, keys_, encoded.argv)
                if self.min_replicas:
                    # Sent to the node that took the jobs (on a Cluster: the queue's master).
                    pipe.execute_command("WAIT", self.min_replicas, int(self.replica_timeout * 1000),
                                         keys=[self.keys.ready])

            replies = (yield steps.Pipeline(build))[queues is None:]
        reply = replies[0]
        if isinstance(reply, ResponseError):
            raise refusal(reply, f"queue {self.name!r}") from None
        code, *flags = reply
        if code == Code.EXISTS:
            raise errors.for_code(code, [f.decode() for f in flags], self.name)
        settled: list[Any] = []
        if links is not None:
            flags, settled = deps.read_reply(code, flags)
        jobs, existing = self._returned(encoded, flags, due_ms)
        if links is not None:
            yield from deps.link_created(self, links, encoded, flags, jobs, settled)
        if existing:  # they existed, or another job holds their unique key: those are read back
            hashes = yield from steps.execute(lambda p: [p.hgetall(self.keys.job(i)) for _, i in existing])
            for (n, job_id), raw in zip(existing, hashes):
                if not raw:
                    raise errors.NoSuchJob(f"no job {job_id!r} in queue {self.name!r}")
                jobs[n] = self._job(job_id, wire.byte_hash(raw))
        if self.min_replicas:
            acked = replies[1]
            if isinstance(acked, ResponseError):
                raise refusal(acked, f"queue {self.name!r} (WAIT for replicas)") from None
            if int(acked) < self.min_replicas:
                raise errors.NotReplicated(jobs, int(acked), self.min_replicas, int(self.replica_timeout * 1000))
        return jobs

    def _returned(self, encoded: EncodedBatch, flags: list[Any],
                  due_ms: int | None) -> tuple[list[Any], list[tuple[int, str]]]:
        """The jobs an enqueue returns, built from what was sent (no read back), and the
        (place, ID) of those to read instead: they existed, or hold the unique key."""
        rows, shared, per_job = encoded.rows, encoded.shared, encoded.own[1:]
        row0 = rows[0]
        base: dict[bytes, Any] = {_STATUS: _QUEUED if due_ms is None else _SCHEDULED,
                                  _ENQUEUED_AT: repr(time.time()).encode()}  # refresh() reads the server's
        if due_ms is not None:
            base[_DUE_AT] = due_ms
        field_names = _FIELD_NAMES if encoded.fields is ENQUEUE_FIELDS else tuple(f.encode() for f in encoded.fields)
        base.update([(field_names[c], row0[c]) for c in shared])
        names = [field_names[c] for c in per_job]
        single = len(rows) == 1  # one job: its fields are all in base, which it may keep
        jobs: list[Any] = []
        existing: list[tuple[int, str]] = []
        for n, row in enumerate(rows):
            flag: Any = flags[n] if flags else 1
            if flag == 1:
                raw = base if single else base.copy()
                if per_job:
                    raw.update(zip(names, [row[c] for c in per_job]))
                jobs.append(self._job(row[0], raw))
            else:  # it existed, or another job holds its unique key: return that one
                existing.append((n, row[0] if flag == 0 else flag.decode()))
                jobs.append(None)
        return jobs, existing

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class Queue(QueueBase[Registry]):
    """A named queue in Redis.

    ``result_ttl`` and ``failure_ttl`` are the defaults for jobs enqueued here: seconds
    to keep a finished or failed job, 0 to delete it as soon as it ends, -1 to keep it
    forever. Left unset, the worker's policy decides: 500 s and 7 days unless the worker
    was given another (``--result-ttl``, ``--failure-ttl``, ``--policy-file``).

    ``allow_pickle``: may the jobs this queue returns decode pickled arguments and
    results? Left as None, only if this queue's own serializer is pickle (choosing it
    already trusts Redis); otherwise reading a pickled job raises :class:`PickleRefused`.

    ``prefix``: the key prefix (default CONVEYOR_PREFIX, else ``conveyor``); apps with
    different prefixes share a Redis without seeing each other's jobs or workers.

    ``min_replicas``: after writing, wait up to ``replica_timeout`` seconds for that many
    replicas to confirm (Redis ``WAIT``); if fewer do, :class:`NotReplicated` is raised (the
    jobs are queued all the same, but a failover right now could lose them).
    """

    _connect = staticmethod(connect)
    _registry = Registry

    # -- enqueueing --------------------------------------------------------------

    def enqueue(
        self,
        func: Callable[..., Any] | str,
        *args: Any,
        job_id: str | None = None,
        timeout: float | None = None,
        result_ttl: int | None = None,
        failure_ttl: int | None = None,
        retry: Retry | None = None,
        max_deliveries: int | None = None,
        unique_key: str | None = None,
        unique_ttl: int | None = None,
        depends_on: Iterable[Any] = (),
        on_dependency_failure: str = "cancel",
        if_exists: str = "error",
        **kwargs: Any,
    ) -> Job:
        """Queue ``func(*args, **kwargs)``. Use :meth:`enqueue_call` if your kwargs clash with these names.

        ``retry``: a :class:`Retry` policy. ``max_deliveries`` (default 3): how many
        times the job may be handed to a worker that is then lost before it fails as
        abandoned. ``unique_key``: while a job with this key is queued, scheduled or
        started, enqueueing another returns that job instead (the key is held at most
        ``unique_ttl`` seconds, default 3600). ``depends_on``: jobs (Jobs, IDs, "queue:id") it
        waits for, ``deferred``; ``on_dependency_failure``: "cancel" or "run" (conveyor.deps).
        """
        data = EnqueueData(func, args, kwargs, job_id, timeout, result_ttl, failure_ttl,
                           retry, max_deliveries, unique_key, unique_ttl, depends_on, on_dependency_failure)
        return self._write([data], if_exists)[0]

    def enqueue_call(
        self,
        func: Callable[..., Any] | str,
        args: Iterable[Any] = (),
        kwargs: dict[str, Any] | None = None,
        *,
        if_exists: str = "error",
        **options: Any,
    ) -> Job:
        return self._write([self.prepare_data(func, args, kwargs, **options)], if_exists)[0]

    def enqueue_in(self, delay: float | dt.timedelta, func: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Job:
        """Like :meth:`enqueue`, but the job becomes ready after ``delay`` (seconds or a timedelta)."""
        return steps.run(self._due(delay_due(delay), func, args, kwargs), self.connection)[0]  # type: ignore[no-any-return]

    def enqueue_at(self, when: dt.datetime, func: Callable[..., Any] | str, *args: Any, **kwargs: Any) -> Job:
        """Like :meth:`enqueue`, but the job becomes ready at ``when`` (a naive datetime is local time)."""
        return steps.run(self._due(when_due(when), func, args, kwargs), self.connection)[0]  # type: ignore[no-any-return]

    def enqueue_many(self, items: Iterable[EnqueueData], *, if_exists: str = "error") -> list[Job]:
        """Write a whole batch in one round trip, atomically: all of it or, on error, none."""
        return self._write(list(items), if_exists)

    def _write(
        self, items: list[EnqueueData], if_exists: str, *, due_ms: int | None = None, guard: tuple[str, int] | None = None
    ) -> list[Job]:
        return steps.run(self._write_steps(items, if_exists, due_ms, guard), self.connection)

    def _job(self, job_id: str, raw: dict[bytes, Any]) -> Job:
        return Job(job_id, self.name, self.connection, raw, allow_pickle=self.allow_pickle, prefix=self.keyspace.prefix)

    def wait_all(self, jobs: Sequence[JobData], timeout: float | None = None, *, return_exceptions: bool = False,
                 on_progress: Callable[[Progress], object] | None = None) -> list[Any]:
        """Block until every job ended; their results in order. A failed or canceled job's
        exception is raised (the first, in order, once all ended), or put in its place with
        ``return_exceptions=True``; :class:`~conveyor.WaitTimeout` after ``timeout`` seconds.
        All waits of this queue's client share one pub/sub connection."""
        return waiting.values(waiting.wait_sync(self.connection, list(jobs), timeout, on_progress), return_exceptions)

    def requeue(self, *job_ids: str) -> int:
        """Put failed jobs back on this queue (fresh retry budget). Returns how many moved."""
        return requeue_jobs(self.connection, self.name, list(job_ids), self.keyspace)

    def requeue_all_failed(self) -> int:
        """Put every failed job of this queue back (fresh retry budget). Returns how many moved."""
        return steps.run(self._requeue_all_failed_steps(), self.connection)

    # -- looking --------------------------------------------------------------------

    @property
    def count(self) -> int:
        """Jobs waiting to run (ready, and recovered from lost workers)."""
        return steps.run(self._count_steps(), self.connection)

    def __len__(self) -> int:
        return self.count

    @property
    def job_ids(self) -> list[str]:
        """IDs of the jobs waiting to run, next first (recovered jobs are taken first)."""
        return steps.run(self._ids_steps(), self.connection)

    def fetch_job(self, job_id: str) -> Job:
        return Job.fetch(job_id, self.connection, queue=self.name, allow_pickle=self.allow_pickle,
                         prefix=self.keyspace.prefix)

    # -- flow control (conveyor.limits) ----------------------------------------------

    def set_limits(self, *, rate: flow.Rate | str | None | flow.Keep = flow.KEEP,
                   max_concurrency: int | None | flow.Keep = flow.KEEP,
                   burst: int | None | flow.Keep = flow.KEEP) -> flow.Limits:
        """Limit this queue fleet-wide: ``rate="100/s"`` (N/s, N/m, N/h), ``max_concurrency=5``
        (jobs holding a lease across all workers), ``burst`` (starts allowed at once; default
        100 ms worth of the rate). None clears a limit; an argument not given is kept.
        Returns the limits now in force; a bad value raises ConfigError before anything is written."""
        return steps.run(flow.set_steps(self.keys, flow.changes(rate, max_concurrency, burst)), self.connection)

    def limits(self) -> flow.Limits:
        return steps.run(flow.read_steps(self.keys), self.connection)

    def worker_job_ids(self, worker_id: str) -> list[str]:
        """IDs of the jobs of this queue a worker holds a lease on."""
        return steps.run(self._worker_ids_steps(worker_id), self.connection)

