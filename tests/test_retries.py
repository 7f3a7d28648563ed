"""Retry policies: the delay arithmetic, and end to end against real workers.

Executions are counted in a Redis key by the jobs in tests/jobs_reliability.py,
so every assertion about "how many times did it run" reads what really ran.
"""

from __future__ import annotations

import time

import pytest

from conveyor import (
    Backoff,
    InvalidArgument,
    InvalidTransition,
    JobStatus,
    NoSuchJob,
    Queue,
    Retry,
    RetryLater,
    keys,
)
from conveyor.retry import DEFAULT_RETRY_LATER_MAX, retry_delay
from support import fetch, runs, wait_status, wait_until

FAST = ("--lease-seconds", "0.6")  # housekeeping every 0.2 s
EPS = 0.02  # seconds: ms rounding of due times and Redis TIME vs time.time()


# -- Retry.delay and friends (no Redis) ---------------------------------------------------------


def test_intervals_are_used_in_order_and_the_last_one_repeats() -> None:
    r = Retry(max=3, intervals=[1, 5, 30])
    assert r.intervals == (1.0, 5.0, 30.0)
    assert [r.delay(n) for n in range(1, 7)] == [1.0, 5.0, 30.0, 30.0, 30.0, 30.0]


def test_default_interval_is_zero_and_a_single_number_is_accepted() -> None:
    assert [Retry(max=2).delay(n) for n in (1, 2, 3)] == [0.0, 0.0, 0.0]
    single = Retry(max=2, intervals=0.25)
    assert single.intervals == (0.25,)
    assert [single.delay(n) for n in (1, 2, 5)] == [0.25, 0.25, 0.25]


def test_exponential_backoff_grows_by_factor_and_stops_at_cap() -> None:
    r = Retry(max=10, backoff=Backoff(base=1, factor=2, cap=10))
    assert [r.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 10, 10, 10]
    r3 = Retry(max=10, backoff=Backoff(base=0.5, factor=3, cap=100))
    assert [r3.delay(n) for n in (1, 2, 3, 4, 5, 6)] == [0.5, 1.5, 4.5, 13.5, 40.5, 100]


def test_backoff_true_means_the_default_backoff() -> None:
    r = Retry(max=30, backoff=True)
    assert r.backoff == Backoff(base=1.0, factor=2.0, cap=300.0)
    assert r.delay(1) == 1.0 and r.delay(5) == 16.0
    assert r.delay(20) == 300.0  # capped, not 2**19


def test_jitter_stays_within_its_fraction_and_actually_varies() -> None:
    r = Retry(max=3, intervals=[10], jitter=0.2)
    samples = [r.delay(1) for _ in range(3000)]
    assert all(8.0 <= s <= 12.0 for s in samples), (min(samples), max(samples))
    # It is really random, spread over most of the band, not a constant.
    assert min(samples) < 9.0 and max(samples) > 11.0
    assert len(set(samples)) > 100


def test_jitter_applies_around_the_backoff_value_and_never_goes_negative() -> None:
    r = Retry(max=5, backoff=Backoff(base=2, factor=2, cap=8), jitter=1.0)
    for n, base in ((1, 2), (2, 4), (3, 8), (6, 8)):
        samples = [r.delay(n) for _ in range(500)]
        assert all(0.0 <= s <= 2 * base for s in samples), (n, min(samples), max(samples))
    # A zero delay stays zero with jitter: jitter must not turn "at once" into "scheduled".
    z = Retry(max=3, intervals=[0], jitter=0.5)
    assert {z.delay(1) for _ in range(200)} == {0.0}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max": -1},
        {"max": 1.5},
        {"max": True},
        {"max": "3"},
        {"max": 3, "intervals": [-1]},
        {"max": 3, "intervals": [1, -0.5]},
        {"max": 3, "intervals": []},
        {"max": 3, "intervals": -2},
        {"max": 3, "intervals": [1], "backoff": Backoff()},
        {"max": 3, "intervals": [1], "backoff": True},
        {"max": 3, "backoff": "exponential"},
        {"max": 3, "backoff": 2},
        {"max": 3, "jitter": 1.5},
        {"max": 3, "jitter": -0.1},
        {"max": 3, "retry_on": [42]},
        {"max": 3, "retry_on": [int]},
        {"max": 3, "dont_retry_on": [object()]},
    ],
)
def test_invalid_retry_arguments_raise_invalid_argument(kwargs) -> None:
    with pytest.raises(InvalidArgument):
        Retry(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [{"base": 0}, {"base": -1}, {"factor": 0.5}, {"factor": 0}, {"base": 10, "cap": 5}],
)
def test_invalid_backoff_raises_invalid_argument(kwargs) -> None:
    with pytest.raises(InvalidArgument):
        Backoff(**kwargs)


