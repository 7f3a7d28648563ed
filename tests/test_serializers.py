"""Serializers: round trips in-process and through a real worker, pickle opt-in, bad payloads."""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
import redis

from conveyor import Job, JobStatus, Queue, SerializationError
from conveyor.keys import QueueKeys
from conveyor.serializers import get_serializer

UTC_PLUS_530 = dt.timezone(dt.timedelta(hours=5, minutes=30))

# name -> value; each must come back equal and of exactly the same type.
VALUES: dict[str, Any] = {
    "datetime-naive": dt.datetime(2024, 1, 2, 3, 4, 5, 678901),
    "datetime-utc": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.UTC),
    "datetime-offset": dt.datetime(1999, 12, 31, 23, 59, 59, 1, tzinfo=UTC_PLUS_530),
    "date": dt.date(2024, 2, 29),
    "time": dt.time(1, 2, 3, 4),
    "time-tz": dt.time(23, 0, tzinfo=UTC_PLUS_530),
    "timedelta": dt.timedelta(days=3, seconds=5, microseconds=7),
    "timedelta-negative": dt.timedelta(days=-1, seconds=5, microseconds=7),
    "bytes": b"\x00\xffbinary\x80",
    "bytes-empty": b"",
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "decimal": decimal.Decimal("1.10"),
    "decimal-big": decimal.Decimal("-12345678901234567890.000000000000000001"),
    "set": {1, 2, "three"},
    "set-empty": set(),
    "unicode": "héllo ☃ 𝄞 日本語 \u0000 \"quoted\"",
    "big-int": 2**62,
    "float": 0.1,
    "none": None,
    "bool": True,
    "nested": {
        "when": dt.datetime(2020, 5, 17, 12, 0, tzinfo=dt.UTC),
        "list": [1, [2, [3, {"deep": {dt.date(2021, 1, 1).isoformat(): b"x"}}]]],
        "ids": [uuid.UUID(int=1), uuid.UUID(int=2)],
        "money": {"price": decimal.Decimal("9.99"), "tags": {"a", "b"}},
        "ü": ["ß", {"d": dt.timedelta(hours=1)}],
    },
}


def assert_same(got: Any, want: Any, path: str = "value") -> None:
    """Equal, and of exactly the same type all the way down."""
    assert type(got) is type(want), f"{path}: {type(got).__name__} != {type(want).__name__} ({got!r} vs {want!r})"
    if isinstance(want, dict):
        assert set(got) == set(want), path
        for k in want:
            assert_same(got[k], want[k], f"{path}[{k!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same(g, w, f"{path}[{i}]")
    else:
        assert got == want, path
        if isinstance(want, (dt.datetime, dt.time)):
            assert got.utcoffset() == want.utcoffset(), path


# -- in-process round trips --------------------------------------------------------------


@pytest.mark.parametrize("ser", ["json", "msgpack", "pickle"])
@pytest.mark.parametrize("name", list(VALUES))
def test_round_trip_direct(ser: str, name: str) -> None:
    s = get_serializer(ser)
    data = s.dumps(VALUES[name])
    assert isinstance(data, bytes)
    assert_same(s.loads(data), VALUES[name])


def test_json_payload_is_readable_text() -> None:
    data = get_serializer("json").dumps({"when": dt.date(2024, 1, 1), "s": "☃"})
    text = data.decode("utf-8")
    assert '"$conveyor":"date"' in text and "2024-01-01" in text and "☃" in text


def test_json_keeps_user_dicts_that_look_like_tags_but_are_not() -> None:
    s = get_serializer("json")
    plain = {"$conveyor": "date", "v": "2024-01-01", "extra": 1}
    assert_same(s.loads(s.dumps(plain)), plain)


@pytest.mark.parametrize("ser", ["json", "msgpack"])
def test_tuples_come_back_as_lists(ser: str) -> None:
    """As documented: tuples are JSON arrays, like with plain JSON."""
    s = get_serializer(ser)
    assert_same(s.loads(s.dumps((1, "two", (3, 4)))), [1, "two", [3, 4]])


@pytest.mark.parametrize("ser", ["json", "msgpack"])
def test_set_of_tuples_round_trip(ser: str) -> None:
    s = get_serializer(ser)
    value = {(1, 2), (3, 4)}
    assert s.loads(s.dumps(value)) == value


@pytest.mark.parametrize("ser", ["json", "msgpack"])
@pytest.mark.parametrize("bad", [object(), lambda: 0, complex(1, 2)], ids=["object", "lambda", "complex"])
def test_unsupported_types_raise_serialization_error(ser: str, bad: Any) -> None:
    with pytest.raises(SerializationError, match="not serializable"):
        get_serializer(ser).dumps({"x": [bad]})


def test_json_circular_reference_is_a_serialization_error_and_encoder_recovers() -> None:
    s = get_serializer("json")
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="JSON"):
        s.dumps(loop)
    assert s.loads(s.dumps([1, [2]])) == [1, [2]]


