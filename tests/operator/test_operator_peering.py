"""Two operator replicas with kopf peering (leader election), as real `kopf run` processes
against an API emulator of their own: only one reconciles; SIGKILL it and the other takes
over within the peering lifetime (plus a margin) and reconciles a JobQueue applied meanwhile."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from op_helpers import ROOT, Cluster, Kubectl, OperatorProcess, cond, dep_path, jobqueue, wait_for
from support import CALL_FAILED

PEERING_CRD = ROOT / "crds" / "clusterkopfpeerings.kopf.dev.yaml"
LIFETIME = 4  # seconds: kopf then keeps alive every second, and a dead leader is dropped after 4
PEERING = "conveyor-test"
OK = 'conveyor_operator_reconciles_total{outcome="ok"}'
RESYNCS = "conveyor_operator_resyncs_total"


def peers(cluster: Cluster) -> dict[str, Any]:
    return (cluster.get(f"/apis/kopf.dev/v1/clusterkopfpeerings/{PEERING}") or {}).get("status") or {}


def leaders(ops: list[OperatorProcess]) -> list[float]:
    return [op.metrics().get("conveyor_operator_leader", -1) for op in ops]


def elected(cluster: Cluster, ops: list[OperatorProcess]) -> tuple[OperatorProcess, OperatorProcess] | None:
    """(leader, follower) once the election has settled: the replica of the higher priority in
    the peering object active, the other paused. (Whichever started first may lead until the
    other registers: 'one active, one paused' alone can be seen before the hand-over.)"""
    status = peers(cluster)
    if {op.env["POD_ID"] for op in ops} != set(status):
        return None
    leader, follower = sorted(ops, key=lambda op: -status[op.env["POD_ID"]]["priority"])
    return (leader, follower) if leaders([leader, follower]) == [1, 0] else None


@pytest.fixture
def replicas(own_cluster: tuple[Cluster, Kubectl], tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    """Two replicas, peering with the lifetime the test's parameter gives (else LIFETIME)."""
    cluster, kubectl = own_cluster
    kubectl("apply", "-f", str(PEERING_CRD))
    wait_for(lambda: cluster.get("/apis/kopf.dev/v1"), what="the ClusterKopfPeering CRD in discovery")
    kubeconfig = Path(kubectl.env["KUBECONFIG"])
    lifetime = getattr(request, "param", LIFETIME)
    ops = [OperatorProcess(kubeconfig, tmp_path / f"operator-{name}.log", cluster, POD_ID=f"replica-{name}",
                           CONVEYOR_OPERATOR_PEERING=PEERING, CONVEYOR_OPERATOR_PEERING_LIFETIME=str(lifetime))
           for name in ("a", "b")]
    try:
        yield cluster, kubectl, ops
    finally:
        for op in ops:
            op.stop()
            if request.node.stash.get(CALL_FAILED, False):
                print(f"\n--- operator {op.env['POD_ID']} (exit {op.proc.poll()}) log tail ---\n{op.log()}")


@pytest.mark.slow
def test_one_replica_leads_and_the_other_takes_over_when_it_dies(
        replicas: tuple[Cluster, Kubectl, list[OperatorProcess]], namespace: str, redis_server: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    cluster, kubectl, ops = replicas
    # The operator creates the peering object; both replicas keep themselves alive in it.
    # (Two kopf start-ups on a loaded machine: a generous deadline.)
    wait_for(lambda: set(peers(cluster)) == {"replica-a", "replica-b"}, timeout=45, what="both replicas in the peering")
    assert len({p["priority"] for p in peers(cluster).values()}) == 2  # distinct: equal ones would all pause
    leader, follower = wait_for(lambda: elected(cluster, ops), what="the higher priority active, the other paused")
    assert follower.metrics()[OK] == 0  # no JobQueue yet: nothing it could have reconciled while it led

    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue("first", redis={"url": redis_server.url}, queues=["q"]))
    wait_for(lambda: cond(cluster.get(f"/apis/conveyor.dev/v1alpha1/namespaces/{namespace}/jobqueues/first"),
                          "Degraded").get("status") == "False", timeout=10, what="the JobQueue reconciled")
    # Several resync passes (every 0.5 s) by the leader; none by the paused one, handlers or loop.
    passes = leader.metrics()[RESYNCS]
    wait_for(lambda: leader.metrics()[RESYNCS] >= passes + 3, what="the leader's resync passes")
    assert follower.metrics()[OK] == follower.metrics()[RESYNCS] == 0
    assert "first" not in follower.log_path.read_text(errors="replace")
    assert leaders(ops) == ([1, 0] if leader is ops[0] else [0, 1])  # and still the same one

    leader.proc.send_signal(signal.SIGKILL)
    leader.proc.wait(5)
    t0 = time.monotonic()
    kubectl("apply", "-n", namespace, "-f", "-",
            input=jobqueue("second", redis={"url": redis_server.url}, queues=["q"]))
    wait_for(lambda: cluster.get(dep_path(namespace, "second")), timeout=LIFETIME + 8, interval=0.05,
             what="the surviving replica to take over and reconcile the new JobQueue")
    failover = time.monotonic() - t0
    with capsys.disabled():
        print(f"\n[operator] leader SIGKILLed -> the other replica reconciled a new JobQueue: {failover:.1f} s "
              f"(peering lifetime {LIFETIME} s)")
    assert follower.metrics()["conveyor_operator_leader"] == 1
    wait_for(lambda: follower.metrics()[OK] >= 2, what="the new leader's reconciles")
    # It dropped the dead leader's record from the peering object.
    wait_for(lambda: set(peers(cluster)) == {follower.env["POD_ID"]}, timeout=LIFETIME + 4,
             what="the dead replica's record cleaned")


@pytest.mark.slow
@pytest.mark.parametrize("replicas", [30], indirect=True)
def test_a_leader_stopping_gracefully_hands_over_without_waiting_for_its_lifetime(
        replicas: tuple[Cluster, Kubectl, list[OperatorProcess]], namespace: str, redis_server: Any,
        capsys: pytest.CaptureFixture[str]) -> None:
    cluster, kubectl, ops = replicas
    leader, follower = wait_for(lambda: elected(cluster, ops), timeout=45, what="the election settled")
    t0 = time.monotonic()
    leader.stop()  # SIGINT, as a pod's SIGTERM: kopf removes its own record on the way out
    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue("after", redis={"url": redis_server.url}, queues=["q"]))
    wait_for(lambda: cluster.get(dep_path(namespace, "after")), timeout=10, interval=0.05,
             what="the other replica to take over")
    handover = time.monotonic() - t0
    with capsys.disabled():
        print(f"\n[operator] leader stopped (SIGINT) -> the other replica reconciled a new JobQueue: {handover:.1f} s "
              f"(peering lifetime 30 s)")
    assert handover < 10  # a third of the 30 s lifetime: it did not wait for the record to expire
    assert follower.metrics()["conveyor_operator_leader"] == 1
