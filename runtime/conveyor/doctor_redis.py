"""``conveyor doctor``'s side that talks to Redis: the snapshots it judges, and the fixes.

A check reads a queue in one MULTI/EXEC transaction (its lists, zsets and sets, and its job
hashes), so no script interleaves with the reads and what it judges is one moment of the
queue. Two things can still mislead it, and the jobs concerned are read again, each with
every entry of it in one transaction, before anything is reported: keys created during the
SCAN that found the job hashes and claimed sets, and, for a queue with more jobs than one
transaction should hold (read in chunks), jobs that moved on between the chunks. ``--fix``
hands the findings to repair.lua, which checks each once more, atomically, before it
changes anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

from . import errors, keys, routing, scripts
from .admin import memory_info
from .connection import is_cluster
from .doctor import (
    FIX_ORDER,
    HELD,
    JOB_FIELDS,
    KEY_TYPES,
    LISTS,
    ZSETS,
    Finding,
    JobRecord,
    Snapshot,
    analyze,
    expected_type,
    summarize,
)
from .job import DEFAULT_FAILURE_TTL
from .protocol import KEYS, Code, Field
from .validation import check_queue_name

CHUNK = 1000  # job hashes per transaction: bounds how long one read blocks Redis
FIX_BATCH = 200  # findings per repair.lua call, for the same reason
LPOS_BUDGET = 1_000_000  # list entries LPOS may walk while confirming, before lists are read whole
WHOLE_LIST_CHUNK = 20_000  # job IDs per confirming transaction that reads the lists whole


@dataclass
class QueueCheck:
    queue: str
    findings: list[Finding]
    checked_jobs: int

    def as_dict(self) -> dict[str, Any]:
        return {"findings": summarize(self.findings), "checked_jobs": self.checked_jobs}


def _text(value: Any) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _failed(reply: Any) -> bool:
    return isinstance(reply, Exception)


def _transaction(conn: redis.Redis, build: Callable[[Any], object]) -> list[Any]:
    # A command that hits a wrong-typed key answers with its error in place; the rest stand.
    # (One queue's keys share a slot, so on a Cluster this is one node's MULTI.)
    return routing.transaction(conn, build)


def _redis_now(reply: Any) -> float:
    return int(reply[0]) + int(reply[1]) / 1e6


# -- which queues, which keys ---------------------------------------------------------------


def discover(conn: redis.Redis, queue: str | None, warnings: list[str],
             space: keys.Keyspace = keys.DEFAULT) -> dict[str, set[str]]:
    """Queue name -> names of its keys (after the queue prefix) found by SCAN.

    Every queue of ``conveyor:queues`` is checked, and every queue that has keys: a wiped or
    partly lost Redis may have lost the set but not the queue.
    """
    names: dict[str, set[str]] = {}
    _TAG = space.queue_tag
    if queue is not None:
        check_queue_name(queue)
    pattern = f"{_TAG}{queue}}}:*" if queue is not None else f"{_TAG}*"
    for raw in conn.scan_iter(match=pattern, count=1000):
        key = _text(raw)
        name, sep, rest = key[len(_TAG):].partition("}:")
        if sep and (queue is None or name == queue):
            names.setdefault(name, set()).add(rest)
    kind = _text(conn.type(space.queues))
    known: set[str] = set()
    if kind == "set":
        known = {_text(n) for n in conn.smembers(space.queues)}
    elif kind != "none":
        warnings.append(f"{space.queues} is a {kind}, not a set: queues are found by their keys only")
    if queue is not None:
        if queue not in known and queue not in names:
            raise errors.ConveyorError(f"unknown queue {queue!r}: not in {space.queues} and no keys of it found")
        return {queue: names.get(queue, set())}
    for name in known:
        names.setdefault(name, set())
    valid = {}
    for name in sorted(names):
        try:
            valid[check_queue_name(name)] = names[name]
        except errors.InvalidQueueName:
            warnings.append(f"skipped keys of {_TAG}{name}}}: {name!r} is not a valid queue name")
    return valid


def live_workers(conn: redis.Redis, space: keys.Keyspace = keys.DEFAULT) -> dict[str, float]:
    """Worker ID -> registration expiry (s), for workers whose registration has not expired."""
    now = _redis_now(conn.time(target_nodes=RedisCluster.RANDOM) if is_cluster(conn) else conn.time())
    entries: Any = conn.zrangebyscore(space.workers, f"({now}", "+inf", withscores=True)
    return {_text(w): float(s) for w, s in entries}


def memory_warnings(conn: redis.Redis) -> list[str]:
    try:
        policy = _text(memory_info(conn).get("maxmemory_policy", "noeviction"))
    except redis.ResponseError as exc:
        return [f"cannot read maxmemory-policy (INFO memory: {exc})"]
    if policy == "noeviction":
        return []
    return [f"maxmemory-policy is {policy}, not noeviction: when Redis fills up it evicts keys, "
            "silently losing queued jobs; set maxmemory-policy noeviction"]


# -- snapshots --------------------------------------------------------------------------------


def _read_job(pipe: Any, key: str) -> None:
    pipe.type(key)
    pipe.hmget(key, JOB_FIELDS)


def _job_record(kind: Any, values: Any) -> JobRecord | None:
    kind = _text(kind)
    if kind == "none":
        return None  # gone since the SCAN (ended with TTL 0, expired)
    fields = {} if _failed(values) else {f: _text(v) for f, v in zip(JOB_FIELDS, values) if v is not None}
    return JobRecord(kind, fields)


def read_queue(conn: redis.Redis, queue: str, found: set[str], live: Iterable[str],
               chunk: int = CHUNK, space: keys.Keyspace = keys.DEFAULT) -> tuple[Snapshot, bool]:
    """The first, wide look: every key of the queue, job hashes ``chunk`` per transaction.

    Also says whether it all came from one transaction (then only the SCAN can be stale).
    """
    k = space.queue(queue)
    job_ids = sorted(n[4:] for n in found if n.startswith("job:"))
    workers = sorted(n[8:] for n in found if n.startswith("claimed:"))
    uniques = sorted(n for n in found if n.startswith("unique:"))
    fixed = list(KEY_TYPES)

    def build(pipe: Any) -> None:
        pipe.time()
        for name in fixed:
            key = k.base + ":" + name
            pipe.type(key)
            if name in LISTS:
                pipe.lrange(key, 0, -1)
            elif name in ZSETS:
                pipe.zrange(key, 0, -1, withscores=True)
        for w in workers:
            pipe.type(k.claimed(w))
            pipe.smembers(k.claimed(w))
        for name in uniques:
            pipe.type(k.base + ":" + name)
        for job_id in job_ids[:chunk]:
            _read_job(pipe, k.job(job_id))

    replies = iter(_transaction(conn, build))
    snap = Snapshot(queue, k.base + ":", _redis_now(next(replies)), live_workers=frozenset(live))
    _read_fixed(snap, replies, fixed, workers, uniques)
    for start in range(0, len(job_ids), chunk):
        ids = job_ids[start:start + chunk]
        if start:
            def build_jobs(pipe: Any) -> None:
                for job_id in ids:
                    _read_job(pipe, k.job(job_id))

            replies = iter(_transaction(conn, build_jobs))
        for job_id in ids:
            record = _job_record(next(replies), next(replies))
            if record is not None:
                snap.jobs[job_id] = record
    return snap, len(job_ids) <= chunk


def _read_fixed(snap: Snapshot, replies: Iterator[Any], fixed: list[str], workers: list[str],
                uniques: list[str]) -> None:
    """The queue's own keys, claimed sets and unique locks, as :func:`read_queue` asked for them."""
    for name in fixed:
        snap.key_types[name] = kind = _text(next(replies))
        if name in LISTS:
            value = next(replies)
            if kind == "list" and not _failed(value):
                snap.lists[name] = [_text(v) for v in value]
        elif name in ZSETS:
            value = next(replies)
            if kind == "zset" and not _failed(value):
                snap.zsets[name] = {_text(m): float(s) for m, s in value}
    for w in workers:
        snap.key_types["claimed:" + w] = kind = _text(next(replies))
        members = next(replies)
        if kind == "set" and not _failed(members):
            snap.claimed[w] = {_text(m) for m in members}
    for name in uniques:
        snap.key_types[name] = _text(next(replies))


