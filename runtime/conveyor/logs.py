"""Log setup for the CLI: plain lines, or one JSON object per line for log pipelines.

Job state changes carry job_id, execution_id, queue and duration as record
attributes (``extra=``); the JSON format emits them as fields.

Log lines carry text from whoever can write to Redis (exception messages, function
paths), so neither format lets an unprintable character through raw: an ESC sequence
could rewrite the reader's terminal, a bidi override could make a line read as
something else, and a newline could forge a whole log line.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import sys
import time
import weakref
from typing import Any, TextIO

JOB_FIELDS = ("job_id", "execution_id", "queue", "duration", "event", "worker", "func", "traceback")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str, *, keep_newlines: bool = False) -> str:
    """``text`` with every unprintable character (controls, bidi, zero-width...) escaped
    as ``\\xNN``, ``\\uNNNN`` or ``\\UNNNNNNNN``; real newlines kept if asked."""
    if text.isprintable():
        return text
    if keep_newlines:
        return "\n".join(printable(line) for line in text.split("\n"))
    return "".join(ch if ch.isprintable() else _escape(ch) for ch in text)


def _escape(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def indented(text: str, prefix: str = "    ") -> str:
    """``text`` escaped line by line and indented: each of its lines reads as the
    continuation of the record above, so a newline inside it cannot forge a log line."""
    return "\n".join(prefix + line for line in printable(text.rstrip("\n"), keep_newlines=True).split("\n"))


class TextFormatter(logging.Formatter):
    def __init__(self, fmt: str | None = TEXT_FORMAT, datefmt: str | None = None) -> None:
        super().__init__(fmt, datefmt)
        # TEXT_FORMAT without a datefmt: the line is built directly, not through %-style
        # formatting of a dict of the record's attributes.
        self._direct = fmt == TEXT_FORMAT and datefmt is None
        self._msec_default = self.default_msec_format == "%s,%03d"
        # (second, datefmt, its strftime text): one tuple, so a thread never reads a torn one.
        self._stamp: tuple[int, str | None, str] = (-1, None, "")

    # A job's traceback (extra={"traceback": ...}) follows its record as an indented block.
    def format(self, record: logging.LogRecord) -> str:
        if self._direct and not record.exc_info and not record.stack_info:
            record.message = record.getMessage()
            record.asctime = self.formatTime(record)
            text = printable(f"{record.asctime} {record.levelname} {record.name}: {record.message}")
        else:
            text = super().format(record)
        tb = record.__dict__.get("traceback")
        return f"{text}\n{indented(tb)}" if isinstance(tb, str) and tb else text

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # strftime once a second, not once a line: only the milliseconds change within one.
        second = int(record.created)
        stamp = self._stamp
        if stamp[0] != second or stamp[1] != datefmt:
            stamp = self._stamp = (second, datefmt, time.strftime(datefmt or self.default_time_format,
                                                                  self.converter(record.created)))
        if datefmt or not self.default_msec_format:
            return stamp[2]
        if self._msec_default:
            return f"{stamp[2]},{int(record.msecs):03d}"
        return self.default_msec_format % (stamp[2], record.msecs)

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    # A traceback spans lines on purpose; only what is inside each line is escaped.
    def formatException(self, ei: Any) -> str:
        return printable(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return printable(super().formatStack(stack_info), keep_newlines=True)


class JSONFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")  # the second's ISO text, without its fraction

    def _ts(self, record: logging.LogRecord) -> str:
        # What datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds") gives,
        # with the second's text made once a second: microseconds rounded as datetime does.
        second = int(record.created)
        micros = round((record.created - second) * 1e6)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, dt.datetime.fromtimestamp(second, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        return f"{cached[1]}.{micros // 1000:03d}+00:00"

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": self._ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in JOB_FIELDS:
            value = record.__dict__.get(field)
            if value is not None:
                data[field] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        # ensure_ascii escapes every control, bidi and zero-width character (\u001b,
        # \u202e...): a JSON line never carries one raw, whatever the message holds.
        return json.dumps(data, default=str, ensure_ascii=True)


class BatchedStreamHandler(logging.StreamHandler[TextIO]):
    """A StreamHandler that writes the lines logged on an event loop's thread once per loop
    turn: a busy worker logs a line per job, and one write(2) per line cost more than the
    rest of the logging together.

    A line logged on the loop thread waits in a buffer until the end of the loop's turn (a
    ``call_soon`` scheduled with the first line) or until ``capacity`` lines wait. WARNING
    and above, and lines logged where no loop runs (job threads, start-up, exit), are written
    at once, with the lines waiting before them. :meth:`flush` writes what waits: the
    worker calls it when it closes, and ``logging.shutdown`` at exit. A SIGTERM'd worker
    stops through its loop and so loses nothing; a SIGKILL'd one loses at most the lines of
    its last loop turn (at most ``capacity``).

    Thread-safe: ``Handler.handle`` holds ``self.lock`` around :meth:`emit`, and
    :meth:`flush` takes it too.
    """

    def __init__(self, stream: TextIO, capacity: int = 256) -> None:
        super().__init__(stream)
        self.capacity = capacity
        self._lines: list[str] = []
        self._last: logging.LogRecord | None = None  # for handleError when a write fails
        self._scheduled: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on
        _batched.add(self)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(text)
        self._last = record
        if record.levelno >= logging.WARNING or len(self._lines) >= self.capacity:
            self._write()
            return
        loop = asyncio._get_running_loop()
        if loop is None:
            self._write()
        elif self._scheduled is not loop:  # (a loop closed with a flush still scheduled: a new one)
            self._scheduled = loop
            loop.call_soon(self.flush)

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created in Handler.__init__
            self._scheduled = None
            if self._lines:
                self._write()
            else:
                super().flush()

    def _write(self) -> None:
        text = "\n".join(self._lines) + self.terminator
        self._lines.clear()
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:
            if self._last is not None:
                self.handleError(self._last)

    def _forked(self) -> None:
        # A child of fork() (a job's own) must not write its parent's waiting lines again.
        self._lines.clear()
        self._scheduled = None


_batched: weakref.WeakSet[BatchedStreamHandler] = weakref.WeakSet()


def _after_fork() -> None:
    for handler in list(_batched):
        handler._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def flush() -> None:
    """Write every line the root logger's handlers hold back."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def setup(level: str = "info", fmt: str = "text", *, batched: bool = False) -> None:
    """Log to stderr; ``batched`` (the worker): a write per event-loop turn, not per line
    (see :class:`BatchedStreamHandler`)."""
    # A busy worker logs a line per job: skip the per-record work nobody reads
    # (walking the stack for the caller's file and line, thread and process names).
    logging._srcfile = None  # documented switch: no findCaller()
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchedStreamHandler(sys.stderr) if batched else logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
