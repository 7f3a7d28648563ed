"""Shared fixtures: a real redis-server per test session, real worker processes.

No fakes: every test talks to a redis-server this session started on a free
port, and workers are `python -m conveyor worker` processes that tests signal.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor import Queue
from conveyor.embedded import EmbeddedRedis
from proxy import Proxy
from support import CALL_FAILED, TESTS, WorkerProcess

sys.path.insert(0, str(TESTS))  # so in-process code can import tests/jobs.py as "jobs"


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.script_flush()
    client.close()
    return redis_server.url


@pytest.fixture
def conn(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def queue(conn: redis.Redis) -> Queue:
    return Queue("default", connection=conn)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[CALL_FAILED] = report.failed
    return report




@pytest.fixture
def spawn_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """spawn_at(url, *args, env=None): a worker on any Redis; every one is stopped at teardown.
    When the test failed, each worker's log tail is printed (pytest shows it with the failure)."""
    started: list[WorkerProcess] = []

    def spawn(url: str, *args: str, env: dict[str, str] | None = None) -> WorkerProcess:
        w = WorkerProcess(url, args, tmp_path / f"worker-{len(started)}.log", env)
        started.append(w)
        return w

    yield spawn
    failed = request.node.stash.get(CALL_FAILED, False)
    for i, w in enumerate(started):
        w.stop()
        if failed:
            spawned = time.strftime("%H:%M:%S", time.localtime(w.spawned_at)) + f"{w.spawned_at % 1:.3f}"[1:]
            print(f"\n--- worker {i} (pid {w.pid}, spawned {spawned}, exit {w.proc.returncode}) log tail ---\n"
                  f"{w.log_path.read_text(errors='replace')[-3000:]}")


@pytest.fixture
def spawn_worker(redis_url: str, spawn_at: Callable[..., WorkerProcess]) -> Callable[..., WorkerProcess]:
    def spawn(*args: str, env: dict[str, str] | None = None, url: str | None = None) -> WorkerProcess:
        return spawn_at(url or redis_url, *args, env=env)

    return spawn


@pytest.fixture
def prefix() -> str:
    """A key prefix of its own, for tests that share one Redis deployment."""
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def run_burst(spawn_worker: Callable[..., WorkerProcess]) -> Callable[..., WorkerProcess]:
    """Run a burst worker to completion and assert it exited 0."""

    def run(*args: str, timeout: float = 60.0, **kw: Any) -> WorkerProcess:
        w = spawn_worker("--burst", *args, **kw)
        code = w.wait(timeout)
        assert code == 0, f"burst worker exited {code}:\n{w.log()}"
        return w

    return run


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own, to stop, restart or put behind a proxy."""
    s = EmbeddedRedis().start()
    yield s
    s.stop()


@pytest.fixture
def proxy(server: EmbeddedRedis) -> Iterator[Proxy]:
    """A TCP proxy in front of ``server`` (tests/proxy.py) that resets, drops or loses replies."""
    p = Proxy(server.port)
    yield p
    p.stop()
