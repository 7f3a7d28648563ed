"""Pod-aware recovery, measured: a worker pod is deleted -> its job has started again on
another worker. The operator (a real ``kopf run`` process) runs against the tests' API
emulator; real ``conveyor worker`` processes with POD_NAME set stand in for the pods, whose
Pod objects this script creates and deletes (there is no kubelet here; see
tests/operator/pod_helpers.py). The lease is 15 s: without the operator, recovery would wait
for it to run out.

Each round: worker N holds one running job, worker N+1 stands by; worker N is SIGKILLed and its
pod deleted; the clock runs from the DELETE to the job's second run being recorded (in a file,
by the job itself). Prints every round, then the median and the max.

    .venv/bin/python benchmarks/pod_loss.py [--rounds 10]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import time

from _operator_bench import Bench, operator_bench
from conveyor import Job, Queue
from conveyor.keys import Keyspace
from op_helpers import jobqueue, wait_for
from pod_helpers import create_pod, delete_pod, watching_pods
from support import WorkerProcess, worker_id

LEASE = "15"
NS = "bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    rounds = parser.parse_args().rounds
    workers: list[WorkerProcess] = []
    with operator_bench("pod-loss") as bench:
        try:
            measure(bench, rounds, workers)
        finally:
            for w in workers:
                w.stop()


def measure(bench: Bench, rounds: int, workers: list[WorkerProcess]) -> None:
    cluster, kubectl, redis_server, tmp = bench.cluster, bench.kubectl, bench.redis_server, bench.tmp
    wait_for(lambda: watching_pods(cluster), timeout=20, what="the operator to watch pods")
    kubectl("apply", "-n", NS, "-f", "-", input=jobqueue(
        "bench", redis={"url": redis_server.url}, queues=["bench"], leaseSeconds=int(LEASE)))
    queue = Queue("bench", redis_url=redis_server.url)
    record = tmp / "runs"

    def spawn(n: int) -> tuple[WorkerProcess, str]:
        w = WorkerProcess(redis_server.url, ("-q", "bench", "--lease-seconds", LEASE, "--concurrency", "2"),
                          tmp / f"worker-{n}.log", {"POD_NAME": f"bench-worker-{n}"})
        workers.append(w)
        return w, worker_id(w)

    def runs(tag: str) -> int:
        text = record.read_text() if record.exists() else ""
        return sum(1 for line in text.splitlines() if line.split()[0] == tag)

    holder, holder_id = spawn(0)
    figures = []
    for n in range(rounds):
        tag = f"job{n}"
        job = queue.enqueue("jobs_faults:until_lease_lost", str(record), tag)
        wait_for(lambda: Job.fetch(job.id, connection=queue.connection, queue="bench").worker == holder_id
                 and runs(tag) == 1, timeout=15, what=f"{tag} to run on worker {n}")
        wait_for(lambda: queue.connection.hget(Keyspace().worker(holder_id), "pod"),
                 what=f"worker {n}'s registration")
        create_pod(cluster, NS, "bench", f"bench-worker-{n}")
        standby, standby_id = spawn(n + 1)
        holder.signal(signal.SIGKILL)
        holder.wait(5)
        started = time.monotonic()
        delete_pod(cluster, NS, f"bench-worker-{n}")
        wait_for(lambda: runs(tag) == 2, timeout=20, interval=0.002, what=f"{tag} to run again")
        figures.append(time.monotonic() - started)
        print(f"round {n + 1}: pod deleted -> job restarted on another worker: {figures[-1] * 1000:.0f} ms",
              flush=True)
        holder, holder_id = standby, standby_id
    print(json.dumps({"rounds": rounds, "lease_seconds": int(LEASE),
                      "median_ms": round(statistics.median(figures) * 1000),
                      "max_ms": round(max(figures) * 1000)}))


if __name__ == "__main__":
    main()
