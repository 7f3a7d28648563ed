"""What the dashboard reads from Redis. Every page reads by ranges over the lists and sorted
sets a queue already keeps (LRANGE, ZRANGE ... LIMIT) and then one HMGET per job shown:
never a SCAN or KEYS, so a page costs the same with 100 jobs in a queue as with 100,000."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from .. import admin, calls, errors, keys, scripts, wire
from ..job import Job
from ..protocol import Field
from . import chart

# The tabs of a queue page, and where each lists its jobs from.
STATES = ("ready", "scheduled", "deferred", "prefetched", "started", "failed", "finished", "canceled")
PER_PAGE = 50
FILTER_SCAN = 10_000  # failed jobs looked at, newest first, when filtering by exception type
_CHUNK = 2_000  # failed entries one failed_types.lua call looks at (~1 ms of Redis)

_ROW_FIELDS = (Field.FUNC, Field.STATUS, Field.ENQUEUED_AT, Field.STARTED_AT, Field.ENDED_AT, Field.RETRIES,
               Field.DELIVERIES, Field.WORKER, Field.EXC_TYPE, Field.EXC_MESSAGE, Field.DUE_AT)


@dataclass(frozen=True)
class Row:
    """One job of a listing."""

    id: str
    func: str
    status: str
    enqueued_at: float | None
    started_at: float | None
    ended_at: float | None
    attempts: int
    worker: str
    exc_type: str
    exc_message: str
    due_at: float | None  # seconds


@dataclass(frozen=True)
class Listing:
    queue: str
    state: str
    rows: list[Row]
    total: int  # jobs in this state (with a filter: matches among those looked at)
    page: int
    pages: int
    exc_type: str = ""
    scanned: int = 0  # with a filter: how many failed jobs were looked at
    exc_types: list[str] = field(default_factory=list)  # seen on this page, for the filter box


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else ("" if value is None else str(value))


def _num(value: Any) -> float | None:
    try:
        return float(value) if value not in (None, b"") else None
    except ValueError:
        return None


def _rows(conn: redis.Redis, k: keys.QueueKeys, ids: list[str]) -> list[Row]:
    replies = scripts.execute_each(conn, lambda p: [p.hmget(k.job(i), *_ROW_FIELDS) for i in ids])
    rows = []
    for job_id, vals in zip(ids, replies):
        if isinstance(vals, Exception):  # not a hash: doctor says what it is
            vals = [None] * len(_ROW_FIELDS)
        func, status, enq, started, ended, retries, deliveries, worker, exc_type, exc_msg, due = vals
        due_s = _num(due)
        rows.append(Row(job_id, _text(func), _text(status) or "gone", _num(enq), _num(started), _num(ended),
                        int(_num(deliveries) or 0) or int(_num(retries) or 0), _text(worker), _text(exc_type),
                        _text(exc_msg)[:200], due_s / 1000 if due_s else None))
    return rows


def _decoded(ids: list[Any]) -> list[str]:
    return [i.decode(errors="replace") if isinstance(i, bytes) else str(i) for i in ids]


def count(conn: redis.Redis, k: keys.QueueKeys, state: str, now: float) -> int:
    if state == "ready":
        return wire.integer(conn.llen(k.ready)) + wire.integer(conn.llen(k.recovered))
    key = k.registry(state)
    if state in ("failed", "finished", "canceled"):
        return wire.integer(conn.zcount(key, now, "+inf"))
    return wire.integer(conn.zcard(key))


def page_ids(conn: redis.Redis, k: keys.QueueKeys, state: str, start: int, n: int, now: float) -> list[str]:
    """IDs of one page, newest first (scheduled: soonest due first)."""
    if state == "ready":
        # Jobs are pushed at the tail and taken from the head; recovered ones go first.
        recovered = _decoded(conn.lrange(k.recovered, 0, -1)) if start == 0 else []
        ready = _decoded(conn.lrange(k.ready, -(start + n), -(start + 1)))[::-1]
        return (recovered + ready)[:n]
    key = k.registry(state)
    if state in ("failed", "finished", "canceled"):  # scored by expiry: the newest expire last
        return _decoded(conn.zrevrangebyscore(key, "+inf", now, start=start, num=n))
    if state == "scheduled":
        return _decoded(conn.zrange(key, start, start + n - 1))
    return _decoded(conn.zrevrange(key, start, start + n - 1))


def listing(conn: redis.Redis, space: keys.Keyspace, queue: str, state: str, page: int = 1,
            exc_type: str = "") -> Listing:
    if state not in STATES:
        raise errors.InvalidArgument(f"unknown state {state!r} (one of {', '.join(STATES)})")
    k = space.queue(queue)
    now = time.time()
    page = max(1, page)
    if exc_type and state == "failed":
        return _filtered(conn, k, queue, exc_type, page, now)
    total = count(conn, k, state, now)
    ids = page_ids(conn, k, state, (page - 1) * PER_PAGE, PER_PAGE, now)
    rows = _rows(conn, k, ids)
    return Listing(queue, state, rows, total, page, max(1, -(-total // PER_PAGE)),
                   exc_types=sorted({r.exc_type for r in rows if r.exc_type}))


def failed_of_type(conn: redis.Redis, k: keys.QueueKeys, exc_type: str, limit: int = FILTER_SCAN) -> tuple[list[str], int]:
    """Failed jobs whose exception type is ``exc_type``, newest first, among the newest ``limit``
    failed jobs: read in Redis (failed_types.lua), a stretch of _CHUNK entries per call."""
    now = time.time()
    found: list[str] = []
    scanned = 0
    while scanned < limit:
        want = min(_CHUNK, limit - scanned)
        [(looked, *ids)] = scripts.execute(conn, lambda p: calls.failed_types(p, k, now, scanned, want, exc_type))
        found += _decoded(ids)
        scanned += int(looked)
        if looked < want:
            break
    return found, scanned


def _filtered(conn: redis.Redis, k: keys.QueueKeys, queue: str, exc_type: str, page: int, now: float) -> Listing:
    found, scanned = failed_of_type(conn, k, exc_type)
    start = (page - 1) * PER_PAGE
    rows = _rows(conn, k, found[start:start + PER_PAGE])
    return Listing(queue, "failed", rows, len(found), page, max(1, -(-len(found) // PER_PAGE)), exc_type, scanned)


# -- the overview ----------------------------------------------------------------------------------

def overview(conn: redis.Redis, space: keys.Keyspace) -> dict[str, Any]:
    """Every queue's counts, the oldest waiting job's age, cron ticks; live workers; leaders."""
    info = admin.fleet_info(conn, space=space)
    now = time.time()
    names = [q["name"] for q in info["queues"]]

    rate_fields, _ = chart.fields(now)

    def build(pipe: Any) -> None:
        for name in names:
            k = space.queue(name)
            pipe.lindex(k.ready, 0)
            pipe.hgetall(k.cron)
            pipe.hmget(k.rate, rate_fields)
            pipe.hgetall(k.cron_info)

    replies = scripts.execute_each(conn, build)
    heads = replies[0::4]
    oldest = scripts.execute_each(conn, lambda p: [p.hget(space.queue(n).job(_text(h)), Field.ENQUEUED_AT)
                                                  for n, h in zip(names, heads) if isinstance(h, bytes)])
    ages = iter(oldest)
    total = [0.0] * (2 * chart.POINTS)
    for q, head, cron, rates, specs in zip(info["queues"], heads, replies[1::4], replies[2::4], replies[3::4]):
        enq = _num(next(ages)) if isinstance(head, bytes) else None
        q["oldest_age"] = max(0.0, now - enq) if enq else None
        q["cron"] = _schedules(cron, specs)
        values = [None] * len(rate_fields) if isinstance(rates, Exception) else rates
        q["rate"] = chart.series(values)
        total = [t + v for t, v in zip(total, q["rate"].finished + q["rate"].failed)]
    info["rate"] = chart.Series(total[:chart.POINTS], total[chart.POINTS:])
    info["now"] = now
    return info


def _schedules(cron: Any, specs: Any) -> list[dict[str, Any]]:
    """The cron hash (schedule name -> last tick enqueued) with what the scheduler leader wrote
    of each (its spec, function and next tick)."""
    last = {} if isinstance(cron, Exception) else {_text(n): _num(t) for n, t in cron.items()}
    info: dict[str, dict[str, Any]] = {}
    for name, raw in ({} if isinstance(specs, Exception) else specs).items():
        try:
            info[_text(name)] = dict(json.loads(raw))
        except (ValueError, TypeError):
            continue  # not ours to judge: the schedule still shows with its last tick
    return [{"name": name, "last": last.get(name), **{k: info.get(name, {}).get(k) for k in ("schedule", "func", "next")}}
            for name in sorted(set(last) | set(info))]


# -- one job ---------------------------------------------------------------------------------------

def job_view(conn: redis.Redis, space: keys.Keyspace, queue: str, job_id: str, hide_args: bool) -> dict[str, Any]:
    """admin.job_details, with the arguments and result as pretty JSON text (or hidden), and a
    timeline of every attempt; a pickled payload is never decoded here."""
    job = Job.fetch(job_id, conn, queue=queue, prefix=space.prefix)
    d = admin.job_details(job)
    if hide_args:
        d["args_text"] = "(hidden: this queue's arguments are not shown)"
        d["result_text"] = "(hidden)" if d["result"] is not None else None
    else:
        d["args_text"] = pretty({"args": d["args"], "kwargs": d["kwargs"]})
        d["result_text"] = pretty(d["result"]) if d["status"] == "finished" else None
    d["timeline"] = timeline(d)
    return d


def pretty(value: Any) -> str:
    return json.dumps(value, indent=2, default=repr, ensure_ascii=False)


def timeline(d: dict[str, Any]) -> list[dict[str, Any]]:
    """Enqueue, then every attempt from the job's history (the ended one of an ended job is in
    it already), then the attempt running now, if any."""
    out: list[dict[str, Any]] = [{"what": "enqueued", "at": d["enqueued_at"]}]
    if d["due_at"] and d["status"] == "scheduled":
        out.append({"what": "due", "at": d["due_at"]})
    current_in_history = False
    for n, a in enumerate(d["attempts"], 1):
        current = bool(a.get("execution_id")) and a.get("execution_id") == d["execution_id"]
        current_in_history |= current
        out.append({"what": f"attempt {n}", "at": a.get("started_at"), "ended": a.get("ended_at"),
                    "execution_id": a.get("execution_id"), "worker": a.get("worker") or (d["worker"] if current else None),
                    "error": f"{a['exc_type']}: {a['exc_message']}" if a.get("exc_type") else None})
    if d["started_at"] and not current_in_history:
        err = d["error"]
        out.append({"what": f"attempt {len(d['attempts']) + 1} ({d['status']})", "at": d["started_at"],
                    "ended": d["ended_at"], "execution_id": d["execution_id"], "worker": d["worker"],
                    "error": f"{err['type']}: {err['message']}" if err else None})
    if d["ended_at"]:
        out.append({"what": d["status"], "at": d["ended_at"]})
    return out
