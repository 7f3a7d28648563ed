"""Key prefixes: two apps on one Redis never see each other's jobs, workers or commands."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import redis

import jobs_faults
from conveyor import Job, JobStatus, NoSuchJob, Queue, keys
from conveyor.errors import ConfigError
from support import wait_until, worker_id
from test_cli import cli, ok


@pytest.mark.slow
def test_apps_with_different_prefixes_share_a_redis_unseen(conn: redis.Redis, redis_url: str, spawn_worker,
                                                           tmp_path: Path) -> None:
    path = str(tmp_path / "runs")
    a, b = Queue("default", connection=conn, prefix="app-a"), Queue("default", connection=conn, prefix="app-b")
    ja = [a.enqueue("jobs_faults:record", path, f"a{i}") for i in range(5)]
    jb = [b.enqueue("jobs_faults:record", path, f"b{i}") for i in range(5)]
    # The same queue name, different keys: every key of app-a starts with its prefix.
    assert all(k.startswith(b"app-a:") or k.startswith(b"app-b:") for k in conn.keys("*"))
    assert a.count == 5 and b.count == 5

    # A worker of app-a runs app-a's jobs only, and only app-a knows it.
    wa = spawn_worker("--prefix", "app-a", "--burst")
    assert wa.wait(30) == 0, wa.log()
    ran = jobs_faults.executions(path)
    assert {t for t in ran} == {f"a{i}" for i in range(5)} and all(n == 1 for n in ran.values())
    assert all(j.refresh().status is JobStatus.FINISHED for j in ja)
    assert all(j.refresh().status is JobStatus.QUEUED for j in jb)
    assert b.count == 5

    # Looking up by ID stays inside the prefix; so do the CLI's views.
    with pytest.raises(NoSuchJob):
        Job.fetch(ja[0].id, conn, prefix="app-b")
    assert Job.fetch(ja[0].id, conn, prefix="app-a").status is JobStatus.FINISHED
    info_a = json.loads(ok(redis_url, "info", "--json", "--prefix", "app-a"))
    info_b = json.loads(ok(redis_url, "info", "--json", "--prefix", "app-b"))
    assert [(q["name"], q["finished"], q["ready"]) for q in info_a["queues"]] == [("default", 5, 0)]
    assert [(q["name"], q["finished"], q["ready"]) for q in info_b["queues"]] == [("default", 0, 5)]
    assert json.loads(ok(redis_url, "info", "--json"))["queues"] == []  # the default prefix has nothing
    shown = cli(redis_url, "job", "show", jb[0].id, "--prefix", "app-a")
    assert shown.returncode != 0 and "no job" in shown.stderr


def test_a_stop_command_reaches_only_its_own_prefix(conn: redis.Redis, redis_url: str, spawn_worker,
                                                    tmp_path: Path) -> None:
    path = str(tmp_path / "runs")
    a, b = Queue("work", connection=conn, prefix="app-a"), Queue("work", connection=conn, prefix="app-b")
    wa = spawn_worker("--prefix", "app-a", "-q", "work", "--concurrency", "1")
    wb = spawn_worker("--prefix", "app-b", "-q", "work", "--concurrency", "1")
    # The same job ID in both apps, both running.
    ja = a.enqueue("jobs_faults:record", path, "a", 30, job_id="same-id")
    jb = b.enqueue("jobs_faults:record", path, "b", 30, job_id="same-id")
    wait_until(lambda: jobs_faults.executions(path) == {"a": 1, "b": 1}, 15, "both jobs to start")
    for space in (keys.Keyspace("app-a"), keys.Keyspace("app-b")):
        channel = space.commands(0)
        wait_until(lambda: dict(conn.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1, 10, "a listener")
    ok(redis_url, "job", "stop", "same-id", "--prefix", "app-a")
    assert ja.refresh().status is JobStatus.CANCELED
    assert jb.refresh().status is JobStatus.STARTED  # app-b's job of the same ID runs on
    assert conn.zscore(keys.Keyspace("app-b").workers, worker_id(wb)) is not None
    assert conn.zscore(keys.Keyspace("app-a").workers, worker_id(wb)) is None
    ok(redis_url, "job", "stop", "same-id", "--prefix", "app-b")
    assert jb.refresh().status is JobStatus.CANCELED
    for w in (wa, wb):
        w.signal(signal.SIGTERM)
        assert w.wait(15) == 0


@pytest.mark.parametrize("bad", ["", "has space", "{tag}", "trailing:", "x" * 65, "ctl\x1b"])
def test_a_bad_prefix_is_named(conn: redis.Redis, redis_url: str, bad: str) -> None:
    with pytest.raises(ConfigError, match="key prefix") if bad else pytest.raises(ConfigError, match="prefix"):
        keys.check_prefix(bad)
    if bad and "\x1b" not in bad:
        res = cli(redis_url, "info", "--prefix", bad)
        assert res.returncode == 2 and "key prefix" in res.stderr and "Traceback" not in res.stderr
        with pytest.raises(ConfigError):
            Queue("q", connection=conn, prefix=bad)


def test_prefix_from_the_environment(conn: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONVEYOR_PREFIX", "from-env")
    job = Queue("default", connection=conn).enqueue("jobs:add", 1, 2)
    assert conn.exists(f"from-env:{{q:default}}:job:{job.id}")
    assert conn.sismember("from-env:{fleet}:queues", "default")