@pytest.mark.parametrize("delay", [-1, "1", None, True])
def test_retry_later_rejects_bad_delays(delay) -> None:
    with pytest.raises(InvalidArgument):
        RetryLater(delay)


def test_enqueue_rejects_a_retry_that_is_not_a_retry(queue: Queue) -> None:
    with pytest.raises(InvalidArgument):
        queue.enqueue("jobs:add", 1, 2, retry={"max": 3})
    with pytest.raises(InvalidArgument):
        queue.enqueue("jobs:add", 1, 2, retry=3)
    assert queue.count == 0


def test_policy_survives_the_trip_through_redis_json() -> None:
    for r in (
        Retry(max=3, intervals=[1, 5, 30]),
        Retry(max=5, backoff=Backoff(base=0.5, factor=3, cap=60), jitter=0.25),
        Retry(max=2, retry_on=[ValueError, "myapp.errors.Flaky"], dont_retry_on=[KeyError]),
    ):
        assert Retry.from_json(r.to_json()) == r


def test_retry_on_and_dont_retry_on_match_by_class_hierarchy() -> None:
    key_error = ("builtins.KeyError", "builtins.LookupError", "builtins.Exception", "builtins.BaseException")
    value_error = ("builtins.ValueError", "builtins.Exception", "builtins.BaseException")
    assert Retry(max=1).applies_to(key_error)
    assert Retry(max=1, retry_on=[LookupError]).applies_to(key_error)
    assert not Retry(max=1, retry_on=[ValueError]).applies_to(key_error)
    assert Retry(max=1, retry_on=["builtins.ValueError"]).applies_to(value_error)
    assert not Retry(max=1, dont_retry_on=[LookupError]).applies_to(key_error)
    # dont_retry_on wins over retry_on.
    assert not Retry(max=1, retry_on=[Exception], dont_retry_on=[KeyError]).applies_to(key_error)


def test_retry_delay_decides_between_retry_and_final_failure() -> None:
    names = ("builtins.ValueError",)
    policy = Retry(max=2, intervals=[0.5, 2])
    assert retry_delay(None, 0, names, None) is None  # no policy: fail
    assert retry_delay(policy, 0, names, None) == 0.5
    assert retry_delay(policy, 1, names, None) == 2
    assert retry_delay(policy, 2, names, None) is None  # budget spent
    # RetryLater brings its own delay and counts against max (3 without a policy).
    assert retry_delay(policy, 1, names, 7.0) == 7.0
    assert retry_delay(policy, 2, names, 7.0) is None
    assert DEFAULT_RETRY_LATER_MAX == 3
    assert retry_delay(None, 2, names, 0.0) == 0.0
    assert retry_delay(None, 3, names, 0.0) is None


# -- end to end ----------------------------------------------------------------------------------


def test_job_failing_twice_then_succeeding_keeps_its_id_and_records_three_attempts(
    queue: Queue, conn, redis_url, spawn_worker
) -> None:
    spawn_worker("--with-scheduler", *FAST)
    key = "t:runs"
    job = queue.enqueue("jobs_reliability:fail_times", redis_url, key, 2, retry=Retry(max=3, intervals=[0.2]))
    done = wait_status(conn, job.id, JobStatus.FINISHED, JobStatus.FAILED)

    assert done.status is JobStatus.FINISHED
    assert done.id == job.id and done.result == 3
    assert runs(conn, key) == 3
    assert done.retries == 2
    assert done.deliveries == 3
    attempts = done.attempts
    assert [a.number for a in attempts] == [1, 2, 3]
    assert [a.exc_type for a in attempts] == ["ValueError", "ValueError", None]
    assert [a.exc_message for a in attempts] == ["attempt 1", "attempt 2", None]
    exec_ids = [a.execution_id for a in attempts]
    assert None not in exec_ids and len(set(exec_ids)) == 3
    assert exec_ids[-1] == done.execution_id
    # Each retry waited its interval: started again no sooner than 0.2 s after the failure.
    for before, after in zip(attempts, attempts[1:]):
        assert after.started_at >= before.ended_at + 0.2 - EPS, (before, after)
    assert queue.finished.job_ids == [job.id]
    assert queue.failed.job_ids == [] and queue.scheduled.job_ids == []


