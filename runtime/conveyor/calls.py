"""One function per transition script: the KEYS in the order the script's header names
them (declared in :data:`conveyor.protocol.KEYS`; tests/test_protocol.py checks each function
against it), and its ARGV, so no caller orders keys by hand.

Each queues one EVALSHA on ``pipe`` (a pipeline, sync or async) for one queue's keys.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from . import scripts
from .keys import QueueKeys
from .protocol import RUN_FIELDS as RUN_FIELDS  # re-exported: the claim's wire format
from .protocol import Status

REAP_BATCH = 100


def dependents_keys(k: QueueKeys) -> list[str]:
    """protocol.DEPENDENTS_KEYS: what a script that ends jobs needs to release their dependents."""
    return [k.ready, k.wake, k.deferred, k.canceled, k.outbox]


def claim(pipe: Any, k: QueueKeys, worker: str, n: int, start_now: int, lease_ms: int, exec_prefix: str,
          first_seq: int, take_suspect: bool, failure_ttl: int) -> Any:
    return scripts.claim(pipe, [k.ready, k.recovered, k.prefetched, k.leases, k.claimed(worker), k.wake, k.failed,
                                k.limits],
                         [k.job_prefix, n, start_now, lease_ms, worker, exec_prefix, first_seq,
                          "1" if take_suspect else "0", failure_ttl, k.corrupt_prefix, *RUN_FIELDS])


def start(pipe: Any, k: QueueKeys, lease_ms: int, jobs: Iterable[tuple[str, str]]) -> Any:
    """jobs: (id, execution ID) of prefetched jobs whose code starts now."""
    args: list[Any] = [k.job_prefix, lease_ms]
    for pair in jobs:
        args += pair
    return scripts.start(pipe, [k.prefetched, k.leases], args)


def complete(pipe: Any, k: QueueKeys, worker: str, result_ttl: int, jobs: Iterable[tuple[str, str, bytes]]) -> Any:
    """jobs: (id, execution ID, serialized result)."""
    args: list[Any] = [k.job_prefix, worker, result_ttl]
    for triple in jobs:
        args += triple
    return scripts.complete(pipe, [k.leases, k.prefetched, k.claimed(worker), k.finished, k.rate, k.done,
                                   *dependents_keys(k)], args)


def fail(pipe: Any, k: QueueKeys, worker: str, final: str, failure_ttl: int,
         jobs: Iterable[tuple[str, str, str, str, str]]) -> Any:
    """final: "failed", or "canceled" for a stopped job; jobs: (id, execution ID, type, message, traceback)."""
    args: list[Any] = [k.job_prefix, worker, final, failure_ttl]
    for row in jobs:
        args += row
    registry = k.failed if final == Status.FAILED else k.canceled
    return scripts.fail(pipe, [k.leases, k.prefetched, k.claimed(worker), registry, k.rate, *dependents_keys(k)], args)


def retry(pipe: Any, k: QueueKeys, worker: str, jobs: Iterable[tuple[str, str, str, str, str, int]]) -> Any:
    """jobs: (id, execution ID, type, message, traceback, delay in ms)."""
    args: list[Any] = [k.job_prefix, worker, k.schedule_channel]
    for row in jobs:
        args += row
    return scripts.retry(pipe, [k.leases, k.prefetched, k.claimed(worker), k.ready, k.scheduled, k.wake], args)


def release(pipe: Any, k: QueueKeys, worker: str, jobs: Iterable[tuple[str, str]]) -> Any:
    args: list[Any] = [k.job_prefix, worker]
    for pair in jobs:
        args += pair
    return scripts.release(pipe, [k.ready, k.recovered, k.prefetched, k.leases, k.claimed(worker), k.wake], args)


def disown(pipe: Any, k: QueueKeys, worker: str, exec_prefix: str, first_seq: int, n: int) -> Any:
    """The jobs a claim (sent with ``first_seq`` and ``n``) leased, back now: its reply was lost."""
    return scripts.disown(pipe, [k.ready, k.recovered, k.prefetched, k.leases, k.claimed(worker), k.wake],
                          [k.job_prefix, worker, exec_prefix, first_seq, n])


def renew(pipe: Any, k: QueueKeys, lease_ms: int, jobs: Iterable[tuple[str, str]]) -> Any:
    args: list[Any] = [k.job_prefix, lease_ms]
    for pair in jobs:
        args += pair
    return scripts.renew(pipe, [k.prefetched, k.leases], args)


def reap(pipe: Any, k: QueueKeys, max_deliveries: int, failure_ttl: int, limit: int = REAP_BATCH) -> Any:
    return scripts.reap(pipe, [k.leases, k.prefetched, k.recovered, k.failed, k.wake, k.stats, k.ready, k.deferred,
                               k.canceled, k.outbox],
                        [k.job_prefix, k.claimed_prefix, limit, max_deliveries, failure_ttl, k.corrupt_prefix])


def release_worker(pipe: Any, k: QueueKeys, worker: str, reason: str, max_deliveries: int, failure_ttl: int) -> Any:
    """Every job ``worker`` holds on this queue, back to it now (the worker is known lost)."""
    return scripts.release_worker(pipe, [k.leases, k.prefetched, k.recovered, k.failed, k.wake, k.stats,
                                         k.claimed(worker), k.ready, k.deferred, k.canceled, k.outbox],
                                  [k.job_prefix, worker, max_deliveries, failure_ttl, k.corrupt_prefix, reason])


def cancel(pipe: Any, k: QueueKeys, job_id: str, failure_ttl: int, execution_id: str = "") -> Any:
    """A client cancels a queued or scheduled job; the worker holding a prefetched one passes its execution ID."""
    return scripts.cancel(pipe, [k.ready, k.canceled, k.scheduled, k.recovered, k.prefetched, k.deferred, k.wake,
                                 k.outbox],
                          [k.job_prefix, job_id, failure_ttl, execution_id, k.claimed_prefix])


def promote(pipe: Any, k: QueueKeys, limit: int, failure_ttl: int) -> Any:
    return scripts.promote(pipe, [k.scheduled, k.ready, k.wake, k.failed],
                           [k.job_prefix, limit, failure_ttl, k.corrupt_prefix])


def requeue(pipe: Any, k: QueueKeys, job_ids: Iterable[str]) -> Any:
    return scripts.requeue(pipe, [k.ready, k.failed, k.wake], [k.job_prefix, *job_ids])


def delete(pipe: Any, k: QueueKeys, job_ids: Iterable[str]) -> Any:
    return scripts.delete(pipe, [k.finished, k.failed, k.canceled], [k.job_prefix, *job_ids])


def failed_types(pipe: Any, k: QueueKeys, now: float, offset: int, count: int, exc_type: str) -> Any:
    return scripts.failed_types(pipe, [k.failed], [k.job_prefix, repr(now), offset, count, exc_type])


def purge(pipe: Any, k: QueueKeys, include_scheduled: bool) -> Any:
    return scripts.purge(pipe, [k.ready, k.scheduled, k.recovered], [k.job_prefix, "1" if include_scheduled else "0"])


def limits(pipe: Any, k: QueueKeys, changes: Iterable[tuple[str, str]]) -> Any:
    """changes: (limits field, value) to set; an empty value clears the field."""
    return scripts.limits(pipe, [k.limits], [v for pair in changes for v in pair])


def lock_renew(pipe: Any, lock: str, token: str, ttl_ms: int) -> Any:
    return scripts.lock_renew(pipe, [lock], [token, ttl_ms])


def lock_release(pipe: Any, lock: str, token: str) -> Any:
    return scripts.lock_release(pipe, [lock], [token])


def depend(pipe: Any, k: QueueKeys, pairs: Iterable[tuple[str, str]]) -> Any:
    """pairs: (dependency ID on this queue, dependent ref "queue:id")."""
    args: list[Any] = [k.job_prefix]
    for pair in pairs:
        args += pair
    return scripts.depend(pipe, [k.done], args)


def resolve(pipe: Any, k: QueueKeys, failure_ttl: int, recheck_ms: int, confirm: Iterable[str],
            outcomes: Iterable[tuple[str, str, str]]) -> Any:
    """outcomes: (deferred job ID on this queue, dependency ref, "1" finished or "0" not)."""
    ids = list(confirm)
    args: list[Any] = [k.job_prefix, failure_ttl, recheck_ms, len(ids), *ids]
    for triple in outcomes:
        args += triple
    return scripts.resolve(pipe, dependents_keys(k), args)


def watch(pipe: Any, k: QueueKeys, job_ids: Iterable[str]) -> Any:
    return scripts.watch(pipe, [k.finished], [k.job_prefix, *job_ids])


def progress(pipe: Any, k: QueueKeys, jobs: Iterable[tuple[str, str, str, str]]) -> Any:
    """jobs: (id, execution ID, progress JSON, meta JSON), "" leaving a value as it is."""
    args: list[Any] = [k.job_prefix]
    for row in jobs:
        args += row
    return scripts.progress(pipe, [k.leases], args)
