"""Where an idle worker's pickup latency goes: the stages of each job's path, timed.

    .venv/bin/python benchmarks/trace_pickup.py [--jobs 200] [--gap 0.02]

Runs a worker (``--log-level warning``, as bench.py's pickup row) in a child process whose
RedisLink, Flow and Runner methods are wrapped to note the wall-clock time of each stage,
sends jobs GAP apart from here, and prints the median and p99 of each stage's time since
the client started enqueueing (the job's own stamp is the last stage). Nothing in the
runtime changes; the wrappers add a few microseconds per stage.

An idle worker sends its claim with the BLPOP ("BLPOP + claim returned"), so the job starts
right after that stage; "step began", "claim sent" and "claim reply" are then the round trip
that records its outcome. (On a Cluster, or while the worker holds a suspect, the plain
"BLPOP returned" is followed by the step that claims.)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

STAGES = ["enqueued (client got its reply)", "BLPOP returned", "BLPOP + claim returned", "step began", "claim sent", "claim reply",
          "job started (Runner._start)", "handed to a thread", "job ran (its stamp)"]


def traced_worker(url: str, out: str) -> None:
    """The worker, with stage stamps; writes them to `out` at exit."""
    from conveyor.cli import main
    from conveyor.worker import flow, link, runner, threads

    events: list[tuple[str, float]] = []

    def after(cls: Any, name: str, stage: str) -> None:
        orig = getattr(cls, name)

        @functools.wraps(orig)
        async def wrapped(*a: Any, **k: Any) -> Any:
            r = await orig(*a, **k)
            events.append((stage, time.time()))
            return r

        setattr(cls, name, wrapped)

    def before(cls: Any, name: str, stage: str, coro: bool) -> None:
        orig = getattr(cls, name)
        if coro:
            @functools.wraps(orig)
            async def wrapped(*a: Any, **k: Any) -> Any:
                events.append((stage, time.time()))
                return await orig(*a, **k)
        else:
            @functools.wraps(orig)
            def wrapped(*a: Any, **k: Any) -> Any:  # type: ignore[misc]
                events.append((stage, time.time()))
                return orig(*a, **k)

        setattr(cls, name, wrapped)

    after(link.RedisLink, "blpop", "BLPOP returned")  # a plain BLPOP (the loop claims after it)
    after(link.RedisLink, "blpop_then", "BLPOP + claim returned")  # the claim sent with the BLPOP
    before(flow.Flow, "step", "step began", True)
    before(link.RedisLink, "roundtrip", "claim sent", True)
    after(link.RedisLink, "roundtrip", "claim reply")
    before(runner.Runner, "_start", "job started (Runner._start)", False)
    before(threads.JobThreads, "submit", "handed to a thread", False)
    sys.argv = ["conveyor", "worker", "--redis-url", url, "-q", "bench", "--metrics-port", "0", "--log-level", "warning"]
    try:
        main()
    finally:
        Path(out).write_text(json.dumps(events))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=200)
    ap.add_argument("--gap", type=float, default=0.02)
    ap.add_argument("--worker", nargs=2, metavar=("URL", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        traced_worker(*a.worker)
        return

    import redis

    from bench import ENV
    from conveyor import Queue
    from conveyor.embedded import EmbeddedRedis

    embedded = EmbeddedRedis().start()
    out = tempfile.mktemp(suffix=".json")
    try:
        conn = redis.Redis.from_url(embedded.url)
        q = Queue("bench", connection=conn)
        proc = subprocess.Popen([sys.executable, __file__, "--worker", embedded.url, out], env=ENV)
        first = q.enqueue("bench_jobs:stamp")
        while first.refresh().status.value != "finished":
            time.sleep(0.01)
        time.sleep(0.5)
        sent = []
        for _ in range(a.jobs):
            time.sleep(a.gap)
            t0 = time.time()
            job = q.enqueue("bench_jobs:stamp")
            sent.append((t0, time.time(), job))
        for _, _, job in sent:
            while job.refresh().status.value != "finished":
                time.sleep(0.01)
        proc.terminate()
        proc.wait(timeout=30)
        events = json.loads(Path(out).read_text())
    finally:
        embedded.stop()
        if os.path.exists(out):
            os.unlink(out)
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    for i, (t0, t_enq, job) in enumerate(sent):
        end = sent[i + 1][0] if i + 1 < len(sent) else float("inf")
        seen = {}
        for stage, t in events:
            if t0 <= t < end and stage not in seen:
                seen[stage] = t
        seen["enqueued (client got its reply)"] = t_enq
        seen["job ran (its stamp)"] = job.result
        for stage in STAGES:
            if stage in seen:
                per_stage[stage].append((seen[stage] - t0) * 1000)
    print(f"{a.jobs} jobs {a.gap * 1000:.0f} ms apart; ms since the client began enqueue (median, p99, n)")
    prev = 0.0
    for stage in STAGES:
        v = sorted(per_stage[stage])
        if not v:
            print(f"  {stage:34s} (not seen)")
            continue
        med, p99 = statistics.median(v), v[min(len(v) - 1, int(round(0.99 * len(v))) - 1)]
        print(f"  {stage:34s} {med:6.2f}  {p99:6.2f}  (+{med - prev:.2f})  n={len(v)}")
        prev = med


if __name__ == "__main__":
    main()
