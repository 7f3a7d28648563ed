"""Job functions for tests/test_first_cli.py, with signatures the enqueue-time keyword
check has something to say about."""

from __future__ import annotations

from typing import Any


def send_email(to: str, subject: str = "", *, html: bool = False) -> str:
    return f"{to}|{subject}|{html}"


def takes_anything(*args: Any, **kwargs: Any) -> dict[str, Any]:
    return {"args": list(args), "kwargs": kwargs}
