"""Clients unpickle only when asked: Job.fetch, Queue and `conveyor job show` refuse a
pickled job's args and result by default, without ever calling pickle.loads."""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor import InvalidArgument, Job, JobStatus, Queue
from conveyor.admin import PICKLED
from conveyor.errors import ConveyorError, PickleRefused
from support import cli


class _Touch:
    """Unpickling this creates a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


def planted(conn: redis.Redis, queue: Queue, marker: Path) -> Job:
    """A job someone with write access to Redis turned into a pickle that runs code."""
    job = queue.enqueue("jobs:identity", 1)
    evil = pickle.dumps(_Touch(marker))
    conn.hset(queue.keys.job(job.id), mapping={"ser": "pickle", "payload": evil, "result": evil,
                                               "status": "finished"})
    return job


def test_fetch_refuses_pickle_unless_asked(conn: redis.Redis, queue: Queue, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    job = planted(conn, queue, marker)
    fetched = Job.fetch(job.id, conn)
    for read in (lambda: fetched.args, lambda: fetched.kwargs, lambda: fetched.result):
        with pytest.raises(PickleRefused) as info:
            read()
        message = str(info.value)
        assert f"job {job.id!r} is pickled" in message and "whoever can write to Redis" in message
        assert "allow_pickle=True" in message and "--allow-pickle" in message and "\n" not in message
    assert isinstance(info.value, ConveyorError)
    assert fetched.status is JobStatus.FINISHED and fetched.func_path == "jobs:identity"  # the rest still reads
    assert not marker.exists()

    Job.fetch(job.id, conn, allow_pickle=True).result  # asked for: it is unpickled (and runs)
    assert marker.exists()


def test_queue_allows_pickle_only_when_it_chose_pickle(conn: redis.Redis, tmp_path: Path) -> None:
    plain = Queue("default", connection=conn)
    assert plain.allow_pickle is False
    job = planted(conn, plain, tmp_path / "ran")
    with pytest.raises(PickleRefused):
        plain.fetch_job(job.id).result
    with pytest.raises(PickleRefused):
        plain.enqueue("jobs:add", 1, 2, job_id=job.id, if_exists="ignore").args  # the existing job comes back
    assert not (tmp_path / "ran").exists()
    trusting = Queue("default", connection=conn, allow_pickle=True)
    trusting.fetch_job(job.id).result
    assert (tmp_path / "ran").exists()

    pickled = Queue("default", connection=conn, serializer="pickle")
    assert pickled.allow_pickle is True
    mine = pickled.enqueue("jobs:identity", (1, 2))
    assert mine.args == [(1, 2)] and pickled.fetch_job(mine.id).args == [(1, 2)]
    strict = Queue("default", connection=conn, serializer="pickle", allow_pickle=False)
    with pytest.raises(PickleRefused):
        strict.fetch_job(mine.id).args


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_allow_pickle_must_be_a_bool(conn: redis.Redis, value: Any) -> None:
    with pytest.raises(InvalidArgument, match="allow_pickle must be True or False"):
        Job.fetch("any", conn, allow_pickle=value)
    if value is not None:  # None is the queue's "decide from my serializer"
        with pytest.raises(InvalidArgument, match="allow_pickle must be True or False"):
            Queue("default", connection=conn, allow_pickle=value)



def test_job_show_refuses_pickle_in_one_line_and_shows_the_rest(conn: redis.Redis, queue: Queue, redis_url: str,
                                                               tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    job = planted(conn, queue, marker)

    text = cli(redis_url, "job", "show", job.id)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    [refused] = [line for line in lines if line.startswith("refused")]
    assert "is pickled" in refused and "--allow-pickle" in refused
    assert re.search(rf"^args\s+{re.escape(PICKLED)}$", text.stdout, re.M), text.stdout
    assert re.search(r"^status\s+finished$", text.stdout, re.M) and "jobs:identity" in text.stdout

    data = json.loads(cli(redis_url, "job", "show", job.id, "--json").stdout)
    assert data["args"] == data["kwargs"] == data["result"] == PICKLED
    assert "--allow-pickle" in data["refused"] and data["status"] == "finished"
    assert not marker.exists()  # never unpickled

    allowed = cli(redis_url, "job", "show", job.id, "--json", "--allow-pickle")
    assert allowed.returncode == 0 and marker.exists()  # asked for: unpickled
    assert "refused" not in json.loads(allowed.stdout)


def test_job_show_allow_pickle_shows_a_real_pickled_job(conn: redis.Redis, redis_url: str, run_burst) -> None:
    q = Queue("default", connection=conn, serializer="pickle")
    job = q.enqueue("jobs:identity", {"t": (1, 2)})
    run_burst("--allow-pickle")
    data = json.loads(cli(redis_url, "job", "show", job.id, "--json", "--allow-pickle").stdout)
    assert data["status"] == "finished" and data["result"] == {"t": [1, 2]} and data["args"] == [{"t": [1, 2]}]
