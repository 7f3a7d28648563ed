"""The chart's operator fleet options, rendered offline with Helm: the operator's metrics
Service and ServiceMonitor, and several replicas electing a leader (kopf peering: strategy,
settings, the ClusterKopfPeering CRD, its RBAC). Validity for Kubernetes of these renders
is checked with every value set in test_chart_render.py ("fleet", "namespaced-fleet")."""

from __future__ import annotations

from typing import Any

import helm_python
import pytest
import yaml

from chart_helpers import ROOT, by_kind, one, render
from test_chart_render import VALUE_SETS, env_of, rules

PEERING_CRD = ROOT / "crds" / "clusterkopfpeerings.kopf.dev.yaml"
PEERING_RULES = {("kopf.dev", "clusterkopfpeerings"): {"get", "list", "watch", "patch", "create"}}


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


# --- metrics ---------------------------------------------------------------------------------------


def test_metrics_service_selects_the_operator_pods_on_their_metrics_port() -> None:
    docs, _ = render()
    svc = one(docs, "Service")
    dep = one(docs, "Deployment")
    assert svc["metadata"]["name"] == "conveyor-operator-metrics" and svc["metadata"]["namespace"] == "conveyor-system"
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}]
    assert {"name": "metrics", "containerPort": 8081, "protocol": "TCP"} in container(docs)["ports"]
    assert by_kind(docs, "ServiceMonitor") == []  # off by default


def test_metrics_port_follows_values_and_can_be_turned_off() -> None:
    docs, _ = render({"operator": {"metrics": {"port": 9100}}})
    assert env_of(one(docs, "Deployment"))["CONVEYOR_OPERATOR_METRICS_PORT"] == "9100"
    assert one(docs, "Service")["spec"]["ports"][0]["port"] == 9100
    off, _ = render({"operator": {"metrics": {"enabled": False}}})
    assert by_kind(off, "Service") == []
    assert env_of(one(off, "Deployment"))["CONVEYOR_OPERATOR_METRICS_PORT"] == "0"  # the operator serves none
    assert [p["name"] for p in container(off)["ports"]] == ["healthz"]
    with pytest.raises(helm_python.HelmError, match="serviceMonitor.enabled needs operator.metrics.enabled"):
        render({"operator": {"metrics": {"enabled": False, "serviceMonitor": {"enabled": True}}}})


