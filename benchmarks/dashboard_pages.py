"""Server time of every dashboard page on a big queue: 100,000 jobs waiting, 10,000 failed.

    .venv/bin/python benchmarks/dashboard_pages.py [--waiting 100000] [--failed 10000] [--requests 20]

Starts a private redis-server, fills one queue (enqueue_many) and fails --failed jobs with a
real burst worker (two exception types), then asks for each page --requests times through
Starlette's TestClient (in process: the time is the app's, from request to rendered page,
no network) and prints the median and the worst. The goal: every page <= 200 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis
from starlette.testclient import TestClient

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conveyor import Queue  # noqa: E402
from conveyor.dashboard import create_app  # noqa: E402
from conveyor.embedded import EmbeddedRedis  # noqa: E402


def fill(url: str, conn: redis.Redis, waiting: int, failed: int) -> tuple[str, str]:
    q = Queue("big", connection=conn)
    kinds = [("key",) if i % 4 == 0 else ("value",) for i in range(failed)]
    for i in range(0, failed, 10_000):
        q.enqueue_many([Queue.prepare_data("bench_jobs:fail", k) for k in kinds[i:i + 10_000]])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-m", "conveyor", "worker", "--redis-url", url, "-q", "big", "--burst",
                    "--log-level", "error", "--metrics-port", "0", "-c", "10"], env=env, check=True)
    assert q.failed.count == failed, q.failed.count
    for i in range(0, waiting, 10_000):
        q.enqueue_many([Queue.prepare_data("bench_jobs:noop", (i + n,)) for n in range(min(10_000, waiting - i))])
    assert q.count == waiting
    last = q.failed.job_ids[-1]
    first_waiting = conn.lindex(q.keys.ready, 0)
    return last, first_waiting.decode() if first_waiting else ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--waiting", type=int, default=100_000)
    ap.add_argument("--failed", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=20)
    a = ap.parse_args()
    with EmbeddedRedis() as server:
        conn = redis.Redis.from_url(server.url)
        t = time.perf_counter()
        failed_id, waiting_id = fill(server.url, conn, a.waiting, a.failed)
        print(f"filled in {time.perf_counter() - t:.1f}s: {a.waiting:,} waiting, {a.failed:,} failed")
        web = TestClient(create_app(conn))
        last_page = -(-a.waiting // 50)
        pages = {
            "overview": "/",
            "waiting, first page": "/queues/big/ready",
            f"waiting, last page ({last_page:,})": f"/queues/big/ready?page={last_page}",
            "failed, first page": "/queues/big/failed",
            "failed, filtered by type (KeyError)": "/queues/big/failed?exc_type=KeyError",
            "failed job (traceback)": f"/jobs/big/{failed_id}",
            "waiting job": f"/jobs/big/{waiting_id}",
            "search by ID": f"/search?id={failed_id}",
        }
        print(f"\n| page ({a.requests} requests each) | median | worst |\n|---|---|---|")
        worst_all = 0.0
        for name, path in pages.items():
            times = []
            for _ in range(a.requests):
                t = time.perf_counter()
                reply = web.get(path, follow_redirects=False)
                times.append((time.perf_counter() - t) * 1000)
                assert reply.status_code in (200, 303), (path, reply.status_code)
            worst_all = max(worst_all, max(times))
            print(f"| {name} | {statistics.median(times):.1f} ms | {max(times):.1f} ms |")
        print(f"\nworst of all pages: {worst_all:.1f} ms (goal <= 200 ms)")


if __name__ == "__main__":
    main()
