"""Chaos at size: the fault scenarios of the test suite, with thousands of jobs and several
workers, and a table of what happened to the work.

    .venv/bin/python benchmarks/chaos.py              # every scenario (a few minutes)
    .venv/bin/python benchmarks/chaos.py --only pill  # one of them

Each scenario starts its own redis-server(s). Truth comes from the jobs: every execution appends
a line to a file outside Redis (tests/jobs_faults.py). Columns:

- enqueued: jobs Redis acknowledged (the innocent ones; planted faults are counted apart);
- finished: of those, how many ended finished;
- lost: acknowledged jobs that never finished (must be 0);
- runs/job: executions per innocent job, mean and max (above 1 only where a worker died mid-job
  or an outage made a job's lease lapse; at-least-once);
- abandoned innocents: innocent jobs failed as Abandoned (must be 0);
- discarded: outcomes the workers computed and Redis rejected as stale (stale completions).
"""

from __future__ import annotations

import argparse
import itertools
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(TESTS))

from conveyor import Queue  # noqa: E402
from conveyor.embedded import EmbeddedRedis  # noqa: E402
from conveyor.errors import RedisFull  # noqa: E402
from jobs_faults import executions  # noqa: E402
from proxy import Proxy  # noqa: E402
from support import Supervisor, WorkerProcess, loaded, stale_completions  # noqa: E402


def fleet(url: str, tmp: Path, size: int, *args: str) -> Supervisor:
    """`size` workers kept running (a dead one is replaced, as a Deployment would)."""
    n = itertools.count()
    return Supervisor(lambda *a: WorkerProcess(url, a, tmp / f"worker-{next(n)}.log"), size, *args)


def wait(f: Supervisor, done: Callable[[], bool], timeout: float) -> None:
    f.until(done, timeout, "the scenario's jobs")


def discarded(*workers: WorkerProcess) -> int:
    """Stale completions the workers reported (a SIGKILLed one reports none)."""
    return sum(stale_completions(w.log()) or 0 for w in workers)


def finish(f: Supervisor) -> int:
    f.stop()
    return discarded(*f.started)


@dataclass
class Row:
    scenario: str
    enqueued: int
    finished: int
    lost: int
    runs_mean: float
    runs_max: int
    abandoned: int
    discarded: int


def statuses(conn: redis.Redis, q: Queue, ids: list[str]) -> list[str]:
    pipe = conn.pipeline(transaction=False)
    for i in ids:
        pipe.hmget(q.keys.job(i), "status", "exc_type")
    return [f"{(s or b'gone').decode()}:{(e or b'').decode()}" for s, e in pipe.execute()]


def tally(name: str, conn: redis.Redis, q: Queue, ids: list[str], tags: list[str], path: str, discarded: int) -> Row:
    st = statuses(conn, q, ids)
    ran = executions(path)
    runs = [ran[t] for t in tags]
    finished = sum(1 for s in st if s.startswith("finished"))
    return Row(name, len(ids), finished, len(ids) - finished, sum(runs) / len(runs), max(runs),
               sum(1 for s in st if s == "failed:Abandoned"), discarded)


def innocents(q: Queue, path: str, n: int, seconds: float = 0.01, prefix: str = "j") -> tuple[list[str], list[str]]:
    tags = [f"{prefix}{i}" for i in range(n)]
    ids: list[str] = []
    for start in range(0, n, 1000):
        ids += [j.id for j in q.enqueue_many([Queue.prepare_data("jobs_faults:record", (path, t, seconds))
                                              for t in tags[start:start + 1000]])]
    return ids, tags


def all_ended(conn: redis.Redis, q: Queue, ids: list[str]) -> Callable[[], bool]:
    return lambda: all(s.split(":")[0] in ("finished", "failed", "canceled") for s in statuses(conn, q, ids))


# -- scenarios ---------------------------------------------------------------------------------


def kills(tmp: Path) -> Row:
    with EmbeddedRedis() as srv:
        conn = redis.Redis.from_url(srv.url)
        q, path = Queue("default", connection=conn), str(tmp / "runs")
        ids, tags = innocents(q, path, 5000, 0.01)
        f = fleet(srv.url, tmp, 3, "--concurrency", "8", "--lease-seconds", "2", "--with-scheduler")
        done = lambda: sum(executions(path).values())  # noqa: E731
        for frac, sig in ((0.2, signal.SIGKILL), (0.4, signal.SIGTERM), (0.6, signal.SIGKILL), (0.8, signal.SIGTERM)):
            wait(f, lambda frac=frac: done() >= frac * len(ids), 120)
            f.replace(int(frac * 10) % 3, sig)
        wait(f, all_ended(conn, q, ids), 180)
        return tally("SIGKILL x2 + SIGTERM x2 mid-run, 3 workers", conn, q, ids, tags, path, finish(f))


def pill(tmp: Path) -> Row:
    with EmbeddedRedis() as srv:
        conn = redis.Redis.from_url(srv.url)
        q, path = Queue("default", connection=conn), str(tmp / "runs")
        ids, tags = [], []
        for n in range(4):  # the pills sit among the innocents, so they share workers with them
            more, more_tags = innocents(q, path, 500, 0.02, prefix=f"j{n}-")
            ids, tags = ids + more, tags + more_tags
            if n < 3:
                q.enqueue("jobs_faults:pill", path, f"pill{n}")
        f = fleet(srv.url, tmp, 3, "--concurrency", "8", "--lease-seconds", "1.5")
        wait(f, all_ended(conn, q, ids), 300)
        wait(f, lambda: not q.count and not q.started.count and not q.prefetched.count, 120)
        pills = statuses(conn, q, [k.decode() for k in conn.zrange(q.keys.failed, 0, -1)])
        abandoned = sum(1 for s in pills if s == "failed:Abandoned")
        return tally(f"3 poison pills (os._exit) among 2,000: {len(f.deaths)} worker deaths, {abandoned} pills "
                     "abandoned", conn, q, ids, tags, path, finish(f))


