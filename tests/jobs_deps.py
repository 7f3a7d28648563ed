"""Jobs for tests/test_dependencies.py: each run leaves lines in a file outside Redis, so the
test learns how often and in which order jobs ran from the jobs themselves."""

from __future__ import annotations

import os
import time

from joblog import append as _line


def step(path: str, name: str, seconds: float = 0.0) -> str:
    """'start NAME PID', a nap, then 'end NAME PID'."""
    _line(path, f"start {name} {os.getpid()}")
    if seconds:
        time.sleep(seconds)
    _line(path, f"end {name} {os.getpid()}")
    return name


def broken(path: str, name: str) -> None:
    _line(path, f"start {name} {os.getpid()}")
    raise RuntimeError(f"{name} fails on purpose")
