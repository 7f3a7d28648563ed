"""The operator's own /metrics, scraped from a real operator process against an API emulator
of its own (so every count here is this test's) and a real Redis: reconciles by outcome,
Redis read latency, JobQueues known, scale decisions."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from conveyor import Queue
from conveyor.embedded import free_port
from op_helpers import Cluster, Kubectl, OperatorProcess, dep_path, jobqueue, wait_for

OK = 'conveyor_operator_reconciles_total{outcome="ok"}'
DEGRADED = 'conveyor_operator_reconciles_total{outcome="degraded"}'
UP = 'conveyor_operator_scale_decisions_total{direction="up"}'
DEPTH_READS = 'conveyor_operator_redis_read_seconds_count{read="depth"}'
DEMAND_READS = 'conveyor_operator_redis_read_seconds_count{read="demand"}'


@pytest.fixture
def own_operator(own_cluster: tuple[Cluster, Kubectl], tmp_path: Path) -> Any:
    cluster, kubectl = own_cluster
    op = OperatorProcess(Path(kubectl.env["KUBECONFIG"]), tmp_path / "operator.log", cluster)
    try:
        wait_for(lambda: op.metrics(), timeout=20, what="the operator's /metrics")
        yield cluster, kubectl, op
    except BaseException:
        print(op.log())
        raise
    finally:
        op.stop()


def test_metrics_count_reconciles_reads_and_scale_decisions(
        namespace: str, redis_server: Any, own_operator: tuple[Cluster, Kubectl, OperatorProcess]) -> None:
    cluster, kubectl, op = own_operator
    first = op.metrics()
    # Every series is there, at 0, before anything happened: rate() needs the baseline.
    assert first[OK] == first[DEGRADED] == first['conveyor_operator_reconciles_total{outcome="error"}'] == 0
    assert first[UP] == first['conveyor_operator_scale_decisions_total{direction="down"}'] == 0
    assert first["conveyor_operator_leader"] == 1  # standalone
    assert first["conveyor_operator_released_jobs_total"] == 0
    assert first["process_resident_memory_bytes"] > 0  # the process' own series too
    wait_for(op.watching, timeout=20, what="the operator to watch JobQueues")

    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue(
        "scaled", redis={"url": redis_server.url, "prefix": namespace}, queues=["q"],
        autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 3, "pollSeconds": 1,
                     "targetJobsPerWorker": 10}))
    seen = wait_for(lambda: (m := op.metrics())[OK] >= 1 and m[DEPTH_READS] >= 1 and m[DEMAND_READS] >= 1 and m,
                    timeout=15, what="a reconcile, a depth read and a demand read counted")
    assert seen["conveyor_operator_jobqueues"] == 1 and seen[DEGRADED] == 0
    wait_for(lambda: op.metrics()["conveyor_operator_resyncs_total"] >= 2, what="resync passes counted")
    assert seen['conveyor_operator_redis_read_seconds_bucket{le="+Inf",read="depth"}'] == seen[DEPTH_READS]
    assert 0 < seen['conveyor_operator_redis_read_seconds_sum{read="depth"}'] < seen[DEPTH_READS] * 0.5

    # A burst: one scale-up decision, counted once.
    wait_for(lambda: (cluster.get(dep_path(namespace, "scaled")) or {}).get("spec", {}).get("replicas") == 1,
             what="the Deployment at its minimum")
    Queue("q", redis_url=redis_server.url, prefix=namespace).enqueue_many(
        [Queue.prepare_data("builtins:print", (i,)) for i in range(25)])
    wait_for(lambda: (cluster.get(dep_path(namespace, "scaled")) or {})["spec"]["replicas"] == 3,
             timeout=10, what="3 replicas")
    wait_for(lambda: op.metrics()[UP] == 1, what="the scale-up counted")

    # A JobQueue whose Redis does not answer: degraded passes, the healthy one still ok.
    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue(
        "broken", redis={"url": f"redis://127.0.0.1:{free_port()}/0"}, queues=["q"]))
    last = wait_for(lambda: (m := op.metrics())[DEGRADED] >= 1 and m, timeout=15, what="a degraded reconcile")
    assert last["conveyor_operator_jobqueues"] == 2
    assert last['conveyor_operator_errors_total{step="reconcile"}'] == 0  # reported, not raised


@pytest.mark.slow
def test_a_taken_metrics_port_is_an_error_line_not_a_stopped_operator(
        own_cluster: tuple[Cluster, Kubectl], tmp_path: Path, namespace: str, redis_server: Any) -> None:
    cluster, kubectl = own_cluster
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        op = OperatorProcess(Path(kubectl.env["KUBECONFIG"]), tmp_path / "operator.log", cluster,
                             CONVEYOR_OPERATOR_METRICS_PORT=str(port))
        try:
            kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue("still", redis={"url": redis_server.url},
                                                                         queues=["q"]))
            wait_for(lambda: cluster.get(dep_path(namespace, "still")), timeout=20, what="a reconcile all the same")
            assert f"cannot serve the operator metrics on port {port}" in op.log_path.read_text(errors="replace")
        finally:
            op.stop()
