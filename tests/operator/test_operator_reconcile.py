"""Reconciler paths that need no API server: a recording stand-in for conveyor_operator.k8s.Api.
(The same code runs against the emulator in test_operator_e2e.py and test_operator_redis.py.)
The private TLS file store, and what the operator says about a Redis it cannot use."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from conveyor import Queue
from conveyor.embedded import EmbeddedRedis
from conveyor_operator.k8s import ApiError, NotFound, path
from conveyor_operator.reconcile import Reconciler
from conveyor_operator.settings import Settings
from conveyor_operator.status import Cond, conditions_for, deployment_problem, merge_conditions
from conveyor_operator.tlsfiles import TlsFileStore
from deployments import TlsRedis


class FakeApi:
    def __init__(self, secrets: dict[str, dict[str, str]] | None = None, fail_apply: bool = False) -> None:
        self.applied: dict[str, dict[str, Any]] = {}
        self.status: dict[str, Any] | None = None
        self.secrets = secrets or {}
        self.fail_apply = fail_apply
        self.finalizers: list[str] | None = None

    def apply(self, obj: dict[str, Any], manager: str = "conveyor-operator") -> dict[str, Any]:
        if self.fail_apply:
            raise ApiError(403, "Forbidden", "deployments.apps is forbidden")
        self.applied[obj["kind"]] = obj
        return obj

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return self.applied.get(kind)

    def delete(self, *args: Any) -> bool:
        return True

    def list_objects(self, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return []  # no HorizontalPodAutoscalers, no pods

    def crd_exists(self, name: str) -> bool:
        return False

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status = status

    def remove_finalizers(self, api_version: str, kind: str, namespace: str | None, name: str,
                          current: list[str], remove: tuple[str, ...]) -> None:
        self.finalizers = [f for f in current if f not in remove]

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        return self.secret_values(namespace, name, [key])[key]

    def secret_values(self, namespace: str, name: str, keys: list[str]) -> dict[str, str]:
        if name not in self.secrets:
            raise NotFound(404, "NotFound", "not found")
        for key in keys:
            if key not in self.secrets[name]:
                raise KeyError(key)
        return {key: self.secrets[name][key] for key in keys}


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
           "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2, "availableReplicas": 2,
                      "replicas": 2}}
    conds = {c.type: c for c in conditions_for(problem=None, desired=2, deployment=dep)}
    assert conds["Ready"].status and not conds["Progressing"].status and not conds["Degraded"].status
    conds = {c.type: c for c in conditions_for(problem=("SecretMissing", "m"), desired=2, deployment=dep)}
    assert not conds["Ready"].status and conds["Degraded"].reason == "SecretMissing"
    assert conds["Ready"].reason == "SecretMissing" and conds["Ready"].message == "2 of 2 updated, 2 ready, but m"
    conds = {c.type: c for c in conditions_for(problem=None, desired=3, deployment=dep)}
    assert conds["Progressing"].status and conds["Ready"].reason == "RollingOut"
    first = merge_conditions(None, [Cond("Ready", False, "A", "a")], 1, at="2020-01-01T00:00:00Z")
    same = merge_conditions(first, [Cond("Ready", False, "B", "b")], 2, at="2021-01-01T00:00:00Z")
    assert same[0]["lastTransitionTime"] == "2020-01-01T00:00:00Z" and same[0]["observedGeneration"] == 2
    flipped = merge_conditions(same, [Cond("Ready", True, "C", "c")], 2, at="2022-01-01T00:00:00Z")
    assert flipped[0]["lastTransitionTime"] == "2022-01-01T00:00:00Z" and flipped[0]["status"] == "True"


def deployment(generation: int = 2, want: int | None = 3, **status: int) -> dict[str, Any]:
    """A worker Deployment as the API has it (spec.replicas ``want``, None: unset); its status
    a finished rollout unless ``status`` says otherwise."""
    n = 1 if want is None else want
    return {"metadata": {"generation": generation}, "spec": {} if want is None else {"replicas": want},
            "status": {"observedGeneration": generation, "replicas": n, "updatedReplicas": n,
                       "readyReplicas": n, "availableReplicas": n, **status}}


def ready(desired: int | None, dep: dict[str, Any] | None,
          problem: tuple[str, str] | None = None) -> tuple[str, str, str, bool]:
    """(Ready's status and reason and message, Progressing's status) for that Deployment."""
    conds = {c.type: c for c in conditions_for(problem=problem, desired=desired, deployment=dep)}
    r = conds["Ready"]
    return "True" if r.status else "False", r.reason, r.message, conds["Progressing"].status


def test_ready_means_the_rollout_is_done() -> None:
    assert ready(3, deployment()) == ("True", "WorkersReady", "3 of 3 updated, 3 ready", False)
    # A template just applied: the controller has not seen it, so the old counts mean nothing.
    stale = deployment(generation=3, observedGeneration=2)
    assert ready(3, stale)[:2] == ("False", "RollingOut") and ready(3, stale)[3]
    assert "not observed" in ready(3, stale)[2]
    # Midway: fewer pods run the new template; then all do but not all are ready yet.
    assert ready(3, deployment(updatedReplicas=2, readyReplicas=1, availableReplicas=1)) == (
        "False", "RollingOut", "2 of 3 updated, 1 ready, 1 old pending termination", True)
    assert ready(3, deployment(readyReplicas=1, availableReplicas=1)) == (
        "False", "WorkersNotReady", "3 of 3 updated, 1 ready", False)
    # Old pods still counted (surge): not done, although 3 new ones are ready.
    assert ready(3, deployment(replicas=4))[:2] == ("False", "RollingOut")
    # Ready but not yet available (minReadySeconds), as kubectl rollout status counts it.
    assert ready(3, deployment(availableReplicas=2)) == ("False", "WorkersNotReady",
                                                         "3 of 3 updated, 3 ready, 2 available", False)
    # More updated than wanted (a scale-down in flight) is done, as for kubectl.
    assert ready(1, deployment())[:2] == ("True", "WorkersReady")
    # The operator's replicas win over a Deployment not yet re-applied; without them (an
    # autoscaler owns them) the Deployment's, or the API's default of 1.
    assert ready(5, deployment())[:2] == ("False", "RollingOut")
    assert ready(None, deployment(want=None))[:2] == ("True", "WorkersReady")
    assert ready(None, deployment(readyReplicas=2))[:2] == ("False", "WorkersNotReady")


def test_ready_when_scaled_to_zero_or_missing_or_degraded() -> None:
    # 0 of 0 is Ready once the controller has seen the scale-down and no pod is left.
    zero = deployment(want=0)
    assert ready(None, zero) == ("True", "ScaledToZero", "0 workers wanted", False)
    assert ready(0, zero)[:2] == ("True", "ScaledToZero")
    assert ready(None, deployment(want=0, generation=4, observedGeneration=3))[:2] == ("False", "RollingOut")
    draining = deployment(want=0, replicas=2, readyReplicas=2, availableReplicas=2)
    assert ready(None, draining)[:2] == ("False", "RollingOut") and "2 old pending termination" in ready(None, draining)[2]
    assert ready(None, zero, ("RedisUnreachable", "cannot reach Redis"))[:2] == ("False", "RedisUnreachable")
    # No Deployment (no image, or deleted and not yet re-created): never Ready.
    assert ready(3, None) == ("False", "NoDeployment", "the worker Deployment does not exist", False)
    # A problem wins over a finished rollout.
    assert ready(3, deployment(), ("ProgressDeadlineExceeded", "timed out"))[:2] == ("False", "ProgressDeadlineExceeded")


def test_a_stuck_deployment_is_a_problem_with_its_own_reason_and_message() -> None:
    def dep(*conds: dict[str, str], generation: int = 2, seen: int = 2) -> dict[str, Any]:
        return {"metadata": {"generation": generation}, "status": {"observedGeneration": seen, "conditions": list(conds)}}

    stalled = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
               "message": 'ReplicaSet "jq-worker-5d8f" has timed out progressing.'}
    quota = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
             "message": 'pods "jq-worker-5d8f-x" is forbidden: exceeded quota: compute, requested: memory=256Mi'}
    fine = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": "done"}
    assert deployment_problem(dep(stalled)) == ("ProgressDeadlineExceeded", stalled["message"])
    assert deployment_problem(dep(fine, quota)) == ("FailedCreate", quota["message"])
    assert deployment_problem(dep(stalled, quota)) == ("FailedCreate", quota["message"])  # the cause, not the symptom
    assert deployment_problem(dep(fine)) is None and deployment_problem(None) is None
    assert deployment_problem(dep(stalled, generation=3, seen=2)) is None  # about the spec before the current one


def test_a_deleted_jobqueue_is_never_reconciled_again_and_old_finalizers_go() -> None:
    api = FakeApi()
    reconciler = Reconciler(api, Settings(default_image="img:1", redis_timeout=0.2))
    reconciler.forget("u1")  # its DELETED event came while a resync pass held its old body
    assert reconciler.reconcile(body()).problem is None and api.applied == {} and api.status is None
    held = body()
    held["metadata"]["finalizers"] = ["conveyor.dev/finalizer", "example.com/x", "kopf.zalando.org/KopfFinalizerMarker"]
    reconciler.release(held)
    assert api.finalizers == ["example.com/x"]


def test_resync_skips_jobqueues_being_deleted_or_still_in_their_last_pass() -> None:
    from conveyor_operator.resync import due

    a, b, c = ({"metadata": {"uid": u, "name": u}} for u in "abc")
    c["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    assert due([a, b, c], busy={"b"}) == [a]


def test_api_paths() -> None:
    assert path("v1", "ConfigMap", "ns", "c") == "/api/v1/namespaces/ns/configmaps/c"
    assert path("apps/v1", "Deployment", "ns", "d") == "/apis/apps/v1/namespaces/ns/deployments/d"
    assert path("conveyor.dev/v1alpha1", "JobQueue", "ns", "j", "status") == \
        "/apis/conveyor.dev/v1alpha1/namespaces/ns/jobqueues/j/status"
    assert path("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, "x.y") == \
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.y"


def test_tls_files_are_private_rewritten_on_change_and_removed(tmp_path: Path) -> None:
    store = TlsFileStore(parent=str(tmp_path))
    files = store.files("uid-1", {"ca.crt": "CA1", "tls.crt": "CERT", "tls.key": "KEY"})
    where = Path(store.directory("uid-1"))
    assert where.parent.parent == tmp_path and where.name == "uid-1"
    assert (files.ca_file, files.cert_file, files.key_file) == tuple(str(where / n) for n in ("ca.crt", "tls.crt", "tls.key"))
    assert stat.S_IMODE(where.stat().st_mode) == 0o700 and stat.S_IMODE(where.parent.stat().st_mode) == 0o700
    assert {n: stat.S_IMODE((where / n).stat().st_mode) for n in os.listdir(where)} == {
        "ca.crt": 0o600, "tls.crt": 0o600, "tls.key": 0o600}
    inode = (where / "tls.key").stat().st_ino
    store.files("uid-1", {"ca.crt": "CA2", "tls.crt": "CERT", "tls.key": "KEY"})
    assert (where / "ca.crt").read_text() == "CA2" and (where / "tls.key").stat().st_ino == inode  # unchanged: untouched
    again = store.files("uid-1", {"ca.crt": "CA2"})  # the client pair dropped from the spec
    assert os.listdir(where) == ["ca.crt"] and again.cert_file is None and again.key_file is None
    store.files("../evil", {"ca.crt": "x"})  # a key never leaves the store's directory
    assert Path(store.directory("../evil")).parent == where.parent
    assert store.files("uid-1", {}).ca_file is None and not where.exists()  # no TLS refs: no files
    store.files("uid-2", {"ca.crt": "x"})
    store.forget("uid-2")
    assert not Path(store.directory("uid-2")).exists()
    store.close()
    assert not where.parent.exists()


def test_wrong_ca_is_named_by_its_secret_not_a_temp_path(tls_redis: TlsRedis) -> None:
    api = FakeApi(secrets={"ca": {"ca.crt": Path(tls_redis.other_ca_file).read_text()},
                           "me": {"tls.crt": Path(tls_redis.cert_file).read_text(), "tls.key": Path(tls_redis.key_file).read_text()}})
    reconciler = Reconciler(api, Settings(default_image="img:1", redis_timeout=1))
    out = reconciler.reconcile(body(redis={"url": tls_redis.url, "tls": {"enabled": True, "caSecretRef": {"name": "ca"},
                                                                         "clientCertSecretRef": {"name": "me"}}}))
    assert out.problem is not None and out.problem[0] == "RedisUnreachable"
    assert out.problem[1].startswith(f'TLS certificate verify failed at {tls_redis.url} (CA file: Secret "ca" key "ca.crt"): ')
    assert reconciler.tls_files.root not in out.problem[1]
    # The right CA: the depth is read, from the same private files rewritten.
    api.secrets["ca"]["ca.crt"] = Path(tls_redis.ca_file).read_text()
    out = reconciler.reconcile(body(redis={"url": tls_redis.url, "tls": {"enabled": True, "caSecretRef": {"name": "ca"},
                                                                         "clientCertSecretRef": {"name": "me"}}}))
    assert out.problem is None and out.status["queues"][0]["name"] == "q"
    reconciler.forget("u1")
    assert not os.path.exists(reconciler.tls_files.directory("u1"))
    # No CA given: the hint names the JobQueue field, not the worker's env var. (Another
    # JobQueue: u1 is deleted, and a deleted JobQueue is never reconciled again.)
    other = body(redis={"url": tls_redis.url})
    other["metadata"]["uid"] = "u2"
    out = reconciler.reconcile(other)
    assert out.problem is not None and "(CA file: none given, so the system CAs; set spec.redis.tls.caSecretRef)" in out.problem[1]
    reconciler.close()


def test_url_the_runtime_cannot_use_is_one_line_naming_it() -> None:
    reconciler = Reconciler(FakeApi(), Settings(default_image="img:1", redis_timeout=0.2))
    out = reconciler.reconcile(body(redis={"url": "redis+sentinel://:hunter2@s1:26379"}))  # no master name
    assert out.problem == ("RedisConfigInvalid", "a Sentinel URL names its master: redis+sentinel://host:port,.../<master>/<db>, "
                                                 "got redis+sentinel://:***@s1:26379")
    out = reconciler.reconcile(body(redis={"url": "redis+cluster://n1:7000/3"}))
    assert out.problem is not None and out.problem[0] == "RedisConfigInvalid" and "only database 0" in out.problem[1]


def test_the_operators_own_env_never_changes_a_jobqueues_redis(monkeypatch: pytest.MonkeyPatch, redis_server: Any) -> None:
    """Prefix and TLS files come from the JobQueue alone: CONVEYOR_PREFIX or CONVEYOR_REDIS_CA_FILE in
    the operator's environment (meant for something else) change nothing."""
    q = "env-leak-q"
    Queue(q, redis_url=redis_server.url).enqueue("builtins:print", 1)
    monkeypatch.setenv("CONVEYOR_PREFIX", "someone-else")
    monkeypatch.setenv("CONVEYOR_REDIS_CA_FILE", "/no/such/ca.pem")
    out = Reconciler(FakeApi(), Settings(default_image="img:1", redis_timeout=1)).reconcile(
        body(redis={"url": redis_server.url}, queues=[q]))
    assert out.problem is None and out.status["depth"] == 1


