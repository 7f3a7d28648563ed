"""End to end: the operator as a real `kopf run` process (python -m conveyor_operator)
against the API emulator over HTTP, JobQueues applied with the real kubectl."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import time
from typing import Any

import pytest

from conveyor import Queue
from conveyor_operator import builders
from op_helpers import (
    DEFAULT_IMAGE,
    EXAMPLES,
    SERVICE_MONITOR_CRD,
    Cluster,
    Kubectl,
    OperatorProcess,
    SlowRelay,
    cond,
    dep_path,
    jobqueue,
    jq_path,
    roll_out,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("operator")


def cm_path(ns: str, jq: str) -> str:
    return f"/api/v1/namespaces/{ns}/configmaps/{jq}-policy"


def checksum(dep: dict[str, Any]) -> str:
    return dep["spec"]["template"]["metadata"]["annotations"][builders.CHECKSUM_ANNOTATION]


def args_of(dep: dict[str, Any]) -> list[str]:
    return dep["spec"]["template"]["spec"]["containers"][0]["args"]


def events(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    return (cluster.get(f"/api/v1/namespaces/{ns}/events") or {}).get("items", [])


def test_operator_serves_kopf_liveness(operator: OperatorProcess) -> None:
    wait_for(operator.healthy, what="GET /healthz on the operator's liveness port")


def test_minimal_example_becomes_a_worker_fleet(cluster: Cluster, kubectl: Kubectl, namespace: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "minimal.yaml"))
    dep = wait_for(lambda: cluster.get(dep_path(namespace, "emails")), timeout=10, interval=0.005,
                   what="the worker Deployment")
    elapsed = time.monotonic() - started
    with capsys.disabled():
        # Reported, not asserted: speed belongs to figures, and CI machines are noisy.
        print(f"\n[operator] kubectl apply -> Deployment exists: {elapsed * 1000:.0f} ms (goal <= 1000 ms)")

    jq = cluster.get(jq_path(namespace, "emails"))
    owner = {"apiVersion": "conveyor.dev/v1alpha1", "kind": "JobQueue", "name": "emails",
             "uid": jq["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    assert dep["metadata"]["ownerReferences"] == [owner]
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == DEFAULT_IMAGE  # the operator's default image
    assert c["args"][:3] == ["worker", "-q", "emails"] and "--with-scheduler" in c["args"]
    assert c["env"][0] == {"name": "CONVEYOR_REDIS_URL", "value": "redis://redis.default.svc:6379/0"}
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 35
    cm = wait_for(lambda: cluster.get(cm_path(namespace, "emails")), what="the policy ConfigMap")
    assert json.loads(cm["data"]["policy.json"]) == {"result_ttl": 500, "failure_ttl": 604800}
    for path in (f"/api/v1/namespaces/{namespace}/services/emails-metrics",
                 f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/emails-worker"):
        obj = wait_for(lambda: cluster.get(path), what=path)
        assert obj["metadata"]["ownerReferences"] == [owner]
    # Redis at redis.default.svc does not resolve here: Degraded, with the reason, not a crash.
    jq = wait_for(lambda: (j := cluster.get(jq_path(namespace, "emails"))) and cond(j, "Degraded").get("status") == "True" and j,
                  what="Degraded=True")
    degraded = cond(jq, "Degraded")
    assert degraded["reason"] == "RedisUnreachable" and "cannot reach Redis" in degraded["message"]
    assert jq["status"]["observedGeneration"] == 1
    assert {c["type"] for c in jq["status"]["conditions"]} == {"Ready", "Progressing", "Degraded"}
    assert jq["status"]["selector"] == "app.kubernetes.io/name=conveyor-worker,app.kubernetes.io/instance=emails"
    # kubectl sees it by its short name.
    assert kubectl("get", "jq", "-n", namespace).stdout.splitlines()[1].startswith("emails")


def test_spec_change_patches_the_deployment_rolls_the_checksum_and_moves_status(
        cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue("roll", redis={"url": redis_server.url}, queues=[f"{namespace}-q"]))
    dep = wait_for(lambda: cluster.get(dep_path(namespace, "roll")), what="the Deployment")
    first = checksum(dep)
    jq = wait_for(lambda: (j := cluster.get(jq_path(namespace, "roll"))) and cond(j, "Degraded").get("status") == "False" and j,
                  what="Degraded=False")
    assert cond(jq, "Ready")["status"] == "False" and cond(jq, "Ready")["reason"] == "RollingOut"
    roll_out(cluster, namespace, "roll")  # no controllers here: report the rollout done
    jq = wait_for(lambda: (j := cluster.get(jq_path(namespace, "roll"))) and cond(j, "Ready").get("status") == "True" and j,
                  what="Ready=True")
    assert cond(jq, "Progressing")["status"] == "False"
    assert jq["status"]["readyReplicas"] == 1 and jq["status"]["replicas"] == 1
    ready_since = cond(jq, "Ready")["lastTransitionTime"]

    kubectl("patch", "jq", "roll", "-n", namespace, "--type", "merge",
            "-p", json.dumps({"spec": {"workers": {"concurrency": 4}, "retry": {"max": 2, "intervals": [3]}}}))
    dep = wait_for(lambda: (d := cluster.get(dep_path(namespace, "roll"))) and "4" in args_of(d) and d,
                   what="the Deployment to get the new concurrency")
    assert args_of(dep)[args_of(dep).index("--concurrency") + 1] == "4"
    assert checksum(dep) != first
    assert dep["metadata"]["generation"] == 2
    cm = cluster.get(cm_path(namespace, "roll"))
    assert json.loads(cm["data"]["policy.json"])["retry"] == {"max": 2, "intervals": [3]}
    jq = wait_for(lambda: (j := cluster.get(jq_path(namespace, "roll"))) and j["status"]["observedGeneration"] == 2 and j,
                  what="observedGeneration 2")
    assert jq["metadata"]["generation"] == 2
    assert cond(jq, "Progressing")["status"] == "True" and cond(jq, "Progressing")["reason"] == "RollingOut"
    assert all(c["observedGeneration"] == 2 for c in jq["status"]["conditions"])
    # The new template is not rolled out yet: Ready flipped (test_ready_means_the_rollout_is_done).
    assert (cond(jq, "Ready")["status"], cond(jq, "Ready")["reason"]) == ("False", "RollingOut")
    assert cond(jq, "Ready")["lastTransitionTime"] >= ready_since

    # A policy-only change (TTL) rolls the pods too: the checksum covers the mounted policy.
    kubectl("patch", "jq", "roll", "-n", namespace, "--type", "merge", "-p", '{"spec": {"resultTTLSeconds": 60}}')
    second = checksum(dep)
    dep = wait_for(lambda: (d := cluster.get(dep_path(namespace, "roll"))) and checksum(d) != second and d,
                   what="the checksum to roll on a policy change")
    assert args_of(dep) == args_of(cluster.get(dep_path(namespace, "roll")))


def test_ready_means_the_rollout_is_done(cluster: Cluster, kubectl: Kubectl, namespace: str,
                                        redis_server: Any) -> None:
    """`kubectl wait --for=condition=Ready` right after `kubectl apply` waits for the new
    template's rollout (issue 17): the pass that applies it writes Ready=False at once, and
    the Deployment controller's status reporting it done flips Ready through the watch."""
    def manifest(run: str) -> str:
        return jobqueue("ro", redis={"url": redis_server.url}, queues=[f"{namespace}-q"],
                        workers={"replicas": 3, "env": [{"name": "RUN_ID", "value": run}]})

    def ready() -> dict[str, Any]:
        return cond(cluster.get(jq_path(namespace, "ro")), "Ready")

    def wait_ready(timeout: str) -> subprocess.CompletedProcess[str]:
        return kubectl("wait", "--for=condition=Ready", "jq/ro", "-n", namespace, f"--timeout={timeout}", check=False)

    kubectl("apply", "-n", namespace, "-f", "-", input=manifest("1"))
    wait_for(lambda: ready().get("reason") == "RollingOut", what="Ready=False RollingOut on a new JobQueue")
    # Midway (no controllers here: the test plays the Deployment controller): 2 of 3 pods run
    # the template, 1 is ready; then all 3 run it, 1 ready.
    roll_out(cluster, namespace, "ro", updatedReplicas=2, readyReplicas=1, availableReplicas=1)
    c = wait_for(lambda: (c := ready()) and c["message"].startswith("2 of 3") and c, what="the rollout midway")
    assert (c["status"], c["reason"], c["message"]) == ("False", "RollingOut",
                                                        "2 of 3 updated, 1 ready, 1 old pending termination")
    roll_out(cluster, namespace, "ro", readyReplicas=1, availableReplicas=1)
    c = wait_for(lambda: (c := ready()) and c["reason"] == "WorkersNotReady" and c, what="Ready=False WorkersNotReady")
    assert (c["status"], c["message"]) == ("False", "3 of 3 updated, 1 ready")
    assert wait_ready("1s").returncode != 0
    roll_out(cluster, namespace, "ro")
    c = wait_for(lambda: (c := ready()) and c["status"] == "True" and c, what="Ready=True")
    assert (c["reason"], c["message"], c["observedGeneration"]) == ("WorkersReady", "3 of 3 updated, 3 ready", 1)
    assert wait_ready("5s").returncode == 0

    # A spec change: kubectl wait right after the apply must not return on the old Ready=True,
    # neither before the operator's pass (kubectl skips a condition whose observedGeneration
    # is behind metadata.generation) nor after it (Ready=False, the Deployment's new
    # generation not yet observed).
    generation = cluster.get(dep_path(namespace, "ro"))["metadata"]["generation"]
    kubectl("apply", "-n", namespace, "-f", "-", input=manifest("2"))
    waited = wait_ready("1s")
    assert waited.returncode != 0, waited.stdout
    jq = wait_for(lambda: (j := cluster.get(jq_path(namespace, "ro"))) and j["status"]["observedGeneration"] == 2 and j,
                  what="the operator to observe generation 2")
    c = cond(jq, "Ready")
    assert (c["status"], c["reason"], c["observedGeneration"]) == ("False", "RollingOut", 2)
    assert cond(jq, "Progressing")["status"] == "True"
    dep = cluster.get(dep_path(namespace, "ro"))
    assert dep["metadata"]["generation"] > generation
    assert {"name": "RUN_ID", "value": "2"} in dep["spec"]["template"]["spec"]["containers"][0]["env"]

    # A kubectl wait started now returns once the Deployment reports the new generation done.
    since = len(cluster.emu._requests)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(wait_ready, "20s")
        wait_for(lambda: any(r.params.get("watch") in ("true", "1") and r.resource is not None
                             and r.resource.plural == "jobqueues" and "metadata.name=ro" in r.params.get("fieldSelector", "")
                             for r in list(cluster.emu._requests)[since:]), what="kubectl wait to watch the JobQueue")
        assert not waiting.done(), waiting.result()  # still blocked: the rollout is not done
        roll_out(cluster, namespace, "ro")
        started = time.monotonic()
        done = waiting.result(timeout=30)
    assert done.returncode == 0, done.stderr
    # The watch on the Deployment brings it: the resync's cheap check reads Redis only.
    assert time.monotonic() - started < 5
    assert (ready()["status"], ready()["observedGeneration"]) == ("True", 2)