def corrupt(tmp: Path) -> Row:
    with EmbeddedRedis() as srv:
        conn = redis.Redis.from_url(srv.url)
        q, path = Queue("default", connection=conn), str(tmp / "runs")
        ids, tags = innocents(q, path, 5000, 0.0)
        bad = [j.id for j in q.enqueue_many([Queue.prepare_data("jobs_faults:record", (path, f"bad{i}"))
                                            for i in range(60)])]
        for n, job_id in enumerate(bad):
            field, value = [("attempts", "{x"), ("status", "bogus"), ("result_ttl", "soon"), ("timeout", "-1"),
                            ("deliveries", "many"), ("failure_ttl", "1.5")][n % 6]
            conn.hset(q.keys.job(job_id), field, value)
        for n in range(20):  # wrong-type job keys listed among the good ones
            conn.rpush(q.keys.ready, f"intruder{n}")
            conn.set(q.keys.job(f"intruder{n}"), "not a hash")
        f = fleet(srv.url, tmp, 3, "--concurrency", "8")
        wait(f, all_ended(conn, q, ids + bad), 120)
        malformed = sum(1 for s in statuses(conn, q, bad + [f"intruder{n}" for n in range(20)])
                        if s == "failed:MalformedJob")
        return tally(f"80 corrupted jobs among 5,000 ({malformed} failed as MalformedJob)", conn, q, ids, tags, path,
                     finish(f))


def full(tmp: Path) -> Row:
    with EmbeddedRedis(args=("--maxmemory", "16mb", "--maxmemory-policy", "noeviction")) as srv:
        conn = redis.Redis.from_url(srv.url)
        q, path = Queue("default", connection=conn), str(tmp / "runs")
        ids, tags = [], []
        try:
            for i in range(100_000):
                ids.append(q.enqueue("jobs_faults:record", path, f"j{i}", 0.0, "x" * 2000).id)
                tags.append(f"j{i}")
        except RedisFull:
            pass
        f = fleet(srv.url, tmp, 3, "--concurrency", "8")
        wait(f, all_ended(conn, q, ids), 300)
        return tally(f"Redis full (noeviction) after {len(ids):,} jobs, drained by 3 new workers", conn, q, ids,
                     tags, path, finish(f))


def outage(tmp: Path) -> Row:
    data = tmp / "redis"
    data.mkdir()
    args = ("--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(data))
    srv = EmbeddedRedis(args=args).start()
    port = srv.port
    try:
        conn = redis.Redis.from_url(srv.url)
        q, path = Queue("default", connection=conn), str(tmp / "runs")
        ids, tags = innocents(q, path, 3000, 0.02)
        f = fleet(srv.url, tmp, 3, "--concurrency", "8", "--lease-seconds", "5", "--with-scheduler")
        wait(f, lambda: sum(executions(path).values()) >= 1000, 120)
        srv.stop()
        time.sleep(20)  # the outage itself: nothing to poll while Redis is gone
        srv = EmbeddedRedis(port, args=args).start()
        wait(f, lambda: loaded(conn), 60)  # it reads its append-only file first
        wait(f, all_ended(conn, q, ids), 180)
        return tally("Redis down 20 s (lease 5 s), 3 workers", conn, q, ids, tags, path, finish(f))
    finally:
        srv.stop()


def partition(tmp: Path) -> Row:
    with EmbeddedRedis() as srv:
        proxy = Proxy(srv.port)
        conn = redis.Redis.from_url(srv.url)
        q, path = Queue("default", connection=conn), str(tmp / "runs")
        ids, tags = innocents(q, path, 3000, 0.02)
        cut = WorkerProcess(proxy.url(), ("--concurrency", "8", "--lease-seconds", "2"), tmp / "partitioned.log")
        f = fleet(srv.url, tmp, 2, "--concurrency", "8", "--lease-seconds", "2")
        wait(f, lambda: sum(executions(path).values()) >= 1000, 120)
        proxy.blackhole()
        time.sleep(10)  # the partition itself
        proxy.heal()
        wait(f, all_ended(conn, q, ids), 180)
        cut.signal(signal.SIGTERM)
        cut.wait(60)
        proxy.stop()
        return tally("one of 3 workers silently cut off for 10 s (lease 2 s)", conn, q, ids, tags, path,
                     finish(f) + discarded(cut))


SCENARIOS: dict[str, Callable[[Path], Row]] = {
    "kills": kills, "pill": pill, "corrupt": corrupt, "full": full, "outage": outage, "partition": partition}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=sorted(SCENARIOS), action="append")
    args = ap.parse_args()
    rows: list[Row] = []
    for name in args.only or list(SCENARIOS):
        with tempfile.TemporaryDirectory(prefix=f"chaos-{name}-") as tmp:
            started = time.monotonic()
            rows.append(SCENARIOS[name](Path(tmp)))
            print(f"chaos: {name} done in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    header = ["scenario", "enqueued", "finished", "lost", "runs/job mean, max", "abandoned innocents", "discarded"]
    cells = [[r.scenario, f"{r.enqueued:,}", f"{r.finished:,}", str(r.lost), f"{r.runs_mean:.3f}, {r.runs_max}",
              str(r.abandoned), str(r.discarded)] for r in rows]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for c in cells:
        print("| " + " | ".join(c) + " |")
    bad = [r.scenario for r in rows if r.lost or r.abandoned]
    if bad:
        raise SystemExit(f"chaos: work lost or innocents abandoned in: {bad}")


if __name__ == "__main__":
    main()
