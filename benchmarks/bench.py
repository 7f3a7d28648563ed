"""Conveyor vs RQ on one Redis, one run, figures printed as a table.

    .venv/bin/python benchmarks/bench.py            # starts a private redis-server
    .venv/bin/python benchmarks/bench.py --redis-url redis://localhost:6379/15

Throughput is jobs / (last end - first start) read from the jobs' own timestamps,
so process start-up is not counted for either side. Both sides log at INFO (one or
more lines per job), into a pipe. Round trips are counted by
the worker itself (its closing log line). Machines here are 2-core and noisy:
compare ratios from one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conveyor import Job, Queue  # noqa: E402
from conveyor.embedded import EmbeddedRedis  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
BIN = Path(sys.executable).parent


def conveyor_worker(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [str(BIN / "conveyor"), "worker", "--redis-url", url, "--burst", "--metrics-port", "0", "--log-level", "info", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, check=True)


def roundtrips(stderr: str) -> tuple[int, int]:
    m = re.search(r"stopped: (\d+) jobs .*?(\d+) Redis round trips", stderr)
    assert m, stderr[-2000:]
    return int(m.group(1)), int(m.group(2))


def conveyor_span(conn: redis.Redis, queue: str, ids: list[str]) -> float:
    pipe = conn.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(Queue(queue, connection=conn).keys.job(i), "started_at", "ended_at", "status")
    rows = pipe.execute()
    assert all(r[2] == b"finished" for r in rows), "not every job finished"
    return max(float(r[1]) for r in rows) - min(float(r[0]) for r in rows)


def rq_span(conn: redis.Redis, ids: list[str]) -> float:
    pipe = conn.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(f"rq:job:{i}", "started_at", "ended_at", "status")
    rows = pipe.execute()
    assert all(r[2] == b"finished" for r in rows), f"not every RQ job finished: {set(r[2] for r in rows)}"

    def ts(raw: bytes) -> float:
        return dt.datetime.fromisoformat(raw.decode().replace("Z", "+00:00")).timestamp()

    return max(ts(r[1]) for r in rows) - min(ts(r[0]) for r in rows)


def rq_enqueue(conn: redis.Redis, func: str, n: int) -> list[str]:
    from rq import Queue as RQQueue

    q = RQQueue("rqbench", connection=conn)
    jobs = q.enqueue_many([RQQueue.prepare_data(func, ()) for _ in range(n)])
    return [j.id for j in jobs]


def rq_worker(url: str, worker_class: str) -> None:
    subprocess.run(
        [str(BIN / "rq"), "worker", "--url", url, "--burst", "-w", worker_class, "rqbench"],
        env=ENV, check=True, capture_output=True,
    )


def bench_drain(url: str, conn: redis.Redis, n: int, rq_fork_n: int) -> list[tuple[str, str, str]]:
    rows = []
    conn.flushdb()
    q = Queue("bench", connection=conn)
    ids = [j.id for j in q.enqueue_many([Queue.prepare_data("bench_jobs:noop") for _ in range(n)])]
    proc = conveyor_worker(url, "-q", "bench")
    jobs, rts = roundtrips(proc.stderr)
    conv_rate = n / conveyor_span(conn, "bench", ids)

    conn.flushdb()
    ids = rq_enqueue(conn, "bench_jobs.noop", n)
    rq_worker(url, "rq.worker.SimpleWorker")
    simple_rate = n / rq_span(conn, ids)

    conn.flushdb()
    ids = rq_enqueue(conn, "bench_jobs.noop", rq_fork_n)
    rq_worker(url, "rq.worker.Worker")
    fork_rate = rq_fork_n / rq_span(conn, ids)

    rows.append((f"drain {n} no-op jobs, one worker (jobs/s)", f"{conv_rate:,.0f}",
                 f"SimpleWorker {simple_rate:,.0f} -> {conv_rate / simple_rate:.1f}x (goal 20x)"))
    rows.append(("", "", f"Worker (fork, {rq_fork_n} jobs) {fork_rate:,.0f} -> {conv_rate / fork_rate:.1f}x (goal 50x)"))
    rows.append((f"Redis round trips per job, draining {n}", f"{rts / jobs:.3f} ({rts} for {jobs})", "goal <= 0.5"))
    return rows


def bench_sleep(url: str, conn: redis.Redis, n: int, concurrency: int) -> list[tuple[str, str, str]]:
    conn.flushdb()
    q = Queue("bench", connection=conn)
    ids = [j.id for j in q.enqueue_many([Queue.prepare_data("bench_jobs:sleep10ms") for _ in range(n)])]
    proc = conveyor_worker(url, "-q", "bench", "--concurrency", str(concurrency))
    jobs, rts = roundtrips(proc.stderr)
    rate = n / conveyor_span(conn, "bench", ids)
    ideal = concurrency / 0.01
    return [
        (f"{n} jobs of sleep(10ms), concurrency {concurrency} (jobs/s)", f"{rate:,.0f}",
         f"{rate / ideal:.0%} of ideal {ideal:,.0f} (goal 80%)"),
        ("Redis round trips per job, under that load", f"{rts / jobs:.3f} ({rts} for {jobs})", "goal <= 0.5"),
    ]


def bench_enqueue_many(conn: redis.Redis, n: int, rounds: int = 3) -> list[tuple[str, str, str]]:
    """Best of a few rounds on each side, so neither pays for warm-up."""
    from rq import Queue as RQQueue

    q = Queue("bench", connection=conn)
    rq_q = RQQueue("rqbench", connection=conn)
    conv = rq_rate = 0.0
    for _ in range(rounds):
        conn.flushdb()
        items = [Queue.prepare_data("bench_jobs:noop", (i,)) for i in range(n)]
        t = time.perf_counter()
        q.enqueue_many(items)
        conv = max(conv, n / (time.perf_counter() - t))
        conn.flushdb()
        rq_items = [RQQueue.prepare_data("bench_jobs.noop", (i,)) for i in range(n)]
        t = time.perf_counter()
        rq_q.enqueue_many(rq_items)
        rq_rate = max(rq_rate, n / (time.perf_counter() - t))
    return [(f"enqueue_many of {n} jobs (jobs/s, best of {rounds})", f"{conv:,.0f}",
             f"RQ {rq_rate:,.0f} -> {conv / rq_rate:.1f}x (goal 8x)")]


def start_delays(sent: list[tuple[float, Job]], timeout: float) -> tuple[float, float]:
    """p50 and p99, in ms, of how long after its reference time each bench_jobs:stamp job started."""
    lat = []
    deadline = time.monotonic() + timeout
    for ref, job in sent:
        while job.refresh().status.value != "finished":
            assert time.monotonic() < deadline, "jobs did not finish"
            time.sleep(0.01)  # polling jobs another process runs
        lat.append((job.result - ref) * 1000)
    lat.sort()
    return statistics.median(lat), lat[min(len(lat) - 1, int(round(0.99 * len(lat))) - 1)]


def bench_pickup(url: str, conn: redis.Redis, n: int, gap: float) -> list[tuple[str, str, str]]:
    conn.flushdb()
    q = Queue("bench", connection=conn)
    cmd = [str(BIN / "conveyor"), "worker", "--redis-url", url, "-q", "bench", "--metrics-port", "0", "--log-level", "warning"]
    worker = subprocess.Popen(cmd, env=ENV)
    try:
        # Let the worker reach its idle wait: a first job proves it is up.
        first = q.enqueue("bench_jobs:stamp")
        deadline = time.monotonic() + 30
        while first.refresh().status.value != "finished":
            assert time.monotonic() < deadline, "worker did not start"
            time.sleep(0.01)
        sent: list[tuple[float, Job]] = []
        for _ in range(n):
            time.sleep(gap)
            t0 = time.time()
            sent.append((t0, q.enqueue("bench_jobs:stamp")))
        p50, p99 = start_delays(sent, 30)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    return [(f"pickup latency, idle worker, {n} jobs {gap * 1000:.0f} ms apart",
             f"p50 {p50:.2f} ms, p99 {p99:.2f} ms", "goal p50 <= 2 ms, p99 <= 5 ms")]


def bench_scheduled(url: str, conn: redis.Redis, n: int) -> list[tuple[str, str, str]]:
    """Jobs due at T on an idle fleet (two --with-scheduler workers): how late do they start?"""
    conn.flushdb()
    q = Queue("bench", connection=conn)
    cmd = [str(BIN / "conveyor"), "worker", "--redis-url", url, "-q", "bench", "--with-scheduler", "--metrics-port", "0", "--log-level", "warning"]
    workers = [subprocess.Popen(cmd, env=ENV) for _ in range(2)]
    try:
        lock = q.keys.scheduler_lock
        deadline = time.monotonic() + 30
        while not conn.exists(lock):
            assert time.monotonic() < deadline, "no scheduler leader"
            time.sleep(0.01)
        start = time.time() + 0.5
        sent = [(start + i * 0.025, q.enqueue_at(dt.datetime.fromtimestamp(start + i * 0.025), "bench_jobs:stamp"))
                for i in range(n)]
        p50, p99 = start_delays(sent, 60)
    finally:
        for w in workers:
            w.terminate()
            w.wait(timeout=30)
    return [(f"scheduled job start after its due time, {n} jobs", f"p50 {p50:.2f} ms, p99 {p99:.2f} ms",
             "goal p99 <= 50 ms")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", help="Redis to use (default: a private redis-server)")
    ap.add_argument("--jobs", type=int, default=5000)
    ap.add_argument("--rq-fork-jobs", type=int, default=1000,
                    help="jobs for RQ's forking Worker, which forks once per job (its rate is compared)")
    ap.add_argument("--sleep-jobs", type=int, default=2000)
    ap.add_argument("--enqueue-jobs", type=int, default=10000)
    args = ap.parse_args()

    embedded = None
    url = args.redis_url
    if url is None:
        embedded = EmbeddedRedis().start()
        url = embedded.url
    conn = redis.Redis.from_url(url)
    rows: list[tuple[str, str, str]] = []
    try:
        rows += bench_drain(url, conn, args.jobs, args.rq_fork_jobs)
        rows += bench_sleep(url, conn, args.sleep_jobs, 32)
        rows += bench_enqueue_many(conn, args.enqueue_jobs)
        rows += bench_pickup(url, conn, 200, 0.02)
        rows += bench_scheduled(url, conn, 100)
    finally:
        conn.flushdb()
        if embedded:
            embedded.stop()
    widths = [max(len(r[i]) for r in rows + [("benchmark", "conveyor", "vs RQ / goal")]) for i in range(3)]
    header = ("benchmark", "conveyor", "vs RQ / goal")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
