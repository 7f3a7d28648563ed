"""The whole Redis key schema of Conveyor, in one place.

Every key that belongs to one queue carries the hash tag ``{q:<name>}`` so a
Redis Cluster keeps it on one slot and every Lua script stays cluster-safe.
Job hashes are built from :func:`QueueKeys.job_prefix` inside scripts that do
not know the job IDs up front (claim); they share the same tag.

    conveyor:{q:N}:ready                 list   job IDs waiting to run, head first
    conveyor:{q:N}:recovered             list   queued job IDs recovered from a lost worker ("suspects":
                                                they may have crashed it); a worker holds one at a time
    conveyor:{q:N}:wake                  list   at most one token: "work may be ready"
    conveyor:{q:N}:prefetched            zset   prefetched job ID -> lease deadline (ms): claimed, not running
    conveyor:{q:N}:leases                zset   started job ID -> lease deadline (ms): its code is running
    conveyor:{q:N}:claimed:<worker>      set    job IDs a worker holds a lease on (prefetched or started)
    conveyor:{q:N}:finished              zset   job ID -> expiry (s, +inf = kept)
    conveyor:{q:N}:failed                zset   job ID -> expiry (s, +inf = kept)
    conveyor:{q:N}:canceled              zset   job ID -> expiry (s, +inf = kept)
    conveyor:{q:N}:scheduled             zset   job ID -> due time (ms): delayed jobs and retries
    conveyor:{q:N}:scheduler             string the scheduler leader's token (a lease lock, PX)
    conveyor:{q:N}:cron                  hash   cron schedule name -> last tick enqueued (s)
    conveyor:{q:N}:unique:<key>          string job ID holding a unique key (EX unique_ttl)
    conveyor:{q:N}:limits                hash   flow control set by `conveyor queue set` / a JobQueue (rate,
                                                period_ms, burst, max_concurrency) and the token bucket claim.lua
                                                keeps (tokens, refilled_ms); absent: no limit
    conveyor:{q:N}:stats                 hash   counters (duplicates suppressed, orphans, ...)
    conveyor:{q:N}:job:<id>              hash   the job: call, status, result, error, attempts
    conveyor:{q:N}:deferred              zset   deferred job ID -> when the scheduler checks its
                                                dependencies again (ms; conveyor/deps.py)
    conveyor:{q:N}:deps:<id>             set    a deferred job's dependencies not ended yet ("queue:id")
    conveyor:{q:N}:dependents:<id>       set    jobs waiting for this one ("queue:id"), until it ends
    conveyor:{q:N}:outbox                list   "outcome dependent dependency": releases for jobs of
                                                other queues, written with the ending, drained by the
                                                scheduler leader
    conveyor:{q:N}:done                  zset   job ID -> ended time (s) of the last 10,000 finished
                                                jobs: a finished dependency whose hash expired
    conveyor:{q:N}:corrupt:<name>        any    a key found with the wrong type, renamed aside (kept for
                                                inspection, with the failure TTL): <name> is a job ID or
                                                the name of a queue key such as "ready"

    conveyor:{q:N}:scheduled (channel)   pub/sub: "a job was scheduled", wakes the scheduler
    conveyor:{q:N}:ended (channel)       pub/sub: "e ID" a waited job ended (or was purged), "p ID TIME
                                         JSON" its progress; only for jobs a waiter marked (watch.lua)

Fleet-wide, under their own hash tag so fleet bookkeeping is one slot on a Cluster
(never touched by a Lua script):

    conveyor:{fleet}:queues              set    names of queues ever enqueued to
    conveyor:{fleet}:workers             zset   worker ID -> registration expiry (s)
    conveyor:{fleet}:worker:<id>         hash   a live worker: host, pid, pod, queues, pool, inflight, ... (EX)
    conveyor:commands:<db> (channel)     pub/sub: JSON commands to workers ("stop", "cancel" a job);
                                         one channel per database, since pub/sub ignores DB numbers

Every name starts with the key prefix (``conveyor`` unless set: ``Queue(prefix=...)``,
``--prefix``, CONVEYOR_PREFIX): two apps with different prefixes share a Redis (or a
Cluster, which has no database numbers) without seeing each other's jobs, workers or
commands, and an ACL rule ``~<prefix>:* &<prefix>:*`` covers all of one app's keys.

Execution IDs are made by the worker (a random 64-bit token per process, then a counter),
never by a counter in Redis, so they stay unique across restarts and wipes.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from functools import cached_property

from .errors import ConfigError
from .protocol import Status

DEFAULT_PREFIX = "conveyor"
ENV_PREFIX = "CONVEYOR_PREFIX"
_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix) or prefix.endswith(":"):
        raise ConfigError(f"key prefix {prefix!r} is not allowed: use 1-64 letters, digits and _ . : - "
                          "(no braces, spaces or a trailing colon)")
    return prefix


def resolve_prefix(prefix: str | None = None) -> str:
    """The prefix given, else CONVEYOR_PREFIX, else ``conveyor``; checked."""
    return check_prefix(prefix or os.environ.get(ENV_PREFIX) or DEFAULT_PREFIX)


@dataclass(frozen=True)
class Keyspace:
    """Every key of one key prefix: the fleet-wide ones here, a queue's in :meth:`queue`."""

    prefix: str = DEFAULT_PREFIX

    @classmethod
    def of(cls, prefix: str | None = None) -> Keyspace:
        return cls(resolve_prefix(prefix))

    @cached_property
    def queues(self) -> str:
        return f"{self.prefix}:{{fleet}}:queues"

    @cached_property
    def workers(self) -> str:
        return f"{self.prefix}:{{fleet}}:workers"

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:{{fleet}}:worker:{worker_id}"

    def commands(self, db: int = 0) -> str:
        """The command channel of one database (pub/sub ignores DB numbers)."""
        return f"{self.prefix}:commands:{db}"

    def queue(self, name: str) -> QueueKeys:
        return QueueKeys(name, self.prefix)

    @cached_property
    def queue_tag(self) -> str:
        """What every queue key of this prefix starts with, up to the queue's name."""
        return f"{self.prefix}:{{q:"


