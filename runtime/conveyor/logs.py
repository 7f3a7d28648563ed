"""Log setup for the CLI: plain lines, or one JSON object per line for log pipelines.

Job state changes carry job_id, execution_id, queue and duration as record
attributes (``extra=``); the JSON format emits them as fields.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys

JOB_FIELDS = ("job_id", "execution_id", "queue", "duration", "event", "worker")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.timezone.utc).isoformat(timespec="milliseconds"),
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
        return json.dumps(data, default=str)


def setup(level: str = "info", fmt: str = "text") -> None:
    # A busy worker logs two lines per job: skip the per-record work nobody reads
    # (walking the stack for the caller's file and line, thread and process names).
    logging._srcfile = None  # documented switch: no findCaller()
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