def test_kubectl_wait_skips_a_ready_condition_of_an_older_generation(own_cluster: tuple[Cluster, Kubectl]) -> None:
    """What covers the moment between `kubectl apply` and the operator's pass: kubectl wait
    ignores a condition whose observedGeneration is behind metadata.generation (no operator
    runs on this cluster: the test writes the status)."""
    cluster, kubectl = own_cluster
    kubectl("apply", "-f", "-", input=jobqueue("gen", redis={"url": "redis://r:6379/0"}, queues=["q"]))

    def report_ready(generation: int) -> None:
        ready = {"type": "Ready", "status": "True", "observedGeneration": generation, "reason": "WorkersReady",
                 "message": "1 of 1 updated, 1 ready", "lastTransitionTime": "2026-01-01T00:00:00Z"}
        code, body = cluster.request("PATCH", jq_path("default", "gen") + "/status",
                                     {"status": {"observedGeneration": generation, "conditions": [ready]}})
        assert code == 200, body

    def wait() -> int:
        return kubectl("wait", "--for=condition=Ready", "jq/gen", "--timeout=1s", check=False).returncode

    report_ready(1)
    assert wait() == 0
    kubectl("patch", "jq", "gen", "--type", "merge", "-p", '{"spec": {"workers": {"concurrency": 2}}}')
    assert cluster.get(jq_path("default", "gen"))["metadata"]["generation"] == 2
    assert wait() != 0
    report_ready(2)
    assert wait() == 0


