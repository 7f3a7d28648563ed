"""A job's call as one short log-safe text: ``myapp.tasks:send_email('ada@…', subject='hi')``.

Arguments come from whoever can write to Redis and can be huge or private, so the text
is bounded (each argument and the whole call) and the arguments are shown only when the
worker is told to (``--log-args``). Building it never fails a job: arguments this worker
will not or cannot decode just for a log line show as ``(args not shown)``. Pickle is
never decoded here: unpickling runs code, and a log line is no reason to.

Also where a failed job's traceback goes (its failure line, or a DEBUG line of its own).
"""

from __future__ import annotations

import logging
from typing import Any

from ..logs import printable
from ..serializers import get_serializer

ARG_LIMIT = 24  # characters of one argument's repr
CALL_LIMIT = 120  # characters of the whole call
# Decoding runs on the worker's event loop: a payload this big is not decoded for a log line.
PAYLOAD_LIMIT = 64 * 1024
NOT_SHOWN = " (args not shown)"
_DECODABLE = ("json", "msgpack")


def call_text(func: str | None, ser: str, payload: bytes | None, with_args: bool) -> str:
    """The call for a log line, with every unprintable character escaped."""
    name = printable(func or "?")
    if not with_args:
        return name
    try:
        args = _decoded(ser, payload)
        return name + NOT_SHOWN if args is None else _joined(name, args)
    except Exception:  # a repr that fails: the log line goes without the arguments
        return name + NOT_SHOWN


class LazyCall:
    """A log argument that builds the call text only when a handler formats the record (once)."""

    __slots__ = ("func", "ser", "payload", "with_args", "_text")

    def __init__(self, func: str | None, ser: str, payload: bytes | None, with_args: bool) -> None:
        self.func, self.ser, self.payload, self.with_args = func, ser, payload, with_args
        self._text: str | None = None

    def __str__(self) -> str:
        if self._text is None:
            self._text = call_text(self.func, self.ser, self.payload, self.with_args)
        return self._text


def _joined(name: str, args: tuple[list[Any], dict[Any, Any]]) -> str:
    if not args[0] and not args[1]:
        return name + "()"
    parts = [_short(repr(a)) for a in args[0]] + [f"{printable(str(k))}={_short(repr(v))}" for k, v in args[1].items()]
    text = name + "("
    for i, part in enumerate(parts):
        piece = (", " if i else "") + part
        room = 1 if i == len(parts) - 1 else len(", …)")  # what must still fit after this piece
        if len(text) + len(piece) + room > CALL_LIMIT:
            text += ", …" if i else "…"
            break
        text += piece
    return text + ")"


def _decoded(ser: str, payload: bytes | None) -> tuple[list[Any], dict[Any, Any]] | None:
    if ser not in _DECODABLE or payload is None or len(payload) > PAYLOAD_LIMIT:
        return None
    try:
        data = get_serializer(ser).loads(payload)
        args, kwargs = data["a"], data["k"]
    except Exception:  # the job itself reports a bad payload when it runs; a log line just skips it
        return None
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return None
    return args, kwargs


def _short(text: str) -> str:
    text = printable(text)
    if len(text) <= ARG_LIMIT:
        return text
    quote = text[-1] if text[-1] in "'\"" and text[0] == text[-1] else ""
    return text[: ARG_LIMIT - 1 - len(quote)] + "…" + quote


def with_traceback(extra: dict[str, Any], tb: str, shown: bool) -> dict[str, Any]:
    """A failure line's fields, with the traceback under --log-tracebacks (shown, the default)."""
    return {**extra, "traceback": tb} if tb and shown else extra


def debug_traceback(log: logging.Logger, extra: dict[str, Any], tb: str, shown: bool) -> None:
    """Under --no-log-tracebacks the traceback still reaches a DEBUG line of its own."""
    if tb and not shown and log.isEnabledFor(logging.DEBUG):
        log.debug("job %s traceback (execution %s)", extra["job_id"], extra["execution_id"],
                  extra={**extra, "event": "traceback", "traceback": tb})
