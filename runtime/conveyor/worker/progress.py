"""Carrying running jobs' reports (``current_job().set_progress`` / ``set_meta``) to Redis on
round trips the worker makes anyway: the flow's next step, where they go before its outcomes
(so a job's last progress lands before its end), and the housekeeping round (every third of a
lease), so a lone long job's progress is seen within that. Never a round trip of its own: a
job may report in a tight loop, and only the latest value is written. progress.lua writes a
report only while its execution still owns the job.

One write at a time: a round trip taking reports while another is out waits for the next,
so an older value can never land after a newer one.
"""

from __future__ import annotations

from typing import Any

from .. import calls
from ..context import OUTBOX, JobContext
from ..keys import QueueKeys

Row = tuple[JobContext, str, str]  # the job's context, progress JSON, meta JSON ("": unchanged)
Groups = list[tuple[str, list[tuple[str, str, str, str]]]]  # per queue: (id, execution ID, progress, meta)

_taken: list[Row] = []  # the reports of the write that is out
_sending = False


def take() -> Groups:
    """The reports waiting, now taken, one progress.lua call per queue; [] when none (the hot
    path: one check) or a write is out. Hand them to :func:`sent` (always) and, if Redis did not
    answer, first to :func:`give_back`."""
    global _sending, _taken
    if not OUTBOX.items or _sending:
        return []
    with OUTBOX.lock:
        rows = [(c, c.pending_progress or "", c.pending_meta or "") for c in OUTBOX.items.values()]
        for c, _, _ in rows:
            c.pending_progress = c.pending_meta = None
        OUTBOX.items.clear()
    _sending, _taken = True, rows
    groups: dict[str, list[tuple[str, str, str, str]]] = {}
    for c, progress, meta in rows:
        groups.setdefault(c.queue, []).append((c.id, c.execution_id, progress, meta))
    return list(groups.items())


def sent(groups: Groups) -> None:
    global _sending, _taken
    if groups:
        _sending, _taken = False, []


def give_back(groups: Groups) -> None:
    """Redis did not answer: keep the reports for the next round trip, unless newer ones came."""
    if not groups:
        return
    with OUTBOX.lock:
        for c, progress, meta in _taken:
            if progress and c.pending_progress is None:
                c.pending_progress = progress
            if meta and c.pending_meta is None:
                c.pending_meta = meta
            OUTBOX.items.setdefault(c.execution_id, c)


def queue_calls(pipe: Any, keys: dict[str, QueueKeys], groups: Groups) -> None:
    for queue, jobs in groups:
        calls.progress(pipe, keys[queue], jobs)