def test_a_stuck_deployment_makes_the_jobqueue_degraded(cluster: Cluster, kubectl: Kubectl, namespace: str,
                                                        redis_server: Any) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue("stuck", redis={"url": redis_server.url}, queues=["q"]))
    dep = wait_for(lambda: cluster.get(dep_path(namespace, "stuck")), what="the Deployment")
    wait_for(lambda: cond(cluster.get(jq_path(namespace, "stuck")), "Degraded").get("status") == "False",
             what="a healthy JobQueue")

    def degraded_by(reason: str) -> Any:
        return lambda: (c := cond(cluster.get(jq_path(namespace, "stuck")), "Degraded")) and c["reason"] == reason and c

    # No controllers here: play the Deployment controller giving up on a rollout...
    gen = dep["metadata"]["generation"]
    stalled = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
               "message": 'ReplicaSet "stuck-worker-5d8f" has timed out progressing.'}
    cluster.request("PATCH", dep_path(namespace, "stuck") + "/status",
                    {"status": {"observedGeneration": gen, "replicas": 1, "conditions": [stalled]}})
    c = wait_for(degraded_by("ProgressDeadlineExceeded"), what="Degraded=True ProgressDeadlineExceeded")
    assert (c["status"], c["message"]) == ("True", stalled["message"])
    # ...then failing to create pods over a quota.
    quota = {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
             "message": 'pods "stuck-worker-5d8f-x" is forbidden: exceeded quota: compute, requested: memory=256Mi'}
    cluster.request("PATCH", dep_path(namespace, "stuck") + "/status", {"status": {"conditions": [quota]}})
    c = wait_for(degraded_by("FailedCreate"), what="Degraded=True FailedCreate")
    assert (c["status"], c["message"]) == ("True", quota["message"])
    assert wait_for(lambda: [e for e in events(cluster, namespace)
                             if e["reason"] == "FailedCreate" and e["involvedObject"]["name"] == "stuck"], what="an Event")
    # Rolled out after all: no longer degraded.
    cluster.request("PATCH", dep_path(namespace, "stuck") + "/status", {"status": {
        "readyReplicas": 1, "updatedReplicas": 1, "conditions": [
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable", "message": "ok"}]}})
    wait_for(degraded_by("AsExpected"), what="Degraded=False")


def test_drift_is_repaired(cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any) -> None:
    kubectl("apply", "-n", namespace, "-f", "-",
            input=jobqueue("drift", redis={"url": redis_server.url}, queues=["q"], workers={"replicas": 2}))
    wait_for(lambda: cluster.get(dep_path(namespace, "drift")), what="the Deployment")
    cluster.request("PATCH", dep_path(namespace, "drift"), {"spec": {"replicas": 7}})
    wait_for(lambda: cluster.get(dep_path(namespace, "drift"))["spec"]["replicas"] == 2, what="replicas back to 2")
    assert cluster.request("DELETE", cm_path(namespace, "drift"))[0] == 200
    wait_for(lambda: cluster.get(cm_path(namespace, "drift")), what="the ConfigMap to come back")


def test_scale_subresource_drives_the_deployment(cluster: Cluster, kubectl: Kubectl, namespace: str,
                                                 redis_server: Any) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue("sc", redis={"url": redis_server.url}, queues=["q"]))
    wait_for(lambda: cluster.get(dep_path(namespace, "sc")), what="the Deployment")
    kubectl("scale", "jq", "sc", "-n", namespace, "--replicas=3")
    wait_for(lambda: cluster.get(dep_path(namespace, "sc"))["spec"]["replicas"] == 3, what="3 replicas")


def test_deleting_the_jobqueue_cleans_up(cluster: Cluster, kubectl: Kubectl, namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "autoscaling.yaml"))
    paths = [dep_path(namespace, "reports"), cm_path(namespace, "reports"),
             f"/api/v1/namespaces/{namespace}/services/reports-metrics",
             f"/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/reports-worker"]
    wait_for(lambda: all(cluster.get(p) for p in paths), what="all owned objects")
    kubectl("delete", "jq", "reports", "-n", namespace, "--timeout=20s")
    wait_for(lambda: not any(cluster.get(p) for p in paths), what="the owned objects to go")
    assert cluster.get(jq_path(namespace, "reports")) is None


def test_deleting_while_a_resync_reads_redis_is_prompt(cluster: Cluster, kubectl: Kubectl, namespace: str,
                                                      redis_server: Any) -> None:
    """kopf lets a JobQueue go only once its resync timer has exited; one caught inside a pass
    that changes nothing (no write to wake kopf) was re-checked only after kopf's default 60 s."""
    relay = SlowRelay(redis_server.port, delay=0.2)  # each depth read waits 0.2 s (< the 0.5 s timeout)
    try:
        kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue("slow", redis={"url": relay.url}, queues=["q"]))
        wait_for(lambda: (cluster.get(jq_path(namespace, "slow")) or {}).get("status", {}).get("depth") == 0,
                 what="a healthy JobQueue")
        relay.requested.clear()
        assert relay.requested.wait(5)  # a resync is inside its depth read now
        started = time.monotonic()
        assert cluster.request("DELETE", jq_path(namespace, "slow"))[0] == 200
        wait_for(lambda: cluster.get(jq_path(namespace, "slow")) is None, timeout=20, what="the JobQueue to go")
        assert time.monotonic() - started < 5
    finally:
        relay.stop()


def test_missing_secret_is_degraded_with_a_clear_message_then_recovers(
        cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any) -> None:
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "full.yaml"))
    jq = wait_for(lambda: (j := cluster.get(jq_path(namespace, "billing"))) and cond(j, "Degraded").get("status") == "True" and j,
                  what="Degraded=True")
    degraded = cond(jq, "Degraded")
    assert degraded["reason"] == "SecretMissing"
    assert degraded["message"] == (f'Secret "conveyor-redis" (spec.redis.secretRef) was not found in namespace '
                                   f'"{namespace}"; workers cannot start until it exists')
    assert cond(jq, "Ready")["status"] == "False"
    ev = wait_for(lambda: [e for e in events(cluster, namespace) if e["reason"] == "SecretMissing"], what="an Event")
    assert ev[0]["type"] == "Warning" and ev[0]["involvedObject"]["name"] == "billing"
    # The workers are still deployed, reading the URL from the Secret once it exists.
    dep = cluster.get(dep_path(namespace, "billing"))
    assert dep["spec"]["template"]["spec"]["containers"][0]["env"][0]["valueFrom"]["secretKeyRef"] == {
        "name": "conveyor-redis", "key": "url"}
    secret = kubectl("create", "secret", "generic", "conveyor-redis", f"--from-literal=url={redis_server.url}",
                     "--dry-run=client", "-o", "json").stdout  # (kubectl create would send protobuf)
    kubectl("apply", "-n", namespace, "-f", "-", input=secret)
    jq = wait_for(lambda: (j := cluster.get(jq_path(namespace, "billing"))) and cond(j, "Degraded").get("status") == "False" and j,
                  what="Degraded=False once the Secret exists")
    assert jq["status"]["queues"][0]["name"] == "billing-high"
    wait_for(lambda: [e for e in events(cluster, namespace) if e["reason"] == "Recovered"], what="a Recovered Event")

    # Rotating the Secret (a new URL) rolls the pods: the checksum covers a fingerprint of it.
    def pod_checksum() -> str:
        return checksum(cluster.get(dep_path(namespace, "billing")))

    before = wait_for(pod_checksum, what="the Deployment's checksum")
    rotated = kubectl("create", "secret", "generic", "conveyor-redis", f"--from-literal=url={redis_server.url[:-1]}1",
                      "--dry-run=client", "-o", "json").stdout
    kubectl("apply", "-n", namespace, "-f", "-", input=rotated)
    wait_for(lambda: pod_checksum() != before, what="the pods to roll after the Secret rotated")
    assert redis_server.url[:-1] not in json.dumps(cluster.get(dep_path(namespace, "billing")))  # never the URL itself


