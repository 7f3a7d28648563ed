"""Chaos: 2,000 jobs, three scheduler-running workers, one SIGKILLed and one SIGTERMed mid-run.

Every job must finish. A job may run more than once only if one of its executions
was on the SIGKILLed worker (at-least-once delivery) or it failed on purpose and was
retried; no scheduled retry may be promoted twice; nothing may stay claimed or leased.
"""

from __future__ import annotations

import collections
import signal

import pytest
import redis

from conveyor import Queue, Retry
from conveyor.keys import QueueKeys
from support import wait_until

N = 2000
FLAGS = ("--with-scheduler", "--concurrency", "4", "--lease-seconds", "2", "--scheduler-lock-seconds", "1",
         "--shutdown-timeout", "5", "--log-level", "warning")


@pytest.mark.slow  # chaos at size; benchmarks/chaos.py runs more of it
def test_chaos(redis_url: str, conn: redis.Redis, spawn_worker) -> None:
    q = Queue("default", connection=conn)
    retry = Retry(max=3, intervals=[0.5])
    jobs = q.enqueue_many([
        Queue.prepare_data("jobs:chaos", (redis_url, i, i % 3 == 0, 0.03), job_id=f"chaos-{i}", retry=retry)
        for i in range(N)
    ])
    finished = lambda: len(q.finished.job_ids)  # noqa: E731

    workers = [spawn_worker(*FLAGS) for _ in range(3)]
    wait_until(lambda: finished() >= N // 4, 60, "a quarter of the jobs to finish")
    killed = workers[0]
    killed.signal(signal.SIGKILL)
    killed.wait(10)
    workers.append(spawn_worker(*FLAGS))

    wait_until(lambda: finished() >= N // 2, 60, "half of the jobs to finish")
    termed = workers[1]
    termed.signal(signal.SIGTERM)
    assert termed.wait(30) == 0, termed.log()
    workers.append(spawn_worker(*FLAGS))

    wait_until(lambda: finished() == N, 120, "every job to finish")

    k = QueueKeys("default")
    executions = collections.defaultdict(list)
    for raw in conn.lrange("chaos:executions", 0, -1):
        idx, exec_id, pid, outcome = raw.decode().split(":")
        executions[int(idx)].append((exec_id, int(pid), outcome))

    statuses = collections.Counter(j.refresh().status.value for j in jobs)
    ran_twice = [i for i, ex in executions.items() if sum(o == "ok" for _, _, o in ex) > 1]
    excused = [i for i in ran_twice if any(pid == killed.pid for _, pid, _ in executions[i])]
    retried = [i for i, ex in executions.items() if any(o == "fail" for _, _, o in ex)]
    exec_ids = [e for ex in executions.values() for e, _, _ in ex]
    print(f"\nchaos: {N} jobs, statuses {dict(statuses)}, {len(exec_ids)} executions, "
          f"{len(retried)} failed once and were retried, {len(ran_twice)} succeeded more than once "
          f"(all on the SIGKILLed worker: {len(excused) == len(ran_twice)}), "
          f"{sum(j.orphaned for j in jobs)} recovered from expired leases")

    assert statuses == {"finished": N}
    assert sorted(executions) == list(range(N)), "every job ran"
    assert set(ran_twice) == set(excused), f"jobs ran twice without a SIGKILL: {sorted(set(ran_twice) - set(excused))[:10]}"
    assert len(exec_ids) == len(set(exec_ids)), "every execution has its own execution ID"
    # Each planned failure was retried exactly once (a scheduled retry promoted twice would run twice).
    for i in range(0, N, 3):
        fails = [e for e in executions[i] if e[2] == "fail"]
        oks = [e for e in executions[i] if e[2] == "ok"]
        assert len(fails) == 1, (i, executions[i])
        if not any(pid == killed.pid for _, pid, _ in executions[i]):
            assert len(oks) == 1, (i, executions[i])
    assert conn.llen(k.ready) == 0 and conn.zcard(k.scheduled) == 0
    assert conn.zcard(k.leases) == 0, "nothing left leased"
    assert not [key for key in conn.scan_iter(match=k.claimed_prefix + "*") if conn.scard(key)], "nothing left claimed"
    for w in workers[2:]:
        w.signal(signal.SIGTERM)
        assert w.wait(30) == 0
