"""Jobs and conditions a worker must survive: bad functions, broken job hashes, Redis outages."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from conveyor import JobStatus, Queue
from conveyor.embedded import EmbeddedRedis, free_port
from support import fetch, wait_until

# -- bad functions ---------------------------------------------------------------------------


def test_unknown_function_path_fails_the_job_and_later_jobs_run(queue: Queue, conn, run_burst) -> None:
    bad = queue.enqueue("nope.mod:fn")
    good = queue.enqueue("jobs:add", 2, 2)
    w = run_burst("--concurrency", "1")

    bad, good = fetch(conn, bad), fetch(conn, good)
    assert bad.status is JobStatus.FAILED
    assert "cannot import" in bad.exc_info.message
    assert "nope.mod" in bad.exc_info.message
    assert bad.id in queue.failed
    assert good.status is JobStatus.FINISHED and good.result == 4
    assert "Traceback" not in w.log()


def test_missing_attribute_in_a_real_module_fails_clearly(queue: Queue, conn, run_burst) -> None:
    bad = queue.enqueue("jobs:no_such_function")
    good = queue.enqueue("jobs:add", 1, 1)
    run_burst("--concurrency", "1")
    bad = fetch(conn, bad)
    assert bad.status is JobStatus.FAILED
    assert "cannot import" in bad.exc_info.message and "no_such_function" in bad.exc_info.message
    assert fetch(conn, good).result == 2


def test_non_callable_target_fails_clearly(queue: Queue, conn, run_burst) -> None:
    bad = queue.enqueue("jobs:NOT_CALLABLE")
    good = queue.enqueue("jobs:add", 3, 4)
    run_burst("--concurrency", "1")

    bad, good = fetch(conn, bad), fetch(conn, good)
    assert bad.status is JobStatus.FAILED
    assert "NOT_CALLABLE" in bad.exc_info.message
    assert "not a callable" in bad.exc_info.message
    assert bad.id in queue.failed
    assert good.result == 7


def test_raising_job_fails_with_its_exception_and_later_jobs_run(queue: Queue, conn, run_burst) -> None:
    bad = queue.enqueue("jobs:fail", "it broke")
    good = queue.enqueue("jobs:add", 5, 5)
    run_burst("--concurrency", "1")

    bad, good = fetch(conn, bad), fetch(conn, good)
    assert bad.status is JobStatus.FAILED
    assert bad.exc_info.type == "ValueError"
    assert bad.exc_info.message == "it broke"
    assert "ValueError: it broke" in bad.exc_info.traceback
    assert bad.id in queue.failed and bad.id not in queue.finished
    assert bad.result is None
    assert good.status is JobStatus.FINISHED and good.result == 10


def test_job_without_func_field_fails_as_malformed(queue: Queue, conn, run_burst) -> None:
    bad = queue.enqueue("jobs:add", 1, 2)
    good = queue.enqueue("jobs:add", 2, 3)
    assert conn.hdel(queue.keys.job(bad.id), "func") == 1
    w = run_burst("--concurrency", "1")

    bad, good = fetch(conn, bad), fetch(conn, good)
    assert bad.status is JobStatus.FAILED
    assert bad.exc_info.type == "MalformedJob"
    assert "func" in bad.exc_info.message
    assert bad.id in queue.failed
    assert good.result == 5
    assert "Traceback" not in w.log()


def test_job_without_payload_fails_as_malformed(queue: Queue, conn, run_burst) -> None:
    bad = queue.enqueue("jobs:add", 1, 2)
    good = queue.enqueue("jobs:add", 2, 3)
    assert conn.hdel(queue.keys.job(bad.id), "payload") == 1
    run_burst("--concurrency", "1")
    bad = fetch(conn, bad)
    assert bad.status is JobStatus.FAILED and bad.exc_info.type == "MalformedJob"
    assert "payload" in bad.exc_info.message
    assert fetch(conn, good).result == 5


@pytest.mark.parametrize("func", ["jobs:add", "jobs:async_add"])
def test_undecodable_payload_fails_as_malformed(queue: Queue, conn, run_burst, func: str) -> None:
    bad = queue.enqueue(func, 1, 2)
    good = queue.enqueue("jobs:add", 2, 3)
    conn.hset(queue.keys.job(bad.id), "payload", b"\xff{not json")
    run_burst("--concurrency", "1")
    bad = fetch(conn, bad)
    assert bad.status is JobStatus.FAILED and bad.exc_info.type == "MalformedJob"
    assert "cannot decode" in bad.exc_info.message
    assert fetch(conn, good).result == 5


def test_pickled_job_is_refused_without_allow_pickle(queue: Queue, conn, run_burst) -> None:
    bad = queue.enqueue("jobs:add", 1, 2)
    conn.hset(queue.keys.job(bad.id), "ser", "pickle")
    run_burst()
    bad = fetch(conn, bad)
    assert bad.status is JobStatus.FAILED and bad.exc_info.type == "MalformedJob"
    assert "--allow-pickle" in bad.exc_info.message


def test_ready_id_without_job_hash_is_skipped(queue: Queue, conn, spawn_worker) -> None:
    conn.rpush(queue.keys.ready, "ghost-job")
    good = [queue.enqueue("jobs:add", i, i) for i in range(3)]
    w = spawn_worker("--concurrency", "1")
    wait_until(lambda: all(fetch(conn, j).status is JobStatus.FINISHED for j in good), 15, "the real jobs to finish")
    assert [fetch(conn, j).result for j in good] == [0, 2, 4]
    assert queue.count == 0
    assert not conn.exists(queue.keys.job("ghost-job"))
    assert "ghost-job" not in queue.started and "ghost-job" not in queue.failed
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert "Traceback" not in w.log()


def test_burst_worker_skips_ready_id_without_job_hash(queue: Queue, conn, run_burst) -> None:
    conn.rpush(queue.keys.ready, "ghost-job")
    good = [queue.enqueue("jobs:add", i, i) for i in range(3)]
    run_burst("--concurrency", "1")
    assert [fetch(conn, j).status for j in good] == [JobStatus.FINISHED] * 3
    assert queue.count == 0


def test_burst_worker_skips_ready_id_without_job_hash_among_others(queue: Queue, conn, run_burst) -> None:
    # With room for all of them in one claim, the ghost is dropped and the rest run.
    good = [queue.enqueue("jobs:add", i, 1) for i in range(2)]
    conn.lpush(queue.keys.ready, "ghost-job")
    run_burst("--concurrency", "10")
    assert [fetch(conn, j).result for j in good] == [1, 2]
    assert queue.count == 0


def test_unserializable_result_fails_as_result_not_serializable(queue: Queue, conn, run_burst) -> None:
    bad = queue.enqueue("jobs:unserializable_result")
    good = queue.enqueue("jobs:add", 1, 1)
    w = run_burst("--concurrency", "1")
    bad = fetch(conn, bad)
    assert bad.status is JobStatus.FAILED
    assert bad.exc_info.type == "ResultNotSerializable"
    assert "object" in bad.exc_info.message
    assert bad.result is None
    assert bad.id in queue.failed
    assert fetch(conn, good).result == 2
    assert "Traceback" not in w.log()


def test_garbage_timeout_field_fails_only_that_job(queue: Queue, conn, run_burst) -> None:
    bad = queue.enqueue("jobs:add", 1, 2)
    good = queue.enqueue("jobs:add", 2, 3)
    conn.hset(queue.keys.job(bad.id), "timeout", "soon")
    w = run_burst("--concurrency", "1", timeout=20)
    assert "Traceback" not in w.log()
    bad = fetch(conn, bad)
    assert bad.status is JobStatus.FAILED
    assert fetch(conn, good).result == 5


# -- Redis unreachable, lost and back -----------------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of this test's own, which the test may stop and start again on its port."""
    server = EmbeddedRedis()
    yield server
    server.stop()


