"""The wire protocol between Python and the Lua scripts, in one place.

- :class:`Field`: every field of a job hash (``conveyor:{q:NAME}:job:ID``).
- :class:`Status`: every value of its ``status`` field (:class:`JobStatus`, the same as an enum).
- :class:`Limit`: the fields of a queue's limits hash (flow control, token bucket);
  :class:`Throttle`: why claim.lua started fewer jobs than asked because of them.
- :class:`Code`: what the scripts return per job (OK, STALE, ...); :mod:`conveyor.errors`
  turns a code into the exception a client sees (:func:`conveyor.errors.for_code`).
- :data:`KEYS`: each script's KEYS, by name in order, as its header comment names them
  (:mod:`conveyor.calls` passes them in that order; tests/test_protocol.py checks both).
- :func:`lua_prelude`: the same names as Lua locals (``F_STATUS``, ``S_QUEUED``, ``OK``),
  put at the head of every script when it is loaded, so the scripts hold no literal of
  their own.

Nothing here imports the rest of Conveyor.
"""

from __future__ import annotations

import enum
from typing import Final, NamedTuple


class Field:
    """The fields of a job hash. Plain ``str`` constants: they are read on hot paths."""

    # Written at enqueue (see EnqueueOptions for the ones a job may set).
    FUNC: Final = "func"
    PAYLOAD: Final = "payload"  # serialized {"a": args, "k": kwargs}
    SER: Final = "ser"  # the serializer's name; unset means json
    TIMEOUT: Final = "timeout"
    RESULT_TTL: Final = "result_ttl"
    FAILURE_TTL: Final = "failure_ttl"
    RETRY: Final = "retry"  # a Retry policy as JSON
    MAX_DELIVERIES: Final = "max_deliveries"
    UNIQUE_LOCK: Final = "unique_lock"  # the unique key this job holds
    UNIQUE_TTL: Final = "unique_ttl"
    STATUS: Final = "status"
    ENQUEUED_AT: Final = "enqueued_at"
    DUE_AT: Final = "due_at"  # ms since the epoch, for a scheduled job
    # Written by the scripts as the job moves.
    EXECUTION_ID: Final = "execution_id"
    WORKER: Final = "worker"
    STARTED_AT: Final = "started_at"
    DELIVERIES: Final = "deliveries"
    SUSPECT: Final = "suspect"  # "1": recovered from a lost worker
    ATTEMPTS: Final = "attempts"  # JSON list of ended attempts
    ATTEMPTS_UNREADABLE: Final = "attempts_unreadable"  # an unreadable attempts value, kept aside
    RESULT: Final = "result"
    ENDED_AT: Final = "ended_at"
    EXC_TYPE: Final = "exc_type"
    EXC_MESSAGE: Final = "exc_message"
    EXC_TRACEBACK: Final = "exc_traceback"
    RETRIES: Final = "retries"
    ORPHANED: Final = "orphaned"
    # Dependencies (conveyor/deps.py).
    DEPENDS_ON: Final = "depends_on"  # "queue:id queue:id": what the job waited for, as given
    ON_DEP_FAILURE: Final = "on_dep_failure"  # "cancel" | "run"
    HAS_DEPENDENTS: Final = "has_dependents"  # "1": its end releases jobs waiting for it
    # A waiter watches the job (watch.lua): the steps that end it announce it on the queue's
    # ended channel. Unset on most jobs, so they pay no PUBLISH.
    WAITED: Final = "waited"
    PROGRESS: Final = "progress"  # JSON {"value": number, "message": str|null}, the latest reported
    PROGRESS_AT: Final = "progress_at"  # when it was stored (Redis time, s)
    META: Final = "meta"  # JSON object set by the running job (JobContext.set_meta)


FIELDS: Final[tuple[str, ...]] = tuple(v for k, v in vars(Field).items() if k.isupper())


