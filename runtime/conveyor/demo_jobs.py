"""Job functions for `conveyor demo`."""

from __future__ import annotations

import asyncio
import time


def add(a: int, b: int) -> int:
    return a + b


def slow_square(n: int, seconds: float = 0.5) -> int:
    time.sleep(seconds)
    return n * n


async def fetch_greeting(name: str) -> str:
    await asyncio.sleep(0.2)  # stands in for an HTTP call
    return f"hello, {name}"


def charge_card(amount: float) -> None:
    raise RuntimeError(f"card declined for {amount:.2f}")