def read_suspects(conn: redis.Redis, snap: Snapshot, ids: Sequence[str], chunk: int = CHUNK,
                  space: keys.Keyspace = keys.DEFAULT) -> list[Snapshot]:
    """Narrow snapshots of just these jobs: each with every entry of it, in one transaction.

    Claimed sets are small (a worker's jobs in hand), so they are read whole. A list is
    searched by LPOS per ID while that stays cheap; LPOS walks the list, so for many IDs
    and long lists (ghosts left by an evicting Redis) the lists are read whole instead,
    once per transaction of many IDs: no transaction blocks Redis for long.
    """
    k = space.queue(snap.queue)
    workers = set(snap.claimed) | {n[8:] for n in snap.key_types if n.startswith("claimed:")}
    workers |= {w for j in ids if j in snap.jobs and (w := snap.jobs[j].fields.get(Field.WORKER))}
    claimed = sorted(workers)
    longest = sum(len(snap.lists.get(name, ())) for name in LISTS)
    whole = len(ids) * longest > LPOS_BUDGET
    per = min(WHOLE_LIST_CHUNK, max(chunk, -(-len(ids) // 10))) if whole else chunk
    out = []
    for start in range(0, len(ids), per):
        part = ids[start:start + per]

        def build(pipe: Any) -> None:
            pipe.time()
            for w in claimed:
                pipe.smembers(k.claimed(w))
            for name in LISTS if whole else ():
                pipe.lrange(k.base + ":" + name, 0, -1)
            for job_id in part:
                _read_job(pipe, k.job(job_id))
                for name in LISTS if not whole else ():
                    pipe.lpos(k.base + ":" + name, job_id, count=0)
                for name in ZSETS:
                    pipe.zscore(k.base + ":" + name, job_id)

        replies = iter(_transaction(conn, build))
        narrow = Snapshot(snap.queue, snap.base, _redis_now(next(replies)), live_workers=snap.live_workers,
                          claimed_read=frozenset(claimed))
        wanted = set(part)
        for w in claimed:
            members = next(replies)
            if not _failed(members):
                narrow.claimed[w] = {_text(m) for m in members} & wanted
        for name in LISTS if whole else ():
            entries = next(replies)
            if not _failed(entries):
                narrow.lists[name] = [j for j in map(_text, entries) if j in wanted]
        for job_id in part:
            record = _job_record(next(replies), next(replies))
            if record is not None:
                narrow.jobs[job_id] = record
            for name in LISTS if not whole else ():
                positions = next(replies)
                if not _failed(positions) and positions:
                    narrow.lists.setdefault(name, []).extend([job_id] * len(positions))
            for name in ZSETS:
                score = next(replies)
                if not _failed(score) and score is not None:
                    narrow.zsets.setdefault(name, {})[job_id] = float(score)
        out.append(narrow)
    return out


def check_queue(conn: redis.Redis, queue: str, found: set[str], live: Iterable[str], chunk: int = CHUNK,
                space: keys.Keyspace = keys.DEFAULT) -> QueueCheck:
    """Findings for one queue, each as a consistent read shows it."""
    snap, single = read_queue(conn, queue, found, live, chunk, space)
    suspects = analyze(snap)
    # One transaction is consistent, but for what the SCAN before it missed: the job behind
    # a "dangling" entry, or a claimed set, may be newer than the SCAN.
    again = {f.subject for f in suspects if f.kind != "wrong_type_key" and (not single or _scan_dependent(f, snap))}
    final = [f for f in suspects if f.kind == "wrong_type_key" or f.subject not in again]
    if again:
        for narrow in read_suspects(conn, snap, sorted(again), chunk, space):
            final.extend(f for f in analyze(narrow) if f.kind != "wrong_type_key")
    rank = {(f.kind, f.subject, f.place): i for i, f in enumerate(suspects)}
    order = {kind: i for i, kind in enumerate(FIX_ORDER)}
    final.sort(key=lambda f: (order[f.kind], rank.get((f.kind, f.subject, f.place), len(rank))))
    return QueueCheck(queue, final, len(snap.jobs))


def _scan_dependent(f: Finding, snap: Snapshot) -> bool:
    if f.kind == "dangling_entry":
        return True
    return f.kind == "unlisted_job" and bool(f.worker) and "claimed:" + f.worker not in snap.key_types


# -- fixes ------------------------------------------------------------------------------------


def fixable(finding: Finding) -> bool:
    """Everything but a malformed job that a worker holds: its worker (or the reaper) ends it."""
    return not (finding.kind == "malformed_job" and finding.status in HELD)


def repair(conn: redis.Redis, queue: str, findings: Sequence[Finding], live: dict[str, float],
           space: keys.Keyspace = keys.DEFAULT) -> list[Finding]:
    """Apply the findings through repair.lua; returns those it fixed (the rest no longer held)."""
    k = space.queue(queue)
    todo = [f for f in findings if fixable(f)]
    order = {kind: i for i, kind in enumerate(FIX_ORDER)}
    todo.sort(key=lambda f: order[f.kind])
    fixed: list[Finding] = []
    queue_keys = [getattr(k, name) for name in KEYS["repair"]]
    for start in range(0, len(todo), FIX_BATCH):
        batch = todo[start:start + FIX_BATCH]
        args: list[Any] = [k.base + ":", DEFAULT_FAILURE_TTL, k.schedule_channel]
        for f in batch:
            args += _repair_args(f, live)
        [codes] = scripts.execute(conn, lambda pipe: scripts.repair(pipe, queue_keys, args))
        fixed.extend(f for f, code in zip(batch, codes) if code == Code.OK)
    return fixed


def _repair_args(f: Finding, live: dict[str, float]) -> list[Any]:
    if f.kind == "wrong_type_key":
        return [f.kind, f.place, expected_type(f.place) or "", ""]
    if f.kind == "unlisted_job":
        # A held job gets back a lease the reaper takes at once if its worker is gone; a live
        # worker's lease lasts as long as its registration, and its renewals carry it on.
        worker = f.worker
        deadline = int(live[worker] * 1000) if worker in live else 0
        return [f.kind, f.subject, f.status, deadline]
    return [f.kind, f.subject, f.place, ""]


# -- the whole run ------------------------------------------------------------------------------


def run(conn: redis.Redis, queue: str | None = None, *, fix: bool = False, chunk: int = CHUNK,
        space: keys.Keyspace = keys.DEFAULT) -> dict[str, Any]:
    """Check one queue (or all), optionally fix and check again; the report ``--json`` prints."""
    warnings = memory_warnings(conn)
    checks = _check_all(conn, queue, warnings, chunk, space)
    fixed: dict[str, Any] = {}
    if fix:
        live = live_workers(conn, space)
        for name, result in checks.items():
            fixed[name] = summarize(repair(conn, name, result.findings, live, space))
        checks = _check_all(conn, queue, [], chunk, space)
    report: dict[str, Any] = {"queues": {name: c.as_dict() for name, c in checks.items()}, "warnings": warnings}
    if fix:
        report["fixed"] = fixed
    report["ok"] = not any(c.findings for c in checks.values())
    return report


def _check_all(conn: redis.Redis, queue: str | None, warnings: list[str], chunk: int,
               space: keys.Keyspace) -> dict[str, QueueCheck]:
    found = discover(conn, queue, warnings, space)
    live = live_workers(conn, space)
    return {name: check_queue(conn, name, names, live, chunk, space) for name, names in found.items()}
