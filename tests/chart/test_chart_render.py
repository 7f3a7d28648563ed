"""The chart, rendered offline with Helm itself (helm-python-sdk): lint, every rendered
object valid for Kubernetes 1.37, RBAC per mode, the CRD and dashboard as single sources of
truth, values checked by the schema with Helm's own messages."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from typing import Any

import helm_python
import jsonschema
import kubernetes_validate
import pytest
import yaml

from chart_helpers import CHART, KUBE_VERSION, ROOT, by_kind, crd_validator, one, render

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "namespaced": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
    "monitoring": {"monitoring": {"serviceMonitors": {"enabled": True},
                                  "podMonitor": {"enabled": True, "labels": {"release": "prometheus"}}}},
    "namespaced-monitoring": {"operator": {"watchNamespaces": ["team-a"]},
                              "monitoring": {"serviceMonitors": {"enabled": True}, "podMonitor": {"enabled": True}}},
    "no-crds": {"crds": {"enabled": False}},
    "fleet": {"operator": {"replicas": 2, "metrics": {"serviceMonitor": {"enabled": True,
                                                                        "labels": {"release": "prometheus"}}}}},
    "namespaced-fleet": {"operator": {"replicas": 2, "watchNamespaces": ["team-a"]}},
    "dashboard": {"dashboard": {"enabled": True, "namespace": "monitoring",
                                "annotations": {"grafana_folder": "Conveyor"}}},
    "web-dashboard": {"webDashboard": {
        "enabled": True, "replicas": 2, "redis": {"urlSecret": {"name": "redis", "key": "dsn"},
                                                   "tls": {"caSecret": {"name": "redis-ca"},
                                                           "clientCertSecret": {"name": "redis-client"}}},
        "prefix": "app1", "auth": {"existingSecret": "dashboard-auth"}, "hideArgs": ["payments", "*"],
        "refreshSeconds": 1.5, "service": {"type": "LoadBalancer", "port": 80, "annotations": {"a": "b"}},
        "podLabels": {"team": "ops"}, "podAnnotations": {"c": "d"}, "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "ops", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ops"]}]}]}}},
        "priorityClassName": "low"}},
    "web-dashboard-read-only": {"webDashboard": {"enabled": True, "readOnly": True,
                                                 "redis": {"url": "redis://redis:6379/0"}}},
    "everything": {
        "image": {"repository": "registry.example.com/conveyor", "tag": "1.2.3", "pullPolicy": "Always"},
        "imagePullSecrets": ["regcred"],
        "operator": {"defaultWorkerImage": "registry.example.com/jobs:7", "extraArgs": ["--verbose"],
                     "extraEnv": [{"name": "TZ", "value": "UTC"}], "podLabels": {"team": "infra"},
                     "podAnnotations": {"a": "b"}, "nodeSelector": {"kubernetes.io/os": "linux"},
                     "tolerations": [{"key": "infra", "operator": "Exists", "effect": "NoSchedule"}],
                     "priorityClassName": "system-cluster-critical", "resyncSeconds": 0.5},
        "serviceAccount": {"annotations": {"iam.example.com/role": "conveyor"}},
        "exampleJobQueue": {"enabled": True, "queues": ["high", "default"], "replicas": 2},
        "dashboard": {"enabled": True}, "monitoring": {"podMonitor": {"enabled": True}},
        "crds": {"keep": False},
    },
}

CRD_SOURCE = ROOT / "crds" / "jobqueues.conveyor.dev.yaml"
CHART_KINDS_WITHOUT_K8S_SCHEMA = {"JobQueue", "PodMonitor", "ServiceMonitor"}  # custom resources: checked separately


def rules(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """(apiGroup, resource) -> verbs."""
    out: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


def env_of(dep: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}


# --- lint, validity -------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, VALUE_SETS["everything"], VALUE_SETS["namespaced-monitoring"],
                                    VALUE_SETS["fleet"], VALUE_SETS["web-dashboard"]],
                         ids=["defaults", "everything", "namespaced-monitoring", "fleet", "web-dashboard"])
def test_lint_strict_passes(values: dict[str, Any]) -> None:
    report = helm_python.lint(CHART, values, strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == []


def test_lint_reports_a_broken_value() -> None:
    report = helm_python.lint(CHART, {"operator": {"watchNamespace": ["x"]}}, strict=True)
    assert any("additional properties 'watchNamespace' not allowed" in e for e in report["errors"])


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_is_valid_for_kubernetes(name: str) -> None:
    docs, notes = render(VALUE_SETS[name])
    assert docs and notes
    for doc in docs:
        if doc["kind"] in CHART_KINDS_WITHOUT_K8S_SCHEMA:
            continue
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)  # raises on the first error
        assert doc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        if doc["kind"] not in ("CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"].get("namespace"), f"{doc['kind']} {doc['metadata']['name']} has no namespace"


def test_kubernetes_validate_catches_a_broken_object() -> None:
    """Guard: the validation above really checks (a misspelt field fails in strict mode)."""
    dep = one(render()[0], "Deployment")
    dep["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(dep, KUBE_VERSION, strict=True)


# --- the operator Deployment --------------------------------------------------------------------


def test_operator_deployment_defaults() -> None:
    docs, _ = render()
    dep = one(docs, "Deployment")
    assert dep["metadata"]["name"] == "conveyor-operator" and dep["metadata"]["namespace"] == "conveyor-system"
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"] == {"type": "Recreate"}
    pod = dep["spec"]["template"]["spec"]
    assert set(dep["spec"]["selector"]["matchLabels"].items()) <= set(dep["spec"]["template"]["metadata"]["labels"].items())
    (c,) = pod["containers"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert c["image"] == f"conveyor:{chart['appVersion']}"
    assert c["command"] == ["conveyor-operator"] and c["args"] == ["--log-format=json"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "healthz", "containerPort": 8080, "protocol": "TCP"} in c["ports"]
    assert c["resources"] == {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    assert env_of(dep) == {"CONVEYOR_OPERATOR_NAMESPACES": "", "CONVEYOR_OPERATOR_DEFAULT_IMAGE": c["image"],
                           "CONVEYOR_OPERATOR_RESYNC_SECONDS": "10", "CONVEYOR_OPERATOR_REDIS_TIMEOUT": "2",
                           "CONVEYOR_OPERATOR_RETRY_CAP_SECONDS": "300", "CONVEYOR_OPERATOR_LIVENESS_PORT": "8080",
                           "CONVEYOR_OPERATOR_METRICS_PORT": "8081"}
    # Pod Security Standards "restricted".
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]  # the only writable path
    # ... in memory: the TLS client keys the operator reads from JobQueues' Secrets never reach the node's disk.
    assert {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}} in pod["volumes"]
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]
    assert "imagePullSecrets" not in pod


def test_operator_deployment_follows_values() -> None:
    docs, _ = render(VALUE_SETS["everything"])
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert c["image"] == "registry.example.com/conveyor:1.2.3" and c["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert one(docs, "ServiceAccount")["imagePullSecrets"] == [{"name": "regcred"}]
    assert c["args"] == ["--log-format=json", "--verbose"]
    env = env_of(dep)
    assert env["CONVEYOR_OPERATOR_DEFAULT_IMAGE"] == "registry.example.com/jobs:7"
    assert env["CONVEYOR_OPERATOR_RESYNC_SECONDS"] == "0.5" and env["TZ"] == "UTC"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["team"] == "infra" and labels["app.kubernetes.io/component"] == "operator"
    assert dep["spec"]["template"]["metadata"]["annotations"] == {"a": "b"}
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"} and pod["tolerations"][0]["key"] == "infra"
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert one(docs, "ServiceAccount")["metadata"]["annotations"] == {"iam.example.com/role": "conveyor"}


def test_pod_labels_cannot_override_the_selector() -> None:
    dep = one(render({"operator": {"podLabels": {"app.kubernetes.io/component": "mine"}}})[0], "Deployment")
    assert dep["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"


def test_watched_namespaces_reach_the_operator_settings() -> None:
    from conveyor_operator.__main__ import kopf_args
    from conveyor_operator.settings import Settings

    dep = one(render(VALUE_SETS["namespaced"])[0], "Deployment")
    settings = Settings.from_env(env_of(dep))
    assert settings.namespaces == ("team-a", "team-b")
    assert kopf_args(settings, [])[-4:] == ["--namespace", "team-a", "--namespace", "team-b"]
    assert "--all-namespaces" in kopf_args(Settings.from_env(env_of(one(render()[0], "Deployment"))), [])


# --- RBAC ---------------------------------------------------------------------------------------

# Which rules: tests/operator/test_operator_rbac.py derives them from the requests the operator
# makes and compares both modes' rendered rules with them. Here: where they go, and how bound.
SERVICEMONITORS = {("monitoring.coreos.com", "servicemonitors"): {"get", "list", "watch", "create", "patch", "delete"}}


def test_cluster_rbac_by_default_is_one_bound_cluster_role() -> None:
    docs, _ = render()
    assert by_kind(docs, "Role") == [] and by_kind(docs, "RoleBinding") == []
    role = one(docs, "ClusterRole")
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": role["metadata"]["name"]}
    sa = one(docs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "conveyor-system"}]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])


def test_namespaced_rbac_is_a_role_per_watched_namespace() -> None:
    docs, _ = render(VALUE_SETS["namespaced"])
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert rules(roles[0]) == rules(roles[1])
    bindings = by_kind(docs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for b in bindings:
        assert b["roleRef"]["kind"] == "Role" and b["subjects"][0]["namespace"] == "conveyor-system"
    # Cluster-wide: reads only, and of nothing the Roles grant.
    cluster_rules = rules(one(docs, "ClusterRole"))
    assert all(verbs <= {"get", "list", "watch"} for verbs in cluster_rules.values())
    assert not set(cluster_rules) & set(rules(roles[0]))


def test_keda_scaledobjects_are_read_only_where_keda_is_installed() -> None:
    # `helm template` offline knows no keda.sh API (helm install asks the cluster).
    for role in by_kind(render()[0], "ClusterRole"):
        assert ("keda.sh", "scaledobjects") not in rules(role)


@pytest.mark.parametrize("name", ["monitoring", "namespaced-monitoring"])
def test_servicemonitors_are_granted_only_when_enabled(name: str) -> None:
    docs, _ = render(VALUE_SETS[name])
    namespaced = by_kind(docs, "Role") or by_kind(docs, "ClusterRole")
    for role in namespaced:
        assert rules(role).items() >= SERVICEMONITORS.items()
    for role in by_kind(render()[0], "ClusterRole"):
        assert ("monitoring.coreos.com", "servicemonitors") not in rules(role)


def test_rbac_and_service_account_can_be_left_out() -> None:
    docs, _ = render({"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "mine"}})
    assert {d["kind"] for d in docs} == {"Deployment", "CustomResourceDefinition", "Service"}  # the metrics one
    assert one(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "mine"
    with pytest.raises(helm_python.HelmError, match="serviceAccount.name is required"):
        render({"serviceAccount": {"create": False}})


# --- CRD and dashboard: one source of truth ---------------------------------------------------------


def test_sync_script_check_passes_and_the_copies_are_byte_for_byte() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "sync-chart-files.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (CHART / "files" / "crds" / CRD_SOURCE.name).read_bytes() == CRD_SOURCE.read_bytes()
    dash = ROOT / "dashboards" / "conveyor-grafana.json"
    assert (CHART / "files" / "dashboards" / dash.name).read_bytes() == dash.read_bytes()


def test_sync_script_check_names_a_stale_copy(tmp_path: Any) -> None:
    """Run the script from a scratch copy of the tree with the chart's CRD edited."""
    import shutil

    for rel in ("scripts/sync-chart-files.py", "crds", "dashboards", "charts/conveyor/files"):
        src, dst = ROOT / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    stale = tmp_path / "charts/conveyor/files/crds" / CRD_SOURCE.name
    stale.write_text(stale.read_text() + "# drift\n")
    script = [sys.executable, str(tmp_path / "scripts" / "sync-chart-files.py")]
    proc = subprocess.run([*script, "--check"], capture_output=True, text=True)
    assert proc.returncode == 1 and "stale: charts/conveyor/files/crds/jobqueues.conveyor.dev.yaml" in proc.stderr
    assert subprocess.run(script, capture_output=True).returncode == 0
    assert stale.read_bytes() == CRD_SOURCE.read_bytes()
    assert subprocess.run([*script, "--check"]).returncode == 0