class Status:
    """The values of a job's status field, as plain ``str`` (:class:`JobStatus` is the public enum)."""

    QUEUED: Final = "queued"
    SCHEDULED: Final = "scheduled"
    PREFETCHED: Final = "prefetched"  # claimed by a worker, held in its buffer, not running yet
    STARTED: Final = "started"  # its code is running
    FINISHED: Final = "finished"
    FAILED: Final = "failed"
    CANCELED: Final = "canceled"
    DEFERRED: Final = "deferred"  # waits for its dependencies to end


STATUSES: Final[tuple[str, ...]] = tuple(v for k, v in vars(Status).items() if k.isupper())
LIVE: Final = (Status.PREFETCHED, Status.STARTED)  # a worker holds the job (claimed set + lease)


class Limit:
    """The fields of a queue's limits hash (``conveyor:{q:NAME}:limits``): what limits.lua sets,
    and the token bucket claim.lua keeps beside them."""

    RATE: Final = "rate"  # starts allowed per period (a positive integer)
    PERIOD_MS: Final = "period_ms"
    BURST: Final = "burst"  # the bucket's size: starts allowed at once after a quiet spell
    MAX_CONCURRENCY: Final = "max_concurrency"  # jobs holding a lease (prefetched or started), fleet-wide
    TOKENS: Final = "tokens"  # the bucket: starts allowed now (fractional)
    REFILLED_MS: Final = "refilled_ms"  # Redis time (ms) the bucket was last brought up to date


LIMIT_FIELDS: Final[tuple[str, ...]] = tuple(v for k, v in vars(Limit).items() if k.isupper())
LIMIT_SETTINGS: Final = (Limit.RATE, Limit.PERIOD_MS, Limit.BURST, Limit.MAX_CONCURRENCY)  # what limits.lua sets


class Throttle:
    """Why a claim of a limited queue stopped short (claim.lua's third reply value)."""

    RATE: Final = "rate"  # no token left: the next one comes in the ms claim.lua gives
    CONCURRENCY: Final = "concurrency"  # max_concurrency jobs hold leases: wait for one to end


THROTTLES: Final[tuple[str, ...]] = (Throttle.RATE, Throttle.CONCURRENCY)


class JobStatus(str, enum.Enum):
    """A job's status, as :attr:`conveyor.Job.status` returns it; each member equals its
    :class:`Status` string."""

    QUEUED = Status.QUEUED
    SCHEDULED = Status.SCHEDULED
    PREFETCHED = Status.PREFETCHED
    STARTED = Status.STARTED
    FINISHED = Status.FINISHED
    FAILED = Status.FAILED
    CANCELED = Status.CANCELED
    DEFERRED = Status.DEFERRED

    def __str__(self) -> str:
        return self.value


class Code(enum.IntEnum):
    """What a script returns for one job."""

    OK = 1
    STALE = 0  # another execution owns the job now
    MISSING = -1
    WRONG_STATE = -2
    EXISTS = -3
    DUPLICATE = 2  # this execution's outcome was recorded already (a retried flush)


class EnqueueOptions(NamedTuple):
    """The options enqueue.lua writes per job, named as their job-hash fields; "" is unset
    (the reader's default). A queue keeps one for jobs that set none of their own."""

    ser: str
    timeout: str
    result_ttl: int | str
    failure_ttl: int | str
    retry: str
    max_deliveries: int | str
    unique_lock: str
    unique_ttl: int | str


# The values of one job in enqueue.lua's ARGV, in order ("id" names the key; it is not stored).
ENQUEUE_FIELDS: Final[tuple[str, ...]] = ("id", Field.FUNC, Field.PAYLOAD, *EnqueueOptions._fields)
# The fields a worker needs to run a job: claim.lua returns them after id, execution ID, state,
# suspect (conveyor.worker.flow.parse_claim unpacks them in this order).
RUN_FIELDS: Final[tuple[str, ...]] = (
    Field.FUNC, Field.PAYLOAD, Field.SER, Field.TIMEOUT, Field.DELIVERIES, Field.ENQUEUED_AT, Field.RETRY,
    Field.RETRIES, Field.DUE_AT,
)