def test_the_resync_refresh_reads_depth_through_one_client_and_passes_fully_only_on_change() -> None:
    """Reconciler.refresh, the resync's pass: no object applied and no status written while
    nothing changed; the depth written alone when it moved; a full pass (objects applied,
    Degraded and its Event) when the Secret's URL rotates or Redis goes and comes back."""
    server = EmbeddedRedis().start()
    try:
        api = FakeApi(secrets={"r": {"url": server.url}})
        events: list[tuple[str, str, str]] = []
        reconciler = Reconciler(api, Settings(default_image="img:1", redis_timeout=0.5))
        jq = body(redis={"secretRef": {"name": "r"}})
        assert reconciler.reconcile(jq).problem is None
        client = reconciler.redis.cached("u1").client  # type: ignore[union-attr]

        def refresh() -> tuple[set[str], dict[str, Any] | None]:
            api.applied, api.status = {}, None
            reconciler.refresh(jq, lambda *e: events.append(e))
            jq["status"] = {**(jq.get("status") or {}), **(api.status or {})}  # as the index sees it next
            return set(api.applied), api.status

        assert refresh() == (set(), None)
        Queue("q", redis_url=server.url).enqueue("builtins:print", 1)
        applied, status = refresh()
        assert applied == set() and status is not None and set(status) == {"queues", "depth", "depthObservedAt"}
        assert status["depth"] == 1 and reconciler.redis.cached("u1").client is client  # type: ignore[union-attr]
        # The Secret's URL rotated (db 1): a full pass, the pods' checksum moves, a new client.
        dep = api.get("apps/v1", "Deployment", "ns", "jq-worker")
        api.secrets["r"]["url"] = server.url[:-1] + "1"
        applied, status = refresh()
        assert "Deployment" in applied and api.applied["Deployment"] != dep
        assert reconciler.redis.cached("u1").client is not client  # type: ignore[union-attr]
        assert refresh() == (set(), None)
        # Redis gone: one full pass says so (Degraded, an Event); while it stays gone, nothing more.
        server.stop()
        applied, status = refresh()
        assert "ConfigMap" in applied and status is not None
        assert next(c for c in status["conditions"] if c["type"] == "Degraded")["reason"] == "RedisUnreachable"
        assert events[-1][1] == "RedisUnreachable"
        assert refresh() == (set(), None)
        # Back: one full pass clears it.
        server = EmbeddedRedis(port=server.port).start()
        applied, status = refresh()
        assert "ConfigMap" in applied and status is not None and events[-1][1] == "Recovered"
        reconciler.forget("u1")
        assert reconciler.redis.cached("u1") is None
    finally:
        server.stop()
