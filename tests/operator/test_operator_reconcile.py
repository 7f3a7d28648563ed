"""Reconciler paths that need no API server: a recording stand-in for conveyor_operator.k8s.Api.
(The same code runs against the emulator in test_operator_e2e.py.)"""

from __future__ import annotations

from typing import Any

from conveyor_operator.k8s import ApiError, NotFound, path
from conveyor_operator.reconcile import Reconciler
from conveyor_operator.settings import Settings
from conveyor_operator.status import Cond, conditions_for, merge_conditions


class FakeApi:
    def __init__(self, secrets: dict[str, dict[str, str]] | None = None, fail_apply: bool = False) -> None:
        self.applied: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] | None = None
        self.secrets = secrets or {}
        self.fail_apply = fail_apply

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        if self.fail_apply:
            raise ApiError(403, "Forbidden", "deployments.apps is forbidden")
        self.applied[obj["kind"]] = obj
        return obj

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.applied.get(kind)

    def delete(self, *args: Any) -> bool:
        return True

    def crd_exists(self, name: str) -> bool:
        return False

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status = status

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        if name not in self.secrets:
            raise NotFound(404, "NotFound", "not found")
        if key not in self.secrets[name]:
            raise KeyError(key)
        return self.secrets[name][key]


def body(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "jq", "namespace": "ns", "uid": "u1", "generation": 3},
            "spec": {"redis": {"url": "redis://127.0.0.1:1/0"}, "queues": ["q"], **spec}}


def test_empty_image_without_a_default_is_degraded_and_no_deployment_is_made() -> None:
    api = FakeApi()
    events: list[tuple[str, str, str]] = []
    out = Reconciler(api, Settings(default_image="", redis_timeout=0.2)).reconcile(body(), lambda *e: events.append(e))
    assert out.problem is not None and out.problem[0] == "ImageMissing"
    assert "CONVEYOR_OPERATOR_DEFAULT_IMAGE" in out.problem[1]
    assert "Deployment" not in api.applied and {"ConfigMap", "Service", "PodDisruptionBudget"} <= set(api.applied)
    assert events == [("Warning", "ImageMissing", out.problem[1])]
    assert api.status is not None and api.status["observedGeneration"] == 3
    degraded = next(c for c in api.status["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "ImageMissing")


def test_unreachable_redis_missing_key_and_refused_apply_never_raise() -> None:
    s = Settings(default_image="img:1", redis_timeout=0.2)
    out = Reconciler(FakeApi(), s).reconcile(body())
    assert out.problem is not None and out.problem[0] == "RedisUnreachable"
    out = Reconciler(FakeApi(secrets={"r": {}}), s).reconcile(body(redis={"secretRef": {"name": "r", "key": "url"}}))
    assert out.problem == ("SecretKeyMissing", 'Secret "r" has no key "url" (spec.redis.secretRef.key)')
    out = Reconciler(FakeApi(fail_apply=True), s).reconcile(body())
    assert out.problem is not None and out.problem[0] == "ApplyFailed" and "forbidden" in out.problem[1]


def test_invalid_spec_is_permanent() -> None:
    api = FakeApi()
    out = Reconciler(api, Settings(default_image="img")).reconcile(body(queues=["a", "a"]))
    assert out.permanent and out.problem is not None and out.problem[0] == "InvalidSpec"
    assert api.applied == {}


def test_conditions_and_transition_times() -> None:
    dep = {"metadata": {"generation": 2}, "spec": {"replicas": 2},
           "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2, "replicas": 2}}
    conds = {c.type: c for c in conditions_for(problem=None, desired=2, deployment=dep)}
    assert conds["Ready"].status and not conds["Progressing"].status and not conds["Degraded"].status
    conds = {c.type: c for c in conditions_for(problem=("SecretMissing", "m"), desired=2, deployment=dep)}
    assert not conds["Ready"].status and conds["Degraded"].reason == "SecretMissing"
    conds = {c.type: c for c in conditions_for(problem=None, desired=3, deployment=dep)}
    assert conds["Progressing"].status and conds["Ready"].reason == "WorkersNotReady"
    first = merge_conditions(None, [Cond("Ready", False, "A", "a")], 1, at="2020-01-01T00:00:00Z")
    same = merge_conditions(first, [Cond("Ready", False, "B", "b")], 2, at="2021-01-01T00:00:00Z")
    assert same[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z" and same[0]["observedGeneration"] == 2
    flipped = merge_conditions(same, [Cond("Ready", True, "C", "c")], 2, at="2022-01-01T00:00:00Z")
    assert flipped[0]["lastTransitionTime"] == "2022-01-01T00:00:00Z" and flipped[0]["status"] == "True"


def test_api_paths() -> None:
    assert path("v1", "ConfigMap", "ns", "c") == "/api/v1/namespaces/ns/configmaps/c"
    assert path("apps/v1", "Deployment", "ns", "d") == "/apis/apps/v1/namespaces/ns/deployments/d"
    assert path("conveyor.dev/v1alpha1", "JobQueue", "ns", "j", "status") == \
        "/apis/conveyor.dev/v1alpha1/namespaces/ns/jobqueues/j/status"
    assert path("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "x.y") == \
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.y"
