"""/healthz (liveness) and /readyz (readiness) of real worker processes: ready once
running, not ready while draining or while its Redis is gone, live throughout."""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import jobs_obs
from conveyor import JobStatus, Queue
from conveyor.embedded import EmbeddedRedis, free_port
from support import fetch, wait_until


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def status(port: int, path: str) -> int | None:
    """HTTP status, or None while nothing answers."""
    try:
        return get(port, path, timeout=1.0)[0]
    except OSError:
        return None


def wait_status(port: int, path: str, code: int, timeout: float = 10.0, what: str = "") -> None:
    wait_until(lambda: status(port, path) == code, timeout, what or f"{path} to answer {code}", interval=0.05)


def gauge(port: int, name: str) -> float | None:
    code, body = get(port, "/metrics")
    assert code == 200
    for line in body.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


@pytest.fixture
def http_worker(spawn_worker: Callable[..., Any]) -> Callable[..., tuple[Any, int]]:
    """Start a worker serving health and metrics on a free port (does not wait for it)."""

    def start(*args: str, **kw: Any) -> tuple[Any, int]:
        port = free_port()
        return spawn_worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1", *args, **kw), port

    return start


@pytest.fixture
def own_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of the test's own, which the test may stop and start again."""
    server = EmbeddedRedis(free_port()).start()
    yield server
    server.stop()


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on: its socket inodes matched against /proc/net/tcp{,6}."""
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


# -- ready once running ---------------------------------------------------------------------


def test_ready_and_live_once_running(queue: Queue, conn, http_worker) -> None:
    w, port = http_worker()
    wait_status(port, "/readyz", 200, 15, "the worker to become ready")
    code, body = get(port, "/readyz")
    assert (code, body.strip()) == (200, "ready")
    code, body = get(port, "/healthz")
    assert (code, body.strip()) == (200, "ok")
    job = queue.enqueue("jobs:add", 1, 1)  # ready means claiming
    wait_until(lambda: fetch(conn, job).status is JobStatus.FINISHED, 10, "the job to run")
    assert status(port, "/readyz") == 200


def test_not_ready_until_redis_answers_but_live(http_worker) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    w, port = http_worker(url=nowhere)
    wait_status(port, "/healthz", 200, 15, "/healthz to answer")
    code, body = get(port, "/readyz")
    assert code == 503 and "not connected" in body
    assert w.proc.poll() is None


def test_unknown_path_is_404(http_worker) -> None:
    w, port = http_worker()
    wait_status(port, "/readyz", 200, 15)
    code, body = get(port, "/nope")
    assert code == 404
    assert "/metrics" in body and "/healthz" in body and "/readyz" in body
    assert status(port, "/metrics/extra") == 404


# -- draining -------------------------------------------------------------------------------


def test_draining_after_sigterm_is_unready_but_live(queue: Queue, conn, redis_url, http_worker) -> None:
    key = f"test:hold:{uuid.uuid4().hex}"
    w, port = http_worker("--shutdown-timeout", "10")
    job = queue.enqueue("jobs_obs:hold", redis_url, key, 30)
    wait_until(lambda: conn.llen(f"{key}:running"), 10, "the job to run")
    wait_status(port, "/readyz", 200, 5)
    wait_until(lambda: gauge(port, "conveyor_worker_ready") == 1, 5, "worker_ready gauge 1", interval=0.05)

    w.signal(signal.SIGTERM)
    wait_status(port, "/readyz", 503, 5, "/readyz to turn 503 on SIGTERM")
    code, body = get(port, "/readyz")
    assert code == 503 and "draining" in body
    assert get(port, "/healthz")[0] == 200
    wait_until(lambda: gauge(port, "conveyor_worker_ready") == 0, 5, "worker_ready gauge 0", interval=0.05)
    assert w.proc.poll() is None and fetch(conn, job).status is JobStatus.STARTED
    assert get(port, "/healthz")[0] == 200

    jobs_obs.release(redis_url, key)
    assert w.wait(15) == 0
    assert fetch(conn, job).result == "released"


# -- Redis outage ---------------------------------------------------------------------------


def test_readyz_follows_its_redis_going_away_and_coming_back(own_redis: EmbeddedRedis, http_worker) -> None:
    port_redis = own_redis.port
    w, port = http_worker("--lease-seconds", "0.6", url=own_redis.url)
    wait_status(port, "/readyz", 200, 15, "the worker to become ready")

    own_redis.stop()
    wait_status(port, "/readyz", 503, 10, "/readyz to turn 503 with Redis gone")
    code, body = get(port, "/readyz")
    assert code == 503 and "Redis" in body
    assert get(port, "/healthz")[0] == 200
    assert gauge(port, "conveyor_redis_up") == 0
    assert w.proc.poll() is None

    back = EmbeddedRedis(port_redis).start()
    try:
        wait_status(port, "/readyz", 200, 20, "/readyz to return to 200 with Redis back")
        assert get(port, "/healthz")[0] == 200
        client = redis.Redis.from_url(back.url)
        try:
            job = Queue("default", connection=client).enqueue("jobs:add", 20, 22)
            wait_until(lambda: fetch(client, job).status is JobStatus.FINISHED, 15, "a job after Redis came back")
            assert fetch(client, job).result == 42
        finally:
            client.close()
        wait_until(lambda: gauge(port, "conveyor_redis_up") == 1, 5, "redis_up back to 1", interval=0.05)
    finally:
        back.stop()


def test_busy_worker_is_unready_while_its_redis_is_gone(own_redis: EmbeddedRedis, http_worker) -> None:
    w, port = http_worker("--lease-seconds", "0.6", "--concurrency", "1", "--prefetch", "0", url=own_redis.url)
    wait_status(port, "/readyz", 200, 15, "the worker to become ready")
    client = redis.Redis.from_url(own_redis.url)
    job = Queue("default", connection=client).enqueue("jobs:busy", 30)
    wait_until(lambda: fetch(client, job).status is JobStatus.STARTED, 10, "the job to start")
    client.close()

    own_redis.stop()
    # Housekeeping (every 0.2 s) already knows: the metrics say Redis is down...
    wait_until(lambda: gauge(port, "conveyor_redis_up") == 0, 5, "redis_up 0", interval=0.05)
    assert get(port, "/healthz")[0] == 200
    # ...and readiness should agree (README: 503 "while Redis is unreachable").
    wait_status(port, "/readyz", 503, 3, "/readyz to turn 503 with Redis gone while every slot is busy")


# -- disabled -------------------------------------------------------------------------------


def test_metrics_port_zero_serves_nothing(spawn_worker) -> None:
    port = free_port()
    # The environment asks for the port; --metrics-port 0 on the command line must win.
    off = spawn_worker("--metrics-port", "0", env={"CONVEYOR_METRICS_PORT": str(port)})
    off.wait_log("serving default")
    assert off.proc.poll() is None
    with pytest.raises(urllib.error.URLError) as refused:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert isinstance(refused.value.reason, ConnectionRefusedError)
    assert listening_ports(off.pid) == set()
    assert "serving /metrics" not in off.log()

    # Control: the same environment without the flag does serve there (so the check above can fail).
    on = spawn_worker(env={"CONVEYOR_METRICS_PORT": str(port)})
    wait_status(port, "/healthz", 200, 15)
    assert port in listening_ports(on.pid)
