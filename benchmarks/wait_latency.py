"""How soon a waiter learns that its job ended: ``job.wait()`` from the completing step to the
waiter's return, and ``Queue.wait_all`` over many jobs.

    .venv/bin/python benchmarks/wait_latency.py [--jobs 200] [--many 1000]

Runs one worker (``--log-level warning``) on a redis-server of its own. Each job sleeps 10 ms,
so its waiter is parked before it ends; the latency is the waiter's wall clock when wait()
returns minus the job's ``ended_at`` (Redis's clock at complete.lua, the same machine): the
PUBLISH, the pub/sub reader thread's wake-up, and the re-read of the ended job. Then
``wait_all`` over MANY jobs, with the server's connection count (one pub/sub connection per
client, whatever the number of jobs).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--many", type=int, default=1000)
    a = p.parse_args()

    import redis

    from bench import ENV
    from conveyor import Queue
    from conveyor.embedded import EmbeddedRedis

    embedded = EmbeddedRedis().start()
    try:
        conn = redis.Redis.from_url(embedded.url, client_name="waiter")
        q = Queue("bench", connection=conn)
        proc = subprocess.Popen([sys.executable, "-m", "conveyor", "worker", "--redis-url", embedded.url, "-q", "bench",
                                 "--log-level", "warning", "--concurrency", "16"], env=ENV)
        q.enqueue("bench_jobs:noop").wait(timeout=60)  # the worker is up
        latencies = []
        for _ in range(a.jobs):
            job = q.enqueue("bench_jobs:sleep10ms")
            job.wait(timeout=30)
            woke = time.time()
            assert job.ended_at is not None
            latencies.append((woke - job.ended_at) * 1000)
        latencies.sort()
        print(f"job.wait(): wake-up after the job ended, {a.jobs} jobs: median {statistics.median(latencies):.2f} ms, "
              f"p90 {latencies[int(len(latencies) * 0.9)]:.2f} ms, max {latencies[-1]:.2f} ms")
        jobs = [q.enqueue("bench_jobs:noop") for _ in range(a.many)]
        t0 = time.perf_counter()
        q.wait_all(jobs, timeout=120)
        took = time.perf_counter() - t0
        mine = [c for c in conn.client_list() if c.get("name") == "waiter"]
        print(f"Queue.wait_all(): {a.many} jobs ended and read in {took:.2f} s; this client's connections to Redis: "
              f"{len(mine)} ({sum(1 for c in mine if int(c['sub']) > 0)} pub/sub)")
        proc.terminate()
        proc.wait(timeout=30)
    finally:
        embedded.stop()


if __name__ == "__main__":
    main()
