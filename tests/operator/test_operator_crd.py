"""The CRD: generated file up to date, structure, every example valid against its own
openAPIV3Schema and CEL rules, every invalid example rejected; the CEL rules evaluated
with a real CEL implementation (cel-python) and mirrored by the operator's own checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from cel_admission import admission, own_rule_failures, strict_schema
from conveyor_operator import crd
from conveyor_operator.reserved import RESERVED_ARGS
from conveyor_operator.spec import defaulted, problems
from op_helpers import CRD_FILE, EXAMPLES

VALID = sorted(EXAMPLES.glob("*.yaml"))
INVALID = sorted((EXAMPLES / "invalid").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    return next(d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "JobQueue")


def test_committed_crd_file_is_generated_from_the_python_schema() -> None:
    assert CRD_FILE.read_text() == crd.to_yaml(), "regenerate: python -m conveyor_operator.crd > crds/jobqueues.conveyor.dev.yaml"


def test_crd_shape() -> None:
    doc = yaml.safe_load(CRD_FILE.read_text())
    assert doc["metadata"]["name"] == "jobqueues.conveyor.dev"
    spec = doc["spec"]
    assert (spec["group"], spec["scope"]) == ("conveyor.dev", "Namespaced")
    assert spec["names"]["kind"] == "JobQueue" and spec["names"]["shortNames"] == ["jq"]
    (version,) = spec["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.workers.replicas",
                                                "statusReplicasPath": ".status.replicas",
                                                "labelSelectorPath": ".status.selector"}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Queues", "Replicas", "Ready", "Depth", "Age"]
    schema = version["schema"]["openAPIV3Schema"]
    status = schema["properties"]["status"]["properties"]
    assert {"observedGeneration", "replicas", "readyReplicas", "queues", "conditions", "depth", "selector"} <= set(status)
    assert status["conditions"]["items"]["required"] == ["type", "status", "lastTransitionTime", "reason", "message"]
    assert set(status["queues"]["items"]["properties"]) == {"name", "ready", "scheduled", "due", "claimed", "failed"}
    assert set(status["autoscaling"]["properties"]) == {"desiredReplicas", "currentReplicas", "demand",
                                                        "lastScaleTime", "reason"}
    rules = [r["rule"] for r in _all_rules(schema)]
    assert any("minReplicas <= self.maxReplicas" in r for r in rules)
    assert any("exists_one" in r for r in rules)
    assert any("has(self.url) != has(self.secretRef)" in r for r in rules)
    # The only reasons the API server accepts on a validation rule.
    allowed = {"FieldValueRequired", "FieldValueDuplicate", "FieldValueInvalid", "FieldValueForbidden"}
    assert {r["reason"] for r in _all_rules(schema) if "reason" in r} <= allowed
    jsonschema.Draft202012Validator.check_schema(strict_schema(schema))


def _all_rules(schema: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(schema, dict):
        out += schema.get("x-kubernetes-validations", [])
        for v in schema.values():
            out += _all_rules(v)
    elif isinstance(schema, list):
        for v in schema:
            out += _all_rules(v)
    return out


def test_structural_schema_rules() -> None:
    """What the API server demands of a CRD schema: every node typed (or int-or-string /
    preserve-unknown-fields), no additionalProperties beside properties, bounded lists and
    strings under CEL rules (its cost estimate)."""
    def walk(node: dict[str, Any], where: str) -> None:
        assert "type" in node or node.get("x-kubernetes-int-or-string"), f"untyped node at {where}"
        assert not ("properties" in node and "additionalProperties" in node), where
        for k, sub in node.get("properties", {}).items():
            walk(sub, f"{where}.{k}")
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"], f"{where}.*")
        if "items" in node:
            assert "maxItems" in node, f"unbounded list at {where}"
            walk(node["items"], f"{where}[]")
    walk(crd.SCHEMA, "")


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_every_example_is_valid(path: Path) -> None:
    doc = load(path)
    assert doc["apiVersion"] == crd.API_VERSION
    assert admission(doc) == []
    assert problems(defaulted(doc["spec"]), doc["metadata"]["name"]) == []


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_every_invalid_example_is_rejected(path: Path) -> None:
    doc = load(path)
    assert admission(doc), f"{path.name} was accepted by the schema and the CEL rules"
    # ...and the operator's own checks agree (it refuses to reconcile it as InvalidSpec).
    assert problems(defaulted(doc["spec"]), doc["metadata"]["name"]), f"{path.name} passed the operator's checks"


def test_invalid_examples_fail_for_the_reason_their_comment_gives() -> None:
    expected = {
        "url-and-secret": "exactly one of redis.url or redis.secretRef",
        "no-redis": "exactly one of redis.url or redis.secretRef",
        "duplicate-queues": "queue names must be unique",
        "min-above-max": "minReplicas must be <= autoscaling.maxReplicas",
        "intervals-and-backoff": "intervals or backoff, not both",
        "backoff-cap-below-base": "retry.backoff.max must be >= retry.backoff.base",
        "redis-url-in-env": "CONVEYOR_REDIS_URL is set by the operator",
        "tls-without-rediss": "needs a TLS URL: rediss://, rediss+sentinel:// or rediss+cluster://",
        "bad-prefix": "'{payments}' does not match",
        "bad-scheme": "'redis-sentinel://sentinel-0:26379,sentinel-1:26379/mymaster/0' does not match",
        "name-too-long": "at most 50 characters",
        "bad-queue-name": "does not match",
        "unknown-field": "Additional properties are not allowed ('concurency'",
        "bad-pool": "is not one of",
        "zero-concurrency": "less than the minimum",
        "negative-lease": "less than the minimum",
        "no-queues": "should be non-empty",
        "bad-allow-module": "does not match",
        "reserved-worker-flag": "use spec.shutdownTimeoutSeconds instead of --shutdown-timeout",
    }
    assert {p.stem for p in INVALID} == set(expected)
    for path in INVALID:
        errors = "\n".join(admission(load(path)))
        assert expected[path.stem] in errors, f"{path.name}: {errors}"


CEL_CASES = [
    # (schema node, value, passes)
    (crd.REDIS, {"url": "redis://r:6379/0"}, True),
    (crd.REDIS, {"secretRef": {"name": "s", "key": "url"}}, True),
    (crd.REDIS, {"url": "redis://r", "secretRef": {"name": "s"}}, False),
    (crd.REDIS, {}, False),
    (crd.REDIS, {"url": "rediss://r", "tls": {"enabled": True}}, True),
    (crd.REDIS, {"url": "redis://r", "tls": {"enabled": True}}, False),
    (crd.REDIS, {"url": "redis://r", "tls": {"enabled": False}}, True),
    (crd.REDIS, {"url": "rediss+sentinel://s1:26379,s2:26379/m/0", "tls": {"enabled": True}}, True),
    (crd.REDIS, {"url": "rediss+cluster://n1:7000,n2:7001", "tls": {"enabled": True}}, True),
    (crd.REDIS, {"url": "redis+sentinel://s1:26379/m/0", "tls": {"enabled": True}}, False),
    (crd.REDIS, {"url": "redis+cluster://n1:7000", "tls": {"enabled": True}}, False),
    (crd.REDIS, {"url": "sentinel://s1:26379/m", "tls": {"enabled": True}}, False),
    (crd.REDIS, {"url": "unix:///run/redis.sock", "tls": {"enabled": True}}, False),
    (crd.REDIS, {"secretRef": {"name": "s"}, "tls": {"enabled": True, "clientCertSecretRef": {"name": "c"}}}, True),
    (crd.SPEC["properties"]["queues"], ["high", "default", "low"], True),
    (crd.SPEC["properties"]["queues"], ["high", "default", "high"], False),
    (crd.SPEC["properties"]["queues"], ["ok", "not:ok"], False),
    (crd.SPEC["properties"]["queues"], ["-leading-dash"], False),
    (crd.SPEC["properties"]["queues"], ["a.b_c-D9"], True),
    (crd.AUTOSCALING, {"minReplicas": 2, "maxReplicas": 2}, True),
    (crd.AUTOSCALING, {"minReplicas": 3, "maxReplicas": 2}, False),
    (crd.RETRY, {"max": 3, "intervals": [1, 5]}, True),
    (crd.RETRY, {"max": 3, "intervals": [1], "backoff": {"base": 1, "factor": 2, "max": 9}}, False),
    (crd.RETRY["properties"]["backoff"], {"base": 1, "factor": 2, "max": 300}, True),
    (crd.RETRY["properties"]["backoff"], {"base": 2.5, "factor": 2, "max": 2}, False),
    (crd.WORKERS["properties"]["env"], [{"name": "A", "value": "b"}], True),
    (crd.WORKERS["properties"]["env"], [{"name": "CONVEYOR_REDIS_URL", "value": "redis://x"}], False),
    (crd.WORKERS["properties"]["env"], [{"name": "A"}, {"name": "CONVEYOR_PREFIX", "value": "x"}], False),
    (crd.SCHEMA, {"metadata": {"name": "x" * 50}}, True),
    (crd.SCHEMA, {"metadata": {"name": "x" * 51}}, False),
]


@pytest.mark.parametrize("node,value,passes", CEL_CASES)
def test_cel_rules(node: dict[str, Any], value: Any, passes: bool) -> None:
    failures = own_rule_failures(node, value)
    assert (failures == []) is passes, failures


@pytest.mark.parametrize("modules,error", [
    (["billing", "billing.tasks", "_private.x1"], None),
    (["myapp.tasks:send"], "'myapp.tasks:send' is not a module name"),
    (["my-app"], "'my-app' is not a module name"),
    (["a..b"], "'a..b' is not a module name"),
    ([".rel"], "'.rel' is not a module name"),
])
def test_allow_modules_checked_alike_by_schema_and_operator(modules: list[str], error: str | None) -> None:
    doc = {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "x"},
           "spec": {"redis": {"url": "redis://r"}, "queues": ["q"], "workers": {"allowModules": modules}}}
    found = problems(defaulted(doc["spec"]))
    if error is None:
        assert admission(doc) == [] and found == []
    else:
        assert any("does not match" in e for e in admission(doc)), admission(doc)
        assert found == [f"spec.workers.allowModules: {error} (expected e.g. 'myapp' or 'myapp.tasks')"]


def test_defaults_match_the_runtime() -> None:
    from conveyor.settings import WorkerSettings

    runtime = WorkerSettings(redis_url="redis://r")
    spec = defaulted({"redis": {"url": "redis://r"}, "queues": ["q"]})
    assert spec["leaseSeconds"] == runtime.lease_seconds and spec["shutdownTimeoutSeconds"] == runtime.shutdown_timeout
    assert spec["resultTTLSeconds"] == runtime.result_ttl and spec["failureTTLSeconds"] == runtime.failure_ttl
    assert spec["workers"] == {"replicas": 1, "imagePullPolicy": "IfNotPresent", "concurrency": runtime.concurrency,
                               "pool": runtime.pool, "resources": crd.DEFAULT_WORKER_RESOURCES}
    assert spec["scheduler"] == {"enabled": True}  # on purpose: a JobQueue's workers run the scheduler
    assert spec["metrics"] == {"port": runtime.metrics_port, "serviceMonitor": {"enabled": False, "interval": "30s"}}
    assert spec["autoscaling"]["enabled"] is False
    assert "retry" not in spec and runtime.default_retry is None


def spec_doc(redis: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "metadata": {"name": "x"},
            "spec": {"redis": redis, "queues": ["q"], **spec}}


def test_the_schema_takes_exactly_the_runtimes_url_schemes() -> None:
    from conveyor.connection import _SCHEMES

    assert set(crd.REDIS_SCHEMES) == set(_SCHEMES)
    assert set(crd.TLS_SCHEMES) == {scheme for scheme, (_, tls) in _SCHEMES.items() if tls}


@pytest.mark.parametrize("url", [
    "redis://r:6379/0", "rediss://:pw@r:6380/1", "unix:///run/redis/redis.sock?db=2",
    "redis+sentinel://s1:26379,s2:26379/mymaster/0", "rediss+sentinel://u:p@s1:26379/mymaster/3",
    "sentinel://s1:26379/mymaster", "redis+cluster://n1:7000,n2:7001", "rediss+cluster://u:p@n1:7000",
])
def test_every_url_form_the_runtime_parses_is_accepted(url: str) -> None:
    from conveyor.connection import RedisTarget, TlsFiles

    RedisTarget.parse(url, TlsFiles())  # the workers take it
    tls = {"enabled": True} if url.split("://")[0] in crd.TLS_SCHEMES else {}
    doc = spec_doc({"url": url, **({"tls": tls} if tls else {})})
    assert admission(doc) == []
    assert problems(defaulted(doc["spec"])) == []


@pytest.mark.parametrize("url", ["http://r:6379", "redis-sentinel://s1:26379/m", "tcp://r:6379", "r:6379",
                                 "rediss+sentinal://s1:26379/m", " redis://r"])
def test_other_schemes_are_refused_by_schema_and_operator(url: str) -> None:
    doc = spec_doc({"url": url})
    assert any("does not match" in e for e in admission(doc)), admission(doc)
    assert problems(defaulted(doc["spec"])) == [
        "redis.url must start with one of redis://, rediss://, unix://, redis+sentinel://, rediss+sentinel://, "
        "sentinel://, redis+cluster://, rediss+cluster://"]


PREFIXES = ["conveyor", "a", "7", "app.v2", "team:app", "a-b_c.d:e", "a::b", "x" * 64, "App_1.",
            "x" * 65, "app:", "a:b:", ":app", "-app", "_app", ".app", "{app}", "a{b}", "a}", "a b", "é", "a/b", ""]


@pytest.mark.parametrize("prefix", PREFIXES)
def test_prefix_checked_alike_by_schema_and_the_runtime(prefix: str) -> None:
    from conveyor.errors import ConfigError
    from conveyor.keys import check_prefix

    try:
        check_prefix(prefix)
        runtime_ok = True
    except ConfigError:
        runtime_ok = False
    doc = spec_doc({"url": "redis://r", "prefix": prefix})
    assert (admission(doc) == []) is runtime_ok, admission(doc)
    found = problems(defaulted(doc["spec"]))
    assert (found == []) is runtime_ok, found
    if not runtime_ok:
        assert found[0].startswith(f"spec.redis.prefix: key prefix {prefix!r} is not allowed")


def test_tls_secret_refs_default_their_keys() -> None:
    spec = defaulted({"redis": {"url": "rediss://r", "tls": {"enabled": True, "caSecretRef": {"name": "ca"},
                                                             "clientCertSecretRef": {"name": "me"}}},
                      "queues": ["q"]})
    assert spec["redis"]["tls"]["caSecretRef"] == {"name": "ca", "key": "ca.crt"}
    assert spec["redis"]["tls"]["clientCertSecretRef"] == {"name": "me", "certKey": "tls.crt", "keyKey": "tls.key"}
    assert "prefix" not in spec["redis"]  # unset: the runtime's default, conveyor
    bad = spec_doc({"url": "rediss://r", "tls": {"clientCertSecretRef": {"certKey": "c"}}})
    assert any("'name' is a required property" in e for e in admission(bad))
    bad = spec_doc({"url": "rediss://r", "tls": {"clientCertSecretRef": {"name": "Not_A_Secret"}}})
    assert any("does not match" in e for e in admission(bad))


def test_jobqueues_in_the_readme_are_valid() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    section = readme[readme.index("## On Kubernetes"):]
    blocks = [yaml.safe_load(b.split("```", 1)[0]) for b in section.split("```yaml\n")[1:]]
    jobqueues = [b for b in blocks if isinstance(b, dict) and b.get("kind") == crd.KIND]
    assert jobqueues, "the README shows a JobQueue"
    for doc in jobqueues:
        assert admission(doc) == [] and problems(defaulted(doc["spec"]), doc["metadata"]["name"]) == []


# Every flag builders.worker_args passes, and those naming what the operator gives through
# the environment or the policy file: (argument as a user would write it, the field to use).
RESERVED_ARG_CASES = [
    (["-q", "other"], "spec.queues"), (["-qother"], "spec.queues"), (["--queues=a,b"], "spec.queues"),
    (["--concurrency", "4"], "spec.workers.concurrency"), (["-c4"], "spec.workers.concurrency"),
    (["--pool=process"], "spec.workers.pool"),
    (["--lease-seconds", "60"], "spec.leaseSeconds"),
    (["--shutdown-timeout", "120"], "spec.shutdownTimeoutSeconds"),
    (["--shutdown-timeout=120"], "spec.shutdownTimeoutSeconds"),
    (["--with-scheduler"], "spec.scheduler.enabled"),
    (["--metrics-port", "9200"], "spec.metrics.port"), (["--metrics-port=0"], "spec.metrics.port"),
    (["--policy-file", "/p.json"], "spec.retry, spec.resultTTLSeconds and spec.failureTTLSeconds"),
    (["--result-ttl", "5"], "spec.resultTTLSeconds"), (["--failure-ttl=5"], "spec.failureTTLSeconds"),
    (["--prefix", "x"], "spec.redis.prefix"),
    (["--allow-module=os"], "spec.workers.allowModules"),
    (["--redis-url", "redis://elsewhere"], "spec.redis.url or spec.redis.secretRef"),
    (["--redis-ca-file=/ca.pem"], "spec.redis.tls.caSecretRef"),
    (["--redis-cert-file", "/c.pem"], "spec.redis.tls.clientCertSecretRef"),
    (["--redis-key-file", "/k.pem"], "spec.redis.tls.clientCertSecretRef"),
]


def test_every_flag_worker_args_passes_is_reserved() -> None:
    from conveyor_operator import builders

    passed = {a.split("=")[0] for a in builders.worker_args(defaulted(
        {"redis": {"url": "redis://r", "prefix": "p"}, "queues": ["q"], "workers": {"allowModules": ["m"]}}))
        if a.startswith("-")}
    reserved = {f for flags, _ in RESERVED_ARGS for f in flags}
    assert passed - {"--log-format"} <= reserved, passed - reserved  # --log-format may be changed (text)


@pytest.mark.parametrize("args,field", RESERVED_ARG_CASES, ids=lambda v: " ".join(v) if isinstance(v, list) else "")
def test_flags_the_operator_owns_are_refused_by_cel_and_operator(args: list[str], field: str) -> None:
    doc = spec_doc({"url": "redis://r"}, workers={"args": ["--default-timeout", "30", *args]})
    flag = args[0].split("=")[0]
    flag = flag if flag.startswith("--") or len(flag) == 2 else flag[:2]
    errors = admission(doc)
    assert len(errors) == 1 and errors[0].startswith(".spec.workers.args: use " + field + " instead of "), errors
    assert flag in errors[0]
    assert problems(defaulted(doc["spec"])) == [errors[0].split(": ", 1)[1]]


@pytest.mark.parametrize("args", [["--default-timeout", "300", "--max-jobs-per-child=5"], ["--log-format", "text"],
                                  ["--prefetch", "0", "--require-noeviction", "--cron-module", "app.cron"],
                                  ["--name", "w", "--log-level=debug"]])
def test_other_worker_flags_stay_allowed(args: list[str]) -> None:
    doc = spec_doc({"url": "redis://r"}, workers={"args": args})
    assert admission(doc) == [] and problems(defaulted(doc["spec"])) == []


def test_replicas_cannot_change_while_autoscaling() -> None:
    """A transition rule: `kubectl scale jq` (the scale subresource writes spec.workers.replicas)
    is refused with a clear message while the operator autoscales, not silently ignored."""
    base = {"apiVersion": "conveyor.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": "a"},
            "spec": {"redis": {"url": "redis://r:6379/0"}, "queues": ["q"], "workers": {"replicas": 2},
                     "autoscaling": {"enabled": True}}}
    scaled = {**base, "spec": {**base["spec"], "workers": {"replicas": 5}}}
    assert admission(scaled) == []  # a create has no old object
    (error,) = admission(scaled, old=base)
    assert "spec.workers.replicas cannot change while spec.autoscaling.enabled" in error
    assert admission(base, old=base) == []
    # Turning autoscaling on or off may come with a new replicas value.
    off = {**base, "spec": {**scaled["spec"], "autoscaling": {"enabled": False}}}
    assert admission(off, old=base) == [] and admission(base, old=off) == []