def test_service_monitor_scrapes_the_metrics_service_with_the_given_labels_and_interval() -> None:
    docs, _ = render({"operator": {"metrics": {"serviceMonitor": {"enabled": True, "interval": "15s",
                                                                  "labels": {"release": "prometheus"}}}}})
    sm, svc = one(docs, "ServiceMonitor"), one(docs, "Service")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1" and sm["metadata"]["namespace"] == "conveyor-system"
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert set(sm["spec"]["selector"]["matchLabels"].items()) <= set(svc["metadata"]["labels"].items())
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["conveyor-system"]}
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    # The workers' Services (a JobQueue's ServiceMonitor selects those) carry other labels.
    assert sm["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "operator"


@pytest.mark.parametrize("values, message", [
    ({"operator": {"metrics": {"serviceMonitor": {"interval": "often"}}}}, "/operator/metrics/serviceMonitor/interval"),
    ({"operator": {"metrics": {"port": 80}}}, "/operator/metrics/port"),
    ({"operator": {"metrics": {"scrape": True}}}, "additional properties 'scrape' not allowed"),
    ({"operator": {"replicas": 0}}, "/operator/replicas"),
    ({"operator": {"peering": {"lifetimeSeconds": 1}}}, "/operator/peering/lifetimeSeconds"),
])
def test_fleet_values_are_checked_by_the_schema(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError, match=message):
        render(values)


# --- replicas and leader election -------------------------------------------------------------------


def test_one_replica_runs_standalone_with_recreate() -> None:
    from conveyor_operator.__main__ import kopf_args
    from conveyor_operator.settings import Settings

    docs, _ = render()
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    assert not {"CONVEYOR_OPERATOR_PEERING", "POD_ID"} & set(env_of(dep))
    assert "--standalone" in kopf_args(Settings.from_env(env_of(dep)), [])
    assert by_kind(docs, "PodDisruptionBudget") == []  # nothing to keep: it would only block drains
    assert [c["metadata"]["name"] for c in by_kind(docs, "CustomResourceDefinition")] == ["jobqueues.conveyor.dev"]


def test_two_replicas_elect_a_leader_through_a_peering_of_the_release() -> None:
    from conveyor_operator.__main__ import kopf_args
    from conveyor_operator.settings import Settings

    docs, _ = render(VALUE_SETS["fleet"])
    dep = one(docs, "Deployment")
    assert dep["spec"]["replicas"] == 2
    # Surge, never below 2: the leader stays until the new pods stand by.
    assert dep["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    env = env_of(dep)
    assert env["CONVEYOR_OPERATOR_PEERING"] == "conveyor-system-conveyor-operator"
    assert env["CONVEYOR_OPERATOR_PEERING_LIFETIME"] == "15"
    pod_id = next(e for e in container(docs)["env"] if e["name"] == "POD_ID")
    assert pod_id["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # kopf's identity: the pod
    settings = Settings.from_env({k: v for k, v in env.items() if v is not None})
    assert settings.peering == "conveyor-system-conveyor-operator" and settings.peering_lifetime == 15
    args = kopf_args(settings, [])
    assert "--standalone" not in args and "--peering=conveyor-system-conveyor-operator" in args
    # Two starts, two priorities: kopf pauses only lower-priority peers, never equal ones.
    priorities = {a for _ in range(2) for a in kopf_args(settings, []) if a.startswith("--priority=")}
    assert len(priorities) == 2 and all(int(p.split("=")[1]) < 0 for p in priorities)
    pdb = one(docs, "PodDisruptionBudget")  # a drain takes one replica at a time: a standby stays
    assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert pdb["spec"]["selector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    lifetime = render({"operator": {"replicas": 3, "peering": {"lifetimeSeconds": 30}}})[0]
    assert env_of(one(lifetime, "Deployment"))["CONVEYOR_OPERATOR_PEERING_LIFETIME"] == "30"


def test_peering_crd_is_the_crds_file_plus_labels_and_keep() -> None:
    docs, _ = render(VALUE_SETS["fleet"])
    crd = next(c for c in by_kind(docs, "CustomResourceDefinition") if c["metadata"]["name"].endswith("kopf.dev"))
    source = yaml.safe_load(PEERING_CRD.read_text())
    assert crd["spec"] == source["spec"] and crd["metadata"]["name"] == "clusterkopfpeerings.kopf.dev"
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    assert "clusterkopfpeerings.kopf.dev.yaml" not in render(VALUE_SETS["fleet"])[1]
    # Left out where another kopf operator installed it, or with every CRD; the notes say to apply it.
    for values in ({"crds": {"kopfPeering": False}}, {"crds": {"enabled": False}}):
        docs, notes = render({**VALUE_SETS["fleet"], **values})
        crds = [c["metadata"]["name"] for c in by_kind(docs, "CustomResourceDefinition")]
        assert "clusterkopfpeerings.kopf.dev" not in crds
        assert "kubectl apply -f crds/clusterkopfpeerings.kopf.dev.yaml" in notes


@pytest.mark.parametrize("name", ["fleet", "namespaced-fleet"])
def test_peering_rbac_is_cluster_wide_and_only_with_replicas(name: str) -> None:
    # What the operator needs is derived from its requests (tests/operator/test_operator_rbac.py);
    # here: the peering adds exactly its rules, to the ClusterRole, in both modes.
    one_replica = {**VALUE_SETS[name], "operator": {**VALUE_SETS[name]["operator"], "replicas": 1}}
    docs, single = render(VALUE_SETS[name])[0], render(one_replica)[0]
    assert rules(one(docs, "ClusterRole")) == {**rules(one(single, "ClusterRole")), **PEERING_RULES}
    assert [rules(r) for r in by_kind(docs, "Role")] == [rules(r) for r in by_kind(single, "Role")]
    assert ("kopf.dev", "clusterkopfpeerings") not in rules(one(single, "ClusterRole"))
