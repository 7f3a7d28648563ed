"""Least privilege, checked: the chart's RBAC is exactly what the operator uses.

The operator (a real `kopf run` process with its own bearer token) runs through a scenario
that reaches every code path talking to the API, against its own emulator; the requests it
made (api_audit) give the permissions it needs, which must equal the rendered chart's rules:
in the default mode the one ClusterRole, with CONVEYOR_OPERATOR_NAMESPACES (the chart's
operator.watchNamespaces) a Role per namespace plus the ClusterRole for cluster-scoped requests.

When the operator starts making new requests (kopf peering, watches on owned objects), this
test fails naming each MISSING grant: add it to charts/conveyor/templates/_helpers.tpl (or
rbac.yaml for cluster-scoped ones) and re-run `pytest tests/operator/test_operator_rbac.py`.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

import helm_python
import pytest
import redis
import yaml

from api_audit import Grant, Served, by_token, differences, grants, role_rules, rules_of, served
from conveyor.keys import Keyspace
from conveyor_operator.scaler import DELETION_COST
from op_helpers import ROOT, SERVICE_MONITOR_CRD, Cluster, Kubectl, OperatorProcess, cond, jobqueue, jq_path, wait_for
from pod_helpers import create_pod, delete_pod, pods_path
from test_operator_autoscale import FAST, burst, purge, wait_replicas
from test_operator_lifecycle import LEGACY, own_cluster  # noqa: F401 (a fixture: its own emulator)

CHART = ROOT / "charts" / "conveyor"
TOKEN = "conveyor-operator"  # the operator's kubeconfig; the test's own calls use another
WATCHED = ["rbac-a", "rbac-b"]

# Needed on a real cluster, never requested against the emulator (one line each: why).
NOT_OBSERVABLE: dict[tuple[str, str], set[str]] = {
    # OwnerReferencesPermissionEnforcement admission: owned objects carry blockOwnerDeletion,
    # which needs update on the owner's finalizers; the emulator runs no admission plugins.
    ("conveyor.dev", "jobqueues/finalizers"): {"update"},
}


def chart_roles(values: dict[str, Any]) -> list[dict[str, Any]]:
    """The rendered ClusterRoles and Roles (`helm template` with Helm itself)."""
    out = helm_python.Chart.load(CHART).render(values, name="conveyor", namespace="conveyor-system")
    docs = [d for path in sorted(out) if path.endswith(".yaml") for d in yaml.safe_load_all(out[path]) if d]
    return [d for d in docs if d["kind"] in ("ClusterRole", "Role")]


def secret(cluster: Cluster, ns: str, name: str, data: dict[str, str]) -> None:
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}
    code, answer = cluster.request("POST", f"/api/v1/namespaces/{ns}/secrets", body, content_type="application/json")
    assert code in (200, 201), answer


def events(cluster: Cluster, ns: str, involved: str) -> list[dict[str, Any]]:
    items = (cluster.get(f"/api/v1/namespaces/{ns}/events") or {}).get("items") or []
    return [e for e in items if e["involvedObject"].get("name") == involved]


def scenario(cluster: Cluster, kubectl: Kubectl, ns: str, url: str) -> None:
    """Every API-facing path: create, update, delete; Secrets (URL and TLS); ServiceMonitor with
    its CRD present, removed and absent; autoscaling with a scale-down (deletion costs), an HPA;
    a lost pod (recovery and its Event); Degraded (Events); legacy finalizers released."""
    kubectl("apply", "-f", "-", input=json.dumps(SERVICE_MONITOR_CRD))
    wait_for(lambda: cluster.get(f"/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors") is not None,
             what="the ServiceMonitor CRD")
    secret(cluster, ns, "redis", {"url": url})
    doc = json.loads(jobqueue("fleet", redis={"secretRef": {"name": "redis"}, "prefix": ns}, queues=["q"],
                              metrics={"serviceMonitor": {"enabled": True}},
                              autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 3, **FAST}))
    doc["metadata"]["finalizers"] = LEGACY
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))
    sm_path = f"/apis/monitoring.coreos.com/v1/namespaces/{ns}/servicemonitors/fleet-worker"
    wait_for(lambda: cluster.get(sm_path), what="the ServiceMonitor")
    wait_for(lambda: not (cluster.get(jq_path(ns, "fleet")) or {"metadata": {"finalizers": 1}})["metadata"].get(
        "finalizers"), what="the legacy finalizers released")

    # A scale-up, then a scale-down that first sets each pod's deletion cost.
    burst(url, ns, 25)
    wait_replicas(cluster, ns, "fleet", 3, 10)
    conn, space = redis.Redis.from_url(url), Keyspace.of(ns)
    for pod in ("fleet-a", "fleet-b"):
        create_pod(cluster, ns, "fleet", pod)
        conn.hset(space.worker(f"w-{pod}"), mapping={"id": f"w-{pod}", "pod": pod, "inflight": "0",
                                                   "started_at": str(time.time() - 5)})
        conn.zadd(space.workers, {f"w-{pod}": time.time() + 60})
    purge(url, ns)
    wait_replicas(cluster, ns, "fleet", 1, 8)
    wait_for(lambda: (cluster.get(pods_path(ns, "fleet-a")) or {})["metadata"].get("annotations", {}).get(DELETION_COST),
             what="the pod deletion cost")

    # A lost pod: its worker released, with an Event.
    delete_pod(cluster, ns, "fleet-a")
    wait_for(lambda: any(e["reason"] == "WorkerReleased" for e in events(cluster, ns, "fleet")),
             what="the WorkerReleased Event")

    # An HPA takes over the Deployment.
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "cpu"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fleet-worker"},
                    "minReplicas": 2, "maxReplicas": 4}}
    kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(hpa))
    wait_for(lambda: cond(cluster.get(jq_path(ns, "fleet")), "Autoscaling").get("reason") == "ExternalAutoscaler",
             what="the ExternalAutoscaler condition")

    # TLS Secrets, one missing: Degraded, and kopf's Event of the failed handler.
    secret(cluster, ns, "redis-ca", {"ca.crt": "not a certificate"})
    kubectl("apply", "-n", ns, "-f", "-", input=jobqueue("tls", redis={"url": url, "tls": {
        "enabled": True, "caSecretRef": {"name": "redis-ca"}, "clientCertSecretRef": {"name": "client"}}}, queues=["q"]))
    wait_for(lambda: cond(cluster.get(jq_path(ns, "tls")), "Degraded").get("status") == "True", what="Degraded")
    wait_for(lambda: events(cluster, ns, "tls"), what="an Event on the Degraded JobQueue")

    # ServiceMonitor turned off (the operator deletes its own), its CRD removed, asked for again.
    kubectl("patch", "jq", "fleet", "-n", ns, "--type", "merge",
            "-p", '{"spec": {"metrics": {"serviceMonitor": {"enabled": false}}}}')
    wait_for(lambda: cluster.get(sm_path) is None, what="the ServiceMonitor to go")
    kubectl("delete", "crd", SERVICE_MONITOR_CRD["metadata"]["name"])
    kubectl("patch", "jq", "fleet", "-n", ns, "--type", "merge",
            "-p", '{"spec": {"metrics": {"serviceMonitor": {"enabled": true}}}}')
    wait_for(lambda: any(e["reason"] == "ServiceMonitorUnavailable" for e in events(cluster, ns, "fleet")),
             what="the ServiceMonitorUnavailable Event")

    kubectl("delete", "jq", "fleet", "tls", "-n", ns, "--timeout=10s")


def operator_grants(own_cluster: tuple[Cluster, Kubectl], tmp_path: Path, redis_url: str, **env: str) -> set[Grant]:
    """Run the operator through the scenario; the permissions its requests needed."""
    cluster, kubectl = own_cluster
    for ns in WATCHED:  # kopf serves the listed namespaces that exist
        kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
    op = OperatorProcess(cluster.write_kubeconfig(tmp_path / "operator-config", token=TOKEN),
                         tmp_path / "operator.log", cluster, TMPDIR=str(tmp_path), **env)
    try:
        wait_for(op.watching, timeout=20, what="the operator to watch JobQueues")
        scenario(cluster, kubectl, WATCHED[0], redis_url)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{op.log()}") from exc
    finally:
        op.stop()
    mine = by_token(served(cluster.emu), TOKEN)
    assert mine, "no request carried the operator's token"
    return {g for r in mine for g in grants(r)}


def check(granted: dict[tuple[str, str], set[str]], needed: dict[tuple[str, str], set[str]], where: str,
          allowed: dict[tuple[str, str], set[str]]) -> list[str]:
    merged = {k: needed.get(k, set()) | allowed.get(k, set()) for k in set(needed) | set(allowed)}
    return differences(granted, merged, where)


@pytest.mark.slow
def test_cluster_role_is_exactly_what_the_operator_uses_across_all_namespaces(
        own_cluster: tuple[Cluster, Kubectl], tmp_path: Path, redis_server: Any) -> None:
    needed = rules_of(operator_grants(own_cluster, tmp_path, redis_server.url))
    roles = chart_roles({"monitoring": {"serviceMonitors": {"enabled": True}}})
    assert [r["kind"] for r in roles] == ["ClusterRole"]
    problems = check(role_rules(roles[0]), needed, "ClusterRole", NOT_OBSERVABLE)
    assert not problems, "chart RBAC differs from the operator's requests:\n" + "\n".join(problems)


@pytest.mark.slow
def test_roles_per_namespace_are_exactly_what_the_operator_uses_in_them(
        own_cluster: tuple[Cluster, Kubectl], tmp_path: Path, redis_server: Any) -> None:
    found = operator_grants(own_cluster, tmp_path, redis_server.url, CONVEYOR_OPERATOR_NAMESPACES=",".join(WATCHED))
    outside = {g for g in found if g.namespace not in (None, *WATCHED)}
    assert not outside, f"requests outside the watched namespaces: {sorted(map(str, outside))}"
    roles = chart_roles({"operator": {"watchNamespaces": WATCHED}, "monitoring": {"serviceMonitors": {"enabled": True}}})
    cluster_roles = [r for r in roles if r["kind"] == "ClusterRole"]
    namespaced = {r["metadata"]["namespace"]: r for r in roles if r["kind"] == "Role"}
    assert len(cluster_roles) == 1 and sorted(namespaced) == WATCHED
    # A namespace's Role must cover what was done in any watched namespace (the scenario ran
    # in one; kopf lists and watches in each).
    in_namespaces = rules_of(g for g in found if g.namespace is not None)
    problems = check(role_rules(cluster_roles[0]), rules_of(g for g in found if g.namespace is None), "ClusterRole", {})
    for ns, role in namespaced.items():
        problems += check(role_rules(role), in_namespaces, f"Role in {ns}", NOT_OBSERVABLE)
    assert not problems, "chart RBAC differs from the operator's requests:\n" + "\n".join(problems)


@pytest.mark.slow
def test_cluster_role_with_replicas_is_exactly_what_the_operator_uses_with_peering(
        own_cluster: tuple[Cluster, Kubectl], tmp_path: Path, redis_server: Any) -> None:
    cluster, kubectl = own_cluster
    kubectl("apply", "-f", str(ROOT / "crds" / "clusterkopfpeerings.kopf.dev.yaml"))
    wait_for(lambda: cluster.get("/apis/kopf.dev/v1"), what="the ClusterKopfPeering CRD in discovery")
    # Alone in its peering, it leads (and creates the peering object) and runs the scenario.
    needed = rules_of(operator_grants(own_cluster, tmp_path, redis_server.url, CONVEYOR_OPERATOR_PEERING="rbac",
                                      CONVEYOR_OPERATOR_PEERING_LIFETIME="5"))
    assert needed[("kopf.dev", "clusterkopfpeerings")] == {"get", "create", "list", "watch", "patch"}
    roles = chart_roles({"operator": {"replicas": 2}, "monitoring": {"serviceMonitors": {"enabled": True}}})
    assert [r["kind"] for r in roles] == ["ClusterRole"]
    problems = check(role_rules(roles[0]), needed, "ClusterRole", NOT_OBSERVABLE)
    assert not problems, "chart RBAC differs from the operator's requests:\n" + "\n".join(problems)


@pytest.mark.parametrize("method,path,query,content_type,expected", [
    ("GET", "/apis/apps/v1/namespaces/a/deployments/d", (), "", [("apps", "deployments", "get", "a")]),
    ("GET", "/apis/apps/v1/namespaces/a/deployments", (), "", [("apps", "deployments", "list", "a")]),
    ("GET", "/api/v1/pods", (("watch", "true"),), "", [("", "pods", "watch", None)]),
    ("GET", "/api/v1/watch/namespaces/a/pods", (), "", [("", "pods", "watch", "a")]),
    ("POST", "/api/v1/namespaces/a/events", (), "application/json", [("", "events", "create", "a")]),
    ("PUT", "/apis/conveyor.dev/v1alpha1/namespaces/a/jobqueues/q/finalizers", (), "application/json",
     [("conveyor.dev", "jobqueues/finalizers", "update", "a")]),
    ("PATCH", "/apis/conveyor.dev/v1alpha1/namespaces/a/jobqueues/q/status", (), "application/merge-patch+json",
     [("conveyor.dev", "jobqueues/status", "patch", "a")]),
    ("PATCH", "/api/v1/namespaces/a/configmaps/c", (), "application/apply-patch+yaml",
     [("", "configmaps", "patch", "a"), ("", "configmaps", "create", "a")]),
    ("DELETE", "/api/v1/namespaces/a/secrets/s", (), "", [("", "secrets", "delete", "a")]),
    ("DELETE", "/api/v1/namespaces/a/secrets", (), "", [("", "secrets", "deletecollection", "a")]),
    ("GET", "/api/v1/namespaces", (), "", [("", "namespaces", "list", None)]),
    ("GET", "/api/v1/namespaces/a", (), "", [("", "namespaces", "get", None)]),
    ("PUT", "/api/v1/namespaces/a/finalize", (), "", [("", "namespaces/finalize", "update", None)]),
    ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x", (), "",
     [("apiextensions.k8s.io", "customresourcedefinitions", "get", None)]),
    ("GET", "/apis/conveyor.dev/v1alpha1", (), "", []),  # discovery: a non-resource URL
    ("GET", "/version", (), "", []),
])
def test_requests_map_to_rbac_as_the_api_server_authorizes_them(
        method: str, path: str, query: tuple[tuple[str, str], ...], content_type: str,
        expected: list[tuple[str, str, str, str | None]]) -> None:
    assert grants(Served(method, path, query, content_type, TOKEN)) == [Grant(*e) for e in expected]


def test_a_missing_and_an_extra_grant_are_both_named() -> None:
    granted = {("", "pods"): {"list", "get"}}
    needed = {("", "pods"): {"list", "watch"}}
    assert differences(granted, needed, "Role") == ["Role: MISSING watch core/pods", "Role: EXTRA get core/pods"]
