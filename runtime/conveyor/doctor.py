"""``conveyor doctor``'s judgement: which inconsistencies a snapshot of one queue holds.

Pure functions only. :mod:`conveyor.doctor_redis` reads the snapshot (in MULTI/EXEC
transactions, so no script interleaves with the reads) and applies the fixes through
``repair.lua``, which re-checks every finding before it changes anything. The rules
follow the protocol of issue 9: where each status is listed, which field values make a
job malformed, which type each queue key has.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .protocol import LIVE, Status
from .protocol import Field as F

# In the order --fix applies them: a key must be usable before jobs are listed in it, and
# a job must be listed where its status says before a wrong entry of it is removed.
FIX_ORDER = (
    "wrong_type_key", "expired_entry", "dangling_entry", "malformed_job", "unlisted_job",
    "duplicate_entry", "misplaced_entry", "stale_claimed_set",
)

KEY_TYPES: Mapping[str, str] = {
    "ready": "list", "recovered": "list", "wake": "list",
    "prefetched": "zset", "leases": "zset", "scheduled": "zset",
    "finished": "zset", "failed": "zset", "canceled": "zset",
    "stats": "hash", "rate": "hash", "cron": "hash", "cron_info": "hash", "limits": "hash", "scheduler": "string",
    "deferred": "zset", "done": "zset", "outbox": "list",
}
LISTS = ("ready", "recovered")
ZSETS = ("prefetched", "leases", "scheduled", "finished", "failed", "canceled")
REGISTRIES = ("finished", "failed", "canceled")  # scored by expiry in seconds
HELD = LIVE  # a worker holds the job (claimed set + lease)

# Where a job of each status is listed; a queued job in either list. (The zsets of prefetched,
# scheduled and ended jobs are named after that status.)
HOME: Mapping[str, tuple[str, ...]] = {
    Status.QUEUED: ("ready", "recovered"), Status.SCHEDULED: ("scheduled",), Status.PREFETCHED: ("prefetched",),
    Status.STARTED: ("leases",), Status.FINISHED: ("finished",), Status.FAILED: ("failed",),
    Status.CANCELED: ("canceled",),
    # A deferred job is checked by the scheduler (conveyor/deps.py), which also lists it again.
    Status.DEFERRED: (),
}

# (field, kind, lower bound, bound inclusive, empty value allowed): the design's table.
_RULES: tuple[tuple[str, str, float | None, bool, bool], ...] = (
    (F.TIMEOUT, "number", 0, False, True),
    (F.RESULT_TTL, "integer", -1, True, True),
    (F.FAILURE_TTL, "integer", -1, True, True),
    (F.MAX_DELIVERIES, "integer", 1, True, True),
    (F.UNIQUE_TTL, "integer", 1, True, True),
    (F.DELIVERIES, "integer", 0, True, False),
    (F.RETRIES, "integer", 0, True, False),
    (F.ORPHANED, "integer", 0, True, False),
    (F.DUE_AT, "number", None, True, True),
    (F.ENQUEUED_AT, "number", None, True, True),
)
JOB_FIELDS = (F.STATUS, F.WORKER, F.EXC_TYPE, F.ATTEMPTS, *(r[0] for r in _RULES))
MALFORMED = "MalformedJob"
EXAMPLES = 5  # per kind in --json
HUMAN_EXAMPLES = 3  # per line of the human report

_INTEGER = re.compile(r"[+-]?[0-9]+", re.ASCII)


@dataclass(frozen=True)
class JobRecord:
    key_type: str  # "hash" for a sound job key
    fields: Mapping[str, str]  # the JOB_FIELDS present


@dataclass
class Snapshot:
    """What doctor knows of one queue. Absent entries mean "not there" (or not read)."""

    queue: str
    base: str  # the queue's key prefix, "conveyor:{q:NAME}:"
    now: float  # Redis time, seconds
    key_types: dict[str, str] = field(default_factory=dict)  # "ready", "claimed:w", "unique:k" -> TYPE
    lists: dict[str, list[str]] = field(default_factory=dict)  # ready/recovered, with repeats
    zsets: dict[str, dict[str, float]] = field(default_factory=dict)
    claimed: dict[str, set[str]] = field(default_factory=dict)  # worker ID -> job IDs
    jobs: dict[str, JobRecord] = field(default_factory=dict)  # job keys that exist
    live_workers: frozenset[str] = frozenset()
    # Workers whose claimed set was read; None: all of them (the sets a SCAN found).
    claimed_read: frozenset[str] | None = None


@dataclass(frozen=True)
class Finding:
    kind: str
    subject: str  # a job ID, or the full name of a key (wrong_type_key)
    place: str = ""  # the list/zset/set holding the entry, or the key's name after the queue prefix
    status: str = ""  # the job's status as seen
    worker: str = ""  # the worker a prefetched or started job names
    detail: str = ""  # for people: the bad field, the wrong type, where the job is missing from

    def describe(self) -> str:
        what = self.detail or (f"in {self.place}" if self.place else "")
        return f"{self.subject} ({what})" if what else self.subject


def expected_type(name: str) -> str | None:
    """The type a queue key must have, by its name after the queue prefix (None: not checked)."""
    if name.startswith("claimed:"):
        return "set"
    if name.startswith("unique:"):
        return "string"
    if name.startswith(("deps:", "dependents:")):
        return "set"
    return KEY_TYPES.get(name)


def _number(value: str) -> float | None:
    # The same values Lua's tonumber() reads in repair.lua, minus whitespace, hex and NaN.
    if not value.isascii() or any(c.isspace() or c in "_xX" for c in value):
        return None
    try:
        n = float(value)
    except ValueError:
        return None
    return None if math.isnan(n) else n


def field_problem(fields: Mapping[str, str]) -> str | None:
    """Why a job hash is malformed (naming the first bad field), or None when it is sound."""
    status = fields.get(F.STATUS)
    if status is None:
        return "status is missing"
    if status not in HOME:
        return f"status {status[:60]!r} is unknown"
    attempts = fields.get(F.ATTEMPTS)
    if attempts is not None:
        try:
            value = json.loads(attempts, parse_constant=_reject)
        except (ValueError, RecursionError):
            return "attempts is not valid JSON"
        if not isinstance(value, list):
            return "attempts is not a JSON array"
    for name, kind, low, inclusive, empty_ok in _RULES:
        raw = fields.get(name)
        if raw is None or (empty_ok and raw == ""):
            continue
        n = float(raw) if kind == "integer" and _INTEGER.fullmatch(raw) else _number(raw) if kind == "number" else None
        bad = n is None or (low is not None and (n < low if inclusive else n <= low))
        if bad:
            bound = "" if low is None else f" {'>=' if inclusive else '>'} {low:g}"
            return f"{name} is not {'an integer' if kind == 'integer' else 'a number'}{bound}"
    return None


def _reject(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def quarantined(fields: Mapping[str, str]) -> bool:
    """A malformed job doctor (or a script) already failed keeps its bad field, on purpose."""
    return fields.get(F.STATUS) == Status.FAILED and fields.get(F.EXC_TYPE) == MALFORMED


def analyze(snap: Snapshot) -> list[Finding]:
    """Every inconsistency in the snapshot, grouped by kind in FIX_ORDER."""
    found: list[Finding] = []
    for name, have in sorted(snap.key_types.items()):
        want = expected_type(name)
        if want and have not in (want, "none"):
            found.append(Finding("wrong_type_key", snap.base + name, name, detail=f"a {have}, not a {want}"))

    places = _places(snap)
    for registry in REGISTRIES:
        for job_id, score in sorted(snap.zsets.get(registry, {}).items()):
            if score <= snap.now:
                found.append(Finding("expired_entry", job_id, registry))
    for job_id, counts in sorted(places.items()):
        if job_id not in snap.jobs:
            found.extend(Finding("dangling_entry", job_id, place) for place in sorted(counts))

    def fifo(item: tuple[str, JobRecord]) -> tuple[float, str]:
        # Re-listed queued jobs go back in enqueue order.
        return _number(item[1].fields.get(F.ENQUEUED_AT) or "") or 0.0, item[0]

    for job_id, record in sorted(snap.jobs.items(), key=fifo):
        found.extend(_judge(job_id, record, places.get(job_id, Counter()), snap))
    order = {kind: i for i, kind in enumerate(FIX_ORDER)}
    return sorted(found, key=lambda f: order[f.kind])  # stable: keeps FIFO within a kind


def _places(snap: Snapshot) -> dict[str, Counter[str]]:
    """job ID -> {place: times listed}; ended registries count only entries still kept."""
    places: dict[str, Counter[str]] = {}
    for name in LISTS:
        for job_id in snap.lists.get(name, []):
            places.setdefault(job_id, Counter())[name] += 1
    for name in ZSETS:
        for job_id, score in snap.zsets.get(name, {}).items():
            if name not in REGISTRIES or score > snap.now:
                places.setdefault(job_id, Counter())[name] += 1
    for worker, ids in snap.claimed.items():
        for job_id in ids:
            places.setdefault(job_id, Counter())["claimed:" + worker] += 1
    return places


def _judge(job_id: str, record: JobRecord, counts: Counter[str], snap: Snapshot) -> list[Finding]:
    if record.key_type != "hash":
        return [Finding("malformed_job", job_id, detail=f"the job key holds a {record.key_type}, not a hash")]
    fields = record.fields
    status = fields.get(F.STATUS, "")
    problem = field_problem(fields)
    if problem and not quarantined(fields):
        # One kind per job: failing it also takes it off every list it sits on.
        return [Finding("malformed_job", job_id, status=status, detail=problem)]
    worker = fields.get(F.WORKER) or ""
    home = set(HOME[status])
    required = home - {"recovered"}
    if status in HELD and worker:
        home.add("claimed:" + worker)
        if snap.claimed_read is None or worker in snap.claimed_read:
            required.add("claimed:" + worker)

    out: list[Finding] = []
    missing = [p for p in sorted(required) if not counts[p]]
    if status == Status.QUEUED and counts["recovered"]:
        missing = []
    if missing:
        detail = f"{status}, not in {' or '.join(missing)}"
        out.append(Finding("unlisted_job", job_id, status=status, worker=worker, detail=detail))
    if status == Status.QUEUED and counts["ready"] + counts["recovered"] > 1:
        n = counts["ready"] + counts["recovered"]
        out.append(Finding("duplicate_entry", job_id, status=status, detail=f"listed {n} times in ready/recovered"))
    for place in sorted(counts):
        if place in home:
            continue
        owner = place.removeprefix("claimed:")
        kind = "stale_claimed_set" if place != owner and owner not in snap.live_workers else "misplaced_entry"
        out.append(Finding(kind, job_id, place, status, f"{status}, in {place}"))
    return out


def summarize(findings: Iterable[Finding]) -> dict[str, dict[str, Any]]:
    """kind -> {"count", "examples" (IDs or keys), "details"}, for --json and the human report."""
    out: dict[str, dict[str, Any]] = {}
    for f in findings:
        entry = out.setdefault(f.kind, {"count": 0, "examples": [], "details": []})
        entry["count"] += 1
        if len(entry["details"]) < EXAMPLES:
            entry["details"].append(f.describe())
            if f.subject not in entry["examples"]:
                entry["examples"].append(f.subject)
    return {kind: out[kind] for kind in FIX_ORDER if kind in out}


def format_report(report: Mapping[str, Any]) -> list[str]:
    """The human report: per queue one line per finding kind, warnings, then a summary line."""
    lines: list[str] = []
    for queue, fixed in report.get("fixed", {}).items():
        if fixed:
            done = ", ".join(f"{v['count']} {kind}" for kind, v in fixed.items())
            lines.append(f"{queue}: fixed {done}")
    problems = 0
    bad_queues = 0
    jobs = 0
    for queue, result in report["queues"].items():
        jobs += result["checked_jobs"]
        findings = result["findings"]
        checked = _jobs(result["checked_jobs"])
        if not findings:
            lines.append(f"{queue}: {checked} checked, no problems")
            continue
        bad_queues += 1
        lines.append(f"{queue}: {checked} checked")
        width = max(len(kind) for kind in findings)
        for kind, entry in findings.items():
            problems += entry["count"]
            shown = ", ".join(entry["details"][:HUMAN_EXAMPLES])
            more = entry["count"] - min(len(entry["details"]), HUMAN_EXAMPLES)
            shown += f", ... (+{more})" if more > 0 else ""
            lines.append(f"  {kind.ljust(width)}  {entry['count']:>5}  {shown}")
    lines.extend(f"warning: {w}" for w in report["warnings"])
    n = len(report["queues"])
    scope = f"{n} queue{'s' if n != 1 else ''} ({_jobs(jobs)} checked)"
    if problems:
        hint = "; these remain after --fix" if "fixed" in report else "; run with --fix to repair"
        lines.append(f"doctor: {problems} problem{'s' if problems != 1 else ''} in {bad_queues} of {scope}{hint}")
    else:
        lines.append(f"doctor: no problems in {scope}")
    return lines


def _jobs(n: int) -> str:
    return f"{n} job{'s' if n != 1 else ''}"
