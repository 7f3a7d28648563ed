"""Queue-depth autoscaling, measured: a burst of jobs lands in Redis -> the worker Deployment
asks for more replicas. The operator (a real ``kopf run`` process) runs against the tests' API
emulator and reads a real redis-server; pollSeconds is 1 (the minimum), so the figure is the
poll's wait (0-1 s, uniform) plus reading the demand and applying the replicas.

Each round: the queue is empty and the fleet at minReplicas (1); after a random pause of 0-1 s
(so the burst lands at a random point of the poll cycle, not just after the poll that saw the
fleet fall back) 50 jobs are enqueued in one batch; the clock runs from the enqueue to the Deployment's spec.replicas reaching 5
(target 10 jobs per worker). Then the queue is purged and the fleet waits to fall back to 1
(window 0.5 s) before the next round. Prints every round, then the median and the max.

    .venv/bin/python benchmarks/autoscale.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import redis

from _operator_bench import operator_bench
from conveyor import Queue, admin
from conveyor.keys import Keyspace
from op_helpers import dep_path, jobqueue, wait_for

NS = "bench"
BURST, TARGET = 50, 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds
    with operator_bench("autoscale", CONVEYOR_OPERATOR_RESYNC_SECONDS="10") as bench:
        cluster, kubectl, redis_server = bench.cluster, bench.kubectl, bench.redis_server
        kubectl("apply", "-n", NS, "-f", "-", input=jobqueue(
            "bench", redis={"url": redis_server.url}, queues=["bench"],
            autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 10, "targetJobsPerWorker": TARGET,
                         "pollSeconds": 1, "scaleDownStabilizationSeconds": 0}))
        queue = Queue("bench", redis_url=redis_server.url)
        conn = redis.Redis.from_url(redis_server.url)

        def replicas() -> int | None:
            return ((cluster.get(dep_path(NS, "bench")) or {}).get("spec") or {}).get("replicas")

        want = -(-BURST // TARGET)
        figures = []
        for n in range(rounds):
            wait_for(lambda: replicas() == 1, timeout=20, what="the fleet at 1 replica")
            time.sleep(random.uniform(0, 1))  # a random phase of the 1 s poll cycle
            started = time.monotonic()
            queue.enqueue_many([Queue.prepare_data("builtins:print", (i,)) for i in range(BURST)])
            wait_for(lambda: replicas() == want, timeout=10, interval=0.005, what=f"{want} replicas")
            figures.append(time.monotonic() - started)
            print(f"round {n + 1}: {BURST} jobs enqueued -> {want} replicas: {figures[-1] * 1000:.0f} ms", flush=True)
            admin.purge(conn, "bench", True, Keyspace())
        print(json.dumps({"rounds": rounds, "poll_seconds": 1, "burst": BURST,
                          "median_ms": round(statistics.median(figures) * 1000),
                          "max_ms": round(max(figures) * 1000)}))


if __name__ == "__main__":
    main()
