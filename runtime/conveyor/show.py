"""``conveyor job show`` as text: one ``key  value`` line per field, the error as
``Type: message`` followed by its traceback, durations as people read them.

Every value comes from Redis, that is from whoever can write to it: each line is
escaped (:func:`conveyor.logs.printable`), and the traceback's lines are indented, so
a newline inside it cannot pass for a line of this output.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

from .logs import indented, printable
from .protocol import Status

_LIVE = (Status.QUEUED, Status.SCHEDULED, Status.DEFERRED, Status.PREFETCHED, Status.STARTED)
_UNITS = ((86400, "d"), (3600, "h"), (60, "m"), (1, "s"))


def duration(seconds: float) -> str:
    """``7d``, ``1h 30m``, ``45s``: the two largest units, rounded to the smaller of them."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    for i, ((big, big_name), (small, small_name)) in enumerate(zip(_UNITS, _UNITS[1:])):
        if whole >= big:
            rounded = round(whole / small) * small
            if i and rounded >= _UNITS[i - 1][0]:  # 23h 59m 50s reads as 1d, not 24h
                return duration(rounded)
            n, rest = divmod(rounded, big)
            return f"{n}{big_name}" + (f" {rest // small}{small_name}" if rest else "")
    raise AssertionError("unreachable: 60 s or more matches a unit")


def ttl_text(ttl: int) -> str:
    if ttl == -1:
        return "none (kept until deleted)"
    if ttl == -2:
        return "expired"
    return duration(ttl)


def lines(data: dict[str, Any], ago: Callable[[float | None], str]) -> list[str]:
    """The text of ``job show`` for :func:`conveyor.admin.job_details`'s dict (without attempts)."""
    data = dict(data)
    status = data.get("status")
    if "result" in data and status != Status.FINISHED:
        # A result of None is a result; a job that has not finished has none to show.
        data.pop("result")
        if status in _LIVE:
            data["result"] = _Raw("no result yet")
    error = data.get("error")
    traceback = ""
    if error:
        data["error"] = f"{error['type']}: {error['message']}"
        traceback = error.get("traceback") or ""
    if "timeout" in data:
        timeout = data["timeout"]
        if timeout is None:
            data["timeout"] = _Raw("worker default")
        else:  # under a minute a timeout keeps its fraction (0.5s); above, a duration reads better
            data["timeout"] = _Raw(f"{timeout:g}s" if timeout < 60 else duration(timeout))
    progress = data.get("progress")
    if isinstance(progress, dict):  # 0.5 loading rows (12:00:01.250, 3s ago)
        at = progress.get("updated_at")
        when = f" ({dt.datetime.fromtimestamp(at).isoformat(sep=' ', timespec='milliseconds')}, {ago(at)})" if at else ""
        data["progress"] = _Raw(f"{progress['value']:g}" + (f" {progress['message']}" if progress.get("message") else "")
                                + when)
    if isinstance(data.get("meta"), dict):
        data["meta"] = _Raw(json.dumps(data["meta"], sort_keys=True))
    if isinstance(data.get("ttl"), int):
        data["ttl"] = _Raw(ttl_text(data["ttl"]))
    width = max(len(k) for k in data)
    out = []
    for key, value in data.items():
        if key.endswith("_at") and value:
            value = f"{dt.datetime.fromtimestamp(value).isoformat(sep=' ', timespec='milliseconds')} ({ago(value)})"
        if isinstance(value, _Raw):
            text = str(value)
        elif value is None:
            text = "None" if key == "result" else "-"
        else:
            text = str(value)
        out.append(f"{key.ljust(width)}  {printable(text)}")
        if key == "error" and traceback:
            out.append(indented(traceback))
    return out


class _Raw(str):
    """A value this module wrote itself (not the job's): shown as is, never as None."""