def still_running_after(w, seconds: float) -> bool:
    """True if the worker did not exit within `seconds` (it keeps retrying instead)."""
    try:
        w.proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return True
    return False


def test_worker_waits_for_redis_that_is_unreachable_at_start(spawn_worker) -> None:
    port = free_port()
    server = EmbeddedRedis(port=port)
    try:
        w = spawn_worker(url=server.url)
        w.wait_log("cannot reach Redis")
        # It keeps retrying with backoff (0.1 + 0.2 + 0.4 s ...) rather than exiting or complaining again.
        assert still_running_after(w, 1.0), f"worker exited:\n{w.log()}"
        server.start()
        client = redis.Redis.from_url(server.url)
        try:
            job = Queue("default", connection=client).enqueue("jobs:add", 20, 3)
            w.wait_log("connected to Redis", timeout=20)
            wait_until(lambda: fetch(client, job).status is JobStatus.FINISHED, 15, "the job to finish")
            assert fetch(client, job).result == 23
        finally:
            client.close()
        log = w.log()
        assert log.count("cannot reach Redis") == 1, log
        assert log.count("connected to Redis") == 1, log
        assert str(port) in log
        assert "Traceback" not in log, log
        w.signal(signal.SIGTERM)
        assert w.wait(10) == 0
    finally:
        server.stop()