def test_zero_interval_requeues_at_once_without_a_scheduler(queue: Queue, conn, redis_url, spawn_worker) -> None:
    spawn_worker(*FAST)  # no --with-scheduler
    key = "t:runs"
    job = queue.enqueue("jobs_reliability:fail_times", redis_url, key, 2, retry=Retry(max=2, intervals=[0]))
    done = wait_status(conn, job.id, JobStatus.FINISHED, JobStatus.FAILED)
    assert done.status is JobStatus.FINISHED
    assert done.retries == 2 and runs(conn, key) == 3
    assert [a.exc_type for a in done.attempts] == ["ValueError", "ValueError", None]
    # Nothing ever went through the scheduled set, and no scheduler exists.
    assert done.due_at is None
    assert not conn.exists(keys.QueueKeys("default").scheduler_lock)


@pytest.mark.parametrize(
    "func, pool",
    [
        ("jobs_reliability:fail_times", "process"),
        ("jobs_reliability:async_fail_times", "thread"),
    ],
)
def test_retries_work_in_the_process_pool_and_for_async_jobs(queue: Queue, conn, redis_url, spawn_worker,
                                                             func: str, pool: str) -> None:
    spawn_worker("--pool", pool, *FAST)
    key = "t:runs"
    job = queue.enqueue(func, redis_url, key, 2, retry=Retry(max=2, intervals=[0]))
    done = wait_status(conn, job.id, JobStatus.FINISHED, JobStatus.FAILED, timeout=15)
    assert done.status is JobStatus.FINISHED and done.result == 3
    assert done.retries == 2 and runs(conn, key) == 3
    assert [a.exc_type for a in done.attempts] == ["ValueError", "ValueError", None]


def test_nonzero_interval_parks_the_job_as_scheduled_until_a_scheduler_moves_it(
    queue: Queue, conn, redis_url, spawn_worker
) -> None:
    plain = spawn_worker(*FAST)  # runs jobs, but never promotes scheduled ones
    key = "t:runs"
    job = queue.enqueue("jobs_reliability:fail_times", redis_url, key, 1, retry=Retry(max=1, intervals=[0.5]))
    parked = wait_status(conn, job.id, JobStatus.SCHEDULED)
    assert runs(conn, key) == 1 and parked.retries == 1
    assert parked.due_at is not None
    failed_at = parked.attempts[0].ended_at
    assert parked.due_at == pytest.approx(failed_at + 0.5, abs=EPS)
    assert queue.scheduled.job_ids == [job.id]
    assert job.id not in queue.job_ids and queue.count == 0
    assert parked.exc_info is not None and parked.exc_info.message == "attempt 1"

    # Past its due time it is still parked: only a scheduler moves it.
    wait_until(lambda: time.time() > parked.due_at + 0.6, 5, "due time to pass")
    plain.wait_log("no scheduler")
    still = fetch(conn, job.id)
    assert still.status is JobStatus.SCHEDULED and runs(conn, key) == 1

    spawn_worker("--with-scheduler", *FAST)
    done = wait_status(conn, job.id, JobStatus.FINISHED, JobStatus.FAILED)
    assert done.status is JobStatus.FINISHED and done.result == 2
    assert done.started_at >= parked.due_at - EPS
    assert queue.scheduled.job_ids == []


def test_exhausted_retries_fail_with_the_last_exception_and_keep_it_for_failure_ttl(
    queue: Queue, conn, redis_url, spawn_worker
) -> None:
    spawn_worker(*FAST)
    key = "t:runs"
    job = queue.enqueue("jobs_reliability:always_fail", redis_url, key, retry=Retry(max=2, intervals=[0]),
                        failure_ttl=120)
    done = wait_status(conn, job.id, JobStatus.FAILED, JobStatus.FINISHED)
    assert done.status is JobStatus.FAILED
    assert runs(conn, key) == 3 and done.retries == 2
    assert done.exc_info.type == "ValueError"
    assert done.exc_info.message == "attempt 3"  # the last one, not the first
    assert "raise ValueError" in done.exc_info.traceback
    assert [a.exc_message for a in done.attempts] == ["attempt 1", "attempt 2", "attempt 3"]
    assert 100 < done.ttl <= 120
    assert queue.failed.job_ids == [job.id]
    assert queue.count == 0 and queue.scheduled.job_ids == []


