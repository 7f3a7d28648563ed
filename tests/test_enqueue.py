"""Queue.enqueue / enqueue_call / enqueue_many: what gets written, and what is refused.

Everything runs against the session's real redis-server; where a job must run,
a real `conveyor worker --burst` process runs it.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import redis

import jobs
from conveyor import (
    ConveyorError,
    InvalidArgument,
    InvalidFunction,
    InvalidJobId,
    InvalidQueueName,
    InvalidTransition,
    Job,
    JobExists,
    JobStatus,
    NoSuchJob,
    Queue,
    SerializationError,
)
from conveyor.keys import QueueKeys
from support import WORKER_ENV, wait_until


def job_keys(conn: redis.Redis, queue: str = "default") -> set[str]:
    prefix = QueueKeys(queue).job_prefix
    return {k.decode() for k in conn.scan_iter(match=prefix.replace("{", "\\{").replace("}", "\\}") + "*")}


# -- functions ---------------------------------------------------------------------


def test_callable_is_stored_as_import_path(queue: Queue, conn: redis.Redis) -> None:
    job = queue.enqueue(jobs.add, 1, 2)
    assert job.func_path == "jobs:add"
    stored = conn.hget(queue.keys.job(job.id), "func")
    assert stored == b"jobs:add"
    assert Job.fetch(job.id, conn).func_path == "jobs:add"


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("jobs:add", "jobs:add"),
        ("jobs.add", "jobs:add"),
        ("pkg.mod:fn", "pkg.mod:fn"),
        ("pkg.mod.fn", "pkg.mod:fn"),
        ("pkg.mod:Klass.method", "pkg.mod:Klass.method"),
    ],
)
def test_string_paths_are_normalized(queue: Queue, conn: redis.Redis, spec: str, expected: str) -> None:
    job = queue.enqueue(spec)
    assert job.func_path == expected
    assert Job.fetch(job.id, conn).func_path == expected


def test_every_spelling_of_a_function_runs_on_a_worker(queue: Queue, conn: redis.Redis, run_burst) -> None:
    a = queue.enqueue(jobs.add, 1, 2)
    b = queue.enqueue("jobs:add", 3, 4)
    c = queue.enqueue("jobs.add", 5, 6)
    run_burst()
    assert [Job.fetch(j.id, conn).result for j in (a, b, c)] == [3, 7, 11]


def _nested_factory():
    def inner() -> None:
        return None

    return inner


class _Holder:
    def method(self) -> None:
        return None


@pytest.mark.parametrize(
    "func, fragment",
    [
        (lambda: None, "lambda"),
        (_nested_factory(), "nested"),
        (42, "neither a callable"),
        (None, "neither a callable"),
        (_Holder().method, "cannot be stored as an import path"),
        ("not a path", "invalid function path"),
        ("jobs", "invalid function path"),
        ("jobs:", "invalid function path"),
        (":add", "invalid function path"),
        ("1mod:fn", "invalid function path"),
        ("a..b:fn", "invalid function path"),
    ],
    ids=["lambda", "nested", "int", "None", "bound-method", "spaces", "bare-module", "no-attr", "no-module",
         "digit-module", "empty-part"],
)
def test_unimportable_functions_are_rejected(queue: Queue, conn: redis.Redis, func, fragment: str) -> None:
    with pytest.raises(InvalidFunction, match=fragment):
        queue.enqueue(func)
    assert queue.count == 0
    assert conn.dbsize() == 0


def test_function_defined_in_main_is_rejected(redis_url: str, conn: redis.Redis) -> None:
    script = (
        "import sys\n"
        "from conveyor import Queue, InvalidFunction\n"
        "def task():\n"
        "    return 1\n"
        f"q = Queue('default', redis_url={redis_url!r})\n"
        "try:\n"
        "    q.enqueue(task)\n"
        "except InvalidFunction as exc:\n"
        "    print('REJECTED', exc)\n"
        "    sys.exit(0)\n"
        "print('ACCEPTED')\n"
        "sys.exit(1)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=WORKER_ENV, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "REJECTED" in proc.stdout and "__main__" in proc.stdout
    assert conn.dbsize() == 0


# -- job IDs -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "job_id, why",
    [
        ("", "must not be empty"),
        ("x" * 129, "129 characters long; the limit is 128"),
        ("a:b", "contains ':'"),
        ("a b", "whitespace"),
        ("a\tb", "whitespace"),
        ("a\nb", "whitespace"),
        ("a{b", r"'\{' or '\}'"),
        ("a}b", r"'\{' or '\}'"),
        (123, "must be a string"),
    ],
    ids=["empty", "too-long", "colon", "space", "tab", "newline", "open-brace", "close-brace", "not-str"],
)
def test_invalid_job_ids_are_rejected_with_reason(queue: Queue, conn: redis.Redis, job_id, why: str) -> None:
    with pytest.raises(InvalidJobId, match=why):
        queue.enqueue("jobs:add", 1, 2, job_id=job_id)
    assert conn.dbsize() == 0


def test_job_id_of_exactly_128_chars_is_accepted(queue: Queue, conn: redis.Redis) -> None:
    job_id = "a" * 128
    job = queue.enqueue("jobs:add", 1, 2, job_id=job_id)
    assert job.id == job_id
    assert queue.job_ids == [job_id]
    assert Job.fetch(job_id, conn).args == [1, 2]


def test_generated_ids_are_unique_and_plain(queue: Queue) -> None:
    created = queue.enqueue_many([Queue.prepare_data("jobs:add", (i, i)) for i in range(200)])
    ids = [j.id for j in created]
    assert len(set(ids)) == 200
    for job_id in ids:
        assert ":" not in job_id and 0 < len(job_id) <= 128


# -- existing IDs ----------------------------------------------------------------------


def test_enqueue_existing_id_raises_job_exists(queue: Queue, conn: redis.Redis) -> None:
    queue.enqueue("jobs:add", 1, 2, job_id="dup")
    with pytest.raises(JobExists) as info:
        queue.enqueue("jobs:echo", "other", job_id="dup")
    assert info.value.job_ids == ["dup"]
    assert "'dup'" in str(info.value) and "if_exists='ignore'" in str(info.value)
    job = Job.fetch("dup", conn)
    assert job.func_path == "jobs:add" and job.args == [1, 2]
    assert queue.job_ids == ["dup"]


def test_if_exists_ignore_returns_existing_job_untouched(queue: Queue, conn: redis.Redis) -> None:
    first = queue.enqueue("jobs:add", 1, 2, job_id="dup", result_ttl=77)
    again = queue.enqueue("jobs:echo", "other", job_id="dup", if_exists="ignore")
    assert again.id == "dup"
    assert again.func_path == "jobs:add"
    assert again.args == [1, 2]
    assert again.result_ttl == 77
    assert again.enqueued_at == pytest.approx(Job.fetch("dup", conn).enqueued_at)
    stored = Job.fetch("dup", conn)
    assert stored.func_path == "jobs:add" and stored.args == [1, 2] and stored.result_ttl == 77
    assert queue.job_ids == ["dup"]  # not pushed a second time
    assert first.id == again.id


def test_if_exists_ignore_in_a_batch_creates_only_new_jobs(queue: Queue, conn: redis.Redis) -> None:
    queue.enqueue("jobs:add", 1, 2, job_id="old")
    out = queue.enqueue_many(
        [Queue.prepare_data("jobs:identity", ("new",), job_id="new"), Queue.prepare_data("jobs:identity", ("x",), job_id="old")],
        if_exists="ignore",
    )
    assert [j.id for j in out] == ["new", "old"]
    assert out[0].args == ["new"] and out[0].func_path == "jobs:identity"
    assert out[1].args == [1, 2] and out[1].func_path == "jobs:add"
    assert queue.job_ids == ["old", "new"]


def test_if_exists_ignore_on_a_finished_job_does_not_requeue_it(queue: Queue, conn: redis.Redis, run_burst) -> None:
    queue.enqueue("jobs:add", 1, 2, job_id="done")
    run_burst()
    again = queue.enqueue("jobs:add", 5, 5, job_id="done", if_exists="ignore")
    assert again.status is JobStatus.FINISHED
    assert again.result == 3
    assert queue.count == 0


@pytest.mark.parametrize("value", ["replace", "", "IGNORE", None])
def test_invalid_if_exists_value(queue: Queue, conn: redis.Redis, value) -> None:
    with pytest.raises(InvalidArgument, match="if_exists"):
        queue.enqueue("jobs:add", 1, 2, if_exists=value)
    assert conn.dbsize() == 0


# -- enqueue_many atomicity --------------------------------------------------------------


def test_batch_with_one_existing_id_writes_nothing(queue: Queue, conn: redis.Redis) -> None:
    queue.enqueue("jobs:add", 1, 2, job_id="taken")
    before = job_keys(conn)
    batch = [
        Queue.prepare_data("jobs:add", (1, 1), job_id="fresh-1"),
        Queue.prepare_data("jobs:add", (2, 2), job_id="taken"),
        Queue.prepare_data("jobs:add", (3, 3), job_id="fresh-2"),
    ]
    with pytest.raises(JobExists) as info:
        queue.enqueue_many(batch)
    assert info.value.job_ids == ["taken"]
    assert queue.count == 1
    assert queue.job_ids == ["taken"]
    assert job_keys(conn) == before
    assert not conn.exists(queue.keys.job("fresh-1"), queue.keys.job("fresh-2"))
    assert Job.fetch("taken", conn).args == [1, 2]


def test_batch_with_generated_and_one_existing_id_writes_nothing(queue: Queue, conn: redis.Redis) -> None:
    queue.enqueue("jobs:add", 1, 2, job_id="taken")
    batch = [Queue.prepare_data("jobs:add", (i, i)) for i in range(5)] + [Queue.prepare_data("jobs:add", job_id="taken")]
    with pytest.raises(JobExists):
        queue.enqueue_many(batch)
    assert queue.count == 1
    assert job_keys(conn) == {queue.keys.job("taken")}


def test_duplicate_ids_inside_one_batch_are_rejected(queue: Queue, conn: redis.Redis) -> None:
    batch = [
        Queue.prepare_data("jobs:add", (1, 1), job_id="same"),
        Queue.prepare_data("jobs:add", (2, 2), job_id="other"),
        Queue.prepare_data("jobs:add", (3, 3), job_id="same"),
    ]
    with pytest.raises(InvalidJobId, match="same"):
        queue.enqueue_many(batch)
    assert conn.dbsize() == 0


def test_invalid_id_late_in_batch_writes_nothing(queue: Queue, conn: redis.Redis) -> None:
    batch = [Queue.prepare_data("jobs:add", (1, 1), job_id="ok"), Queue.prepare_data("jobs:add", (2, 2), job_id="bad id")]
    with pytest.raises(InvalidJobId, match="whitespace"):
        queue.enqueue_many(batch)
    assert conn.dbsize() == 0


@pytest.mark.parametrize(
    "bad, type_name",
    [(object(), "object"), (lambda: 1, "function")],
    ids=["object", "lambda"],
)
def test_unserializable_argument_names_the_argument_and_writes_nothing(
    queue: Queue, conn: redis.Redis, bad, type_name: str
) -> None:
    queue.enqueue("jobs:add", 1, 2, job_id="existing")
    count, size = queue.count, conn.dbsize()
    with pytest.raises(SerializationError, match=rf"argument 1 \({type_name}\)"):
        queue.enqueue("jobs:echo", "fine", bad)
    with pytest.raises(SerializationError, match=rf"keyword argument 'cb' \({type_name}\)"):
        queue.enqueue("jobs:echo", "fine", cb=bad)
    assert queue.count == count
    assert conn.dbsize() == size


def test_unserializable_argument_in_batch_writes_nothing(queue: Queue, conn: redis.Redis) -> None:
    batch = [
        Queue.prepare_data("jobs:identity", (1,), job_id="b0"),
        Queue.prepare_data("jobs:identity", (2,), job_id="b1"),
        Queue.prepare_data("jobs:identity", (object(),), job_id="b2"),
    ]
    with pytest.raises(SerializationError) as info:
        queue.enqueue_many(batch)
    msg = str(info.value)
    assert "job 2 of the batch" in msg and "argument 0 (object)" in msg
    assert queue.count == 0
    assert conn.dbsize() == 0


def test_serialization_error_does_not_poison_the_next_enqueue(queue: Queue, conn: redis.Redis) -> None:
    shared = {"k": [1, 2]}
    with pytest.raises(SerializationError):
        queue.enqueue("jobs:identity", [shared, object()])
    job = queue.enqueue("jobs:identity", [shared, shared])
    assert Job.fetch(job.id, conn).args == [[{"k": [1, 2]}, {"k": [1, 2]}]]


def test_enqueue_many_preserves_order(queue: Queue) -> None:
    created = queue.enqueue_many(
        [Queue.prepare_data("jobs:identity", (i,), job_id=f"j{i:03d}" if i % 3 else None) for i in range(60)]
    )
    assert queue.job_ids == [j.id for j in created]
    assert [j.args for j in created] == [[i] for i in range(60)]


def test_enqueue_many_empty_batch(queue: Queue, conn: redis.Redis) -> None:
    assert queue.enqueue_many([]) == []
    assert conn.dbsize() == 0


def test_count_and_len(queue: Queue) -> None:
    assert queue.count == 0 and len(queue) == 0
    queue.enqueue("jobs:add", 1, 2)
    queue.enqueue_many([Queue.prepare_data("jobs:add", (i, i)) for i in range(4)])
    assert queue.count == 5
    assert len(queue) == 5
    other = Queue("other", connection=queue.connection)
    assert other.count == 0


def test_enqueue_call_passes_clashing_kwargs_to_the_job(queue: Queue, conn: redis.Redis, run_burst) -> None:
    job = queue.enqueue_call(
        "jobs:echo", args=(1,), kwargs={"timeout": 3, "job_id": "kw", "result_ttl": 9}, job_id="call-1", timeout=20
    )
    assert job.id == "call-1"
    assert job.timeout == 20.0
    assert job.kwargs == {"timeout": 3, "job_id": "kw", "result_ttl": 9}
    run_burst()
    assert Job.fetch("call-1", conn).result == {"args": [1], "kwargs": {"timeout": 3, "job_id": "kw", "result_ttl": 9}}


def test_enqueue_passes_args_and_kwargs(queue: Queue, conn: redis.Redis) -> None:
    job = queue.enqueue("jobs:echo", 1, "two", three=3)
    fetched = Job.fetch(job.id, conn)
    assert fetched.args == [1, "two"] and fetched.kwargs == {"three": 3}
    assert fetched.status is JobStatus.QUEUED
    assert fetched.enqueued_at is not None


# -- per-job options in a batch ---------------------------------------------------------


def test_enqueue_many_mixed_options_store_each_jobs_own_values(conn: redis.Redis) -> None:
    q = Queue("mixed", connection=conn, default_timeout=30, result_ttl=200, failure_ttl=300)
    out = q.enqueue_many(
        [
            Queue.prepare_data("jobs:add", (1, 2), job_id="m1", timeout=5, result_ttl=100),
            Queue.prepare_data(jobs.echo, (), {"k": 1}, job_id="m2", failure_ttl=60),
            Queue.prepare_data("jobs.identity", ("x",), job_id="m3"),
            Queue.prepare_data("jobs:add", (3, 4), job_id="m4", result_ttl=-1, failure_ttl=0, timeout=1.5),
        ]
    )
    expected = {
        "m1": ("jobs:add", [1, 2], {}, 5.0, 100, 300),
        "m2": ("jobs:echo", [], {"k": 1}, 30.0, 200, 60),
        "m3": ("jobs:identity", ["x"], {}, 30.0, 200, 300),
        "m4": ("jobs:add", [3, 4], {}, 1.5, -1, 0),
    }
    for returned in out:
        for job in (returned, Job.fetch(returned.id, conn, queue="mixed")):
            got = (job.func_path, job.args, job.kwargs, job.timeout, job.result_ttl, job.failure_ttl)
            assert got == expected[job.id], job.id
            assert job.status is JobStatus.QUEUED
    assert q.job_ids == ["m1", "m2", "m3", "m4"]


def test_enqueue_many_mixed_timeouts_without_queue_default(queue: Queue, conn: redis.Redis) -> None:
    queue.enqueue_many(
        [
            Queue.prepare_data("jobs:add", (1, 2), job_id="t1", timeout=7),
            Queue.prepare_data("jobs:add", (1, 2), job_id="t2"),
            Queue.prepare_data("jobs:add", (1, 2), job_id="t3", result_ttl=11),
        ]
    )
    assert Job.fetch("t1", conn).timeout == 7.0
    assert Job.fetch("t2", conn).timeout is None
    t3 = Job.fetch("t3", conn)
    assert t3.timeout is None and t3.result_ttl == 11
    assert t3.failure_ttl in (None, 7 * 24 * 3600)  # unset: the worker's policy (7 days) applies
    assert Job.fetch("t2", conn).result_ttl in (None, 500)
    assert Job.fetch("t1", conn).result_ttl in (None, 500)


def test_batch_with_shared_options_applies_them_to_every_job(queue: Queue, conn: redis.Redis, run_burst) -> None:
    out = queue.enqueue_many(
        [Queue.prepare_data("jobs:add", (i, 1), job_id=f"s{i}", timeout=9, result_ttl=60) for i in range(3)]
    )
    for job in out:
        fetched = Job.fetch(job.id, conn)
        assert (fetched.timeout, fetched.result_ttl) == (9.0, 60)
    run_burst()
    for i in range(3):
        job = Job.fetch(f"s{i}", conn)
        assert job.result == i + 1
        assert 50 <= job.ttl <= 60


# -- queue construction and options ------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["", "a b", "-lead", ".lead", "a:b", "a{b}", "x" * 101, "emoji☃", 5, None],
    ids=["empty", "space", "dash", "dot", "colon", "braces", "too-long", "unicode", "int", "None"],
)
def test_invalid_queue_names(conn: redis.Redis, name) -> None:
    with pytest.raises(InvalidQueueName, match="invalid queue name"):
        Queue(name, connection=conn)


@pytest.mark.parametrize("name", ["a", "x" * 100, "high.priority", "emails_v2", "A-1"])
def test_valid_queue_names(conn: redis.Redis, name: str) -> None:
    q = Queue(name, connection=conn)
    job = q.enqueue("jobs:add", 1, 2)
    assert q.job_ids == [job.id]
    assert Job.fetch(job.id, conn).queue == name


def test_queue_with_both_url_and_connection_is_refused(redis_url: str, conn: redis.Redis) -> None:
    with pytest.raises(ValueError, match="either redis_url or connection"):
        Queue("default", redis_url=redis_url, connection=conn)


def test_queue_from_url(redis_url: str, conn: redis.Redis) -> None:
    q = Queue("default", redis_url=redis_url)
    job = q.enqueue("jobs:add", 1, 2)
    assert Job.fetch(job.id, conn).args == [1, 2]


@pytest.mark.parametrize(
    "options, field",
    [
        ({"result_ttl": -2}, "result_ttl"),
        ({"result_ttl": 1.5}, "result_ttl"),
        ({"result_ttl": "10"}, "result_ttl"),
        ({"result_ttl": True}, "result_ttl"),
        ({"failure_ttl": -5}, "failure_ttl"),
        ({"failure_ttl": 2.0}, "failure_ttl"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
    ],
)
def test_bad_job_options_are_rejected(queue: Queue, conn: redis.Redis, options: dict, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        queue.enqueue("jobs:add", 1, 2, **options)
    with pytest.raises(InvalidArgument, match=field):
        queue.enqueue_many([Queue.prepare_data("jobs:add", (1, 1)), Queue.prepare_data("jobs:add", (1, 2), **options)])
    assert conn.dbsize() == 0


@pytest.mark.parametrize(
    "options, field",
    [
        ({"default_timeout": 0}, "timeout"),
        ({"default_timeout": -3}, "timeout"),
        ({"result_ttl": -2}, "result_ttl"),
        ({"result_ttl": 2.5}, "result_ttl"),
        ({"failure_ttl": "x"}, "failure_ttl"),
        ({"failure_ttl": -100}, "failure_ttl"),
    ],
)
def test_bad_queue_defaults_are_rejected(conn: redis.Redis, options: dict, field: str) -> None:
    with pytest.raises(InvalidArgument, match=field):
        Queue("default", connection=conn, **options)


@pytest.mark.parametrize("ttl", [0, -1, 1, 10**6])
def test_boundary_ttls_are_accepted(queue: Queue, conn: redis.Redis, ttl: int) -> None:
    job = queue.enqueue("jobs:add", 1, 2, result_ttl=ttl, failure_ttl=ttl)
    fetched = Job.fetch(job.id, conn)
    assert (fetched.result_ttl, fetched.failure_ttl) == (ttl, ttl)


# -- fetching ---------------------------------------------------------------------------


def test_fetch_without_queue_searches_known_queues(conn: redis.Redis) -> None:
    Queue("alpha", connection=conn).enqueue("jobs:add", 1, 2, job_id="in-alpha")
    Queue("beta", connection=conn).enqueue("jobs:add", 3, 4, job_id="in-beta")
    a = Job.fetch("in-alpha", conn)
    b = Job.fetch("in-beta", conn)
    assert (a.queue, a.args) == ("alpha", [1, 2])
    assert (b.queue, b.args) == ("beta", [3, 4])


def test_fetch_unknown_id_raises_no_such_job(queue: Queue, conn: redis.Redis) -> None:
    queue.enqueue("jobs:add", 1, 2)
    with pytest.raises(NoSuchJob, match="nope"):
        Job.fetch("nope", conn)
    with pytest.raises(NoSuchJob, match="nope"):
        Job.fetch("nope", conn, queue="default")
    with pytest.raises(NoSuchJob):
        queue.fetch_job("nope")


def test_fetch_with_invalid_id_raises_invalid_job_id(conn: redis.Redis) -> None:
    with pytest.raises(InvalidJobId):
        Job.fetch("a:b", conn)


def test_fetch_by_url(redis_url: str, queue: Queue) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    assert Job.fetch(job.id, redis_url=redis_url).args == [1, 2]


def test_same_id_in_two_queues_needs_queue_argument(conn: redis.Redis) -> None:
    Queue("one", connection=conn).enqueue("jobs:add", 1, 1, job_id="shared")
    Queue("two", connection=conn).enqueue("jobs:add", 2, 2, job_id="shared")
    with pytest.raises(ConveyorError, match="pass queue="):
        Job.fetch("shared", conn)
    assert Job.fetch("shared", conn, queue="one").args == [1, 1]
    assert Job.fetch("shared", conn, queue="two").args == [2, 2]


# -- cancel ------------------------------------------------------------------------------


def test_cancel_queued_job(queue: Queue, conn: redis.Redis, run_burst) -> None:
    keep = queue.enqueue("jobs:add", 1, 2)
    victim = queue.enqueue("jobs:add", 3, 4)
    victim.cancel()
    assert victim.status is JobStatus.CANCELED
    assert victim.ended_at is not None
    assert Job.fetch(victim.id, conn).status is JobStatus.CANCELED
    assert queue.job_ids == [keep.id]
    assert queue.canceled.job_ids == [victim.id]
    run_burst()
    assert Job.fetch(keep.id, conn).result == 3
    after = Job.fetch(victim.id, conn)
    assert after.status is JobStatus.CANCELED and after.result is None and after.deliveries == 0


def test_cancel_twice_is_an_invalid_transition(queue: Queue) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    job.cancel()
    with pytest.raises(InvalidTransition, match="canceled"):
        job.cancel()


def test_cancel_finished_job_is_an_invalid_transition(queue: Queue, conn: redis.Redis, run_burst) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    run_burst()
    with pytest.raises(InvalidTransition, match="finished"):
        job.cancel()
    assert Job.fetch(job.id, conn).status is JobStatus.FINISHED
    assert queue.canceled.job_ids == []


def test_cancel_missing_job(queue: Queue, conn: redis.Redis) -> None:
    job = queue.enqueue("jobs:add", 1, 2, result_ttl=0)
    conn.delete(queue.keys.job(job.id))
    with pytest.raises(NoSuchJob):
        job.cancel()


def test_cancel_started_job_is_an_invalid_transition(queue: Queue, conn: redis.Redis, spawn_worker) -> None:
    job = queue.enqueue("jobs:sleep", 1.5)
    w = spawn_worker("-q", "default")
    wait_until(lambda: job.id in queue.started.job_ids, 15, "job to start")
    with pytest.raises(InvalidTransition, match="started"):
        job.cancel()
    w.signal(signal.SIGTERM)
    assert w.wait(30) == 0
    done = Job.fetch(job.id, conn)
    # It ran to its end, or (a claim reply that reached the worker only after the stop) it
    # went back to the queue un-run and uncharged: a stop starts nothing new.
    if done.status is JobStatus.QUEUED:
        assert job.id in queue.job_ids and done.orphaned == 0
    else:
        assert done.status is JobStatus.FINISHED and done.result == 1.5