def test_invalid_spec_is_reported_not_deployed(cluster: Cluster, kubectl: Kubectl, namespace: str) -> None:
    # The emulator has no admission; a real API server would refuse this. The operator refuses too.
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES / "invalid" / "duplicate-queues.yaml"))
    jq = wait_for(lambda: (j := cluster.get(jq_path(namespace, "duplicate-queues"))) and cond(j, "Degraded").get("status") == "True" and j,
                  what="Degraded=True")
    assert cond(jq, "Degraded")["reason"] == "InvalidSpec"
    assert "queue names must be unique" in cond(jq, "Degraded")["message"]
    assert cluster.get(dep_path(namespace, "duplicate-queues")) is None


def test_status_reads_real_queue_depth(cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any) -> None:
    qa, qb = f"{namespace}-a", f"{namespace}-b"
    a = Queue(qa, redis_url=redis_server.url)
    b = Queue(qb, redis_url=redis_server.url)
    for i in range(3):
        a.enqueue("builtins:print", i)
    b.enqueue_in(3600, "builtins:print", "later")
    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue("depth", redis={"url": redis_server.url}, queues=[qa, qb]))
    expected = [{"name": qa, "ready": 3, "scheduled": 0, "due": 0, "claimed": 0, "failed": 0},
                {"name": qb, "ready": 0, "scheduled": 1, "due": 0, "claimed": 0, "failed": 0}]
    jq = wait_for(lambda: (j := cluster.get(jq_path(namespace, "depth"))) and (j.get("status") or {}).get("queues") == expected and j,
                  what="the queue depth in status")
    assert jq["status"]["depth"] == 4
    a.enqueue("builtins:print", 99)  # the timer keeps it fresh
    wait_for(lambda: cluster.get(jq_path(namespace, "depth"))["status"]["queues"][0]["ready"] == 4, what="depth 4")


def test_service_monitor_follows_the_spec(cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(SERVICE_MONITOR_CRD))
    sm_path = f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/servicemonitors/mon-worker"
    wait_for(lambda: cluster.get(f"/apis/monitoring.coreos.com/v1/namespaces/{namespace}/servicemonitors") is not None,
             what="the ServiceMonitor CRD")
    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue(
        "mon", redis={"url": redis_server.url}, queues=["q"],
        metrics={"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}}))
    sm = wait_for(lambda: cluster.get(sm_path), what="the ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "prom"
    assert sm["spec"]["endpoints"][0]["port"] == "metrics"
    kubectl("patch", "jq", "mon", "-n", namespace, "--type", "merge",
            "-p", '{"spec": {"metrics": {"serviceMonitor": {"enabled": false}}}}')
    wait_for(lambda: cluster.get(sm_path) is None, what="the ServiceMonitor to go")
