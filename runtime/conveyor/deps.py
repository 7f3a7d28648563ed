"""Job dependencies: ``enqueue(..., depends_on=[...])`` keeps a job ``deferred`` until every job
it names has ended.

A dependency is named by a :class:`~conveyor.Job` (it knows its queue), by an ID of the
dependent's own queue, or by ``"queue:id"`` (job IDs and queue names hold no ``:``). Within
one key prefix only.

How it holds together (keys in :mod:`conveyor.keys`):

1. The client checks (:func:`plan`, :func:`check_known`) before anything is written: no job
   waits for itself or for a cycle inside its batch (jobs outside the batch exist already,
   so no other cycle can form); every dependency outside the batch exists, or finished
   recently (the queue's ``done`` zset: the last 10,000 finished IDs), else it is refused.
   Dependencies on other queues are checked here; those on the job's own queue by step 2.
2. enqueue.lua writes the jobs ``deferred`` with their pending set (``deps:<id>``), lists
   them in the ``deferred`` zset, and links those on its own queue in the same step (one
   slot): each job joins its dependency's ``dependents:<id>`` set, or is resolved at once
   when the dependency ended. A job with dependencies on other queues only is due for a
   check one minute later, in case step 3 never comes.
3. :func:`link` (dependencies on other queues): on each dependency's queue, depend.lua adds
   the dependent to the dependency's ``dependents:<id>`` set unless the dependency ended,
   and says how it ended; then resolve.lua on the dependent's queue applies those outcomes
   and confirms the jobs (their next check moves :data:`RECHECK_MS` away).
4. When a job ends (complete.lua, fail.lua, cancel.lua), the same script releases its
   dependents on its own queue (resolve_dep: SREM from the pending set; the last one queues
   the job, a failure cancels it unless ``on_dependency_failure="run"``, and a canceled job
   passes that on). Dependents on other queues (other Cluster slots) get an entry in the
   ending job's queue ``outbox``, written by that same script; the scheduler leader of that
   queue (:func:`tend`) hands each entry to resolve.lua on the dependent's queue and only
   then removes it: at least once, and only the SREM that removes a dependency acts, so
   never twice.
5. The scheduler leader also links again every deferred job whose check is due (every job
   with all of its dependencies, through depend.lua): a client that died between steps 2 and 3, or an ending that could not release (a job failed as
   malformed, a purged dependency, a wrong-typed key) is caught there, within the recheck
   interval. Linking twice is harmless.

Results are not passed along (as in RQ): a job that needs one reads it with
``Job.fetch`` (keep the dependency's ``result_ttl`` long enough).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import batch, calls, errors, keys, wire
from .batch import EncodedBatch, EnqueueData
from .job import JobData
from .job_steps import DEFAULT_FAILURE_TTL
from .protocol import Code, Field, Status
from .steps import Pipeline, Steps, execute
from .validation import check_job_id, check_queue_name

if TYPE_CHECKING:
    from .queue import QueueBase

ON_FAILURE = ("cancel", "run")
RECHECK_MS = 300_000  # a linked deferred job is checked again this long after (what a release missed)
SWEEP_BATCH = 100  # deferred jobs checked per scheduler step
OUTBOX_BATCH = 100  # outbox entries handed on per scheduler step
_STATUS = Field.STATUS.encode()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def ref(queue: str, job_id: str) -> str:
    return f"{queue}:{job_id}"


def split_ref(value: str) -> tuple[str, str]:
    queue, _, job_id = value.partition(":")
    return queue, job_id


def normalize(dep: Any, queue: str, prefix: str) -> str:
    """One dependency as a ref "queue:id"; a plain ID is of the dependent's queue."""
    if isinstance(dep, JobData):
        if dep.keyspace.prefix != prefix:
            raise errors.InvalidArgument(
                f"dependency {dep.id!r} is under key prefix {dep.keyspace.prefix!r}, not {prefix!r}: "
                "a job can only wait for jobs of its own prefix")
        return ref(dep.queue, dep.id)
    if isinstance(dep, str):
        name, sep, job_id = dep.rpartition(":")
        return ref(check_queue_name(name) if sep else queue, check_job_id(job_id))
    raise errors.InvalidArgument(
        f"depends_on takes Jobs, job IDs or 'queue:id' strings, got {type(dep).__name__} {dep!r:.60}")


@dataclass(frozen=True)
class Plan:
    """What a batch with dependencies was checked to be."""

    queue: str
    refs: list[list[str]]  # per job, its dependencies
    columns: list[tuple[str, str]]  # per job, what enqueue.lua stores: depends_on, on_dep_failure
    outside: list[str]  # dependencies on other queues: they must exist


