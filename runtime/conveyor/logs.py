"""Log setup for the CLI: plain lines, or one JSON object per line for log pipelines.

Job state changes carry job_id, execution_id, queue and duration as record
attributes (``extra=``); the JSON format emits them as fields.

Log lines carry text from whoever can write to Redis (exception messages, function
paths), so neither format lets an unprintable character through raw: an ESC sequence
could rewrite the reader's terminal, a bidi override could make a line read as
something else, and a newline could forge a whole log line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any

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
    # A job's traceback (extra={"traceback": ...}) follows its record as an indented block.
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        tb = record.__dict__.get("traceback")
        return f"{text}\n{indented(tb)}" if isinstance(tb, str) and tb else text

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))

    # A traceback spans lines on purpose; only what is inside each line is escaped.
    def formatException(self, ei: Any) -> str:
        return printable(super().formatException(ei), keep_newlines=True)

    def formatStack(self, stack_info: str) -> str:
        return printable(super().formatStack(stack_info), keep_newlines=True)


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
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


def setup(level: str = "info", fmt: str = "text") -> None:
    # A busy worker logs two lines per job: skip the per-record work nobody reads
    # (walking the stack for the caller's file and line, thread and process names).
    logging._srcfile = None  # documented switch: no findCaller()
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
