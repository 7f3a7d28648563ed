"""API requests the operator makes per JobQueue per minute at rest, counted in the API emulator.

The operator (a real ``kopf run`` process at its default resync of 10 s) runs against the tests'
API emulator and a real redis-server. N JobQueues (default 5) are created and reconciled;
after a warm-up of two resync intervals, every request the emulator receives during the
window (default 60 s) is counted, except the watch streams kopf holds open (one request each,
made at start). Nothing else talks to the emulator during the window. Redis connections
opened during the window are counted too (INFO stats).

    .venv/bin/python benchmarks/api_requests.py [--jobqueues 5] [--seconds 60] [--autoscaled]
        [--pythonpath DIR]   # run another copy of conveyor_operator (e.g. main's, for "before")

Prints the requests by method and resource, then one JSON line with the figure.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import time

import redis

from _operator_bench import operator_bench
from op_helpers import cond, jobqueue, jq_path, wait_for

NS = "bench"
RESYNC_SECONDS = 10.0  # the operator's default (conveyor_operator.settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobqueues", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--autoscaled", action="store_true", help="JobQueues with autoscaling on (pollSeconds 5)")
    parser.add_argument("--pythonpath", default="", help="put this first on the operator's PYTHONPATH")
    args = parser.parse_args()
    env = {"CONVEYOR_OPERATOR_RESYNC_SECONDS": str(RESYNC_SECONDS)}
    if args.pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([args.pythonpath, os.environ.get("PYTHONPATH", "")])
    with operator_bench("api-requests", **env) as bench:
        cluster, kubectl, redis_server = bench.cluster, bench.kubectl, bench.redis_server
        names = [f"jq{i}" for i in range(args.jobqueues)]
        extra = {"autoscaling": {"enabled": True, "minReplicas": 1, "maxReplicas": 3}} if args.autoscaled else {}
        for name in names:
            kubectl("apply", "-n", NS, "-f", "-", input=jobqueue(name, redis={"url": redis_server.url},
                                                                 queues=[name], **extra))
        for name in names:
            wait_for(lambda: cond(cluster.get(jq_path(NS, name)), "Degraded").get("status") == "False",
                     timeout=30, what=f"{name} reconciled")
        time.sleep(2 * RESYNC_SECONDS)  # warm-up: past the first resyncs and their status writes
        conn = redis.Redis.from_url(redis_server.url)
        connections = int(conn.info("stats")["total_connections_received"])
        mark = len(cluster.emu._requests)
        time.sleep(args.seconds)  # the window: nothing but the operator talks to the emulator
        window = [r for r in list(cluster.emu._requests)[mark:] if r.params.get("watch") not in ("true", "1")]
        connections = int(conn.info("stats")["total_connections_received"]) - connections
        by_kind = collections.Counter(
            f"{getattr(r.method, 'value', r.method)} {r.resource.plural if r.resource is not None else r.url.path}"
            for r in window)
        for what, n in by_kind.most_common():
            print(f"{n:6d}  {what}")
        per_minute = len(window) / args.jobqueues / (args.seconds / 60)
        print(json.dumps({"jobqueues": args.jobqueues, "seconds": args.seconds, "resync_seconds": RESYNC_SECONDS,
                          "autoscaled": args.autoscaled, "requests": len(window),
                          "requests_per_jobqueue_per_minute": round(per_minute, 1),
                          "redis_connections_per_jobqueue_per_minute":
                              round(max(0, connections) / args.jobqueues / (args.seconds / 60), 1)}))


if __name__ == "__main__":
    main()
