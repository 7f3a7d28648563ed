"""Typed views of Redis replies: the one place where the types of redis-py's answers are stated.

Conveyor's clients never set ``decode_responses``, so strings come back as ``bytes``; redis-py
annotates replies for both modes (``bytes | str``) or as ``Any``. These helpers only tell the type
checker what the reply is; they convert nothing at run time.
"""

from __future__ import annotations

from typing import Any, cast


def byte_set(reply: Any) -> set[bytes]:
    """SMEMBERS and friends."""
    return cast(set[bytes], reply)


def byte_hash(reply: Any) -> dict[bytes, bytes]:
    """HGETALL."""
    return cast(dict[bytes, bytes], reply)


def integer(reply: Any) -> int:
    """ZCOUNT, TTL, PUBLISH and other integer replies."""
    return cast(int, reply)


def info(reply: Any) -> dict[str, Any]:
    """INFO <section>, parsed by redis-py into a dict."""
    return cast(dict[str, Any], reply)
