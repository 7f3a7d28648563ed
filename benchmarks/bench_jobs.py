"""Job functions the benchmark enqueues (importable by both Conveyor and RQ workers)."""

import time


def noop() -> None:
    return None


def sleep10ms() -> None:
    time.sleep(0.01)


def stamp() -> float:
    """When the job started running, for pickup latency."""
    return time.time()


_trace: list[tuple[int, float, float]] = []


def sleep10ms_traced() -> None:
    """sleep10ms, noting (thread, start, end): with BENCH_TRACE=FILE the worker writes them
    there as JSON at exit (benchmarks/profile_worker.py --func bench_jobs:sleep10ms_traced)."""
    if not _trace:
        import atexit
        import json
        import os
        import threading

        path = os.environ.get("BENCH_TRACE")
        if path:
            atexit.register(lambda: open(path, "w").write(json.dumps(_trace)))
        _trace.append((threading.get_ident(), 0.0, 0.0))  # marks the hook as installed
    import threading

    start = time.perf_counter()
    time.sleep(0.01)
    _trace.append((threading.get_ident(), start, time.perf_counter()))


def fail(kind: str = "value") -> None:
    """Fails with ValueError, or KeyError when kind is "key" (the dashboard benchmark's failed jobs)."""
    if kind == "key":
        raise KeyError("no such record")
    raise ValueError("bad input")
