"""The asyncio client (conveyor.aio) against a real Redis and real workers: the same jobs and
the same errors as the sync client, interleaved with it on one queue."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

import pytest
import redis
import redis.asyncio as aioredis

from conveyor import JobStatus, Queue, Retry, errors
from conveyor.aio import AsyncJob, AsyncQueue
from support import WorkerProcess, fetch


def run(coro_fn: Callable[[aioredis.Redis], object], url: str) -> object:
    async def main() -> object:
        client = aioredis.Redis.from_url(url)
        try:
            return await coro_fn(client)  # type: ignore[misc]
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_async_and_sync_clients_share_a_queue(redis_url: str, conn: redis.Redis, queue: Queue,
                                             run_burst: Callable[..., WorkerProcess]) -> None:
    async def enqueue(client: aioredis.Redis) -> list[str]:
        q = AsyncQueue("default", connection=client)
        jobs = [await q.enqueue("jobs:add", i, 1) for i in range(3)]
        assert all(isinstance(j, AsyncJob) and j.status is JobStatus.QUEUED for j in jobs)
        assert await q.count() == 4  # its three and the sync one
        assert (await q.job_ids())[1:] == [j.id for j in jobs]
        return [j.id for j in jobs]

    first = queue.enqueue("jobs:add", 10, 1)
    ids = run(enqueue, redis_url)
    assert isinstance(ids, list)
    run_burst()
    assert fetch(conn, first).result == 11
    assert [fetch(conn, i).result for i in ids] == [1, 2, 3]

    async def read_back(client: aioredis.Redis) -> None:
        job = await AsyncJob.fetch(first.id, client)  # any queue searched, as Job.fetch
        assert job.queue == "default" and job.result == 11 and job.status is JobStatus.FINISHED
        assert 0 < await job.ttl() <= 500

    run(read_back, redis_url)


def test_the_same_errors_as_the_sync_client(redis_url: str, queue: Queue) -> None:
    queue.enqueue("jobs:add", 1, 2, job_id="taken")

    async def bad(client: aioredis.Redis) -> None:
        q = AsyncQueue("default", connection=client)
        with pytest.raises(errors.JobExists):
            await q.enqueue("jobs:add", 1, 2, job_id="taken")
        with pytest.raises(errors.InvalidArgument, match="delay must be seconds"):
            await q.enqueue_in(-1, "jobs:add", 1, 2)
        with pytest.raises(errors.InvalidFunction):
            await q.enqueue(lambda: None)
        with pytest.raises(errors.SerializationError):
            await q.enqueue("jobs:add", object())
        with pytest.raises(errors.NoSuchJob):
            await q.fetch_job("nope")
        with pytest.raises(errors.InvalidQueueName):
            AsyncQueue("a b", connection=client)

    run(bad, redis_url)
    assert queue.count == 1  # nothing else was written


def test_scheduled_unique_cancel_and_requeue(redis_url: str, conn: redis.Redis, queue: Queue,
                                             run_burst: Callable[..., WorkerProcess]) -> None:
    async def steps(client: aioredis.Redis) -> tuple[str, str, str]:
        q = AsyncQueue("default", connection=client)
        later = await q.enqueue_in(dt.timedelta(hours=1), "jobs:add", 1, 1)
        at = await q.enqueue_at(dt.datetime.now() + dt.timedelta(hours=2), "jobs:add", 2, 2)
        assert later.status is JobStatus.SCHEDULED and at.due_at and later.due_at and at.due_at > later.due_at
        one = await q.enqueue("jobs:add", 3, 3, unique_key="k")
        again = await q.enqueue("jobs:add", 3, 3, unique_key="k")
        assert again.id == one.id and isinstance(again, AsyncJob)  # the holder, read back
        await later.cancel()
        assert later.status is JobStatus.CANCELED
        many = await q.enqueue_many([Queue.prepare_data("jobs:fail", ("x",), retry=Retry(max=0))])
        return one.id, many[0].id, at.id

    one, failing, at = run(steps, redis_url)  # type: ignore[misc]
    run_burst()
    assert fetch(conn, one).result == 6 and fetch(conn, failing).status is JobStatus.FAILED
    assert fetch(conn, at).status is JobStatus.SCHEDULED

    async def requeue(client: aioredis.Redis) -> None:
        job = await AsyncQueue("default", connection=client).fetch_job(failing)
        await job.requeue()
        assert job.status is JobStatus.QUEUED and job.exc_info is None
        with pytest.raises(errors.InvalidTransition, match="is not failed"):
            await AsyncQueue("default", connection=client).requeue(failing)  # queued now: the same refusal

    run(requeue, redis_url)
    assert fetch(conn, failing).status is JobStatus.QUEUED


def test_many_coroutines_enqueue_at_once(redis_url: str, queue: Queue) -> None:
    """100 coroutines at once (redis-py's asyncio pool holds 100 connections by default)."""
    async def burst(client: aioredis.Redis) -> int:
        q = AsyncQueue("default", connection=client)
        jobs = await asyncio.gather(*(q.enqueue("jobs:add", i, i) for i in range(100)))
        return len({j.id for j in jobs})

    assert run(burst, redis_url) == 100
    assert queue.count == 100


def test_built_from_a_url(redis_url: str, conn: redis.Redis, queue: Queue) -> None:
    """A queue built from a URL waits for a free connection instead of failing past the pool's 100."""
    async def main() -> list[str]:
        q = AsyncQueue("default", redis_url=redis_url)
        try:
            jobs = await asyncio.gather(*(q.enqueue("jobs:add", i, 2) for i in range(400)))
            clients = len(conn.client_list())
            assert clients <= 101 + 1, clients  # the pool's 100 (and this test's own)
            return [j.id for j in jobs]
        finally:
            await q.aclose()

    ids = asyncio.run(main())
    assert sorted(queue.job_ids) == sorted(ids) and len(set(ids)) == 400


def test_registries_and_counts(redis_url: str, conn: redis.Redis, queue: Queue,
                               run_burst: Callable[..., WorkerProcess]) -> None:
    done = queue.enqueue("jobs:add", 1, 1)
    failed = [queue.enqueue("jobs:fail", "x", retry=Retry(max=0)) for _ in range(2)]
    later = queue.enqueue_in(3600, "jobs:add", 2, 2)
    run_burst()

    async def look(client: aioredis.Redis) -> None:
        q = AsyncQueue("default", connection=client)
        assert await q.finished.job_ids() == [done.id] and await q.finished.count() == 1
        assert sorted(await q.failed.job_ids()) == sorted(j.id for j in failed)
        assert await q.scheduled.contains(later.id) and not await q.finished.contains(later.id)
        assert await q.registry("canceled").count() == 0
        assert await q.started.executions() == [] and await q.worker_job_ids("nobody") == []
        for name in ("prefetched", "started", "scheduled", "finished", "failed", "canceled"):
            assert await q.registry(name).job_ids() == queue.registry(name).job_ids, name
        assert await q.requeue_all_failed() == 2
        assert await q.failed.count() == 0 and await q.count() == 2

    run(look, redis_url)
    assert queue.failed.job_ids == [] and sorted(queue.job_ids) == sorted(j.id for j in failed)
    assert later.id in queue.scheduled and done.id not in queue.scheduled