@pytest.mark.parametrize("spec", ["yaml", "JSON", "", "pickle2"])
def test_unknown_serializer_name(conn: redis.Redis, spec: str) -> None:
    with pytest.raises(SerializationError, match="unknown serializer"):
        get_serializer(spec)
    with pytest.raises(SerializationError, match="unknown serializer"):
        Queue("default", connection=conn, serializer=spec)


def test_serializer_object_missing_methods_is_rejected(conn: redis.Redis) -> None:
    class Half:
        name = "half"

        def dumps(self, obj: Any) -> bytes:
            return b""

    with pytest.raises(SerializationError, match="loads"):
        Queue("default", connection=conn, serializer=Half())


def test_default_serializer_is_json(queue: Queue, conn: redis.Redis) -> None:
    job = queue.enqueue("jobs:identity", 1)
    assert job.serializer_name == "json"
    assert Job.fetch(job.id, conn).serializer_name == "json"


# -- through a real worker ------------------------------------------------------------------


def _run_all_values(conn: redis.Redis, run_burst, ser: str, *worker_args: str) -> None:
    q = Queue("default", connection=conn, serializer=ser)
    items = [Queue.prepare_data("jobs:identity", (v,), job_id=f"v-{name}") for name, v in VALUES.items()]
    items.append(Queue.prepare_data("jobs:identity", (VALUES,), job_id="v-all"))
    items.append(Queue.prepare_data("jobs:echo", (VALUES["set"], VALUES["bytes"]), {"when": VALUES["datetime-offset"]}, job_id="v-kw"))
    q.enqueue_many(items)
    run_burst(*worker_args)
    for name, value in VALUES.items():
        job = Job.fetch(f"v-{name}", conn)
        assert job.status is JobStatus.FINISHED, (name, job.exc_info)
        assert job.serializer_name == ser
        assert_same(job.args[0], value, f"{name} args")
        assert_same(job.result, value, f"{name} result")
    assert_same(Job.fetch("v-all", conn).result, VALUES)
    assert_same(
        Job.fetch("v-kw", conn).result,
        {"args": [VALUES["set"], VALUES["bytes"]], "kwargs": {"when": VALUES["datetime-offset"]}},
    )


def test_json_round_trip_through_worker(conn: redis.Redis, run_burst) -> None:
    _run_all_values(conn, run_burst, "json")


def test_msgpack_round_trip_through_worker(conn: redis.Redis, run_burst) -> None:
    _run_all_values(conn, run_burst, "msgpack")


def test_msgpack_through_process_pool(conn: redis.Redis, run_burst) -> None:
    q = Queue("default", connection=conn, serializer="msgpack")
    value = {"b": b"\x01", "d": decimal.Decimal("2.5"), "t": dt.datetime(2024, 1, 1, tzinfo=dt.UTC)}
    job = q.enqueue("jobs:identity", value)
    run_burst("--pool", "process", "-c", "1")
    assert_same(Job.fetch(job.id, conn).result, value)