def test_retry_on_retries_only_the_listed_exceptions(queue: Queue, conn, redis_url, spawn_worker) -> None:
    spawn_worker(*FAST)
    policy = Retry(max=2, intervals=[0], retry_on=[ValueError])
    v = queue.enqueue("jobs_reliability:raise_named", redis_url, "t:v", "ValueError", retry=policy)
    k = queue.enqueue("jobs_reliability:raise_named", redis_url, "t:k", "KeyError", retry=policy)
    # A base class in retry_on covers its subclasses.
    lookup = queue.enqueue("jobs_reliability:raise_named", redis_url, "t:l", "KeyError",
                           retry=Retry(max=1, intervals=[0], retry_on=[LookupError]))
    for j in (v, k, lookup):
        wait_status(conn, j.id, JobStatus.FAILED)
    assert runs(conn, "t:v") == 3 and fetch(conn, v.id).retries == 2
    assert runs(conn, "t:k") == 1 and fetch(conn, k.id).retries == 0
    assert fetch(conn, k.id).exc_info.type == "KeyError"
    assert runs(conn, "t:l") == 2 and fetch(conn, lookup.id).retries == 1


def test_dont_retry_on_fails_at_once_for_the_listed_exceptions(queue: Queue, conn, redis_url, spawn_worker) -> None:
    spawn_worker(*FAST)
    policy = Retry(max=2, intervals=[0], dont_retry_on=[KeyError])
    v = queue.enqueue("jobs_reliability:raise_named", redis_url, "t:v", "ValueError", retry=policy)
    k = queue.enqueue("jobs_reliability:raise_named", redis_url, "t:k", "KeyError", retry=policy)
    both = queue.enqueue("jobs_reliability:raise_named", redis_url, "t:b", "KeyError",
                         retry=Retry(max=2, intervals=[0], retry_on=[Exception], dont_retry_on=["builtins.KeyError"]))
    for j in (v, k, both):
        wait_status(conn, j.id, JobStatus.FAILED)
    assert runs(conn, "t:v") == 3
    assert runs(conn, "t:k") == 1 and fetch(conn, k.id).retries == 0
    assert runs(conn, "t:b") == 1


def test_retry_later_is_retried_after_its_own_delay(queue: Queue, conn, redis_url, spawn_worker) -> None:
    spawn_worker("--with-scheduler", *FAST)
    key = "t:runs"
    job = queue.enqueue("jobs_reliability:retry_later_once", redis_url, key, 0.2)
    done = wait_status(conn, job.id, JobStatus.FINISHED, JobStatus.FAILED)
    assert done.status is JobStatus.FINISHED and done.result == 2
    assert runs(conn, key) == 2 and done.retries == 1
    first, second = done.attempts
    assert first.exc_type == "conveyor.retry.RetryLater" and first.exc_message == "not yet"
    assert second.exc_type is None
    assert second.started_at >= first.ended_at + 0.2 - EPS


@pytest.mark.parametrize(
    "func, pool",
    [("jobs_reliability:retry_later_once", "process"), ("jobs_reliability:async_retry_later_once", "thread")],
)
def test_retry_later_in_the_process_pool_and_for_async_jobs(queue: Queue, conn, redis_url, spawn_worker,
                                                            func: str, pool: str) -> None:
    spawn_worker("--with-scheduler", "--pool", pool, *FAST)
    job = queue.enqueue(func, redis_url, "t:runs", 0.2)
    done = wait_status(conn, job.id, JobStatus.FINISHED, JobStatus.FAILED, timeout=15)
    assert done.status is JobStatus.FINISHED and done.retries == 1
    first, second = done.attempts
    assert first.exc_type == "conveyor.retry.RetryLater"
    assert second.started_at >= first.ended_at + 0.2 - EPS


def test_retry_later_overrides_the_policy_interval(queue: Queue, conn, redis_url, spawn_worker) -> None:
    spawn_worker("--with-scheduler", *FAST)
    key = "t:runs"
    # The policy says 60 s; the job asks for 0.2 s and gets it.
    job = queue.enqueue("jobs_reliability:retry_later_once", redis_url, key, 0.2, retry=Retry(max=1, intervals=[60]))
    done = wait_status(conn, job.id, JobStatus.FINISHED, JobStatus.FAILED, timeout=8)
    assert done.status is JobStatus.FINISHED and runs(conn, key) == 2