def plan(queue: str, prefix: str, items: list[EnqueueData], due_ms: int | None,
         guard: tuple[str, int] | None) -> Plan:
    """Check a batch's dependencies without I/O; raises before anything is written."""
    if due_ms is not None or guard is not None:
        raise errors.InvalidArgument("depends_on cannot be combined with enqueue_in / enqueue_at or cron: "
                                     "a deferred job becomes ready when its dependencies end")
    in_batch = {ref(queue, item.job_id): n for n, item in enumerate(items) if item.job_id is not None}
    refs: list[list[str]] = []
    columns: list[tuple[str, str]] = []
    for item in items:
        given = item.depends_on
        if isinstance(given, (str, JobData)):
            given = [given]
        if item.on_dependency_failure not in ON_FAILURE:
            raise errors.InvalidArgument(
                f"on_dependency_failure must be one of {ON_FAILURE}, got {item.on_dependency_failure!r}")
        try:
            mine = list(dict.fromkeys(normalize(d, queue, prefix) for d in given))
        except TypeError:
            raise errors.InvalidArgument(f"depends_on must be a list of jobs or IDs, got {given!r:.60}") from None
        if item.job_id is not None and ref(queue, item.job_id) in mine:
            raise errors.InvalidArgument(f"job {item.job_id!r} depends on itself")
        refs.append(mine)
        columns.append((" ".join(mine), item.on_dependency_failure if mine else ""))
    _refuse_cycle(queue, items, refs, in_batch)
    # Those on this queue are checked by enqueue.lua itself, in the step that writes the batch.
    outside = sorted({r for mine in refs for r in mine if r not in in_batch and split_ref(r)[0] != queue})
    return Plan(queue, refs, columns, outside)


def plan_of(queue: QueueBase[Any], items: list[EnqueueData], due_ms: int | None,
            guard: tuple[str, int] | None) -> Plan | None:
    """The queue's hook: the batch's plan, or None when no job of it has dependencies (the
    common case costs one attribute read)."""
    if not items[0].depends_on and (len(items) == 1 or not any(item.depends_on for item in items)):
        return None
    return plan(queue.name, queue.keyspace.prefix, items, due_ms, guard)


def failure_ttl(queue: QueueBase[Any]) -> int:
    return queue.failure_ttl if queue.failure_ttl is not None else DEFAULT_FAILURE_TTL


def encode(queue: QueueBase[Any], links: Plan, items: list[EnqueueData], if_exists: str) -> Steps[EncodedBatch]:
    """Encode a batch with dependencies for enqueue.lua's deferred mode, then check those on
    other queues (one round trip; raises before anything is written)."""
    encoded = batch.encode_batch(queue.encoding, items, if_exists, deps=links.columns,
                                 deferred=(failure_ttl(queue), RECHECK_MS))
    yield from check_known(queue.keyspace, links.outside)
    return encoded


def _refuse_cycle(queue: str, items: list[EnqueueData], refs: list[list[str]], in_batch: dict[str, int]) -> None:
    """Refuse a cycle among the jobs of one batch (depth-first, without recursion)."""
    state = [0] * len(items)  # 0 unseen, 1 on the current path, 2 done
    for start in range(len(items)):
        if state[start]:
            continue
        path = [start]
        todo = [iter([in_batch[r] for r in refs[start] if r in in_batch])]
        state[start] = 1
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                todo.pop()
            elif state[nxt] == 1:
                loop = path[path.index(nxt):] + [nxt]
                shown = " -> ".join(str(items[n].job_id) for n in loop)
                raise errors.InvalidArgument(f"dependency cycle in the batch of queue {queue!r}: {shown}")
            elif state[nxt] == 0:
                state[nxt] = 1
                path.append(nxt)
                todo.append(iter([in_batch[r] for r in refs[nxt] if r in in_batch]))


def check_known(space: keys.Keyspace, outside: list[str]) -> Steps[None]:
    """Refuse a dependency that neither exists nor finished recently (one round trip)."""
    if not outside:
        return

    def build(p: Any) -> None:
        for r in outside:
            q, job_id = split_ref(r)
            k = space.queue(q)
            p.exists(k.job(job_id))
            p.zscore(k.done, job_id)

    replies = yield from execute(build)
    for n, r in enumerate(outside):
        if not replies[2 * n] and replies[2 * n + 1] is None:
            q, job_id = split_ref(r)
            raise errors.NoSuchJob(f"unknown dependency {r!r}: no job {job_id!r} in queue {q!r}, "
                                   "nor among its recently finished jobs")