def test_pickle_runs_with_allow_pickle(conn: redis.Redis, run_burst) -> None:
    q = Queue("default", connection=conn, serializer="pickle")
    value = {"tuple": (1, (2, 3)), "frozen": frozenset({1, 2}), "complex": complex(1, 2), "when": VALUES["datetime-offset"]}
    job = q.enqueue("jobs:identity", value)
    assert Job.fetch(job.id, conn).serializer_name == "pickle"
    run_burst("--allow-pickle")
    done = q.fetch_job(job.id)  # a pickle queue has chosen to trust Redis
    assert done.status is JobStatus.FINISHED, done.exc_info
    assert_same(done.result, value)
    assert_same(Job.fetch(job.id, conn, allow_pickle=True).result, value)


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_pickle_refused_without_allow_pickle(conn: redis.Redis, run_burst, pool: str) -> None:
    q = Queue("default", connection=conn, serializer="pickle")
    job = q.enqueue("jobs:identity", (1, 2))
    ok = Queue("default", connection=conn).enqueue("jobs:add", 1, 2)
    run_burst("--pool", pool, "-c", "1")
    failed = Job.fetch(job.id, conn)
    assert failed.status is JobStatus.FAILED
    assert failed.exc_info.type == "MalformedJob"
    assert "--allow-pickle" in failed.exc_info.message
    assert failed.result is None
    assert job.id in q.failed.job_ids
    assert Job.fetch(ok.id, conn).result == 3


@pytest.mark.parametrize(
    "garbage",
    [b"\xff\xfe not json", b"[1, 2]", b'{"a": 1, "k": {}}', b'{"a": []}', b'{"$conveyor": "nope", "v": 1}'],
    ids=["binary", "list", "args-not-list", "no-kwargs", "unknown-tag"],
)
def test_malformed_payload_fails_only_that_job(queue: Queue, conn: redis.Redis, run_burst, garbage: bytes) -> None:
    before = queue.enqueue("jobs:add", 1, 2)
    bad = queue.enqueue("jobs:add", 3, 4)
    after = queue.enqueue("jobs:add", 5, 6)
    conn.hset(QueueKeys("default").job(bad.id), "payload", garbage)
    run_burst()
    failed = Job.fetch(bad.id, conn)
    assert failed.status is JobStatus.FAILED
    assert failed.exc_info.type == "MalformedJob"
    assert failed.exc_info.message
    assert queue.failed.job_ids == [bad.id]
    assert Job.fetch(before.id, conn).result == 3
    assert Job.fetch(after.id, conn).result == 11
    assert sorted(queue.finished.job_ids) == sorted([before.id, after.id])


def test_malformed_msgpack_payload(conn: redis.Redis, run_burst) -> None:
    q = Queue("default", connection=conn, serializer="msgpack")
    bad = q.enqueue("jobs:identity", 1)
    good = q.enqueue("jobs:identity", 2)
    conn.hset(QueueKeys("default").job(bad.id), "payload", b"\xc1\xc1\xc1")
    run_burst()
    failed = Job.fetch(bad.id, conn)
    assert failed.status is JobStatus.FAILED and failed.exc_info.type == "MalformedJob"
    assert "msgpack" in failed.exc_info.message
    assert Job.fetch(good.id, conn).result == 2


def test_unknown_serializer_name_in_job_hash_fails_the_job(queue: Queue, conn: redis.Redis, run_burst) -> None:
    bad = queue.enqueue("jobs:identity", 1)
    good = queue.enqueue("jobs:identity", 2)
    conn.hset(QueueKeys("default").job(bad.id), "ser", "yaml")
    run_burst()
    failed = Job.fetch(bad.id, conn)
    assert failed.status is JobStatus.FAILED and failed.exc_info.type == "MalformedJob"
    assert "yaml" in failed.exc_info.message
    assert Job.fetch(good.id, conn).result == 2


def test_unserializable_result_fails_the_job(queue: Queue, conn: redis.Redis, run_burst) -> None:
    job = queue.enqueue("jobs:unserializable_result")
    run_burst()
    failed = Job.fetch(job.id, conn)
    assert failed.status is JobStatus.FAILED
    assert failed.exc_info.type == "ResultNotSerializable"
    assert "object" in failed.exc_info.message
