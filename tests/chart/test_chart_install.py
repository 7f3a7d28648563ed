"""helm install into the API emulator, then the operator run exactly as the installed
Deployment runs it (its command, args and env), ending with a reconciled JobQueue: its
worker Deployment exists and its status carries the queue depth read from a real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chart_helpers import CHART, ChartCluster, InstalledOperator, helm
from conveyor import Queue
from conveyor.embedded import EmbeddedRedis, free_port
from op_helpers import wait_for

NS = "conveyor-system"
IMAGE = "registry.example.com/conveyor:test"



@pytest.fixture(scope="module")
def cluster() -> Iterator[ChartCluster]:
    c = ChartCluster().start()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[EmbeddedRedis]:
    with EmbeddedRedis() as server:
        yield server


def cond(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def test_helm_install_then_the_installed_operator_reconciles_a_jobqueue(
        cluster: ChartCluster, redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    kubeconfig = cluster.write_kubeconfig(tmp_path / "config")
    values: dict[str, Any] = {
        "image": {"repository": IMAGE.split(":")[0], "tag": "test"},
        "operator": {"livenessPort": free_port(), "resyncSeconds": 0.5, "redisTimeoutSeconds": 0.5,
                     "metrics": {"port": free_port()}},
        # The web dashboard comes along: its objects are created like the operator's.
        "webDashboard": {"enabled": True, "readOnly": True, "redis": {"urlSecret": {"name": "redis"}}},
    }
    example = {"enabled": True, "name": "demo", "queues": ["demo-high", "demo"], "redisUrl": redis_server.url}
    # The CRD must exist before Helm can map a JobQueue, so the example comes with an upgrade
    # (values.yaml says so; a single install with it fails with "ensure CRDs are installed first").
    installed, upgraded = helm(
        kubeconfig,
        {"action": "install", "chart": str(CHART), "name": "conveyor", "namespace": NS, "values": values},
        {"action": "upgrade", "chart": str(CHART), "name": "conveyor", "namespace": NS,
         "values": {**values, "exampleJobQueue": example}})
    assert (installed["revision"], installed["status"]) == (1, "deployed")
    assert (upgraded["revision"], upgraded["status"]) == (2, "deployed")
    assert "watching JobQueues in every namespace" in installed["notes"]

    crd = cluster.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/jobqueues.conveyor.dev")
    assert crd and crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert cluster.get("/apis/conveyor.dev/v1alpha1"), "the CRD Helm created is not served"
    for path in (f"/api/v1/namespaces/{NS}/serviceaccounts/conveyor-operator",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterroles/{NS}-conveyor-operator",
                 f"/apis/rbac.authorization.k8s.io/v1/clusterrolebindings/{NS}-conveyor-operator",
                 f"/api/v1/namespaces/{NS}/services/conveyor-operator-metrics",
                 f"/api/v1/namespaces/{NS}/services/conveyor-web-dashboard"):
        assert cluster.get(path), f"helm did not create {path}"
    web = cluster.get(f"/apis/apps/v1/namespaces/{NS}/deployments/conveyor-web-dashboard")
    assert web and web["spec"]["template"]["spec"]["containers"][0]["command"] == ["conveyor", "dashboard"]
    assert "port-forward svc/conveyor-web-dashboard 9181" in installed["notes"]
    deployment = cluster.get(f"/apis/apps/v1/namespaces/{NS}/deployments/conveyor-operator")
    assert deployment and deployment["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
    jq = cluster.get(f"/apis/conveyor.dev/v1alpha1/namespaces/{NS}/jobqueues/demo")
    assert jq and jq["spec"]["queues"] == ["demo-high", "demo"]

    queue = Queue("demo", redis_url=redis_server.url)
    for n in range(3):
        queue.enqueue("conveyor.demo_jobs:add", n, 1)
    queue.connection.close()

    op = InstalledOperator(deployment, kubeconfig, tmp_path / "operator.log", cluster)
    try:
        assert op.argv[0].endswith("/conveyor-operator") and "--log-format=json" in op.argv
        wait_for(op.watching, timeout=20, what="the installed operator to watch JobQueues")
        wait_for(op.healthy, what="kopf's /healthz on the chart's livenessPort")
        workers = wait_for(lambda: cluster.get(f"/apis/apps/v1/namespaces/{NS}/deployments/demo-worker"),
                           timeout=10, what="the JobQueue's worker Deployment")
        container = workers["spec"]["template"]["spec"]["containers"][0]
        assert container["image"] == IMAGE  # CONVEYOR_OPERATOR_DEFAULT_IMAGE from the chart
        assert container["command"] == ["conveyor"] and container["args"][:3] == ["worker", "-q", "demo-high,demo"]
        assert workers["spec"]["replicas"] == 1
        assert workers["metadata"]["ownerReferences"][0]["uid"] == jq["metadata"]["uid"]
        jq = wait_for(lambda: (j := cluster.get(f"/apis/conveyor.dev/v1alpha1/namespaces/{NS}/jobqueues/demo"))
                      and (j.get("status") or {}).get("depth") == 3 and j,
                      timeout=10, what="the JobQueue's status to show the 3 jobs in Redis")
        assert cond(jq, "Degraded")["status"] == "False"
        assert [q["name"] for q in jq["status"]["queues"]] == ["demo-high", "demo"]
        assert jq["status"]["queues"][1]["ready"] == 3
        # The operator's own metrics, on the port the chart gave it.
        scrape = wait_for(lambda: (m := op.metrics()).get('conveyor_operator_reconciles_total{outcome="ok"}') and m,
                          what="reconciles on the installed operator's /metrics")
        assert scrape['conveyor_operator_redis_read_seconds_count{read="depth"}'] >= 1
        assert scrape["conveyor_operator_leader"] == 1  # standalone: always the active one
    except BaseException:
        print(op.log())
        raise
    finally:
        op.stop()
    assert op.proc.returncode is not None


@pytest.mark.slow
def test_namespaced_install_watches_only_the_listed_namespaces(
        cluster: ChartCluster, redis_server: EmbeddedRedis, tmp_path: Path) -> None:
    """A second release (CRDs off: the first owns the CRD) watching team-a only: the
    operator started from its Deployment reconciles team-a's JobQueue and never team-b's."""
    kubeconfig = cluster.write_kubeconfig(tmp_path / "config")
    # Installed by the first test's release when both ran in this process; else this one's.
    crd_there = cluster.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/jobqueues.conveyor.dev")
    (release,) = helm(kubeconfig, {"action": "install", "chart": str(CHART), "name": "scoped", "namespace": "ops",
                                   "values": {"crds": {"enabled": not crd_there},
                                              "operator": {"watchNamespaces": ["team-a"], "livenessPort": free_port(),
                                                           "resyncSeconds": 0.5, "metrics": {"port": free_port()}}}})
    assert release["status"] == "deployed" and "watching JobQueues in: team-a" in release["notes"]
    assert cluster.get("/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/roles/scoped-conveyor-operator")
    assert cluster.get("/apis/rbac.authorization.k8s.io/v1/namespaces/team-a/rolebindings/scoped-conveyor-operator")
    assert cluster.get("/apis/rbac.authorization.k8s.io/v1/namespaces/team-b/roles/scoped-conveyor-operator") is None
    for ns in ("team-a", "team-b"):
        code, body = cluster.request("POST", f"/apis/conveyor.dev/v1alpha1/namespaces/{ns}/jobqueues", {
            "apiVersion": "conveyor.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": "jobs"},
            "spec": {"redis": {"url": redis_server.url}, "queues": [f"{ns}-jobs"]}}, content_type="application/json")
        assert code in (200, 201), body
    deployment = cluster.get("/apis/apps/v1/namespaces/ops/deployments/scoped-conveyor-operator")
    before = len(cluster.emu._requests)
    op = InstalledOperator(deployment, kubeconfig, tmp_path / "operator.log", cluster)
    try:
        wait_for(lambda: cluster.get("/apis/apps/v1/namespaces/team-a/deployments/jobs-worker"), timeout=20,
                 what="team-a's worker Deployment")
        wait_for(lambda: cond(cluster.get("/apis/conveyor.dev/v1alpha1/namespaces/team-a/jobqueues/jobs"),
                              "Degraded").get("status") == "False", what="team-a's JobQueue reconciled")
        assert cluster.get("/apis/apps/v1/namespaces/team-b/deployments/jobs-worker") is None
        assert not (cluster.get("/apis/conveyor.dev/v1alpha1/namespaces/team-b/jobqueues/jobs") or {}).get("status")
        watched = {r.namespace for r in list(cluster.emu._requests)[before:]
                   if r.params.get("watch") == "true" and r.resource is not None and r.resource.plural == "jobqueues"}
        assert watched == {"team-a"}  # not cluster-wide (None), not team-b
    except BaseException:
        print(op.log())
        raise
    finally:
        op.stop()
