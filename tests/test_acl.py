"""The README's least-privilege ACL rule, tested with exactly that user; a refusal names the
command that was refused."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

import jobs_faults
from conveyor import ConveyorError, JobStatus, Queue
from conveyor.embedded import EmbeddedRedis
from support import TESTS, WorkerProcess, cli, wait_until


def readme_rule() -> str:
    text = (TESTS.parent / "README.md").read_text()
    [rule] = re.findall(r"^ACL SETUSER conveyor on >PASSWORD (.*)$", text, re.M)
    return rule


@pytest.fixture(scope="module")
def acl_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    yield server
    server.stop()


def user_url(server: EmbeddedRedis, name: str, rule: str) -> str:
    admin = redis.Redis(port=server.port)
    admin.execute_command("ACL", "SETUSER", name, "reset", "on", ">pw-" + name, *rule.split())
    admin.close()
    return f"redis://{name}:pw-{name}@127.0.0.1:{server.port}/0"



def test_everything_runs_as_the_readme_acl_user(acl_server: EmbeddedRedis, tmp_path: Path) -> None:
    url = user_url(acl_server, "conveyor", readme_rule())
    path = str(tmp_path / "runs")
    q = Queue("acl", redis_url=url)
    now = [q.enqueue("jobs_faults:record", path, f"j{i}") for i in range(3)]
    later = q.enqueue_in(0.3, "jobs_faults:record", path, "later")
    held = q.enqueue("jobs_faults:record", path, "held", 30)
    w = WorkerProcess(url, ("-q", "acl", "--with-scheduler", "--concurrency", "4"), tmp_path / "w.log")
    try:
        wait_until(lambda: all(j.refresh().status is JobStatus.FINISHED for j in [*now, later]), 15, "the jobs")
        wait_until(lambda: held.refresh().status is JobStatus.STARTED, 10, "the held job")
        stop = cli(url, "job", "stop", held.id)
        assert stop.returncode == 0, stop.stderr
        assert held.refresh().status is JobStatus.CANCELED
        for args in (("info",), ("doctor",), ("job", "show", now[0].id)):
            res = cli(url, *args)
            assert res.returncode == 0, (args, res.stderr)
        assert jobs_faults.executions(path) == {"j0": 1, "j1": 1, "j2": 1, "later": 1, "held": 1}
        assert "NOPERM" not in w.log() and "refused" not in w.log()
    finally:
        w.stop()


def test_a_user_without_time_is_told_which_command(acl_server: EmbeddedRedis, tmp_path: Path) -> None:
    rule = readme_rule().replace("+time", "")
    url = user_url(acl_server, "notime", rule)
    with pytest.raises(ConveyorError, match=r"refused the TIME command \(in script enqueue\) to this ACL user.*README"):
        Queue("acl2", redis_url=url).enqueue("jobs:add", 1, 2)
    w = WorkerProcess(url, ("-q", "acl2", "--burst"), tmp_path / "w.log")
    try:
        w.wait_log("TIME command", 15)
    finally:
        w.stop()
    res = cli(url, "doctor")
    assert res.returncode != 0 and "Traceback" not in res.stderr


def test_a_wrong_password_is_named(acl_server: EmbeddedRedis) -> None:
    user_url(acl_server, "someone", readme_rule())
    url = f"redis://someone:wrong@127.0.0.1:{acl_server.port}/0"
    res = cli(url, "info")
    assert res.returncode == 1 and "refused the credentials" in res.stderr
    assert "wrong" not in res.stderr.replace("wrong user", "") and "Traceback" not in res.stderr
