"""Unit tests of the pure builders: spec -> Deployment, ConfigMap, Service, PDB, ServiceMonitor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from conveyor.retry import policy_retry
from conveyor.settings import WorkerSettings
from conveyor_operator import builders
from conveyor_operator.__main__ import kopf_args
from conveyor_operator.builders import Owner
from conveyor_operator.settings import Settings
from conveyor_operator.spec import defaulted
from op_helpers import EXAMPLES

OWNER = Owner("billing", "payments", "uid-1234")
IMAGE = "registry.example.com/worker:1"


def spec(**over: Any) -> dict[str, Any]:
    return defaulted({"redis": {"url": "redis://r:6379/0"}, "queues": ["high", "default"], **over})


def container(dep: dict[str, Any]) -> dict[str, Any]:
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return c


def full_example() -> dict[str, Any]:
    return defaulted(yaml.safe_load((EXAMPLES / "full.yaml").read_text())["spec"])


def test_worker_command_line_is_the_agreed_contract() -> None:
    c = container(builders.deployment(OWNER, spec(), IMAGE))
    assert c["command"] == ["conveyor"]
    assert c["args"] == ["worker", "-q", "high,default", "--concurrency", "10", "--pool", "thread",
                         "--lease-seconds", "15", "--shutdown-timeout", "25", "--with-scheduler",
                         "--metrics-port", "9750", "--policy-file", "/etc/conveyor/policy.json", "--log-format", "json"]
    full = container(builders.deployment(OWNER, full_example(), IMAGE))
    assert full["args"][:9] == ["worker", "-q", "billing-high,billing,billing-low", "--concurrency", "16",
                                "--pool", "process", "--lease-seconds", "15"]
    assert full["args"][-4:] == ["--max-jobs-per-child", "500", "--default-timeout", "300"]  # extra args last
    assert full["args"][-6:-4] == ["--allow-module", "billing"]
    assert "--allow-module" not in container(builders.deployment(OWNER, spec(), IMAGE))["args"]
    no_sched = container(builders.deployment(OWNER, spec(scheduler={"enabled": False}), IMAGE))
    assert "--with-scheduler" not in no_sched["args"]


def test_allow_modules_become_flags_the_worker_cli_parses() -> None:
    from conveyor.cli import worker as worker_command

    args = container(builders.deployment(OWNER, spec(workers={"allowModules": ["billing", "shared.jobs"]}), IMAGE))["args"]
    assert args[-4:] == ["--allow-module", "billing", "--allow-module", "shared.jobs"]
    parsed = worker_command.make_context("worker", args[1:]).params  # the worker's own parser, nothing run
    assert parsed["allow_modules"] == ("billing", "shared.jobs")


def test_redis_url_only_in_the_env() -> None:
    literal = container(builders.deployment(OWNER, spec(), IMAGE))
    assert literal["env"][0] == {"name": "CONVEYOR_REDIS_URL", "value": "redis://r:6379/0"}
    assert not any("redis://" in a for a in literal["args"])
    secret = container(builders.deployment(OWNER, full_example(), IMAGE))
    assert secret["env"][0] == {"name": "CONVEYOR_REDIS_URL",
                                "valueFrom": {"secretKeyRef": {"name": "conveyor-redis", "key": "url"}}}
    assert [e["name"] for e in secret["env"]] == ["CONVEYOR_REDIS_URL", "POD_NAME", "BILLING_API_URL", "BILLING_API_TOKEN"]
    assert secret["envFrom"] == [{"configMapRef": {"name": "billing-settings"}}]


def test_probes_security_and_grace_period() -> None:
    dep = builders.deployment(OWNER, spec(shutdownTimeoutSeconds=60), IMAGE)
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert c["ports"] == [{"name": "metrics", "containerPort": 9750, "protocol": "TCP"}]
    assert pod["terminationGracePeriodSeconds"] == 60 + builders.GRACE_MARGIN_SECONDS
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/tmp"]["name"] == "tmp" and mounts["/etc/conveyor"]["readOnly"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    assert volumes["policy"]["configMap"]["name"] == "billing-policy"


def test_labels_owner_and_selector() -> None:
    dep = builders.deployment(OWNER, spec(), IMAGE)
    labels = dep["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "conveyor-worker"
    assert labels["app.kubernetes.io/instance"] == "billing"
    assert labels["app.kubernetes.io/managed-by"] == "conveyor-operator"
    assert labels["app.kubernetes.io/part-of"] == "conveyor"
    assert dep["spec"]["selector"]["matchLabels"] == builders.selector_labels("billing")
    assert dep["metadata"]["ownerReferences"] == [{"apiVersion": "conveyor.dev/v1alpha1", "kind": "JobQueue",
                                                   "name": "billing", "uid": "uid-1234", "controller": True,
                                                   "blockOwnerDeletion": True}]
    assert dep["metadata"]["namespace"] == "payments"
    full = builders.deployment(OWNER, full_example(), IMAGE)
    tpl = full["spec"]["template"]
    assert tpl["metadata"]["labels"]["team"] == "payments"  # podLabels
    assert tpl["metadata"]["annotations"]["example.com/owner"] == "payments"
    for key in ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "serviceAccountName",
                "priorityClassName"):
        assert key in tpl["spec"], key
    assert container(full)["resources"] == {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}


def test_workers_get_default_resources_unless_the_spec_gives_its_own() -> None:
    # No resources: still a scheduling request and a memory ceiling (not BestEffort).
    assert container(builders.deployment(OWNER, spec(), IMAGE))["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}
    # Given, they replace the default as a whole: no default limit slips in beside them.
    own = container(builders.deployment(OWNER, spec(workers={"resources": {"requests": {"cpu": "2"}}}), IMAGE))
    assert own["resources"] == {"requests": {"cpu": "2"}}
    assert "resources" not in container(builders.deployment(OWNER, spec(workers={"resources": {}}), IMAGE))


def test_replicas_left_out_while_autoscaling() -> None:
    assert builders.deployment(OWNER, spec(workers={"replicas": 4}), IMAGE)["spec"]["replicas"] == 4
    auto = builders.deployment(OWNER, spec(workers={"replicas": 4}, autoscaling={"enabled": True}), IMAGE)
    assert "replicas" not in auto["spec"]


def test_checksum_moves_with_configuration_only() -> None:
    def checksum(s: dict[str, Any]) -> str:
        return builders.deployment(OWNER, s, IMAGE)["spec"]["template"]["metadata"]["annotations"][builders.CHECKSUM_ANNOTATION]

    base = checksum(spec())
    assert base == checksum(spec())
    assert base != checksum(spec(retry={"max": 3, "intervals": [1, 5]}))
    assert base != checksum(spec(resultTTLSeconds=60))
    assert base != checksum(spec(workers={"concurrency": 3}))
    assert base != checksum(spec(workers={"allowModules": ["billing"]}))
    assert base != checksum(spec(redis={"url": "redis://other:6379/0"}))
    assert base == checksum(spec(workers={"replicas": 9}))  # scaling is not a configuration change
    rotated = builders.deployment(OWNER, spec(), IMAGE, "digest-of-a-new-secret-url")
    assert base != rotated["spec"]["template"]["metadata"]["annotations"][builders.CHECKSUM_ANNOTATION]


@pytest.mark.parametrize("retry", [None, {"max": 3, "intervals": [1, 5, 30]},
                                   {"max": 5, "backoff": {"base": 1, "factor": 2, "max": 300}, "jitter": 0.1}])
def test_policy_configmap_is_what_the_worker_reads(retry: dict[str, Any] | None, tmp_path: Path) -> None:
    s = spec(resultTTLSeconds=3600, failureTTLSeconds=-1, **({"retry": retry} if retry else {}))
    cm = builders.configmap(OWNER, s)
    assert cm["metadata"]["name"] == "billing-policy"
    (tmp_path / "policy.json").write_text(cm["data"]["policy.json"])
    read = WorkerSettings.read_policy(str(tmp_path / "policy.json"))  # the runtime's own parser
    assert read["result_ttl"] == 3600 and read["failure_ttl"] == -1
    if retry:
        assert read["default_retry"] == policy_retry(retry)
    else:
        assert "default_retry" not in read
    assert json.loads(cm["data"]["policy.json"])["result_ttl"] == 3600


def test_service_pdb_and_service_monitor() -> None:
    s = full_example()
    svc = builders.service(OWNER, s)
    assert svc["metadata"]["name"] == "billing-metrics"
    assert svc["spec"]["selector"] == builders.selector_labels("billing")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 9750, "targetPort": "metrics", "protocol": "TCP"}]
    pdb = builders.pdb(OWNER, s)
    assert pdb["apiVersion"] == "policy/v1" and pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == builders.selector_labels("billing")
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"  # a Redis outage must not block drains
    sm = builders.service_monitor(OWNER, s)
    assert builders.wants_service_monitor(s)
    assert sm["metadata"]["labels"]["release"] == "prometheus"
    assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "15s"}]
    assert not builders.wants_service_monitor(spec())


def tls_of(dep: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any] | None]:
    """The TLS file env vars and the TLS volume of a built Deployment."""
    env = {e["name"]: e["value"] for e in container(dep)["env"] if e["name"].startswith("CONVEYOR_REDIS_")
           and e["name"].endswith("_FILE")}
    vol = next((v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == builders.TLS_VOLUME), None)
    return env, vol


def test_tls_ca_is_mounted() -> None:
    s = spec(redis={"url": "rediss://r:6380/0", "tls": {"enabled": True, "caSecretRef": {"name": "redis-ca"}}})
    dep = builders.deployment(OWNER, s, IMAGE)
    env, vol = tls_of(dep)
    assert env == {"CONVEYOR_REDIS_CA_FILE": "/etc/conveyor/tls/ca.crt"}
    assert {"name": "redis-tls", "mountPath": "/etc/conveyor/tls", "readOnly": True} in container(dep)["volumeMounts"]
    assert vol == {"name": "redis-tls", "projected": {"defaultMode": 0o440, "sources": [
        {"secret": {"name": "redis-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}
    assert tls_of(builders.deployment(OWNER, spec(), IMAGE)) == ({}, None)  # no TLS refs: nothing mounted


def test_client_certificate_is_mounted_beside_the_ca() -> None:
    s = spec(redis={"url": "rediss://r:6380/0", "tls": {"enabled": True, "caSecretRef": {"name": "redis-ca", "key": "ca.pem"},
                                                          "clientCertSecretRef": {"name": "me", "certKey": "c.pem",
                                                                                  "keyKey": "k.pem"}}})
    env, vol = tls_of(builders.deployment(OWNER, s, IMAGE))
    assert env == {"CONVEYOR_REDIS_CA_FILE": "/etc/conveyor/tls/ca.crt", "CONVEYOR_REDIS_CERT_FILE": "/etc/conveyor/tls/tls.crt",
                   "CONVEYOR_REDIS_KEY_FILE": "/etc/conveyor/tls/tls.key"}
    assert vol is not None and vol["projected"]["sources"] == [
        {"secret": {"name": "redis-ca", "items": [{"key": "ca.pem", "path": "ca.crt"}]}},
        {"secret": {"name": "me", "items": [{"key": "c.pem", "path": "tls.crt"}, {"key": "k.pem", "path": "tls.key"}]}}]
    # One Secret holding all three (cert-manager's): one source; defaults certKey/keyKey.
    one = spec(redis={"url": "rediss://r:6380/0", "tls": {"caSecretRef": {"name": "cm"}, "clientCertSecretRef": {"name": "cm"}}})
    env, vol = tls_of(builders.deployment(OWNER, one, IMAGE))
    assert len(env) == 3 and vol is not None and vol["projected"]["sources"] == [{"secret": {"name": "cm", "items": [
        {"key": "ca.crt", "path": "ca.crt"}, {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}}]
    # Client certificate alone (Redis's certificate signed by a public CA).
    env, _ = tls_of(builders.deployment(OWNER, spec(redis={"url": "rediss://r", "tls": {"clientCertSecretRef": {"name": "me"}}}),
                                        IMAGE))
    assert set(env) == {"CONVEYOR_REDIS_CERT_FILE", "CONVEYOR_REDIS_KEY_FILE"}


def test_tls_env_names_are_the_ones_the_worker_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    from conveyor import connection
    from conveyor.cli import worker as worker_command

    assert set(builders.TLS_ENV.values()) == {connection.ENV_CA_FILE, connection.ENV_CERT_FILE, connection.ENV_KEY_FILE}
    # The worker's own parser reads the mounted paths from the env the container gets.
    s = spec(redis={"url": "rediss://r", "tls": {"caSecretRef": {"name": "ca"}, "clientCertSecretRef": {"name": "me"}}})
    for e in container(builders.deployment(OWNER, s, IMAGE))["env"]:
        if "value" in e:  # POD_NAME comes from the downward API
            monkeypatch.setenv(e["name"], e["value"])
    parsed = worker_command.make_context("worker", builders.worker_args(s)[1:]).params
    assert (parsed["redis_ca_file"], parsed["redis_cert_file"], parsed["redis_key_file"]) == (
        "/etc/conveyor/tls/ca.crt", "/etc/conveyor/tls/tls.crt", "/etc/conveyor/tls/tls.key")


def test_prefix_becomes_the_worker_flag() -> None:
    from conveyor.cli import worker as worker_command

    args = container(builders.deployment(OWNER, spec(redis={"url": "redis://r", "prefix": "billing:v2"},
                                                     workers={"allowModules": ["billing"]}), IMAGE))["args"]
    assert args[args.index("--prefix"):args.index("--prefix") + 2] == ["--prefix", "billing:v2"]
    assert worker_command.make_context("worker", args[1:]).params["prefix"] == "billing:v2"
    assert "--prefix" not in container(builders.deployment(OWNER, spec(), IMAGE))["args"]  # unset: conveyor


@pytest.mark.parametrize("url", [
    "redis://:pw@r:6379/0", "rediss://r:6380/1", "unix:///run/redis.sock", "redis+sentinel://u:pw@s1:26379,s2:26379/m/0",
    "rediss+sentinel://s1:26379/m/2", "sentinel://s1:26379/m", "redis+cluster://n1:7000,n2:7001",
    "rediss+cluster://u:pw@n1:7000"])
def test_every_url_form_reaches_the_workers_only_through_the_env(url: str) -> None:
    dep = builders.deployment(OWNER, spec(redis={"url": url}), IMAGE)
    assert container(dep)["env"][0] == {"name": "CONVEYOR_REDIS_URL", "value": url}
    text = json.dumps({k: v for k, v in container(dep).items() if k != "env"}) + json.dumps(dep["metadata"])
    assert url.split("://")[1] not in text


def test_checksum_covers_prefix_and_tls_refs() -> None:
    def checksum(s: dict[str, Any]) -> str:
        return builders.deployment(OWNER, s, IMAGE)["spec"]["template"]["metadata"]["annotations"][builders.CHECKSUM_ANNOTATION]

    base = spec(redis={"url": "rediss://r"})
    sums = {checksum(s) for s in [
        base, spec(redis={"url": "rediss://r", "prefix": "a"}), spec(redis={"url": "rediss://r", "prefix": "b"}),
        spec(redis={"url": "rediss://r", "tls": {"caSecretRef": {"name": "ca"}}}),
        spec(redis={"url": "rediss://r", "tls": {"caSecretRef": {"name": "ca", "key": "other"}}}),
        spec(redis={"url": "rediss://r", "tls": {"clientCertSecretRef": {"name": "me"}}}),
        spec(redis={"url": "rediss://r", "tls": {"clientCertSecretRef": {"name": "you"}}}),
        spec(redis={"url": "rediss://r", "tls": {"clientCertSecretRef": {"name": "me", "keyKey": "k"}}}),
        spec(redis={"url": "rediss+sentinel://s:26379/m/0"}), spec(redis={"url": "rediss+cluster://n:7000"})]}
    assert len(sums) == 10


def test_settings_and_entry_point() -> None:
    s = Settings.from_env({"CONVEYOR_OPERATOR_NAMESPACES": "a, b", "CONVEYOR_OPERATOR_DEFAULT_IMAGE": "img:1",
                           "CONVEYOR_OPERATOR_RESYNC_SECONDS": "5"})
    assert s.namespaces == ("a", "b") and s.default_image == "img:1" and s.resync_seconds == 5
    assert kopf_args(s, []) == ["run", "--standalone", "-m", "conveyor_operator.handlers",
                                "--liveness=http://0.0.0.0:8080/healthz", "--namespace", "a", "--namespace", "b"]
    assert kopf_args(Settings(), ["--verbose"])[-2:] == ["--all-namespaces", "--verbose"]
    assert [Settings().backoff(r) for r in range(4)] == [1, 2, 4, 8]
    assert Settings().backoff(30) == 300


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_built_objects_are_valid_kubernetes(example: Path) -> None:
    """Every object built from every example passes Kubernetes 1.37's own OpenAPI schemas
    (kubernetes-validate, strict: unknown fields refused), and so does the CRD."""
    import kubernetes_validate

    from conveyor_operator import crd

    s = defaulted(yaml.safe_load(example.read_text())["spec"])
    objs = [builders.deployment(OWNER, s, IMAGE), builders.configmap(OWNER, s), builders.service(OWNER, s),
            builders.pdb(OWNER, s), crd.crd()]
    for obj in objs:
        kubernetes_validate.validate(obj, "1.37.0", strict=True)
    bad = builders.deployment(OWNER, s, IMAGE)
    bad["spec"]["template"]["spec"]["containers"][0]["securityContext"]["runAsNonroot"] = True  # a typo
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, "1.37.0", strict=True)
