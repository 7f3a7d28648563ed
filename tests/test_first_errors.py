"""A new user's first failures, as they see them: `job show` prints the error with its
traceback, a success or a requeue clears the old error, and the worker's log names the
call and carries the traceback (issue 12, items 4, 5 and 9)."""

from __future__ import annotations

import json
import re
import uuid

import redis

from conveyor import JobStatus, Queue, Retry
from support import cli, fetch

TRACEBACK_TAIL = ["    ValueError: boom: kaboom"]


def show(url: str, *args: str) -> str:
    res = cli(url, "job", "show", *args)
    assert res.returncode == 0, res.stderr
    return res.stdout


def row(text: str, key: str) -> str | None:
    """The value of one `key  value` row of `job show`, or None when it has no such row."""
    m = re.search(rf"^{key} +(.*)$", text, re.M)
    return m.group(1) if m else None


# -- item 4: the error as text, with its traceback -----------------------------------------------


def test_job_show_prints_the_error_as_text_followed_by_its_traceback(queue: Queue, conn: redis.Redis,
                                                                     redis_url: str, run_burst) -> None:
    job = queue.enqueue("jobs:fail", "boom: kaboom")
    run_burst()
    stored = fetch(conn, job).exc_info
    assert stored is not None and stored.traceback.startswith("Traceback (most recent call last):")

    text = show(redis_url, job.id)
    assert row(text, "error") == "ValueError: boom: kaboom"
    assert "{'type'" not in text
    lines = text.splitlines()
    at = lines.index(next(line for line in lines if line.startswith("error ")))
    block = lines[at + 1: at + 1 + len(stored.traceback.rstrip("\n").splitlines())]
    # The whole traceback, each line indented under the error row.
    assert block == ["    " + line for line in stored.traceback.rstrip("\n").splitlines()]
    assert block[0] == "    Traceback (most recent call last):" and block[-1:] == TRACEBACK_TAIL
    assert any('in fail' in line for line in block), block
    assert row(text, "ttl") == "7d"  # the default failure TTL, as a duration

    data = json.loads(show(redis_url, job.id, "--json"))
    assert data["error"] == {"type": "ValueError", "message": "boom: kaboom", "traceback": stored.traceback}
    assert 7 * 24 * 3600 - 120 < data["ttl"] <= 7 * 24 * 3600  # raw seconds in JSON


def test_job_show_tells_a_none_result_from_no_result(queue: Queue, redis_url: str, run_burst) -> None:
    none = queue.enqueue("jobs:return_none")
    failed = queue.enqueue("jobs:fail", "no result here")
    run_burst()
    waiting = queue.enqueue("jobs:add", 1, 2)

    assert row(show(redis_url, none.id), "result") == "None"
    assert row(show(redis_url, waiting.id), "result") == "no result yet"
    assert row(show(redis_url, failed.id), "result") is None  # failed: an error, and no result row
    assert json.loads(show(redis_url, none.id, "--json"))["result"] is None


def test_job_show_durations_and_the_worker_default_timeout(queue: Queue, redis_url: str, run_burst) -> None:
    own = queue.enqueue("jobs:add", 1, 2, result_ttl=5400, timeout=30)
    default = queue.enqueue("jobs:add", 1, 2, result_ttl=-1)
    run_burst()

    text = show(redis_url, own.id)
    assert (row(text, "ttl"), row(text, "timeout"), row(text, "result")) == ("1h 30m", "30s", "3")
    text = show(redis_url, default.id)
    assert (row(text, "ttl"), row(text, "timeout")) == ("none (kept until deleted)", "worker default")
    data = json.loads(show(redis_url, own.id, "--json"))
    assert 5400 - 120 < data["ttl"] <= 5400 and data["timeout"] == 30
    assert json.loads(show(redis_url, default.id, "--json"))["timeout"] is None


def test_worker_logs_the_traceback_of_a_failed_job(queue: Queue, run_burst) -> None:
    queue.enqueue("jobs:fail", "boom: kaboom")
    lines = run_burst().log().splitlines()
    at = next(i for i, line in enumerate(lines) if " WARNING " in line and "failed" in line)
    assert lines[at].endswith("ValueError: boom: kaboom")
    tail = lines[at + 1:]
    assert tail[0] == "    Traceback (most recent call last):"
    end = tail.index(TRACEBACK_TAIL[0])
    assert all(line.startswith("    ") for line in tail[:end + 1])


