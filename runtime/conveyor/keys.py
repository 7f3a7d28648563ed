"""The whole Redis key schema of Conveyor, in one place.

Every key that belongs to one queue carries the hash tag ``{q:<name>}`` so a
Redis Cluster keeps it on one slot and every Lua script stays cluster-safe.
Job hashes are built from :func:`QueueKeys.job_prefix` inside scripts that do
not know the job IDs up front (claim); they share the same tag.

    conveyor:queues                      set    names of queues ever enqueued to
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
    conveyor:{q:N}:stats                 hash   counters (duplicates suppressed, orphans, ...)
    conveyor:{q:N}:job:<id>              hash   the job: call, status, result, error, attempts
    conveyor:{q:N}:corrupt:<name>        any    a key found with the wrong type, renamed aside (kept for
                                                inspection, with the failure TTL): <name> is a job ID or
                                                the name of a queue key such as "ready"

    conveyor:{q:N}:scheduled (channel)   pub/sub: "a job was scheduled", wakes the scheduler

Fleet-wide (no queue tag; never touched by a Lua script):

    conveyor:workers                     zset   worker ID -> registration expiry (s)
    conveyor:worker:<id>                 hash   a live worker: host, pid, queues, pool, ... (EX)
    conveyor:commands:<db> (channel)     pub/sub: JSON commands to workers ("stop", "cancel" a job);
                                         one channel per database, since pub/sub ignores DB numbers

Execution IDs are made by the worker (a random 64-bit token per process, then a counter),
never by a counter in Redis, so they stay unique across restarts and wipes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

PREFIX = "conveyor"
QUEUES = f"{PREFIX}:queues"
WORKERS = f"{PREFIX}:workers"
COMMANDS = f"{PREFIX}:commands"  # the old, unscoped channel; goes with the worker rewrite


def commands(db: int = 0) -> str:
    """The command channel of one database (pub/sub ignores DB numbers)."""
    return f"{PREFIX}:commands:{db}"


def worker(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"


@dataclass(frozen=True)
class QueueKeys:
    queue: str

    @cached_property
    def base(self) -> str:
        return f"{PREFIX}:{{q:{self.queue}}}"

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
    def scheduler_lock(self) -> str:
        return f"{self.base}:scheduler"

    @cached_property
    def cron(self) -> str:
        return f"{self.base}:cron"

    @cached_property
    def stats(self) -> str:
        return f"{self.base}:stats"

    @cached_property
    def schedule_channel(self) -> str:
        return f"{self.base}:scheduled"

    @cached_property
    def claimed_prefix(self) -> str:
        return f"{self.base}:claimed:"

    def unique(self, unique_key: str) -> str:
        return f"{self.base}:unique:{unique_key}"

    @cached_property
    def seq(self) -> str:  # goes with the worker rewrite: execution IDs come from the worker
        return f"{self.base}:seq"

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
        if name == "started":
            return self.leases
        if name in ("prefetched", "finished", "failed", "canceled", "scheduled"):
            return f"{self.base}:{name}"
        raise ValueError(
            f"unknown registry {name!r}: expected prefetched, started, scheduled, finished, failed or canceled")