def test_rendered_crd_is_the_crds_file_plus_keep_and_labels() -> None:
    rendered = one(render()[0], "CustomResourceDefinition")
    source = yaml.safe_load(CRD_SOURCE.read_text())
    meta = rendered.pop("metadata")
    assert rendered == {k: v for k, v in source.items() if k != "metadata"}
    assert meta["name"] == source["metadata"]["name"]
    assert meta["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert meta["labels"].items() >= source["metadata"]["labels"].items()


def test_crds_can_be_left_out_or_not_kept() -> None:
    assert by_kind(render(VALUE_SETS["no-crds"])[0], "CustomResourceDefinition") == []
    notes = render(VALUE_SETS["no-crds"])[1]
    assert "Apply it first" in notes and "kubectl delete crd" not in notes
    crd = one(render({"crds": {"keep": False}})[0], "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]


def test_dashboard_configmap_carries_the_dashboard_with_the_sidecar_label() -> None:
    assert by_kind(render()[0], "ConfigMap") == []
    cm = one(render(VALUE_SETS["dashboard"])[0], "ConfigMap")
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Conveyor"}
    assert json.loads(cm["data"]["conveyor-grafana.json"]) == json.loads(
        (ROOT / "dashboards" / "conveyor-grafana.json").read_text())


def test_pod_monitor_scrapes_the_worker_pods() -> None:
    assert by_kind(render()[0], "PodMonitor") == []
    pm = one(render(VALUE_SETS["monitoring"])[0], "PodMonitor")
    from conveyor_operator import builders

    assert pm["spec"]["selector"]["matchLabels"].items() <= builders.common_labels("any").items()
    assert pm["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]
    assert pm["spec"]["namespaceSelector"] == {"any": True}
    assert pm["metadata"]["labels"]["release"] == "prometheus"
    scoped = one(render(VALUE_SETS["namespaced-monitoring"])[0], "PodMonitor")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    # The worker container really names its port "metrics".
    from conveyor_operator.spec import defaulted

    spec = defaulted({"redis": {"url": "redis://r:6379/0"}, "queues": ["q"]})
    container = builders.deployment(builders.Owner("x", "ns", "uid"), spec, "img")["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["name"] == "metrics"


def test_example_jobqueue_is_valid_against_the_crd() -> None:
    docs, notes = render(VALUE_SETS["everything"])
    jq = one(docs, "JobQueue")
    validator = crd_validator(one(render()[0], "CustomResourceDefinition"))
    errors = [e.message for e in validator.iter_errors(jq)]
    assert errors == []
    assert jq["spec"] == {"redis": {"url": "redis://redis:6379/0"}, "queues": ["high", "default"],
                          "workers": {"replicas": 2, "concurrency": 10}}
    assert jq["metadata"]["namespace"] == "conveyor-system"
    assert 'example JobQueue "example"' in notes
    # Guard: the validator refuses what the API server refuses.
    bad = {**jq, "spec": {**jq["spec"], "workers": {"replicas": 2, "concurency": 3}}}
    assert any("concurency" in e.message for e in validator.iter_errors(bad))


# --- the web dashboard (webDashboard) -----------------------------------------------------------------

WEB_AUTH_ENV = {"CONVEYOR_DASHBOARD_TOKEN": "token", "CONVEYOR_DASHBOARD_USER": "username",
                "CONVEYOR_DASHBOARD_PASSWORD": "password", "CONVEYOR_DASHBOARD_SECRET": "secret"}


def web_dashboard(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dashboard's Deployment and Service (by component: the operator has both kinds too)."""
    found = [d for d in docs if d["metadata"]["labels"].get("app.kubernetes.io/component") == "web-dashboard"]
    assert sorted(d["kind"] for d in found) == ["Deployment", "Service"], found
    return one(found, "Deployment"), one(found, "Service")


def test_web_dashboard_is_off_by_default() -> None:
    docs, notes = render()
    assert not [d for d in docs if "web-dashboard" in d["metadata"]["name"]]
    assert "web dashboard" not in notes and len(by_kind(docs, "Deployment")) == 1


def test_web_dashboard_deployment_is_restricted_and_reads_its_secrets() -> None:
    docs, notes = render(VALUE_SETS["web-dashboard"])
    dep, svc = web_dashboard(docs)
    operator = next(d for d in by_kind(docs, "Deployment") if d is not dep)
    assert dep["metadata"]["name"] == "conveyor-web-dashboard" and dep["metadata"]["namespace"] == "conveyor-system"
    assert dep["spec"]["replicas"] == 2
    labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items() and labels["team"] == "ops"
    assert selector["app.kubernetes.io/component"] == "web-dashboard"
    # Neither selects the other's pods.
    op_labels = operator["spec"]["template"]["metadata"]["labels"]
    assert not selector.items() <= op_labels.items()
    assert not operator["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert dep["spec"]["template"]["metadata"]["annotations"] == {"c": "d"}
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    op_pod = operator["spec"]["template"]["spec"]
    # Pod Security Standards "restricted", exactly as the operator's pod.
    assert pod["securityContext"] == op_pod["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert c["securityContext"] == op_pod["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert c["image"] == op_pod["containers"][0]["image"]
    assert c["command"] == ["conveyor", "dashboard"]
    assert c["args"] == ["--host=0.0.0.0", "--port=9181", "--refresh=1.5", "--prefix=app1",
                         "--hide-args=payments", "--hide-args=*"]
    assert c["ports"] == [{"name": "http", "containerPort": 9181, "protocol": "TCP"}]
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe
    assert c["resources"] == {"requests": {"cpu": "10m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}}
    env = {e["name"]: e for e in c["env"]}
    assert env["CONVEYOR_REDIS_URL"] == {"name": "CONVEYOR_REDIS_URL",
                                         "valueFrom": {"secretKeyRef": {"name": "redis", "key": "dsn"}}}
    for name, key in WEB_AUTH_ENV.items():
        assert env[name]["valueFrom"] == {"secretKeyRef": {"name": "dashboard-auth", "key": key, "optional": True}}
    # TLS as the operator gives it to workers: the same variables, directory and file mode.
    from conveyor_operator import builders

    assert {env[v]["value"] for v in builders.TLS_ENV.values()} == {
        f"{builders.TLS_DIR}/{f}" for f in builders.TLS_ENV}
    assert {"name": "redis-tls", "mountPath": builders.TLS_DIR, "readOnly": True} in c["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
    tls = next(v for v in pod["volumes"] if v["name"] == "redis-tls")["projected"]
    assert tls["defaultMode"] == builders.TLS_MODE
    assert tls["sources"] == [
        {"secret": {"name": "redis-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"secret": {"name": "redis-client", "items": [{"key": "tls.crt", "path": "tls.crt"},
                                                      {"key": "tls.key", "path": "tls.key"}]}}]
    assert set(env) == {"CONVEYOR_REDIS_URL", *WEB_AUTH_ENV, *builders.TLS_ENV.values()}
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"} and pod["tolerations"][0]["key"] == "ops"
    assert pod["affinity"]["nodeAffinity"] and pod["priorityClassName"] == "low"
    # The Service.
    assert svc["metadata"]["name"] == "conveyor-web-dashboard" and svc["metadata"]["annotations"] == {"a": "b"}
    assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["selector"] == selector
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert "kubectl -n conveyor-system port-forward svc/conveyor-web-dashboard 9181:80" in notes
    assert "http://127.0.0.1:9181/" in notes and "needs a `secret` key" in notes


def test_web_dashboard_read_only_without_auth() -> None:
    docs, notes = render(VALUE_SETS["web-dashboard-read-only"])
    dep, svc = web_dashboard(docs)
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert dep["spec"]["replicas"] == 1 and svc["spec"]["type"] == "ClusterIP"
    assert c["args"] == ["--host=0.0.0.0", "--port=9181", "--refresh=3", "--read-only"]
    assert c["env"] == [{"name": "CONVEYOR_REDIS_URL", "value": "redis://redis:6379/0"}]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"] and "imagePullSecrets" not in pod
    assert svc["spec"]["ports"] == [{"name": "http", "port": 9181, "targetPort": "http", "protocol": "TCP"}]
    assert "port-forward svc/conveyor-web-dashboard 9181\n" in notes and "(read-only)" in notes
    assert "No authentication" in notes


AUTH_FAIL = ("webDashboard: set webDashboard.auth.existingSecret (a Secret with `token`, or `username` and "
             "`password`) or webDashboard.readOnly=true")
REDIS_FAIL = "webDashboard: set exactly one of webDashboard.redis.url and webDashboard.redis.urlSecret.name"


@pytest.mark.parametrize(("web", "message"), [
    ({"redis": {"url": "redis://r:6379/0"}}, AUTH_FAIL),
    ({"redis": {"url": "redis://r:6379/0"}, "readOnly": False, "auth": {"existingSecret": ""}}, AUTH_FAIL),
    ({"readOnly": True}, REDIS_FAIL),
    ({"auth": {"existingSecret": "a"}, "redis": {"urlSecret": {"key": "url"}}}, REDIS_FAIL),
    ({"auth": {"existingSecret": "a"}, "redis": {"url": "redis://r:6379/0", "urlSecret": {"name": "r"}}}, REDIS_FAIL),
])
def test_web_dashboard_refuses_what_could_not_start(web: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmError) as exc:
        render({"webDashboard": {"enabled": True, **web}})
    assert message in str(exc.value)
    assert str(exc.value).count("webDashboard:") == 1  # one message, the first problem
    render({"webDashboard": web})  # disabled: nothing is checked


def test_web_dashboard_image_pull_secrets_and_release_names() -> None:
    values = {"imagePullSecrets": ["regcred"], "image": {"repository": "r.example.com/conveyor", "tag": "9"},
              **VALUE_SETS["web-dashboard-read-only"]}
    dep, svc = web_dashboard(render(values, name="jobs")[0])
    assert dep["metadata"]["name"] == svc["metadata"]["name"] == "jobs-conveyor-web-dashboard"
    assert dep["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "r.example.com/conveyor:9"


def test_the_rendered_dashboard_container_serves_and_its_probe_passes_without_auth() -> None:
    """The container's command, args and env run for real (the Secrets' keys resolved as the
    kubelet would, optional ones left out when missing), on a free port instead of 9181:
    the probe's path answers without credentials, every page needs the token."""
    import os
    import time
    import urllib.error
    import urllib.request
    from pathlib import Path

    from conveyor.embedded import EmbeddedRedis, free_port

    dep, _ = web_dashboard(render(VALUE_SETS["web-dashboard"])[0])
    c = dep["spec"]["template"]["spec"]["containers"][0]
    with EmbeddedRedis() as server:
        secrets = {"redis": {"dsn": server.url}, "dashboard-auth": {"token": "s3cret", "secret": "csrf-key"}}
        env: dict[str, str] = {}
        for e in c["env"]:
            if "value" in e:
                continue  # the TLS files: this Redis is plain TCP
            ref = e["valueFrom"]["secretKeyRef"]
            value = secrets[ref["name"]].get(ref["key"])
            assert value is not None or ref.get("optional"), e
            if value is not None:
                env[e["name"]] = value
        assert set(env) == {"CONVEYOR_REDIS_URL", "CONVEYOR_DASHBOARD_TOKEN", "CONVEYOR_DASHBOARD_SECRET"}
        port = free_port()
        args = [a.replace("--port=9181", f"--port={port}").replace("--host=0.0.0.0", "--host=127.0.0.1")
                for a in c["args"]]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
        argv = [str(Path(sys.executable).parent / c["command"][0]), *c["command"][1:], *args]
        proc = subprocess.Popen(argv, env={**clean, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def get(path: str, token: str | None = None) -> tuple[int, str]:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=2) as reply:
                    return reply.status, reply.read().decode()
            except urllib.error.HTTPError as exc:
                return exc.code, exc.read().decode()

        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    status = get(c["readinessProbe"]["httpGet"]["path"])
                    break
                except OSError:
                    assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                    assert time.monotonic() < deadline, "the dashboard did not answer"
                    time.sleep(0.1)
            assert status == (200, "ok")
            assert get("/")[0] == 401 and get("/static/app.css")[0] == 401
            assert get("/", "s3cret")[0] == 200
        finally:
            proc.terminate()
            proc.wait(10)


# --- values and their schema --------------------------------------------------------------------------


@pytest.mark.parametrize(("values", "message"), [
    ({"operator": {"watchNamespace": ["a"]}}, "at '/operator': additional properties 'watchNamespace' not allowed"),
    ({"imag": {"tag": "x"}}, "additional properties 'imag' not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "at '/image/pullPolicy': value must be one of 'Always', 'IfNotPresent', 'Never'"),
    ({"operator": {"livenessPort": "8080"}}, "at '/operator/livenessPort': got string, want integer"),
    ({"operator": {"watchNamespaces": ["Team_A"]}}, "at '/operator/watchNamespaces/0'"),
    ({"operator": {"resources": {"request": {"cpu": "1"}}}}, "additional properties 'request' not allowed"),
    ({"crds": {"enabled": "yes"}}, "at '/crds/enabled': got string, want boolean"),
    ({"exampleJobQueue": {"redisUrl": "http://redis:6379"}}, "at '/exampleJobQueue/redisUrl'"),
    ({"exampleJobQueue": {"redisUrl": "redis-sentinel://s:26379/m/0"}}, "at '/exampleJobQueue/redisUrl'"),
    ({"exampleJobQueue": {"queues": []}}, "at '/exampleJobQueue/queues'"),
    ({"monitoring": {"podMonitor": {"interval": "soon"}}}, "at '/monitoring/podMonitor/interval'"),
    ({"webDashboard": {"enable": True}}, "at '/webDashboard': additional properties 'enable' not allowed"),
    ({"webDashboard": {"redis": {"urlSecret": {"nam": "x"}}}},
     "at '/webDashboard/redis/urlSecret': additional properties 'nam' not allowed"),
    ({"webDashboard": {"auth": {"token": "x"}}}, "at '/webDashboard/auth': additional properties 'token' not allowed"),
    ({"webDashboard": {"redis": {"url": "http://redis:6379"}}}, "at '/webDashboard/redis/url'"),
    ({"webDashboard": {"service": {"type": "ExternalName"}}}, "at '/webDashboard/service/type'"),
    ({"webDashboard": {"hideArgs": ["bad name"]}}, "at '/webDashboard/hideArgs/0'"),
    ({"webDashboard": {"refreshSeconds": 0.1}}, "at '/webDashboard/refreshSeconds'"),
    ({"webDashboard": {"readOnly": "yes"}}, "at '/webDashboard/readOnly': got string, want boolean"),
])
def test_values_that_break_the_schema_fail_with_helms_message(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmValuesError) as exc:
        render(values)
    text = str(exc.value)
    assert "values don't meet the specifications of the schema(s)" in text
    assert message in text


def test_example_jobqueue_takes_every_redis_url_form_the_crd_takes() -> None:
    from conveyor_operator import crd

    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["properties"]["exampleJobQueue"]["properties"]["redisUrl"]["pattern"] == crd.REDIS_URL_PATTERN
    for url in ("rediss+sentinel://s1:26379,s2:26379/mymaster/0", "redis+cluster://n1:7000,n2:7001"):
        docs, _ = render({"exampleJobQueue": {"enabled": True, "redisUrl": url}})
        assert one(docs, "JobQueue")["spec"]["redis"]["url"] == url


def _object_schemas(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if schema.get("type") == "object":
        out.append((path or "/", schema))
    for name, sub in (schema.get("properties") or {}).items():
        out += _object_schemas(sub, f"{path}/{name}")
    if isinstance(schema.get("items"), dict):
        out += _object_schemas(schema["items"], f"{path}/*")
    return out


# Kubernetes types passed through to the pod as they are (the API server checks them).
PASS_THROUGH = {"/global", "/operator/extraEnv/*", "/operator/tolerations/*", "/operator/affinity",
                "/webDashboard/tolerations/*", "/webDashboard/affinity"}


def test_schema_is_closed_everywhere_and_every_value_is_described() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for path, node in _object_schemas(schema):
        if path in PASS_THROUGH:
            continue
        ap = node.get("additionalProperties")
        # Closed, or a map whose values are typed (labels, annotations, node selector).
        assert ap is False or (isinstance(ap, dict) and "type" in ap), f"{path} accepts unknown keys"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.validate(values, schema)

    def walk(v: Any, s: dict[str, Any], path: str) -> None:
        for key, sub in (v.items() if isinstance(v, dict) and "properties" in s else []):
            assert key in s["properties"], f"{path}/{key} is in values.yaml but not in the schema"
            walk(sub, s["properties"][key], f"{path}/{key}")

    walk(values, schema, "")
    assert set(schema["properties"]) - {"global"} == set(values), "schema and values.yaml name different keys"


def test_every_key_in_values_yaml_is_commented() -> None:
    """Every key the schema declares has a comment right above it in values.yaml (except the
    quantities inside resources, which are Kubernetes data)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    schema = json.loads((CHART / "values.schema.json").read_text())
    missing, seen = [], []
    stack: list[tuple[int, str, dict[str, Any]]] = [(-1, "", schema)]
    for i, line in enumerate(lines):
        m = re.match(r"^( *)([A-Za-z][\w-]*):", line)
        if not m:
            continue
        indent, key = len(m.group(1)), m.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        _, parent_path, parent = stack[-1]
        sub = (parent.get("properties") or {}).get(key)
        path = f"{parent_path}/{key}"
        if sub is None or re.match(r"^/\w+/resources/", parent_path):
            continue
        seen.append(path)
        if not lines[i - 1].strip().startswith("#"):
            missing.append(path)
        stack.append((indent, path, sub))
    assert missing == []
    assert "/operator/watchNamespaces" in seen and "/exampleJobQueue/concurrency" in seen  # the walk works
    assert "/webDashboard/redis/tls/clientCertSecret/keyKey" in seen and "/webDashboard/priorityClassName" in seen


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert chart["appVersion"] == project["version"]
    assert chart["apiVersion"] == "v2" and chart["name"] == "conveyor"
    assert helm_python.Chart.load(CHART).metadata["appVersion"] == project["version"]
