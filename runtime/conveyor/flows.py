"""Shapes of dependent jobs, built on ``depends_on``: each helper returns a batch for
``enqueue_many`` (of :class:`~conveyor.Queue` or :class:`~conveyor.aio.AsyncQueue`), written
in one step, checked whole before anything is written.

    q.enqueue_many(chain(a, b, c))            # b after a, c after b
    q.enqueue_many(group([a, b, c]).then(d))  # d after a, b and c

Each argument is an :class:`~conveyor.EnqueueData` (``Queue.prepare_data(...)``); a job
without a ``job_id`` is given one here, so its successors can name it. Results are not passed
along (as in RQ): a later job reads an earlier one's with ``Job.fetch``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .batch import EnqueueData, new_ids
from .job import JobData


def _with_ids(items: Iterable[EnqueueData]) -> list[EnqueueData]:
    out = list(items)
    fresh = iter(new_ids(sum(1 for item in out if item.job_id is None)))
    return [item if item.job_id is not None else item._replace(job_id=next(fresh)) for item in out]


def _after(item: EnqueueData, ids: list[Any], on_dependency_failure: str | None) -> EnqueueData:
    """``item`` waiting for ``ids`` too (besides what it named itself)."""
    given = item.depends_on
    own = [given] if isinstance(given, (str, JobData)) else list(given)
    policy = on_dependency_failure if on_dependency_failure is not None else item.on_dependency_failure
    return item._replace(depends_on=[*own, *ids], on_dependency_failure=policy)


def chain(*items: EnqueueData, on_dependency_failure: str | None = None) -> list[EnqueueData]:
    """Each job after the one before it. ``on_dependency_failure`` (default: each job's own,
    "cancel") decides whether a failure cancels the rest of the chain or lets it run on."""
    jobs = _with_ids(items)
    return [jobs[0], *(_after(job, [prev.job_id], on_dependency_failure) for prev, job in zip(jobs, jobs[1:]))]


class group:  # noqa: N801 - reads as a verb in a flow, as chain does
    """Jobs that run side by side; :meth:`then` adds one that runs after all of them."""

    def __init__(self, items: Iterable[EnqueueData]) -> None:
        self.items = _with_ids(items)

    def then(self, callback: EnqueueData, *, on_dependency_failure: str | None = None) -> list[EnqueueData]:
        """The group's jobs, then ``callback`` waiting for every one of them."""
        [done] = _with_ids([callback])
        return [*self.items, _after(done, [item.job_id for item in self.items], on_dependency_failure)]

    def __iter__(self) -> Any:
        return iter(self.items)
