"""How the worker counts and logs a job's outcome once Redis recorded it (or refused it as stale)."""

from __future__ import annotations

import collections
import logging

from ..protocol import Code
from ..settings import WorkerSettings
from .calltext import LazyCall, debug_traceback, with_traceback
from .claimed import Ended
from .metrics import WorkerMetrics

log = logging.getLogger("conveyor.worker")

OUTCOMES = {"complete": "succeeded", "fail": "failed", "retry": "retried", "stop": "stopped"}  # metric labels


def log_outcome(e: Ended, code: int, stats: collections.Counter[str], metrics: WorkerMetrics,
                s: WorkerSettings) -> None:
    job, kind, m = e.job, e.kind, metrics.of(e.job.queue)
    extra = {"job_id": job.id, "execution_id": job.execution_id, "queue": job.queue,
             "duration": round(e.duration, 6), "event": kind, "func": job.func}
    if code in (Code.OK, Code.DUPLICATE):
        outcome = OUTCOMES[kind]
        stats["finished" if kind == "complete" else outcome] += 1
        getattr(m, outcome).inc()
        m.run_time[outcome].observe(e.duration)
        o = e.outcome
        # The job's one line at INFO: how it ended, with its call (its text built only if logged).
        if kind == "complete":
            if log.isEnabledFor(logging.INFO):
                log.info("job %s finished: %s (execution %s, queue %s, %.3fs)", job.id,
                         LazyCall(job.func, job.ser, job.payload, s.log_args), job.execution_id, job.queue,
                         e.duration, extra=extra)
            return
        call = LazyCall(job.func, job.ser, job.payload, s.log_args)
        if kind == "retry":
            log.warning("job %s failed: %s (execution %s, queue %s, %.3fs): %s: %s; retry %d in %gs", job.id,
                        call, job.execution_id, job.queue, e.duration, o.exc_type, o.exc_message,
                        job.retries + 1, e.retry_in, extra=with_traceback(extra, o.traceback, s.log_tracebacks))
            debug_traceback(log, extra, o.traceback, s.log_tracebacks)
        elif kind == "stop":
            log.warning("job %s stopped on request: %s (execution %s, queue %s, %.3fs)", job.id, call,
                        job.execution_id, job.queue, e.duration, extra=extra)
        else:
            log.warning("job %s failed: %s (execution %s, queue %s, %.3fs): %s: %s", job.id, call,
                        job.execution_id, job.queue, e.duration, o.exc_type, o.exc_message,
                        extra=with_traceback(extra, o.traceback, s.log_tracebacks))
            debug_traceback(log, extra, o.traceback, s.log_tracebacks)
    elif code == Code.STALE:
        stats["stale_completions"] += 1
        metrics.stale.inc()
        log.warning("job %s: execution %s no longer holds the lease; its outcome was discarded",
                    job.id, job.execution_id, extra=extra)
    else:
        stats["vanished"] += 1
        log.warning("job %s vanished from queue %s while it ran (deleted?); outcome dropped", job.id, job.queue)
