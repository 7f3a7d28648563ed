"""helm install with operator.replicas=2 into an API emulator of its own, then two operators
run as the installed Deployment runs them (the test plays the kubelet: a pod name for
POD_ID, and ports of their own for the two processes on one host). They elect one through
the ClusterKopfPeering of the release, with the CRD the chart installed, also while
watching a list of namespaces; only the active one reconciles."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chart_helpers import CHART, ChartCluster, InstalledOperator, helm
from conveyor.embedded import EmbeddedRedis, free_port
from op_helpers import wait_for

NS, WATCHED = "fleet-system", "team-x"
PEERING = f"{NS}-fleet-conveyor-operator"
RESYNCS = "conveyor_operator_resyncs_total"


def as_pod(deployment: dict[str, Any], pod: str) -> dict[str, Any]:
    """The Deployment as one of its pods runs it: POD_ID resolved, ports of its own."""
    dep = copy.deepcopy(deployment)
    env = dep["spec"]["template"]["spec"]["containers"][0]["env"]
    for e in env:
        if e["name"] in ("CONVEYOR_OPERATOR_LIVENESS_PORT", "CONVEYOR_OPERATOR_METRICS_PORT"):
            e["value"] = str(free_port())
        if e["name"] == "POD_ID":
            assert e.pop("valueFrom") == {"fieldRef": {"fieldPath": "metadata.name"}}
            e["value"] = pod
    return dep


@pytest.fixture
def cluster() -> Iterator[ChartCluster]:
    c = ChartCluster().start()
    yield c
    c.stop()


@pytest.mark.slow
def test_two_installed_replicas_elect_one_through_the_charts_peering(cluster: ChartCluster, tmp_path: Path) -> None:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "config")
    (release,) = helm(kubeconfig, {"action": "install", "chart": str(CHART), "name": "fleet", "namespace": NS,
                                   "values": {"operator": {"replicas": 2, "watchNamespaces": [WATCHED],
                                                           "resyncSeconds": 0.5, "peering": {"lifetimeSeconds": 5}}}})
    assert release["status"] == "deployed"
    assert cluster.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/clusterkopfpeerings.kopf.dev")
    deployment = cluster.get(f"/apis/apps/v1/namespaces/{NS}/deployments/fleet-conveyor-operator")
    assert deployment and deployment["spec"]["replicas"] == 2
    with EmbeddedRedis() as redis_server:
        code, body = cluster.request("POST", f"/apis/conveyor.dev/v1alpha1/namespaces/{WATCHED}/jobqueues", {
            "apiVersion": "conveyor.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": "jobs"},
            "spec": {"redis": {"url": redis_server.url}, "queues": ["jobs"]}}, content_type="application/json")
        assert code in (200, 201), body
        pods = [f"fleet-conveyor-operator-{i}" for i in range(2)]
        ops = [InstalledOperator(as_pod(deployment, pod), kubeconfig, tmp_path / f"{pod}.log", cluster) for pod in pods]
        try:
            peers = lambda: (cluster.get(f"/apis/kopf.dev/v1/clusterkopfpeerings/{PEERING}") or {}).get("status") or {}
            wait_for(lambda: set(peers()) == set(pods), timeout=20, what="both replicas in the release's peering")
            # Settled: the higher priority active, the other paused (the first to start may lead
            # until the other registers).
            status = peers()
            leader, follower = (op for _, op in sorted(zip(pods, ops), key=lambda p: -status[p[0]]["priority"]))
            wait_for(lambda: (leader.metrics().get("conveyor_operator_leader"),
                              follower.metrics().get("conveyor_operator_leader")) == (1, 0), what="the election")
            wait_for(lambda: cluster.get(f"/apis/apps/v1/namespaces/{WATCHED}/deployments/jobs-worker"),
                     what="the JobQueue reconciled")
            # A pass the follower began before it paused may still end: let those finish first.
            passes = leader.metrics()[RESYNCS]
            wait_for(lambda: leader.metrics()[RESYNCS] >= passes + 3, what="the leader's resync passes")
            before, passes = follower.metrics()[RESYNCS], leader.metrics()[RESYNCS]
            wait_for(lambda: leader.metrics()[RESYNCS] >= passes + 3, what="the leader's resync passes")
            assert follower.metrics()[RESYNCS] == before  # the paused replica's resync loop waits too
        except BaseException:
            for op in ops:
                print(op.log())
            raise
        finally:
            for op in ops:
                op.stop()
