"""Conveyor on Redis Cluster and Sentinel, measured in one run on this machine.

- Scale-out: the same work (6 queues, 3 burst workers serving all of them) drained from one
  redis-server and from a 3-master local Cluster: jobs/s and each Redis's CPU seconds.
- Pickup latency of an idle worker whose queues live on three different Cluster masters,
  next to the same on one server.
- The cost of ``min_replicas=1`` (enqueue waits for a replica, Redis WAIT) on a Sentinel
  group with one replica, enqueueing one by one.

Deployments are the tests' own (tests/deployments.py). Figures are ratios from one run.

    .venv/bin/python benchmarks/topology.py [--jobs 3000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]

from redis.crc import key_slot  # noqa: E402

from bench import BIN, ENV, start_delays  # noqa: E402
from conveyor import Job, Queue  # noqa: E402
from conveyor.connection import RedisTarget, TlsFiles  # noqa: E402
from conveyor.embedded import EmbeddedRedis  # noqa: E402
from deployments import RedisClusterDeployment, SentinelGroup  # noqa: E402


def cpu_seconds(addrs: list[tuple[str, int]]) -> list[float]:
    out = []
    for host, port in addrs:
        client = RedisTarget.parse(f"redis://{host}:{port}/0", TlsFiles()).client()
        info = client.info("cpu")
        out.append(float(info["used_cpu_sys"]) + float(info["used_cpu_user"]))
        client.close()
    return out


def drain(url: str, addrs: list[tuple[str, int]], queues: list[str], per_queue: int,
          workers: int = 3) -> tuple[float, list[float]]:
    conn = RedisTarget.parse(url, TlsFiles()).client()
    jobs: list[Job] = []
    for name in queues:
        q = Queue(name, connection=conn)
        for start in range(0, per_queue, 1000):
            jobs += q.enqueue_many([Queue.prepare_data("bench_jobs:noop") for _ in range(min(1000, per_queue - start))])
    before = cpu_seconds(addrs)
    cmd = [str(BIN / "conveyor"), "worker", "--redis-url", url, "-q", ",".join(queues), "--burst",
           "--metrics-port", "0", "--log-level", "warning"]
    procs = [subprocess.Popen(cmd, env=ENV) for _ in range(workers)]
    for p in procs:
        assert p.wait(timeout=600) == 0
    used = [a - b for a, b in zip(cpu_seconds(addrs), before)]
    starts, ends = [], []
    by_queue: dict[str, list[Job]] = {}
    for j in jobs:
        by_queue.setdefault(j.queue, []).append(j)
    for name, js in by_queue.items():
        k = Queue(name, connection=conn).keys
        rows: Any = _hmget(conn, [k.job(j.id) for j in js])
        assert all(r[2] == b"finished" for r in rows), "not every job finished"
        starts += [float(r[0]) for r in rows]
        ends += [float(r[1]) for r in rows]
    conn.close()
    return len(jobs) / (max(ends) - min(starts)), used


def _hmget(conn: Any, keys: list[str]) -> list[Any]:
    from conveyor import scripts

    return scripts.execute(conn, lambda p: [p.hmget(k, "started_at", "ended_at", "status") for k in keys])


def pickup(url: str, queues: list[str], n: int = 200, gap: float = 0.02) -> tuple[float, float]:
    conn = RedisTarget.parse(url, TlsFiles()).client()
    qs = [Queue(name, connection=conn) for name in queues]
    cmd = [str(BIN / "conveyor"), "worker", "--redis-url", url, "-q", ",".join(queues), "--metrics-port", "0",
           "--log-level", "warning"]
    worker = subprocess.Popen(cmd, env=ENV)
    try:
        first = [q.enqueue("bench_jobs:stamp") for q in qs]
        start_delays([(time.time(), j) for j in first], 30)
        sent = []
        for i in range(n):
            time.sleep(gap)
            sent.append((time.time(), qs[i % len(qs)].enqueue("bench_jobs:stamp")))
        return start_delays(sent, 30)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        conn.close()


def enqueue_rate(url: str, n: int, min_replicas: int) -> float:
    conn = RedisTarget.parse(url, TlsFiles()).client()
    q = Queue(f"w{min_replicas}", connection=conn, min_replicas=min_replicas)
    q.enqueue("bench_jobs:noop")
    t0 = time.perf_counter()
    for _ in range(n):
        q.enqueue("bench_jobs:noop")
    rate = n / (time.perf_counter() - t0)
    conn.close()
    return rate


def spread(cluster: RedisClusterDeployment, per_master: int) -> list[str]:
    """Queue names, per_master of them on each master (round robin over the masters)."""
    from conveyor import keys

    by_master: dict[Any, list[str]] = {}
    for i in range(2000):
        owner = cluster.master_of_slot(key_slot(keys.QueueKeys(f"q{i}").ready.encode()))
        if len(by_master.setdefault(owner, [])) < per_master:
            by_master[owner].append(f"q{i}")
    return [name for group in zip(*by_master.values()) for name in group]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=3000, help="jobs per queue (6 queues)")
    parser.add_argument("--enqueues", type=int, default=2000)
    args = parser.parse_args()
    rows = []
    with RedisClusterDeployment(masters=3, replicas_per_master=0) as cluster:
        queues = spread(cluster, 2)  # 6 queues, 2 on each master
        masters = [tuple(a) for a in cluster.masters()]
        c_rate, c_cpu = drain(cluster.url(), masters, queues, args.jobs)  # type: ignore[arg-type]
        c_p50, c_p99 = pickup(cluster.url(), queues[:3])  # one queue on each master
    with EmbeddedRedis() as one:
        one_rate, one_cpu = drain(one.url, [("127.0.0.1", one.port)], queues, args.jobs)
        one_p50, one_p99 = pickup(one.url, queues[:3])
    total = 6 * args.jobs
    rows.append((f"drain {total:,} no-op jobs (6 queues, 3 workers): one server", f"{one_rate:,.0f} jobs/s",
                 "Redis CPU " + f"{one_cpu[0]:.2f} s"))
    rows.append(("the same on a 3-master Cluster", f"{c_rate:,.0f} jobs/s ({c_rate / one_rate:.2f}x)",
                 "Redis CPU per master " + ", ".join(f"{c:.2f} s" for c in c_cpu)))
    rows.append(("pickup, idle worker, 3 queues, one server", f"p50 {one_p50:.2f} ms, p99 {one_p99:.2f} ms", ""))
    rows.append(("pickup, idle worker, 3 queues on 3 Cluster masters", f"p50 {c_p50:.2f} ms, p99 {c_p99:.2f} ms",
                 "goal p99 <= 5 ms"))
    with SentinelGroup(replicas=1) as group:
        plain = enqueue_rate(group.url(), args.enqueues, 0)
        waited = enqueue_rate(group.url(), args.enqueues, 1)
    rows.append((f"enqueue {args.enqueues:,} one by one via Sentinel", f"{plain:,.0f} jobs/s", ""))
    rows.append(("the same with min_replicas=1 (WAIT for the replica)", f"{waited:,.0f} jobs/s",
                 f"{waited / plain:.2f}x, {1000 / waited - 1000 / plain:.2f} ms more per enqueue"))
    width = max(len(r[0]) for r in rows)
    for r in rows:
        print(f"{r[0]:<{width}}  {r[1]:<34} {r[2]}")


if __name__ == "__main__":
    main()
