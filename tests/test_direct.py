"""The single enqueue's held connection (conveyor.direct) against a real Redis: one per thread,
never shared across a fork, closed with its thread, back after the server drops it, and
never used where the app bounded or routed its connections."""

from __future__ import annotations

import gc
import multiprocessing
import threading
import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry as RedisRetry

from conveyor import Queue, direct
from support import wait_until

# Client names of this module's own (the server is shared with other test modules).
NAME_THREADS, NAME_DROPPED, NAME_TIMEOUT = (f"direct-{what}-{uuid.uuid4().hex[:8]}" for what in ("threads", "dropped", "timeout"))


def evalsha_clients(conn: redis.Redis, name: str) -> list[dict[str, object]]:
    """The named client's connections whose last command was an EVALSHA: the held ones."""
    return [c for c in conn.client_list() if c["cmd"] == "evalsha" and c["name"] == name]


def test_one_connection_per_thread_closed_with_the_thread(conn: redis.Redis, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, client_name=NAME_THREADS)
    queue = Queue("default", connection=client)
    assert direct.eligible(client)
    ids: list[str] = []
    lock = threading.Lock()

    def enqueue() -> None:
        mine = [queue.enqueue("jobs:add", i, 1).id for i in range(100)]
        with lock:
            ids.extend(mine)

    threads = [threading.Thread(target=enqueue) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 600 and sorted(queue.job_ids) == sorted(ids)
    gc.collect()  # the threads' held connections go with their thread-local state
    wait_until(lambda: not evalsha_clients(conn, NAME_THREADS), 10, "held connections closed with their threads")
    queue.enqueue("jobs:add", 1, 1)
    assert len(evalsha_clients(conn, NAME_THREADS)) == 1  # this thread's, kept for its next enqueue
    client.close()


def _child_enqueues(url: str, out: multiprocessing.Queue[list[str]]) -> None:
    queue = _shared["queue"]
    out.put([queue.enqueue("jobs:add", i, 2).id for i in range(200)])


_shared: dict[str, Queue] = {}


def test_a_forked_child_never_uses_the_parents_socket(conn: redis.Redis, redis_url: str) -> None:
    queue = _shared["queue"] = Queue("default", connection=redis.Redis.from_url(redis_url))
    first = queue.enqueue("jobs:add", 0, 0).id  # the parent now holds a connection
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue[list[str]] = ctx.Queue()
    children = [ctx.Process(target=_child_enqueues, args=(redis_url, out)) for _ in range(2)]
    for child in children:
        child.start()
    mine = [queue.enqueue("jobs:add", i, 3).id for i in range(200)]  # while the children write
    theirs = [out.get(timeout=30) for _ in children]
    for child in children:
        child.join(30)
        assert child.exitcode == 0
    every = [first, *mine, *theirs[0], *theirs[1]]
    assert len(set(every)) == 601 and sorted(queue.job_ids) == sorted(every)


def test_back_after_the_server_drops_it(conn: redis.Redis, redis_url: str) -> None:
    queue = Queue("default", connection=redis.Redis.from_url(redis_url, client_name=NAME_DROPPED))
    queue.enqueue("jobs:add", 1, 1)
    [held] = evalsha_clients(conn, NAME_DROPPED)
    conn.client_kill_filter(_id=held["id"])
    wait_until(lambda: not evalsha_clients(conn, NAME_DROPPED), 10, "the held connection killed")
    job = queue.enqueue("jobs:add", 2, 2)  # reconnects, as redis-py's pool would
    assert queue.count == 2 and job.id in queue.job_ids


BUSY = """local t = redis.call('TIME'); local stop = t[1] * 1e6 + t[2] + ARGV[1] * 1000
repeat local n = redis.call('TIME') until n[1] * 1e6 + n[2] >= stop"""


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.TimeoutError:
        return False


def test_a_timed_out_reply_is_never_read_as_the_next_ones(conn: redis.Redis, redis_url: str) -> None:
    """A call that gave up waiting leaves its reply on the way: the held connection must not
    be reused, or the next enqueue would read the last one's reply."""
    client = redis.Redis.from_url(redis_url, client_name=NAME_TIMEOUT, socket_timeout=0.3,
                                  retry=RedisRetry(NoBackoff(), 0))
    queue = Queue("default", connection=client)
    queue.enqueue("jobs:add", 0, 0)
    busy = redis.Redis.from_url(redis_url).connection_pool.get_connection()
    busy.send_command("EVAL", BUSY, 0, 1500)  # the server runs it: nothing else is answered
    probe = redis.Redis.from_url(redis_url, socket_timeout=0.05, retry=RedisRetry(NoBackoff(), 0))
    wait_until(lambda: not _answers(probe), 5, "the server busy with the script")
    with pytest.raises(redis.TimeoutError):
        queue.enqueue("jobs:add", 1, 1, job_id="late")  # sent, answered after we stopped waiting
    assert busy.read_response() is None  # the script is over
    job = queue.enqueue("jobs:add", 2, 2, job_id="next")
    assert job.id == "next" and job.args == [2, 2]
    assert sorted(queue.job_ids)[-2:] == ["late", "next"]  # the timed-out one ran all the same


def test_only_on_a_plain_pool(redis_url: str) -> None:
    assert direct.eligible(redis.Redis.from_url(redis_url))
    bounded = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(redis_url))
    single = redis.Redis.from_url(redis_url, single_connection_client=True)
    for client in (bounded, single):
        assert not direct.eligible(client)
        Queue("default", connection=client).enqueue("jobs:add", 1, 1)  # the ordinary path
        client.close()
    assert not direct.eligible(redis.Redis.from_url(redis_url).pipeline())
