"""Run a Conveyor worker under a profiler on a private redis-server, on the bench's loads.

    # drain: enqueue N no-op jobs, then run CMD (a burst worker, wrapped by a profiler) to the end
    .venv/bin/python benchmarks/profile_worker.py drain --jobs 40000 -- \\
        .venv/bin/py-spy record -r 250 --format raw -o /tmp/drain.txt -- {worker}
    .venv/bin/python benchmarks/profile_worker.py drain --jobs 40000 -- \\
        .venv/bin/python -m cProfile -o /tmp/drain.prof -m conveyor.cli worker {args}

    # pickup: start an idle worker, run CMD beside it ({pid}: the worker's), send jobs GAP apart
    .venv/bin/python benchmarks/profile_worker.py pickup --jobs 500 -- \\
        .venv/bin/py-spy record --idle -r 1000 --format raw -o /tmp/pickup.txt --pid {pid} -d 14

{worker} is ``python -m conveyor.cli worker`` plus {args}: the Redis URL, ``-q bench``, the
--burst of a drain, ``--metrics-port 0``, ``--log-level`` and whatever follows ``--worker-args``.
The worker logs into a temporary file (its closing line is printed at the end).
``benchmarks/pyspy_summary.py FILE`` summarises py-spy's raw output (areas, own time). Use
py-spy's --nonblocking with --pid: without it each sample stops the worker (pickup p50 of
~29 ms at 1000 Hz instead of ~2 ms).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench import ENV, conveyor_enqueue, delays, p50_p99  # noqa: E402
from conveyor import Job, Queue  # noqa: E402
from conveyor.embedded import EmbeddedRedis  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("load", choices=["drain", "pickup"])
    ap.add_argument("--jobs", type=int, default=40000)
    ap.add_argument("--func", default="bench_jobs:noop")
    ap.add_argument("--gap", type=float, default=0.02, help="pickup: seconds between jobs")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--worker-args", default="", help="more worker options, one shell-quoted string")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    cmd = argv[cut + 1:]  # the command, with {worker}, {args}, {pid}
    if not cmd:
        ap.error("give the command after --")
    embedded = EmbeddedRedis().start()
    conn = redis.Redis.from_url(embedded.url)
    args = ["--redis-url", embedded.url, "-q", "bench", "--metrics-port", "0", "--log-level", a.log_level,
            *(["--burst"] if a.load == "drain" else []), *shlex.split(a.worker_args)]
    worker = [sys.executable, "-m", "conveyor.cli", "worker", *args]

    def expand(part: str, pid: int = 0) -> list[str]:
        if part == "{worker}":
            return worker
        if part == "{args}":
            return args
        return [part.replace("{pid}", str(pid))]

    log = tempfile.TemporaryFile(mode="w+")
    try:
        if a.load == "drain":
            conveyor_enqueue(conn, a.func, a.jobs)
            t = time.monotonic()
            subprocess.run([x for part in cmd for x in expand(part)], env=ENV, stderr=log, check=True)
            print(f"drain of {a.jobs} took {time.monotonic() - t:.1f}s (profiler start-up included)")
        else:
            proc = subprocess.Popen(worker, env=ENV, stderr=log)
            q = Queue("bench", connection=conn)
            first = q.enqueue("bench_jobs:stamp")
            while first.refresh().status.value != "finished":
                time.sleep(0.01)
            profiler = subprocess.Popen([x for part in cmd for x in expand(part, proc.pid)], env=ENV)
            time.sleep(1.0)  # let the profiler attach
            sent: list[tuple[float, Job]] = []
            for _ in range(a.jobs):
                time.sleep(a.gap)
                t0 = time.time()
                sent.append((t0, q.enqueue("bench_jobs:stamp")))
            p50, p99 = p50_p99(delays(sent, 60))
            print(f"pickup p50 {p50:.2f} ms, p99 {p99:.2f} ms (under the profiler)")
            profiler.wait(timeout=120)
            proc.terminate()
            proc.wait(timeout=30)
        log.seek(0)
        print("".join(line for line in log if "stopped:" in line or "Error" in line), end="")
    finally:
        embedded.stop()


if __name__ == "__main__":
    main()