# What a script that ends jobs needs to release the jobs waiting for them (_lib's release_dependents).
DEPENDENTS_KEYS: Final = ("ready", "wake", "deferred", "canceled", "outbox")

# Each script's KEYS in order, named as the QueueKeys attribute (claimed: the worker's claimed
# set; lock: a lock key). conveyor.calls passes them in this order.
KEYS: Final[dict[str, tuple[str, ...]]] = {
    "enqueue": ("ready", "wake", "scheduled", "cron", "stats", "deferred", "done", "canceled", "outbox"),
    "claim": ("ready", "recovered", "prefetched", "leases", "claimed", "wake", "failed", "limits"),
    "start": ("prefetched", "leases"),
    "complete": ("leases", "prefetched", "claimed", "finished", "rate", "done", *DEPENDENTS_KEYS),
    # failed: the canceled zset for a stopped job
    "fail": ("leases", "prefetched", "claimed", "failed", "rate", *DEPENDENTS_KEYS),
    "renew": ("prefetched", "leases"),
    "cancel": ("ready", "canceled", "scheduled", "recovered", "prefetched", "deferred", "wake", "outbox"),
    "release": ("ready", "recovered", "prefetched", "leases", "claimed", "wake"),
    "retry": ("leases", "prefetched", "claimed", "ready", "scheduled", "wake"),
    "reap": ("leases", "prefetched", "recovered", "failed", "wake", "stats", "ready", "deferred", "canceled", "outbox"),
    "release_worker": ("leases", "prefetched", "recovered", "failed", "wake", "stats", "claimed", "ready", "deferred",
                       "canceled", "outbox"),
    "disown": ("ready", "recovered", "prefetched", "leases", "claimed", "wake"),
    "promote": ("scheduled", "ready", "wake", "failed"),
    "requeue": ("ready", "failed", "wake"),
    "purge": ("ready", "scheduled", "recovered"),
    "delete": ("finished", "failed", "canceled"),
    "failed_types": ("failed",),
    "limits": ("limits",),
    "lock_renew": ("lock",),
    "lock_release": ("lock",),
    "depend": ("done",),
    "resolve": DEPENDENTS_KEYS,
    "watch": ("finished",),  # names the queue's slot only: it reads and marks job hashes
    "progress": ("leases",),  # likewise
    "repair": ("ready", "recovered", "wake", "prefetched", "leases", "scheduled", "finished", "failed", "canceled"),
}

# Keys a script takes on some calls only, after its KEYS: enqueue.lua's queues set, left out on
# a Cluster (another slot than the queue's keys).
OPTIONAL_KEYS: Final[dict[str, tuple[str, ...]]] = {"enqueue": ("queues",)}


def lua_name(kind: str, name: str) -> str:
    """The Lua local for a field (kind F: F_STATUS), a status (kind S: S_QUEUED), a limits field (kind L:
    L_RATE) or a throttle reason (kind T: T_RATE); a code keeps its name (OK)."""
    return f"{kind}_{name.upper()}"


def lua_constants() -> list[tuple[str, str]]:
    """(Lua local, Lua literal) for every code, status, field, limits field and throttle reason."""
    out = [(code.name, str(int(code))) for code in Code]
    out += [(lua_name("S", s), f"'{s}'") for s in STATUSES]
    out += [(lua_name("F", f), f"'{f}'") for f in FIELDS]
    out += [(lua_name("L", f), f"'{f}'") for f in LIMIT_FIELDS]
    out += [(lua_name("T", t), f"'{t}'") for t in THROTTLES]
    return out


def lua_prelude() -> str:
    """One ``local NAME = value`` line per constant (scripts/__init__.py puts it before _lib.lua)."""
    return "".join(f"local {name} = {value}\n" for name, value in lua_constants())
