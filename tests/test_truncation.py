"""Long, non-ASCII error messages: cut on character boundaries before they reach Redis,
and a stored value cut mid-character never makes a job unreadable."""

from __future__ import annotations

import json

import pytest
import redis

from conveyor import Job, JobStatus, Queue
from conveyor.worker.execution import MESSAGE_LIMIT, TRACEBACK_LIMIT, clip, failure, from_exception
from support import cli, fetch

MESSAGES = {"e-acute": "é" * 2000, "odd-offset": "a" + "é" * 2000, "euro": "€" * 700, "emoji": "x" + "😀" * 400}


@pytest.mark.parametrize("text", list(MESSAGES.values()), ids=list(MESSAGES))
@pytest.mark.parametrize("limit", [1000, 1001, 1002, 1003])
def test_clip_keeps_whole_characters(text: str, limit: int) -> None:
    head = clip(text, limit)
    assert len(head.encode()) <= limit and head.endswith("...") and text.startswith(head[:-3])
    assert len(head.encode()) > limit - 3 - 4  # no more than one character lost to the boundary
    tail = clip(text, limit, keep_end=True)
    kept = tail.split("\n", 1)[1]
    assert len(tail.encode()) <= limit and tail.startswith("[... cut") and text.endswith(kept)


def test_clip_leaves_short_text_alone_and_escapes_lone_surrogates() -> None:
    assert clip("kaput", 1000) == "kaput" and clip("é" * 500, 1000) == "é" * 500
    assert clip("bad \udcff name", 1000) == "bad \\udcff name"  # Redis could not be sent the surrogate


def test_every_failed_outcome_is_clipped() -> None:
    try:
        raise ValueError("a" + "é" * 50_000)
    except ValueError as exc:
        outcome = from_exception(exc)
    assert len(outcome.exc_message.encode()) <= MESSAGE_LIMIT
    assert len(outcome.traceback.encode()) <= TRACEBACK_LIMIT and outcome.traceback.endswith("é" * 10 + "\n")
    assert len(failure("X", "€" * 1000).exc_message.encode()) <= MESSAGE_LIMIT



@pytest.mark.parametrize("message", list(MESSAGES.values()), ids=list(MESSAGES))
def test_long_non_ascii_failure_is_stored_whole_characters_and_shown(queue: Queue, conn: redis.Redis, redis_url: str,
                                                                     run_burst, message: str) -> None:
    job = queue.enqueue("jobs:fail", message)
    run_burst()
    failed = fetch(conn, job)
    assert failed.status is JobStatus.FAILED
    attempts = conn.hget(queue.keys.job(job.id), "attempts")
    [attempt] = json.loads(attempts.decode("utf-8"))  # strict: valid UTF-8 all through
    stored = attempt["exc_message"]
    assert stored.endswith("...") and message.startswith(stored[:-3]) and len(stored.encode()) <= 1000
    assert failed.exc_info.message == stored
    assert conn.hget(queue.keys.job(job.id), "exc_message").decode("utf-8") == stored

    text = cli(redis_url, "job", "show", job.id)
    assert text.returncode == 0, text.stderr
    assert message[:100] in text.stdout
    data = json.loads(cli(redis_url, "job", "show", job.id, "--json").stdout)
    assert data["error"]["message"] == stored and data["attempts"][0]["exc_message"] == stored


def test_a_stored_value_cut_mid_character_is_still_readable(queue: Queue, conn: redis.Redis, redis_url: str) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    broken = "é".encode()[:1]  # what a byte-wise cut leaves behind
    attempts = b'[{"n":1,"execution_id":"e1","started_at":"","ended_at":"","exc_type":"ValueError","exc_message":"ab' + broken + b'"}]'
    conn.hset(queue.keys.job(job.id), mapping={"status": "failed", "exc_type": "ValueError",
                                               "exc_message": b"ab" + broken, "exc_traceback": b"tb" + broken,
                                               "attempts": attempts})
    failed = Job.fetch(job.id, conn)
    assert failed.exc_info.message == "ab\ufffd" and failed.exc_info.traceback == "tb\ufffd"
    assert failed.attempts[0].exc_message == "ab\ufffd"
    for args in (("job", "show", job.id), ("job", "show", job.id, "--json")):
        res = cli(redis_url, *args)
        assert res.returncode == 0, res.stderr
        assert "ab\ufffd" in (res.stdout if "--json" not in args else json.loads(res.stdout)["error"]["message"])


def test_a_huge_traceback_keeps_its_end(queue: Queue, conn: redis.Redis, run_burst) -> None:
    job = queue.enqueue("jobs:fail", "é" * 100_000 + "THE END")
    run_burst()
    tb = fetch(conn, job).exc_info.traceback
    assert len(tb.encode()) <= TRACEBACK_LIMIT
    assert tb.startswith("[... cut") and tb.endswith("THE END\n")
