"""Summarise py-spy's raw (collapsed-stack) output: samples per thread kind, per area of a
worker's work, and the functions with the most own time.

    .venv/bin/python benchmarks/pyspy_summary.py /tmp/drain.txt

Areas are decided per stack, first match wins: logging (logging/, conveyor/logs.py, the call
text of a "started" line), metrics (prometheus_client), Redis (redis-py, conveyor's scripts
and calls; reply parsing when hiredis or a parser is on the stack), asyncio/loop (a leaf in
asyncio, selectors or threading: epoll waits included), job bookkeeping (any other conveyor
frame). py-spy counts a thread parked in epoll or in SimpleQueue.get as active, so the job
threads' samples are mostly waiting for work.
"""

from __future__ import annotations

import collections
import re
import sys


def area(frames: list[str]) -> str:
    s = ";".join(frames)
    if "logging/" in s or "conveyor/logs.py" in s or "calltext.py" in s:
        return "logging/formatting"
    if "prometheus_client" in s:
        return "metrics (prometheus_client)"
    if any(k in s for k in ("redis/", "conveyor/scripts", "conveyor/calls.py", "routing.py")):
        if "_parsers" in s or "read_response" in s or "hiredis" in s:
            return "redis: reply read/parse"
        return "redis: build/send/await"
    if any(k in frames[-1] for k in ("asyncio/", "selectors.py", "threading.py")):
        return "asyncio/loop (epoll waits included)"
    if "conveyor/" in s:
        return "job bookkeeping (conveyor)"
    return "other"


def main() -> None:
    totals: collections.Counter[str] = collections.Counter()
    areas: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    own: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    with open(sys.argv[1]) as f:
        for line in f:
            line = line.strip()
            if " " not in line:
                continue
            stack, count = line.rsplit(" ", 1)
            frames, n = stack.split(";"), int(count)
            kind = "job threads" if frames[0].startswith("Thread._bootstrap") else "main (event loop)"
            if "serve_forever" in stack:
                kind = "metrics http thread"
            totals[kind] += n
            areas[kind][area(frames)] += n
            own[kind][re.sub(r":\d+\)", ")", frames[-1])] += n
    for kind, total in totals.most_common():
        print(f"\n## {kind}: {total} samples")
        for name, n in areas[kind].most_common():
            print(f"  {name:38s} {n:6d} {n / total:6.1%}")
        print("  top own time:")
        for func, n in own[kind].most_common(12):
            print(f"    {n / total:6.1%}  {func}")


if __name__ == "__main__":
    main()
