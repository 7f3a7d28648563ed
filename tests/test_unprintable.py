"""Invisible and control characters: refused in job IDs, escaped in every log line."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import redis

from conveyor import InvalidJobId, Job, JobStatus, Queue
from conveyor.logs import TEXT_FORMAT, JSONFormatter, TextFormatter, printable
from support import WORKER_ENV, fetch

HOSTILE = "\x1b[31mred\u202eevil\u200b\nforged line"


# -- job IDs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job_id, named",
    [
        ("a\u202eb", "U+202E (RIGHT-TO-LEFT OVERRIDE)"),
        ("a\u2066b", "U+2066 (LEFT-TO-RIGHT ISOLATE)"),
        ("a\u200bb", "U+200B (ZERO WIDTH SPACE)"),
        ("a\u200db", "U+200D (ZERO WIDTH JOINER)"),
        ("a\ufeffb", "U+FEFF (ZERO WIDTH NO-BREAK SPACE)"),
        ("a\x1b[31m", "U+001B (<control>)"),
        ("a\x00b", "U+0000 (<control>)"),
        ("a\x7fb", "U+007F (<control>)"),
        ("a\ud800b", "U+D800 (<surrogate>)"),
        ("a\ue000b", "U+E000 (<private use>)"),
        ("a\u0378b", "U+0378 (<unassigned>)"),
    ],
)
def test_job_ids_with_invisible_or_control_characters_are_refused(queue: Queue, conn: redis.Redis, job_id: str,
                                                                  named: str) -> None:
    with pytest.raises(InvalidJobId) as info:
        queue.enqueue("jobs:add", 1, 2, job_id=job_id)
    message = str(info.value)
    assert message == f"job ID {job_id!r} contains {named}, an invisible or control character"
    assert message.isprintable()  # the message itself shows the character escaped
    with pytest.raises(InvalidJobId):
        queue.enqueue_many([Queue.prepare_data("jobs:add", (1, 2), job_id="fine"),
                            Queue.prepare_data("jobs:add", (1, 2), job_id=job_id)])
    with pytest.raises(InvalidJobId, match="invisible or control character"):
        Job.fetch(job_id, conn)
    assert conn.dbsize() == 0


@pytest.mark.parametrize("job_id", ["ümlaut-job", "日本語", "emoji-☃", "a.b-c_d"])
def test_printable_unicode_job_ids_are_accepted(queue: Queue, job_id: str) -> None:
    assert queue.enqueue("jobs:add", 1, 2, job_id=job_id).id == job_id
    assert queue.job_ids == [job_id]


# -- the formatters --------------------------------------------------------------------------------


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError(HOSTILE)
        except ValueError:
            exc_info = sys.exc_info()
    return logging.LogRecord("conveyor.worker", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_printable_escapes_only_what_is_unprintable() -> None:
    assert printable("plain é ☃ text") == "plain é ☃ text"
    assert printable(HOSTILE) == "\\x1b[31mred\\u202eevil\\u200b\\nforged line"
    assert printable("a\nb\tc", keep_newlines=True) == "a\nb\\tc"
    assert printable("\U000e0001\ud800") == "\\U000e0001\\ud800"


def test_text_format_escapes_the_message_and_keeps_a_tracebacks_lines() -> None:
    out = TextFormatter(TEXT_FORMAT).format(record("job %s failed: %s", "j1", HOSTILE, exc=True))
    assert "\x1b" not in out and "\u202e" not in out and "\u200b" not in out
    first, *rest = out.split("\n")
    assert first.endswith("job j1 failed: \\x1b[31mred\\u202eevil\\u200b\\nforged line")
    assert rest[0] == "Traceback (most recent call last):"  # real lines, still lines
    # The traceback's lines are kept as Python wrote them, a newline in the message included.
    assert rest[-2:] == ["ValueError: \\x1b[31mred\\u202eevil\\u200b", "forged line"]


def test_json_format_escapes_and_round_trips() -> None:
    out = JSONFormatter().format(record("job %s failed: %s", "j1", HOSTILE, exc=True))
    assert out.isascii() and "\n" not in out
    assert "\\u001b[31mred\\u202eevil" in out
    data = json.loads(out)
    assert data["message"] == f"job j1 failed: {HOSTILE}" and HOSTILE in data["exc"]


# -- a real worker's log file --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_worker_log_never_carries_raw_control_or_bidi_characters(queue: Queue, conn: redis.Redis, run_burst,
                                                                 fmt: str) -> None:
    job = queue.enqueue("jobs:fail", HOSTILE)
    w = run_burst("--log-format", fmt)
    assert fetch(conn, job).status is JobStatus.FAILED
    assert fetch(conn, job).exc_info.message == HOSTILE  # stored as raised; only log lines are escaped
    raw = w.log_path.read_bytes()
    assert b"\x1b" not in raw and "\u202e".encode() not in raw and "\u200b".encode() not in raw
    text = raw.decode()
    if fmt == "text":
        assert "ValueError: \\x1b[31mred\\u202eevil\\u200b\\nforged line" in text
        assert not any(line.startswith("forged line") for line in text.splitlines())
    else:
        [failed] = [json.loads(line) for line in text.splitlines() if '"event": "fail"' in line]
        assert failed["message"].endswith(f"ValueError: {HOSTILE}") and failed["job_id"] == job.id


def test_job_show_text_escapes_what_redis_holds(queue: Queue, conn: redis.Redis, redis_url: str, run_burst) -> None:
    job = queue.enqueue("jobs:fail", HOSTILE)
    run_burst()
    env = {**WORKER_ENV, "CONVEYOR_REDIS_URL": redis_url}
    shown = subprocess.run([sys.executable, "-m", "conveyor", "job", "show", job.id], env=env, capture_output=True,
                           text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\u202e" not in shown.stdout
    assert "\\x1b[31mred\\u202eevil\\u200b\\nforged line" in shown.stdout  # in the error row and the attempts table
    assert not any(line.startswith("forged line") for line in shown.stdout.splitlines())