def test_sigterm_while_waiting_for_unreachable_redis_exits_cleanly(spawn_worker) -> None:
    w = spawn_worker(url=f"redis://127.0.0.1:{free_port()}/0")
    w.wait_log("cannot reach Redis")
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert "Traceback" not in w.log()


def test_redis_lost_while_idle_and_back(private_redis: EmbeddedRedis, spawn_worker) -> None:
    private_redis.start()
    client = redis.Redis.from_url(private_redis.url)
    q = Queue("default", connection=client)
    try:
        before = q.enqueue("jobs:add", 1, 1)
        w = spawn_worker(url=private_redis.url)
        wait_until(lambda: fetch(client, before).status is JobStatus.FINISHED, 15, "the first job to finish")

        private_redis.stop()
        w.wait_log("lost Redis")
        assert still_running_after(w, 1.0), f"worker exited:\n{w.log()}"
        private_redis.start()  # same port, empty: scripts and keys are gone
        w.wait_log("is back", timeout=20)

        after = [q.enqueue("jobs:add", i, 10) for i in range(3)]
        wait_until(lambda: all(fetch(client, j).status is JobStatus.FINISHED for j in after), 15, "jobs after the outage")
        assert [fetch(client, j).result for j in after] == [10, 11, 12]

        log = w.log()
        assert log.count("lost Redis") == 1, log
        assert "Traceback" not in log, log
        w.signal(signal.SIGTERM)
        assert w.wait(10) == 0
    finally:
        client.close()


def test_redis_lost_while_a_job_runs_and_back(private_redis: EmbeddedRedis, spawn_worker) -> None:
    private_redis.start()
    client = redis.Redis.from_url(private_redis.url)
    q = Queue("default", connection=client)
    key = f"test:rec:{uuid.uuid4().hex}"
    try:
        w = spawn_worker(url=private_redis.url)
        running = q.enqueue("jobs:record", private_redis.url, key, "r", 1.0)
        wait_until(lambda: client.llen(key) == 1, 15, "the job to run")

        private_redis.stop()  # the job ends while Redis is away
        w.wait_log("lost Redis")
        assert still_running_after(w, 1.5), f"worker exited:\n{w.log()}"
        private_redis.start()
        w.wait_log("is back", timeout=20)

        after = q.enqueue("jobs:add", 40, 2)
        wait_until(lambda: fetch(client, after).status is JobStatus.FINISHED, 15, "a job after the outage")
        assert fetch(client, after).result == 42

        log = w.log()
        assert log.count("lost Redis") == 1, log
        assert "Traceback" not in log, log
        # The running job's outcome could not be recorded in the (empty) new Redis; the worker says so.
        def outcome_reported() -> bool:
            return any(running.id in line and "vanished" in line for line in w.log().splitlines())

        wait_until(outcome_reported, 10, "the worker to report the running job's lost outcome")
        w.signal(signal.SIGTERM)
        assert w.wait(10) == 0
    finally:
        client.close()


def test_sigterm_while_idle_and_redis_is_down_exits(private_redis: EmbeddedRedis, spawn_worker) -> None:
    private_redis.start()
    w = spawn_worker(url=private_redis.url)
    w.wait_log("serving")
    private_redis.stop()
    w.wait_log("lost Redis")  # the waker's BLPOP saw the connection drop
    sent = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait(10) == 0
    assert time.monotonic() - sent < 5, "an idle worker has nothing to hand back: it should stop at once"
    assert "Traceback" not in w.log()


@pytest.mark.slow
def test_sigterm_while_redis_is_down_with_an_unrecorded_outcome_exits(
    private_redis: EmbeddedRedis, spawn_worker
) -> None:
    """The outcome cannot be written anywhere: the worker must still stop, bounded, not spin forever."""
    private_redis.start()
    client = redis.Redis.from_url(private_redis.url)
    key = f"test:rec:{uuid.uuid4().hex}"
    try:
        # --concurrency 1: the worker does not sit in BLPOP while the job runs, so "lost Redis" is
        # logged by the main loop when it fails to record the job's outcome.
        w = spawn_worker("--concurrency", "1", "--shutdown-timeout", "0.5", url=private_redis.url)
        Queue("default", connection=client).enqueue("jobs:record", private_redis.url, key, "r", 0.5)
        wait_until(lambda: client.llen(key) == 1, 15, "the job to run")
    finally:
        client.close()
    private_redis.stop()
    w.wait_log("lost Redis")  # the job ended; its outcome cannot be written
    w.signal(signal.SIGTERM)
    assert w.wait(20) == 0
    log = w.log()
    assert "Traceback" not in log, log
    assert "stopped:" in log  # the summary line: it shut down rather than being killed