def test_retry_later_without_a_policy_is_limited_to_three_retries(queue: Queue, conn, redis_url, spawn_worker) -> None:
    spawn_worker(*FAST)
    key = "t:runs"
    job = queue.enqueue("jobs_reliability:always_retry_later", redis_url, key, 0)
    done = wait_status(conn, job.id, JobStatus.FAILED)
    assert runs(conn, key) == 1 + DEFAULT_RETRY_LATER_MAX
    assert done.retries == DEFAULT_RETRY_LATER_MAX
    assert done.exc_info.type == "conveyor.retry.RetryLater"
    # With a policy, RetryLater counts against its max instead.
    k2 = "t:runs2"
    j2 = queue.enqueue("jobs_reliability:always_retry_later", redis_url, k2, 0, retry=Retry(max=1))
    wait_status(conn, j2.id, JobStatus.FAILED)
    assert runs(conn, k2) == 2


def test_failed_job_requeued_with_job_requeue_runs_again(queue: Queue, conn, redis_url, spawn_worker) -> None:
    spawn_worker(*FAST)
    key = "t:runs"
    # Fails twice: once plus its one retry; the requeue gives a fresh budget.
    job = queue.enqueue("jobs_reliability:fail_times", redis_url, key, 2, retry=Retry(max=1, intervals=[0]))
    failed = wait_status(conn, job.id, JobStatus.FAILED)
    assert failed.retries == 1 and runs(conn, key) == 2

    failed.requeue()
    assert failed.status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.FINISHED)
    done = wait_status(conn, job.id, JobStatus.FINISHED, JobStatus.FAILED)
    assert done.status is JobStatus.FINISHED and done.result == 3
    assert runs(conn, key) == 3
    assert done.retries == 0  # fresh budget
    assert queue.failed.job_ids == [] and job.id in queue.finished.job_ids


def test_requeue_all_failed_puts_every_failed_job_back(queue: Queue, conn, redis_url, spawn_worker) -> None:
    spawn_worker(*FAST)
    jobs = [queue.enqueue("jobs_reliability:fail_times", redis_url, f"t:runs{i}", 1) for i in range(3)]
    for j in jobs:
        wait_status(conn, j.id, JobStatus.FAILED)
    assert sorted(queue.failed.job_ids) == sorted(j.id for j in jobs)

    assert queue.requeue_all_failed() == 3
    for i, j in enumerate(jobs):
        done = wait_status(conn, j.id, JobStatus.FINISHED, JobStatus.FAILED)
        assert done.status is JobStatus.FINISHED and done.result == 2
        assert runs(conn, f"t:runs{i}") == 2
    assert queue.failed.job_ids == []
    assert queue.requeue_all_failed() == 0  # nothing left to requeue


def test_queue_requeue_by_id(queue: Queue, conn, redis_url, spawn_worker) -> None:
    spawn_worker(*FAST)
    j = queue.enqueue("jobs_reliability:fail_times", redis_url, "t:runs", 1)
    wait_status(conn, j.id, JobStatus.FAILED)
    assert queue.requeue(j.id) == 1
    assert wait_status(conn, j.id, JobStatus.FINISHED).result == 2


def test_requeue_of_a_job_that_is_not_failed_raises_invalid_transition(queue: Queue, conn, spawn_worker) -> None:
    w = spawn_worker(*FAST)
    finished = queue.enqueue("jobs:add", 1, 2)
    finished = wait_status(conn, finished.id, JobStatus.FINISHED)
    w.stop()  # from here on nothing may run the queued job
    queued = queue.enqueue("jobs:add", 3, 4)
    scheduled = queue.enqueue_in(3600, "jobs:add", 5, 6)

    for job in (finished, queued, scheduled):
        before = job.status
        with pytest.raises(InvalidTransition, match="not failed"):
            job.requeue()
        with pytest.raises(InvalidTransition):
            queue.requeue(job.id)
        assert fetch(conn, job.id).status is before
    assert queue.job_ids == [queued.id]  # not queued twice
    with pytest.raises(NoSuchJob):
        queue.requeue("no-such-job")
