"""Jobs for test_handoff.py; workers import this module as `jobs_handoff`.

Each run appends one line to a file: job ID, execution ID, where it ran (a thread, or "loop"
for async jobs), and time.time() when its body started and ended. One short write in append
mode per line, so lines from concurrent runs never interleave.
"""

from __future__ import annotations

import asyncio
import threading
import time

from conveyor import current_job


def _note(path: str, where: str, start: float, end: float) -> None:
    ctx = current_job()
    assert ctx is not None
    with open(path, "a") as f:
        f.write(f"{ctx.id} {ctx.execution_id} {where} {start!r} {end!r}\n")


def nap(path: str, seconds: float) -> None:
    start = time.time()
    time.sleep(seconds)
    _note(path, f"thread-{threading.get_ident()}", start, time.time())


async def async_nap(path: str, seconds: float) -> None:
    start = time.time()
    await asyncio.sleep(seconds)
    _note(path, "loop", start, time.time())
