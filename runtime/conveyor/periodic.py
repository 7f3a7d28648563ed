"""Periodic jobs: cron schedules that the scheduler leader enqueues, once per tick.

Register schedules in code and point workers at the module::

    # myapp/schedules.py
    import conveyor
    conveyor.cron("*/5 * * * *", "myapp.tasks:cleanup", queue="default")

    $ conveyor worker -q default --with-scheduler --cron-module myapp.schedules

or list them in a TOML file (``--cron-file schedules.toml``)::

    [[cron]]
    schedule = "0 3 * * *"
    func = "myapp.tasks:nightly_report"
    queue = "reports"        # default "default"
    name = "nightly-report"  # default: derived from func and schedule
    args = [7]
    kwargs = { fmt = "pdf" }

Each tick is enqueued exactly once across the fleet: its job ID is
``cron-<name>-<tick>`` and the queue remembers the last tick enqueued per schedule.
Missed ticks: a schedule seen for the first time starts with the next tick; after
a time with no scheduler running, the most recent missed tick is enqueued once,
late, and older missed ticks are skipped.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib
import logging
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConveyorError, InvalidArgument
from .validation import check_queue_name, check_timeout, function_path

log = logging.getLogger("conveyor.scheduler")


def _croniter() -> Any:  # croniter ships no types
    # Imported when a schedule is first used: croniter (with dateutil) adds ~5 MiB to every
    # worker process, and most run no cron schedule.
    from croniter import croniter

    return croniter

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}")


@dataclass(frozen=True)
class CronJob:
    schedule: str
    func: str
    queue: str = "default"
    name: str = ""
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None

    def __post_init__(self) -> None:
        macro = self.schedule.startswith("@")
        if not isinstance(self.schedule, str) or not (macro or len(self.schedule.split()) == 5) \
                or not _croniter().is_valid(self.schedule):
            raise InvalidArgument(f"invalid cron schedule {self.schedule!r} "
                                  "(expected 5 fields, e.g. '*/5 * * * *', or a macro such as '@hourly')")
        check_queue_name(self.queue)
        if self.timeout is not None:
            check_timeout(self.timeout)
        if not isinstance(self.args, tuple) or not isinstance(self.kwargs, dict):
            raise InvalidArgument("cron args must be a list and kwargs a table (dict)")
        if not self.name:
            digest = hashlib.sha1(f"{self.func} {self.schedule}".encode()).hexdigest()[:8]
            object.__setattr__(self, "name", f"{self.func.replace(':', '.')}-{digest}")
        if not _NAME_RE.fullmatch(self.name):
            raise InvalidArgument(f"invalid cron name {self.name!r}: letters, digits, '.', '_', '-' (at most 81)")

    def last_tick(self, now: float) -> int:
        """The most recent tick at or before ``now`` (epoch seconds)."""
        # Ticks fall on whole seconds, so "before floor(now) + 0.5" means "at or before now";
        # croniter's get_prev() alone is strictly before.
        base = dt.datetime.fromtimestamp(math.floor(now) + 0.5, dt.UTC)
        return int(_croniter()(self.schedule, base).get_prev(float))

    def next_tick(self, now: float) -> float:
        base = dt.datetime.fromtimestamp(now, dt.UTC)
        tick: float = _croniter()(self.schedule, base).get_next(float)
        return tick

    def job_id(self, tick: int) -> str:
        return f"cron-{self.name}-{tick}"


_registry: list[CronJob] = []


def cron(
    schedule: str,
    func: Callable[..., Any] | str,
    *,
    queue: str = "default",
    name: str | None = None,
    args: tuple[Any, ...] = (),
    kwargs: dict[str, Any] | None = None,
    timeout: float | None = None,
) -> CronJob:
    """Register a periodic job with the workers of this process (see the module doc)."""
    entry = CronJob(schedule, function_path(func), queue, name or "", tuple(args), dict(kwargs or {}), timeout)
    if any(e.name == entry.name and e.queue == entry.queue for e in _registry):
        raise InvalidArgument(f"cron schedule {entry.name!r} is registered twice for queue {entry.queue!r}")
    _registry.append(entry)
    return entry


def registered() -> list[CronJob]:
    return list(_registry)


def load_module(name: str) -> None:
    try:
        importlib.import_module(name)
    except Exception as exc:
        raise ConveyorError(f"cannot import cron module {name!r}: {type(exc).__name__}: {exc}") from None


def load_file(path: str | Path) -> list[CronJob]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConveyorError(f"cannot read cron file {path}: {exc}") from None
    entries = data.get("cron", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ConveyorError(f"cron file {path}: 'cron' must be an array of tables ([[cron]])")
    out: list[CronJob] = []
    for n, e in enumerate(entries, 1):
        if not isinstance(e.get("args", []), list) or not isinstance(e.get("kwargs", {}), dict):
            raise ConveyorError(f"cron file {path}, entry {n}: 'args' must be an array and 'kwargs' a table")
        unknown = set(e) - {"schedule", "func", "queue", "name", "args", "kwargs", "timeout"}
        if unknown or "schedule" not in e or "func" not in e:
            raise ConveyorError(
                f"cron file {path}, entry {n}: needs 'schedule' and 'func'"
                + (f"; unknown keys {sorted(unknown)}" if unknown else "")
            )
        try:
            out.append(CronJob(e["schedule"], function_path(e["func"]), e.get("queue", "default"), e.get("name", ""),
                               tuple(e.get("args", ())), dict(e.get("kwargs", {})), e.get("timeout")))
        except ConveyorError as exc:
            raise ConveyorError(f"cron file {path}, entry {n}: {exc}") from None
        if any(o.name == out[-1].name and o.queue == out[-1].queue for o in out[:-1]):
            raise ConveyorError(f"cron file {path}, entry {n}: schedule name {out[-1].name!r} is used twice "
                                f"for queue {out[-1].queue!r}")
    return out


def load_all(modules: tuple[str, ...], files: tuple[str, ...]) -> list[CronJob]:
    """The schedules a worker runs: those the modules register (importing them), then the files'."""
    for module in modules:
        load_module(module)
    jobs = registered()
    for path in files:
        jobs += load_file(path)
    return jobs


def log_schedules(jobs: list[CronJob], queues: tuple[str, ...], now: float) -> None:
    """One line per loaded schedule, so a typo in a schedule shows at start, not at 3 a.m."""
    for entry in jobs:
        if entry.queue not in queues:
            log.warning("cron %s (%s) is for queue %s, which this worker does not serve: not run by it",
                        entry.name, entry.schedule, entry.queue)
            continue
        tick = dt.datetime.fromtimestamp(entry.next_tick(now), dt.UTC)
        log.info("cron %s: schedule '%s' on queue %s, next tick %s UTC", entry.name, entry.schedule, entry.queue,
                 tick.strftime("%Y-%m-%d %H:%M:%S"))