DEFAULT = Keyspace()


@dataclass(frozen=True)
class QueueKeys:
    queue: str
    prefix: str = DEFAULT_PREFIX

    @cached_property
    def base(self) -> str:
        return f"{self.prefix}:{{q:{self.queue}}}"

    @cached_property
    def ready(self) -> str:
        return f"{self.base}:ready"

    @cached_property
    def recovered(self) -> str:
        return f"{self.base}:recovered"

    @cached_property
    def prefetched(self) -> str:
        return f"{self.base}:prefetched"

    @cached_property
    def wake(self) -> str:
        return f"{self.base}:wake"

    @cached_property
    def leases(self) -> str:
        return f"{self.base}:leases"

    @cached_property
    def finished(self) -> str:
        return f"{self.base}:finished"

    @cached_property
    def failed(self) -> str:
        return f"{self.base}:failed"

    @cached_property
    def canceled(self) -> str:
        return f"{self.base}:canceled"

    @cached_property
    def scheduled(self) -> str:
        return f"{self.base}:scheduled"

    @cached_property
    def deferred(self) -> str:
        return f"{self.base}:deferred"

    @cached_property
    def done(self) -> str:
        return f"{self.base}:done"

    @cached_property
    def outbox(self) -> str:
        return f"{self.base}:outbox"

    def deps(self, job_id: str) -> str:
        """The dependencies a deferred job still waits for (_lib.lua builds the same name)."""
        return f"{self.base}:deps:{job_id}"

    def dependents(self, job_id: str) -> str:
        return f"{self.base}:dependents:{job_id}"

    @cached_property
    def scheduler_lock(self) -> str:
        return f"{self.base}:scheduler"

    @cached_property
    def cron(self) -> str:
        return f"{self.base}:cron"

    @cached_property
    def stats(self) -> str:
        return f"{self.base}:stats"

    @cached_property
    def limits(self) -> str:
        """Flow control: the limits (protocol.Limit) and claim.lua's token bucket."""
        return f"{self.base}:limits"

    @cached_property
    def cron_info(self) -> str:
        """Each cron schedule's spec and next tick, written by the scheduler leader (the dashboard's)."""
        return f"{self.base}:cron_info"

    @cached_property
    def rate(self) -> str:
        """Jobs ended per 10-second bucket (the dashboard's chart)."""
        return f"{self.base}:rate"

    @cached_property
    def schedule_channel(self) -> str:
        return f"{self.base}:scheduled"

    @cached_property
    def ended_channel(self) -> str:
        """Where waited jobs are announced (conveyor.waiting); _lib.lua's announce derives the same
        name from a job key."""
        return f"{self.base}:ended"

    @cached_property
    def claimed_prefix(self) -> str:
        return f"{self.base}:claimed:"

    def unique(self, unique_key: str) -> str:
        return f"{self.base}:unique:{unique_key}"

    def corrupt(self, name: str) -> str:
        """Where a key found with the wrong type is renamed to (a job ID or a queue key's name)."""
        return f"{self.base}:corrupt:{name}"

    @cached_property
    def corrupt_prefix(self) -> str:
        return f"{self.base}:corrupt:"

    @cached_property
    def job_prefix(self) -> str:
        return f"{self.base}:job:"

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    def claimed(self, worker_id: str) -> str:
        return self.claimed_prefix + worker_id

    def registry(self, name: str) -> str:
        """The zset behind a named registry (prefetched, started, scheduled, finished, failed, canceled)."""
        if name == Status.STARTED:
            return self.leases
        if name in (Status.PREFETCHED, Status.FINISHED, Status.FAILED, Status.CANCELED, Status.SCHEDULED,
                    Status.DEFERRED):
            return f"{self.base}:{name}"
        raise ValueError(
            f"unknown registry {name!r}: expected prefetched, started, scheduled, deferred, finished, failed or canceled")