def test_worker_logs_the_traceback_as_a_json_field(queue: Queue, run_burst) -> None:
    queue.enqueue("jobs:fail", "boom: kaboom")
    log = run_burst("--log-format", "json").log()
    [failed] = [json.loads(line) for line in log.splitlines() if '"event": "fail"' in line]
    assert failed["level"] == "warning" and failed["message"].endswith("ValueError: boom: kaboom")
    assert failed["traceback"].startswith("Traceback (most recent call last):")
    assert failed["traceback"].rstrip("\n").endswith("ValueError: boom: kaboom")


def test_no_log_tracebacks_keeps_them_for_debug(queue: Queue, run_burst) -> None:
    queue.enqueue("jobs:fail", "boom: kaboom")
    log = run_burst("--no-log-tracebacks").log()
    assert "ValueError: boom: kaboom" in log and "Traceback" not in log
    queue.enqueue("jobs:fail", "boom: kaboom")
    log = run_burst("--log-level", "debug", env={"CONVEYOR_LOG_TRACEBACKS": "false"}).log()
    lines = log.splitlines()
    at = next(i for i, line in enumerate(lines) if " DEBUG conveyor.worker: job " in line and " traceback " in line)
    assert lines[at + 1] == "    Traceback (most recent call last):"
    assert not any(" WARNING " in line and i + 1 < len(lines) and lines[i + 1].startswith("    Traceback")
                   for i, line in enumerate(lines))


# -- item 5: the old error does not outlive a success or a requeue ----------------------------------


def test_a_requeue_and_then_a_success_clear_the_old_error(queue: Queue, conn: redis.Redis, redis_url: str,
                                                          run_burst) -> None:
    key = f"first-errors:{uuid.uuid4().hex}"
    job = queue.enqueue("jobs_reliability:fail_times", redis_url, key, 1)
    run_burst()
    assert fetch(conn, job).exc_info is not None

    res = cli(redis_url, "requeue", job.id)
    assert res.returncode == 0, res.stderr
    requeued = fetch(conn, job)
    assert requeued.status is JobStatus.QUEUED and requeued.exc_info is None
    assert not conn.hexists(queue.keys.job(job.id), "exc_traceback")
    assert row(show(redis_url, job.id), "error") == "-"

    run_burst()
    done = fetch(conn, job)
    assert done.status is JobStatus.FINISHED and done.result == 2 and done.exc_info is None
    assert [a.exc_type for a in done.attempts] == ["ValueError"]  # the history keeps the failure
    text = show(redis_url, job.id)
    assert row(text, "error") == "-" and "attempt 1" in text  # in the attempts table only
    assert "Traceback" not in text


def test_a_retry_that_succeeds_clears_the_error(queue: Queue, conn: redis.Redis, redis_url: str, run_burst) -> None:
    key = f"first-errors:{uuid.uuid4().hex}"
    job = queue.enqueue("jobs_reliability:fail_times", redis_url, key, 1, retry=Retry(max=1, intervals=[0]))
    run_burst()
    done = fetch(conn, job)
    assert done.status is JobStatus.FINISHED and done.exc_info is None
    assert [a.exc_type for a in done.attempts] == ["ValueError", None]
    assert json.loads(show(redis_url, job.id, "--json"))["error"] is None


# -- item 9: log lines carry the call -------------------------------------------------------------


def ended_line(log: str, job_id: str, how: str = "finished") -> str:
    [line] = [line for line in log.splitlines() if f"job {job_id} {how}: " in line]
    return line


