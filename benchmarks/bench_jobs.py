"""Job functions the benchmark enqueues (importable by both Conveyor and RQ workers)."""

import time


def noop() -> None:
    return None


def sleep10ms() -> None:
    time.sleep(0.01)


def stamp() -> float:
    """When the job started running, for pickup latency."""
    return time.time()
