"""Jobs to enqueue, checked and encoded for enqueue.lua: everything :class:`~conveyor.Queue`
does before it writes, so a bad batch raises before anything is written.

A job is a row of :data:`~conveyor.protocol.ENQUEUE_FIELDS` values (a plain list: 10,000 of
them are built per ``enqueue_many`` call); its options are an
:class:`~conveyor.protocol.EnqueueOptions`, a queue's defaults when the job sets none.
"""

from __future__ import annotations

import itertools
import operator
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from . import errors
from .keys import QueueKeys
from .protocol import ENQUEUE_FIELDS, EnqueueOptions, Status
from .protocol import Field as F
from .retry import Retry
from .serializers import Serializer
from .validation import check_job_id, check_keywords, check_timeout, check_ttl, function_path

DEFAULT_UNIQUE_TTL = 3600
IF_EXISTS = ("error", "ignore")
OPTION_NAMES = ("job_id", "timeout", "result_ttl", "failure_ttl", "retry", "max_deliveries", "unique_key", "unique_ttl",
                "depends_on", "on_dependency_failure")
_NO_OPTIONS = (None,) * 7
_COLUMNS = range(1, len(ENQUEUE_FIELDS))  # every column but "id"
# A batch with dependencies sends two more fields per job (conveyor/deps.py).
DEFERRED_FIELDS = (*ENQUEUE_FIELDS, F.DEPENDS_ON, F.ON_DEP_FAILURE)
_NO_IDS: Iterator[str] = iter(())


class EnqueueData(NamedTuple):
    """One job of an :meth:`Queue.enqueue_many` batch, built by :meth:`Queue.prepare_data`."""

    func: Callable[..., Any] | str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    job_id: str | None = None
    timeout: float | None = None
    result_ttl: int | None = None
    failure_ttl: int | None = None
    retry: Retry | None = None
    max_deliveries: int | None = None
    unique_key: str | None = None
    unique_ttl: int | None = None
    # Jobs (or "id", "queue:id") to wait for, and what a failed one does: "cancel" or "run".
    depends_on: Any = ()
    on_dependency_failure: str = "cancel"


class EncodedBatch(NamedTuple):
    keys: list[str]
    argv: list[Any]
    rows: list[list[Any]]  # per job, the values of ENQUEUE_FIELDS
    shared: list[int]  # columns (ENQUEUE_FIELDS indexes) whose value every job shares
    own: list[int]  # columns sent per job, 0 ("id") first
    fields: tuple[str, ...] = ENQUEUE_FIELDS  # each column's field (DEFERRED_FIELDS with dependencies)


@dataclass(frozen=True, slots=True)
class Encoding:
    """What encoding a queue's jobs needs: its keys, serializer and default options. No
    connection: the sync client, the scheduler on its asyncio client, and any other caller
    encode through the same code. The options are checked by the caller (:class:`Queue`)."""

    keys: QueueKeys
    serializer: Serializer
    default_timeout: float | None = None
    result_ttl: int | None = None
    failure_ttl: int | None = None
    defaults: EnqueueOptions = field(init=False)  # of a job that sets none of its own
    default_values: tuple[Any, ...] = field(init=False)  # the same as a plain tuple: a list display copies it fastest

    def __post_init__(self) -> None:
        defaults = EnqueueOptions(
            ser=self.serializer.name,
            timeout="" if self.default_timeout is None else repr(self.default_timeout),
            result_ttl="" if self.result_ttl is None else self.result_ttl,
            failure_ttl="" if self.failure_ttl is None else self.failure_ttl,
            retry="", max_deliveries="", unique_lock="", unique_ttl="",
        )
        object.__setattr__(self, "defaults", defaults)
        object.__setattr__(self, "default_values", tuple(defaults))


def encode_batch(
    queue: Encoding, items: list[EnqueueData], if_exists: str, *, due_ms: int | None = None,
    guard: tuple[str, int] | None = None, deps: list[tuple[str, str]] | None = None,
    deferred: tuple[int, int] = (0, 0)
) -> EncodedBatch:
    """Validate and encode a batch for enqueue.lua. Raises before anything is written.

    ``deps``: per job, its dependency refs ("queue:id ...", "" for none) and the policy for a
    failed one; the batch is then written in deferred mode (conveyor/deps.py checked them),
    with ``deferred``: the failure TTL of a job a failed dependency cancels, and the recheck
    interval (ms)."""
    if if_exists not in IF_EXISTS:
        raise errors.InvalidArgument(f"if_exists must be one of {IF_EXISTS}, got {if_exists!r}")
    if len(items) == 1:
        # Enqueue one by one is the common call: skip the batch-wide work, which for one
        # row always gives the same answer (no duplicate IDs, every value shared).
        item = items[0]
        rows = [_row(queue, item, 0, iter(new_ids(1)) if item.job_id is None else _NO_IDS)]
        mode = "fresh" if item.job_id is None else if_exists
        shared, own = list(_COLUMNS if deps is None else range(1, len(DEFERRED_FIELDS))), [0]
    else:
        generated = iter(new_ids(sum(1 for item in items if item.job_id is None)))
        rows = [_row(queue, item, n, generated) for n, item in enumerate(items)]
        ids = [row[0] for row in rows]
        if len(set(ids)) != len(ids):
            dupes = sorted({i for i in ids if ids.count(i) > 1})
            raise errors.InvalidJobId(f"job ID(s) {dupes} appear more than once in the batch")
        mode = "fresh" if all(item.job_id is None for item in items) else if_exists
        columns = _COLUMNS if deps is None else range(1, len(DEFERRED_FIELDS))
        if deps is not None:
            rows = [[*row, *d] for row, d in zip(rows, deps)]
        # Values every job shares travel once; the rest once per job ("id" always per job).
        shared = [c for c in columns if len({row[c] for row in rows}) == 1]
        own = [0] + [c for c in columns if c not in shared]
    fields = ENQUEUE_FIELDS
    if deps is not None:
        fields = DEFERRED_FIELDS
        if len(items) == 1:
            rows = [[*rows[0], *deps[0]]]
    # A shared value that equals the reader's default ("" means unset, json) need not be stored.
    stored = [c for c in shared if rows[0][c] not in ("", "json")]
    k = queue.keys
    due: Any = Status.DEFERRED if deps is not None else "" if due_ms is None else due_ms
    argv: list[Any] = [
        k.job_prefix, mode, due, k.schedule_channel,
        *(deferred if deps is not None else guard if guard else ("", "")), k.queue, len(stored),
    ]
    for c in stored:
        argv += (fields[c], rows[0][c])
    argv += (len(own), *(fields[c] for c in own))
    if len(own) == 1:  # itemgetter of one index returns the value, not a 1-tuple
        argv.extend(row[0] for row in rows)
    else:
        argv.extend(itertools.chain.from_iterable(map(operator.itemgetter(*own), rows)))
    return EncodedBatch([k.ready, k.wake, k.scheduled, k.cron, k.stats, k.deferred, k.done, k.canceled, k.outbox],
                        argv, rows, shared, own, fields)