def test_finished_line_carries_the_call_shortened_and_escaped(queue: Queue, run_burst) -> None:
    short = queue.enqueue("jobs:echo", "ada@example.com", subject="hi")
    long = queue.enqueue("jobs:echo", "x" * 500, *range(40))
    hostile = queue.enqueue("jobs:echo", "\x1b[1m\u202e\nforged")
    log = run_burst().log()

    line = ended_line(log, short.id)
    assert re.search(
        re.escape(f"INFO conveyor.worker: job {short.id} finished: jobs:echo('ada@example.com', subject='hi') "
                  f"(execution {fetch(queue.connection, short).execution_id}, queue default, ") + r"\d+\.\d{3}s\)$",
        line), line
    call = ended_line(log, long.id).split(" finished: ", 1)[1].split(" (execution ", 1)[0]
    assert call.startswith("jobs:echo('" + "x" * 20) and "x" * 30 not in call  # each argument cut
    assert call.endswith(", …)") and len(call) <= 120  # and the whole call
    raw = log.encode()
    assert b"\x1b" not in raw and "\u202e".encode() not in raw
    assert "jobs:echo('\\x1b[1m\\u202e\\nforged')" in ended_line(log, hostile.id)
    assert not any(line.startswith("forged") for line in log.splitlines())
    # One line per job at INFO: "started" is a DEBUG line.
    assert " started" not in log and " DEBUG " not in log


def test_started_is_a_debug_line_and_a_failure_names_the_call(queue: Queue, run_burst) -> None:
    ok = queue.enqueue("jobs:echo", "ada")
    bad = queue.enqueue("jobs:fail", "nope")
    log = run_burst("--log-level", "debug").log()
    [started] = [line for line in log.splitlines() if f"job {ok.id} started: " in line]
    assert f" DEBUG conveyor.worker: job {ok.id} started: jobs:echo('ada') (execution " in started
    assert log.index(started) < log.index(ended_line(log, ok.id))
    failed = ended_line(log, bad.id, "failed")
    assert f" WARNING conveyor.worker: job {bad.id} failed: jobs:fail('nope') (execution " in failed
    assert failed.endswith(": ValueError: nope"), failed


def test_args_are_kept_out_of_the_log_when_asked_and_in_json_logs(queue: Queue, run_burst) -> None:
    job = queue.enqueue("jobs:echo", "secret-token")
    log = run_burst("--no-log-args").log()
    assert " finished: jobs:echo (execution " in ended_line(log, job.id) and "secret-token" not in log

    job = queue.enqueue("jobs:echo", "secret-token")
    log = run_burst("--log-format", "json").log()
    [end] = [json.loads(line) for line in log.splitlines() if job.id in line and '"event": "complete"' in line]
    assert end["message"].startswith(f"job {job.id} finished: jobs:echo (execution ") and "secret-token" not in log
    assert end["func"] == "jobs:echo"

    job = queue.enqueue("jobs:echo", "shown-token")
    log = run_burst("--log-format", "json", "--log-level", "debug", env={"CONVEYOR_LOG_ARGS": "true"}).log()
    for event, how in (("start", "started"), ("complete", "finished")):
        [rec] = [json.loads(line) for line in log.splitlines() if job.id in line and f'"event": "{event}"' in line]
        assert rec["message"].startswith(f"job {job.id} {how}: jobs:echo('shown-token') (execution ")


def test_args_that_cannot_be_shown_do_not_stop_the_job(queue: Queue, conn: redis.Redis, run_burst) -> None:
    pickled = Queue("default", connection=conn, serializer="pickle").enqueue("jobs:identity", "pickled-secret")
    huge = queue.enqueue("jobs:identity", "y" * 100_000)
    log = run_burst("--allow-pickle").log()
    for job in (pickled, huge):
        assert f"job {job.id} finished: jobs:identity (args not shown) (execution " in ended_line(log, job.id)
        assert fetch(conn, job).status is JobStatus.FINISHED
    assert "pickled-secret" not in log and "y" * 30 not in log


def test_a_requeue_keeps_an_error_no_attempt_recorded(queue: Queue, conn: redis.Redis, redis_url: str,
                                                      run_burst) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    conn.hset(queue.keys.job(job.id), "timeout", "soon")  # hand-edited: failed as malformed, never run
    run_burst()
    failed = fetch(conn, job)
    assert failed.status is JobStatus.FAILED and failed.exc_info.type == "MalformedJob" and failed.attempts == []

    assert cli(redis_url, "requeue", job.id).returncode == 0
    conn.hset(queue.keys.job(job.id), "timeout", "5")
    requeued = fetch(conn, job)
    assert requeued.exc_info is None
    assert [(a.exc_type, a.exc_message) for a in requeued.attempts] == [("MalformedJob", failed.exc_info.message)]

    run_burst()
    done = fetch(conn, job)
    assert done.status is JobStatus.FINISHED and done.exc_info is None
    assert [a.exc_type for a in done.attempts] == ["MalformedJob"]