def link(space: keys.Keyspace, queue: str, failure_ttl: int,
         waiting: dict[str, list[str]]) -> Steps[tuple[list[str], list[str]]]:
    """Register deferred jobs of ``queue`` (ID -> pending refs) with their dependencies, then
    apply what ended already and confirm them. Idempotent. Returns (IDs queued, IDs canceled)."""
    by_queue: dict[str, list[tuple[str, str]]] = {}
    for job_id, refs in waiting.items():
        for r in refs:
            q, dep_id = split_ref(r)
            by_queue.setdefault(q, []).append((dep_id, ref(queue, job_id)))
    names = list(by_queue)
    replies = yield from execute(lambda p: [calls.depend(p, space.queue(q), by_queue[q]) for q in names])
    outcomes: list[tuple[str, str, str]] = []
    for q, reply in zip(names, replies):
        for (dep_id, dependent), outcome in zip(by_queue[q], reply):
            if _text(outcome) != "P":
                outcomes.append((split_ref(dependent)[1], ref(q, dep_id), _text(outcome)))
    k = space.queue(queue)
    [(queued, canceled)] = yield from execute(
        lambda p: calls.resolve(p, k, failure_ttl, RECHECK_MS, list(waiting), outcomes))
    return [_text(i) for i in queued], [_text(i) for i in canceled]


def read_reply(code: int, rest: list[Any]) -> tuple[list[Any], list[Any]]:
    """enqueue.lua's reply in deferred mode: (flags, [id, status, ...] of jobs already settled)."""
    if code == Code.MISSING:
        r = _text(rest[0])
        q, job_id = split_ref(r)
        raise errors.NoSuchJob(f"unknown dependency {r!r}: no job {job_id!r} in queue {q!r}, "
                               "nor among its recently finished jobs")
    return list(rest[0]), list(rest[1])


def link_created(client: QueueBase[Any], plan: Plan, encoded: EncodedBatch, flags: list[Any], jobs: list[Any],
                 settled: list[Any]) -> Steps[None]:
    """After enqueue.lua (which linked the dependencies on its own queue): link the created jobs
    to those on other queues; the returned jobs say where they are."""
    queue = client.name
    status = {_text(settled[i]): _text(settled[i + 1]) for i in range(0, len(settled), 2)}
    waiting: dict[str, list[str]] = {}
    for n, row in enumerate(encoded.rows):
        if plan.refs[n] and (not flags or flags[n] == 1):
            if row[0] not in status:
                remote = [r for r in plan.refs[n] if split_ref(r)[0] != queue]
                if remote:
                    waiting[row[0]] = remote
            jobs[n]._raw = {**jobs[n]._raw, _STATUS: status.get(row[0], Status.DEFERRED).encode()}
    if not waiting:
        return
    queued, canceled = yield from link(client.keyspace, queue, failure_ttl(client), waiting)
    for n, row in enumerate(encoded.rows):
        if row[0] in queued or row[0] in canceled:
            settled_now = Status.QUEUED if row[0] in queued else Status.CANCELED
            jobs[n]._raw = {**jobs[n]._raw, _STATUS: settled_now.encode()}


def tend(space: keys.Keyspace, queue: str, failure_ttl: int, outbox: Iterable[bytes],
         due: Iterable[bytes]) -> Steps[tuple[int, int]]:
    """The scheduler leader's step for ``queue``: hand its outbox entries on, and link again
    the deferred jobs whose check is due (both read in the leader's own round trip).
    Returns (entries handed on, jobs checked)."""
    entries = list(outbox)
    handed = 0
    if entries:
        handed = yield from _drain(space, queue, failure_ttl, entries)
    ids = [_text(i) for i in due]
    if ids:
        k = space.queue(queue)
        members = yield from execute(lambda p: [p.smembers(k.deps(i)) for i in ids])
        waiting = {i: sorted(_text(m) for m in wire.byte_set(ms)) for i, ms in zip(ids, members)}
        yield from link(space, queue, failure_ttl, waiting)
    return handed, len(ids)


def _drain(space: keys.Keyspace, queue: str, failure_ttl: int, entries: list[bytes]) -> Steps[int]:
    """resolve.lua on each dependent's queue, then the entries it took off the outbox (an entry
    whose call failed stays for the next step)."""
    by_queue: dict[str, list[tuple[str, str, str]]] = {}
    raw_of: dict[str, list[bytes]] = {}
    junk: list[bytes] = []
    for raw in entries:
        parts = _text(raw).split(" ")
        q, job_id = split_ref(parts[1]) if len(parts) == 3 else ("", "")
        if not q or not job_id:
            junk.append(raw)  # not written by Conveyor: dropped, or it would block nothing but stay
            continue
        by_queue.setdefault(q, []).append((job_id, parts[2], parts[0]))
        raw_of.setdefault(q, []).append(raw)
    names = list(by_queue)
    replies = yield Pipeline(lambda p: [calls.resolve(p, space.queue(q), failure_ttl, RECHECK_MS, (), by_queue[q])
                                        for q in names])
    done = junk + [raw for q, reply in zip(names, replies) if not isinstance(reply, Exception) for raw in raw_of[q]]
    k = space.queue(queue)
    if done:
        yield from execute(lambda p: [p.lrem(k.outbox, 1, raw) for raw in done])
    return len(done) - len(junk)