def _row(queue: Encoding, item: EnqueueData, index: int, generated: Iterator[str]) -> list[Any]:
    """The values of ENQUEUE_FIELDS for one job; raises before anything is written."""
    job_id = check_job_id(item.job_id) if item.job_id is not None else next(generated)
    if item.kwargs:
        check_keywords(item.func, item.kwargs, OPTION_NAMES + ("if_exists",))
    payload = _payload(queue.serializer, item, index)
    if item[4:11] == _NO_OPTIONS:
        return [job_id, function_path(item.func), payload, *queue.default_values]
    defaults = queue.defaults
    timeout = item.timeout if item.timeout is not None else queue.default_timeout
    if item.retry is not None and not isinstance(item.retry, Retry):
        raise errors.InvalidArgument(f"retry must be a conveyor.Retry, got {item.retry!r}")
    if item.max_deliveries is not None and (
        isinstance(item.max_deliveries, bool) or not isinstance(item.max_deliveries, int) or item.max_deliveries < 1
    ):
        raise errors.InvalidArgument(f"max_deliveries must be an integer >= 1, got {item.max_deliveries!r}")
    unique_lock = ""
    unique_ttl: str | int = ""
    if item.unique_key is not None:
        if not isinstance(item.unique_key, str) or not item.unique_key or len(item.unique_key) > 200:
            raise errors.InvalidArgument(
                f"unique_key must be a non-empty string of at most 200 characters, got {item.unique_key!r}")
        unique_lock = queue.keys.unique(item.unique_key)
        unique_ttl = DEFAULT_UNIQUE_TTL if item.unique_ttl is None else check_ttl(
            "unique_ttl", item.unique_ttl, allow_zero=False)
        if unique_ttl == -1:
            raise errors.InvalidArgument("unique_ttl must be a positive number of seconds")
    elif item.unique_ttl is not None:
        raise errors.InvalidArgument("unique_ttl needs a unique_key")
    # A list in ENQUEUE_FIELDS order, as fast as the defaults' (tests/test_protocol.py checks the order).
    return [
        job_id,
        function_path(item.func),
        payload,
        queue.serializer.name,  # ser
        "" if timeout is None else repr(check_timeout(timeout)),  # timeout
        defaults.result_ttl if item.result_ttl is None else check_ttl("result_ttl", item.result_ttl),
        defaults.failure_ttl if item.failure_ttl is None else check_ttl("failure_ttl", item.failure_ttl),
        item.retry.to_json() if item.retry is not None else "",  # retry
        "" if item.max_deliveries is None else item.max_deliveries,  # max_deliveries
        unique_lock,
        unique_ttl,
    ]


def _payload(serializer: Serializer, item: EnqueueData, index: int) -> bytes:
    try:
        return serializer.dumps({"a": list(item.args), "k": item.kwargs})
    except errors.SerializationError as exc:
        where = _culprit(serializer, item)
        prefix = f"job {index} of the batch: " if index else ""
        raise errors.SerializationError(f"{prefix}{where}: {exc}") from None


def new_ids(n: int) -> list[str]:
    """n random 128-bit IDs in hex, drawn in one call (uuid4() per job costs more than the Lua)."""
    blob = os.urandom(16 * n).hex()
    return [blob[i : i + 32] for i in range(0, 32 * n, 32)]


def _culprit(serializer: Serializer, item: EnqueueData) -> str:
    """Name the first argument the serializer rejects, for the error message."""
    for i, arg in enumerate(item.args):
        try:
            serializer.dumps(arg)
        except errors.SerializationError:
            return f"argument {i} ({type(arg).__name__})"
    for name, arg in item.kwargs.items():
        try:
            serializer.dumps(arg)
        except errors.SerializationError:
            return f"keyword argument {name!r} ({type(arg).__name__})"
    return "arguments"
