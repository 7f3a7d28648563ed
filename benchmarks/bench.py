"""Conveyor vs dramatiq and RQ on one private redis-server, one run, one table.

    .venv/bin/python benchmarks/bench.py            # starts a private redis-server
    .venv/bin/python benchmarks/bench.py --quick    # one round, smaller sizes
    .venv/bin/python benchmarks/bench.py --redis-url redis://localhost:6379/15

Every figure is the median of --rounds runs (default 3; Conveyor and its peers alternate
within a round), except the RSS soak, which runs once.

How each side is measured:

- Throughput is jobs / (last end - first start). Conveyor and RQ: from the jobs' own
  start/end stamps in Redis. dramatiq (no stamps of its own): a middleware in
  bench_dramatiq.py reads the clock before the first and after each message in each worker
  process and writes the span once, at the process's shutdown. Process start-up is not
  counted on any side.
- Every side runs its default worker with its default logging (Conveyor: INFO, one line per
  job; dramatiq: INFO, no line per job; RQ: INFO) into a file, except the row that says
  WARNING. Conveyor's workers serve /metrics (its default) on a free port.
- dramatiq's concurrency is processes x threads: one process with its default 8 threads for
  the drains, 1 process x 32 threads beside Conveyor's --concurrency 32, 2 x 8 beside two
  Conveyor workers.
- Round trips per job are counted by the Conveyor worker itself: its closing log line sums
  every pipeline and BLPOP its RedisLink sent (claims, starts, outcomes, lease renewals,
  registration, sampling), summed over the workers of the row; the occasional PING of a
  quiet link is not counted.
- RSS is VmRSS from /proc/PID/status of the worker process (for dramatiq: its worker
  process, not the supervising parent).

Machines here are 2-core and noisy: compare ratios from one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conveyor import AsyncQueue, Job, Queue  # noqa: E402
from conveyor.embedded import EmbeddedRedis, free_port  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
BIN = Path(sys.executable).parent
Row = tuple[str, str, str, str, str]  # figure, Conveyor, best peer, ratio, goal


def median(values: list[float]) -> float:
    return statistics.median(values)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def wait_until(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(poll)


# -- Conveyor ------------------------------------------------------------------------------------


class ConveyorWorkers:
    """`count` Conveyor worker processes on the bench queue, logs in temporary files."""

    def __init__(self, url: str, count: int = 1, *args: str, log_level: str = "info", burst: bool = True) -> None:
        self.logs = [tempfile.TemporaryFile(mode="w+") for _ in range(count)]
        self.ports = [free_port() for _ in range(count)]
        cmd = [str(BIN / "conveyor"), "worker", "--redis-url", url, "-q", "bench", "--log-level", log_level, *args]
        self.procs = [subprocess.Popen([*cmd, *(["--burst"] if burst else []), "--metrics-port", str(port)],
                                       env=ENV, stderr=log, stdout=log)
                      for log, port in zip(self.logs, self.ports)]

    def wait(self, timeout: float = 600) -> None:
        for p in self.procs:
            assert p.wait(timeout=timeout) == 0, self.stderr()

    def stop(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            p.wait(timeout=60)

    def stderr(self) -> str:
        out = ""
        for log in self.logs:
            log.seek(0)
            out += log.read()
        return out

    def roundtrips(self) -> tuple[int, int]:
        """(jobs, round trips), summed over the workers, from their closing lines."""
        found = re.findall(r"stopped: (\d+) jobs? .*?(\d+) Redis round trips", self.stderr())
        assert len(found) == len(self.procs), self.stderr()[-2000:]
        return sum(int(j) for j, _ in found), sum(int(r) for _, r in found)

    def metric(self, name: str, i: int = 0) -> float:
        text = urllib.request.urlopen(f"http://127.0.0.1:{self.ports[i]}/metrics", timeout=5).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def conveyor_enqueue(conn: redis.Redis, func: str, n: int, chunk: int = 10000) -> list[str]:
    q = Queue("bench", connection=conn)
    ids: list[str] = []
    for start in range(0, n, chunk):
        ids += [j.id for j in q.enqueue_many([Queue.prepare_data(func) for _ in range(min(chunk, n - start))])]
    return ids


def conveyor_span(conn: redis.Redis, ids: list[str]) -> float:
    k = Queue("bench", connection=conn).keys
    pipe = conn.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(k.job(i), "started_at", "ended_at", "status")
    rows = pipe.execute()
    assert all(r[2] == b"finished" for r in rows), "not every job finished"
    return max(float(r[1]) for r in rows) - min(float(r[0]) for r in rows)


def conveyor_drain(url: str, conn: redis.Redis, func: str, n: int, workers: int = 1, *args: str,
                   log_level: str = "info") -> tuple[float, float | None]:
    """(jobs/s, round trips per job or None when the closing line is not logged)."""
    conn.flushdb()
    ids = conveyor_enqueue(conn, func, n)
    w = ConveyorWorkers(url, workers, *args, log_level=log_level)
    w.wait()
    rate = n / conveyor_span(conn, ids)
    if log_level != "info":
        return rate, None
    jobs, rts = w.roundtrips()
    return rate, rts / jobs


# -- dramatiq ------------------------------------------------------------------------------------


def dramatiq_module(url: str) -> Any:
    os.environ["BENCH_REDIS_URL"] = url
    import bench_dramatiq

    return bench_dramatiq


def dramatiq_worker(url: str, processes: int, threads: int) -> subprocess.Popen[bytes]:
    cmd = [str(BIN / "dramatiq"), "bench_dramatiq", "--processes", str(processes), "--threads", str(threads),
           "--queues", "dqbench", "--path", str(HERE)]
    return subprocess.Popen(cmd, env={**ENV, "BENCH_REDIS_URL": url}, stdout=subprocess.DEVNULL,
                            stderr=tempfile.TemporaryFile())


@contextlib.contextmanager
def dramatiq_started(url: str, conn: redis.Redis) -> Iterator[tuple[Any, subprocess.Popen[bytes]]]:
    """A dramatiq worker (1 process x 8 threads) on an emptied database, up: it ran one stamp job."""
    bd = dramatiq_module(url)
    conn.flushdb()
    worker = dramatiq_worker(url, 1, 8)
    try:
        bd.stamp.send(time.time())
        wait_until(lambda: conn.llen(bd.STAMPS) == 1, 30, "dramatiq start")
        yield bd, worker
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)


def dramatiq_drain(url: str, conn: redis.Redis, actor: str, n: int, processes: int = 1, threads: int = 8) -> float:
    bd = dramatiq_module(url)
    conn.flushdb()
    bd.send_many(getattr(bd, actor), n)
    worker = dramatiq_worker(url, processes, threads)
    try:
        wait_until(lambda: not conn.hlen(bd.MSGS) and not conn.llen(bd.QUEUE_KEY), 600, "dramatiq drain")
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=120)
    spans = [v.split() for v in conn.hgetall(bd.SPANS).values()]
    assert sum(int(s[0]) for s in spans) == n, f"dramatiq ran {spans}, expected {n}"
    return n / (max(float(s[2]) for s in spans) - min(float(s[1]) for s in spans))


# -- RQ ------------------------------------------------------------------------------------------


def rq_span(conn: redis.Redis, ids: list[str]) -> float:
    pipe = conn.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(f"rq:job:{i}", "started_at", "ended_at", "status")
    rows = pipe.execute()
    assert all(r[2] == b"finished" for r in rows), f"not every RQ job finished: {set(r[2] for r in rows)}"

    def ts(raw: bytes) -> float:
        return dt.datetime.fromisoformat(raw.decode().replace("Z", "+00:00")).timestamp()

    return max(ts(r[1]) for r in rows) - min(ts(r[0]) for r in rows)


def rq_drain(url: str, conn: redis.Redis, n: int, worker_class: str) -> float:
    from rq import Queue as RQQueue

    conn.flushdb()
    q = RQQueue("rqbench", connection=conn)
    ids = [j.id for j in q.enqueue_many([RQQueue.prepare_data("bench_jobs.noop", ()) for _ in range(n)])]
    subprocess.run([str(BIN / "rq"), "worker", "--url", url, "--burst", "-w", worker_class, "rqbench"],
                   env=ENV, check=True, capture_output=True)
    return n / rq_span(conn, ids)


# -- the figures ---------------------------------------------------------------------------------


def fmt(rate: float) -> str:
    return f"{rate:,.0f}/s"


def bench_drains(url: str, conn: redis.Redis, a: argparse.Namespace) -> list[Row]:
    n, rounds = a.jobs, a.rounds
    conv, conv_warn, dq, rts = [], [], [], []
    conv2, dq2, rts2 = [], [], []
    for _ in range(rounds):
        rate, rt = conveyor_drain(url, conn, "bench_jobs:noop", n)
        conv.append(rate)
        rts.append(rt or 0.0)
        conv_warn.append(conveyor_drain(url, conn, "bench_jobs:noop", n, log_level="warning")[0])
        dq.append(dramatiq_drain(url, conn, "noop", n, 1, 8))
        rate, rt = conveyor_drain(url, conn, "bench_jobs:noop", n, 2)
        conv2.append(rate)
        rts2.append(rt or 0.0)
        dq2.append(dramatiq_drain(url, conn, "noop", n, 2, 8))
    simple = median([rq_drain(url, conn, a.rq_jobs, "rq.worker.SimpleWorker") for _ in range(rounds)])
    fork = median([rq_drain(url, conn, a.rq_fork_jobs, "rq.worker.Worker") for _ in range(rounds)])
    c, cw, d, c2, d2 = median(conv), median(conv_warn), median(dq), median(conv2), median(dq2)
    return [
        (f"drain {n:,} no-op jobs, one worker process, defaults (INFO)", fmt(c), f"dramatiq 1x8 {fmt(d)}",
         f"{c / d:.2f}x", "≥ 3x dramatiq"),
        ("  the same, Conveyor logging at WARNING", fmt(cw), f"dramatiq 1x8 {fmt(d)}", f"{cw / d:.2f}x",
         f"(INFO runs at {c / cw:.0%} of this)"),
        (f"  the same vs RQ SimpleWorker ({a.rq_jobs:,} jobs)", fmt(c), f"RQ {fmt(simple)}", f"{c / simple:.1f}x", "≥ 20x"),
        (f"  the same vs RQ forking Worker ({a.rq_fork_jobs:,} jobs)", fmt(c), f"RQ {fmt(fork)}", f"{c / fork:.1f}x", "≥ 50x"),
        ("  worker round trips per job, one process", f"{median(rts):.4f}", "", "", "≤ 0.05"),
        (f"drain {n:,} no-op jobs, two worker processes, one queue", fmt(c2), f"dramatiq 2x8 {fmt(d2)}",
         f"{c2 / d2:.2f}x", ""),
        ("  two processes / one process", f"{c2 / c:.2f}x", f"dramatiq {d2 / d:.2f}x", "", "≥ 1.8x"),
        ("  worker round trips per job, two processes (summed)", f"{median(rts2):.4f}", "", "", "≤ 0.05"),
    ]


def bench_sleep(url: str, conn: redis.Redis, a: argparse.Namespace, concurrency: int = 32) -> list[Row]:
    n = a.sleep_jobs
    conv, rts, dq = [], [], []
    for _ in range(a.rounds):
        rate, rt = conveyor_drain(url, conn, "bench_jobs:sleep10ms", n, 1, "--concurrency", str(concurrency))
        conv.append(rate)
        rts.append(rt or 0.0)
        dq.append(dramatiq_drain(url, conn, "sleep10ms", n, 1, concurrency))
    ideal = concurrency / 0.01
    c, d = median(conv), median(dq)
    return [
        (f"{n:,} jobs of sleep(10 ms), concurrency {concurrency} (ideal {ideal:,.0f}/s)",
         f"{fmt(c)} ({c / ideal:.0%})", f"dramatiq 1x{concurrency} {fmt(d)} ({d / ideal:.0%})", f"{c / d:.2f}x",
         "≥ 95% of ideal"),
        ("  worker round trips per job, under that load", f"{median(rts):.4f}", "", "", "≤ 0.05"),
    ]


def bench_enqueue(url: str, conn: redis.Redis, a: argparse.Namespace) -> list[Row]:
    from rq import Queue as RQQueue

    n = a.enqueue_jobs
    bd = dramatiq_module(url)
    q = Queue("bench", connection=conn)
    rq_q = RQQueue("rqbench", connection=conn)
    conv, dq, rq, conv_many, rq_many = [], [], [], [], []

    def timed(fn: Callable[[], object]) -> float:
        conn.flushdb()
        t = time.perf_counter()
        fn()
        return n / (time.perf_counter() - t)

    conv_async = []
    for _ in range(a.rounds):
        conn.flushdb()
        conv_async.append(asyncio.run(async_enqueue(url, n)))
        conv.append(timed(lambda: [q.enqueue("bench_jobs:noop") for _ in range(n)]))
        dq.append(timed(lambda: [bd.noop.send() for _ in range(n)]))
        rq.append(timed(lambda: [rq_q.enqueue("bench_jobs.noop") for _ in range(n)]))
        items = [Queue.prepare_data("bench_jobs:noop", (i,)) for i in range(n)]
        conv_many.append(timed(lambda: q.enqueue_many(items)))
        rq_items = [RQQueue.prepare_data("bench_jobs.noop", (i,)) for i in range(n)]
        rq_many.append(timed(lambda: rq_q.enqueue_many(rq_items)))
    c, d, r, cm, rm = median(conv), median(dq), median(rq), median(conv_many), median(rq_many)
    best = ("dramatiq", d) if d >= r else ("RQ", r)
    return [
        (f"enqueue {n:,} one by one", fmt(c), f"{best[0]} {fmt(best[1])}", f"{c / d:.2f}x dramatiq",
         "≥ 1.5x dramatiq"),
        ("", "", f"{'RQ' if best[0] == 'dramatiq' else 'dramatiq'} {fmt(r if best[0] == 'dramatiq' else d)}",
         f"{c / r:.2f}x RQ", ""),
        (f"enqueue {n:,} in bulk (enqueue_many)", fmt(cm), f"RQ {fmt(rm)}", f"{cm / rm:.1f}x", "≥ 8x RQ"),
        (f"enqueue {n:,} from 100 coroutines (AsyncQueue)", fmt(median(conv_async)), f"sync one by one {fmt(c)}",
         f"{median(conv_async) / c:.2f}x sync", ""),
    ]


async def async_enqueue(url: str, n: int, coroutines: int = 100) -> float:
    """Jobs/s of AsyncQueue.enqueue from `coroutines` coroutines at once (one client, its pool)."""
    client = aioredis.Redis.from_url(url)
    q = AsyncQueue("bench", connection=client)

    async def one(k: int) -> None:
        for _ in range(k):
            await q.enqueue("bench_jobs:noop")

    t = time.perf_counter()
    await asyncio.gather(*(one(n // coroutines) for _ in range(coroutines)))
    rate = n // coroutines * coroutines / (time.perf_counter() - t)
    await client.aclose()
    return rate


def delays(sent: list[tuple[float, Job]], timeout: float) -> list[float]:
    """How long after its reference time each bench_jobs:stamp job started, in ms."""
    lat = []
    deadline = time.monotonic() + timeout
    for ref, job in sent:
        while job.refresh().status.value != "finished":
            assert time.monotonic() < deadline, "jobs did not finish"
            time.sleep(0.01)  # polling jobs another process runs
        lat.append((job.result - ref) * 1000)
    return lat


def p50_p99(lat: list[float]) -> tuple[float, float]:
    lat = sorted(lat)
    return statistics.median(lat), lat[min(len(lat) - 1, int(round(0.99 * len(lat))) - 1)]


def conveyor_pickup(url: str, conn: redis.Redis, n: int, gap: float) -> tuple[float, float]:
    conn.flushdb()
    q = Queue("bench", connection=conn)
    w = ConveyorWorkers(url, 1, log_level="warning", burst=False)
    try:
        first = q.enqueue("bench_jobs:stamp")  # proves the worker reached its idle wait
        wait_until(lambda: first.refresh().status.value == "finished", 30, "worker start")
        sent: list[tuple[float, Job]] = []
        for _ in range(n):
            time.sleep(gap)
            t0 = time.time()
            sent.append((t0, q.enqueue("bench_jobs:stamp")))
        return p50_p99(delays(sent, 30))
    finally:
        w.stop()


def dramatiq_pickup(url: str, conn: redis.Redis, n: int, gap: float) -> tuple[float, float]:
    with dramatiq_started(url, conn) as (bd, _):
        for _ in range(n):
            time.sleep(gap)
            bd.stamp.send(time.time())
        wait_until(lambda: conn.llen(bd.STAMPS) == n + 1, 60, "dramatiq stamps")
    pairs = [v.split() for v in conn.lrange(bd.STAMPS, 1, -1)]
    return p50_p99([(float(started) - float(sent)) * 1000 for sent, started in pairs])


def bench_pickup(url: str, conn: redis.Redis, a: argparse.Namespace, gap: float = 0.02) -> list[Row]:
    n = a.pickup_jobs
    conv, dq = [], []
    for _ in range(a.rounds):
        conv.append(conveyor_pickup(url, conn, n, gap))
        dq.append(dramatiq_pickup(url, conn, n, gap))
    c50, c99 = median([p[0] for p in conv]), median([p[1] for p in conv])
    d50, d99 = median([p[0] for p in dq]), median([p[1] for p in dq])
    return [(f"pickup latency, idle worker, {n} jobs {gap * 1000:.0f} ms apart, p50 / p99",
             f"{c50:.2f} / {c99:.2f} ms", f"dramatiq 1x8 {d50:.1f} / {d99:.1f} ms", f"{d50 / c50:.0f}x lower p50",
             "p50 ≤ 1.2 ms, p99 ≤ 2 ms")]


def bench_scheduled(url: str, conn: redis.Redis, a: argparse.Namespace, n: int = 100) -> list[Row]:
    """Jobs due at T on an idle fleet (two --with-scheduler workers): how late do they start?"""
    p50s, p99s = [], []
    for _ in range(a.rounds):
        conn.flushdb()
        q = Queue("bench", connection=conn)
        w = ConveyorWorkers(url, 2, "--with-scheduler", log_level="warning", burst=False)
        try:
            wait_until(lambda: bool(conn.exists(q.keys.scheduler_lock)), 30, "scheduler leader")
            start = time.time() + 0.5
            sent = [(start + i * 0.025, q.enqueue_at(dt.datetime.fromtimestamp(start + i * 0.025), "bench_jobs:stamp"))
                    for i in range(n)]
            p50, p99 = p50_p99(delays(sent, 60))
        finally:
            w.stop()
        p50s.append(p50)
        p99s.append(p99)
    return [(f"scheduled job start after its due time, {n} jobs, p50 / p99", f"{median(p50s):.2f} / {median(p99s):.2f} ms",
             "", "", "p99 ≤ 50 ms")]


def bench_rss(url: str, conn: redis.Redis, a: argparse.Namespace, warmup: int = 5000) -> list[Row]:
    """Idle RSS with the metrics server on, then after a warm-up and after a soak of a.soak_jobs."""
    conn.flushdb()
    q = Queue("bench", connection=conn)
    w = ConveyorWorkers(url, 1, burst=False)
    pid = w.procs[0].pid
    done = 0

    def run(n: int) -> None:
        nonlocal done
        conveyor_enqueue(conn, "bench_jobs:noop", n)
        done += n
        wait_until(lambda: w.metric("conveyor_jobs_succeeded_total") >= done, 600, "soak", poll=0.2)
        time.sleep(1.0)  # idle again: the claim loop parked, the outcome buffers flushed

    try:
        first = q.enqueue("bench_jobs:noop")
        wait_until(lambda: first.refresh().status.value == "finished", 30, "worker start")
        done = 1
        time.sleep(1.0)
        idle = rss_mib(pid)
        run(warmup)
        warm = rss_mib(pid)
        run(a.soak_jobs)
        soaked = rss_mib(pid)
    finally:
        w.stop()
    with dramatiq_started(url, conn) as (_, dq):
        time.sleep(1.0)  # let it settle, as the Conveyor worker did
        dq_rss = sum(rss_mib(c) for c in children(dq.pid))
    return [
        ("idle worker RSS, metrics server on (after one job)", f"{idle:.1f} MiB", f"dramatiq 1x8 {dq_rss:.1f} MiB",
         f"{idle / dq_rss:.2f}x", "≤ 40 MiB"),
        (f"  RSS after {warmup:,} jobs, then after {a.soak_jobs:,} more (idle)", f"{warm:.1f} -> {soaked:.1f} MiB",
         "", f"{soaked - warm:+.1f} MiB", "no growth"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis-url", help="Redis to use (default: a private redis-server); it is flushed")
    ap.add_argument("--quick", action="store_true", help="one round, smaller sizes (a smoke run, not figures)")
    ap.add_argument("--rounds", type=int, help="runs per figure, the median is printed (default 3; --quick: 1)")
    ap.add_argument("--jobs", type=int, help="no-op jobs per drain (default 20,000; --quick: 3,000)")
    ap.add_argument("--rq-jobs", type=int, help="jobs for RQ's SimpleWorker (default 5,000; --quick: 500)")
    ap.add_argument("--rq-fork-jobs", type=int,
                    help="jobs for RQ's forking Worker, which forks once per job (default 1,000; --quick: 100)")
    ap.add_argument("--sleep-jobs", type=int, help="sleep(10 ms) jobs (default 2,000; --quick: 1,000)")
    ap.add_argument("--enqueue-jobs", type=int, help="jobs per enqueue figure (default 10,000; --quick: 2,000)")
    ap.add_argument("--pickup-jobs", type=int, help="jobs for pickup latency (default 200; --quick: 50)")
    ap.add_argument("--soak-jobs", type=int, help="jobs of the RSS soak (default 100,000; --quick: 10,000)")
    ap.add_argument("--only", help="comma-separated: drain,sleep,enqueue,pickup,scheduled,rss (default all)")
    a = ap.parse_args()
    defaults = {"rounds": (3, 1), "jobs": (20000, 3000), "rq_jobs": (5000, 500), "rq_fork_jobs": (1000, 100),
                "sleep_jobs": (2000, 1000), "enqueue_jobs": (10000, 2000), "pickup_jobs": (200, 50),
                "soak_jobs": (100000, 10000)}
    for name, (full, quick) in defaults.items():
        if getattr(a, name) is None:
            setattr(a, name, quick if a.quick else full)
    benches = {"drain": bench_drains, "sleep": bench_sleep, "enqueue": bench_enqueue, "pickup": bench_pickup,
               "scheduled": bench_scheduled, "rss": bench_rss}
    chosen = a.only.split(",") if a.only else list(benches)

    embedded = None
    url = a.redis_url
    if url is None:
        embedded = EmbeddedRedis().start()
        url = embedded.url
    conn = redis.Redis.from_url(url)
    rows: list[Row] = []
    try:
        for name in chosen:
            t = time.monotonic()
            rows += benches[name](url, conn, a)
            print(f"({name}: {time.monotonic() - t:.0f}s)", file=sys.stderr, flush=True)
    finally:
        conn.flushdb()
        if embedded:
            embedded.stop()
    header: Row = ("figure", "Conveyor", "best peer", "ratio", "goal")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(5)]
    print(f"median of {a.rounds}; dramatiq PxT = processes x threads")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


if __name__ == "__main__":
    main()
