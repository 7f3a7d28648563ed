"""Queue-depth autoscaling end to end: the operator (a real `kopf run` process against the API
emulator) reads a real Redis every pollSeconds and sets the worker Deployment's replicas.

Each test uses its namespace as its key prefix, so tests share one redis-server unseen."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis

from conveyor import Queue, admin
from conveyor.keys import Keyspace
from conveyor_operator.scaler import DELETION_COST
from op_helpers import (
    Cluster,
    Kubectl,
    OperatorProcess,
    api_calls,
    cond,
    crd_stub,
    dep_path,
    jobqueue,
    jq_path,
    method,
    roll_out,
    wait_for,
)
from pod_helpers import create_pod, pods_path

FAST = {"pollSeconds": 1, "scaleDownStabilizationSeconds": 2, "targetJobsPerWorker": 10}


def burst(url: str, ns: str, n: int) -> None:
    """``n`` jobs in one atomic batch: a poll sees none or all of them."""
    Queue("q", redis_url=url, prefix=ns).enqueue_many([Queue.prepare_data("builtins:print", (i,)) for i in range(n)])


def apply(kubectl: Kubectl, ns: str, name: str, url: str, **spec: Any) -> None:
    kubectl("apply", "-n", ns, "-f", "-", input=jobqueue(name, redis={"url": url, "prefix": ns}, queues=["q"], **spec))


def replicas(cluster: Cluster, ns: str, name: str) -> int | None:
    return ((cluster.get(dep_path(ns, name)) or {}).get("spec") or {}).get("replicas")


def wait_replicas(cluster: Cluster, ns: str, name: str, n: int, timeout: float) -> float:
    """Seconds until the Deployment asks for ``n`` replicas."""
    start = time.monotonic()
    wait_for(lambda: replicas(cluster, ns, name) == n, timeout=timeout, what=f"{n} replicas")
    return time.monotonic() - start


def purge(url: str, ns: str) -> None:
    admin.purge(redis.Redis.from_url(url), "q", True, Keyspace.of(ns))


def events(cluster: Cluster, ns: str, reason: str) -> list[dict[str, Any]]:
    items = (cluster.get(f"/api/v1/namespaces/{ns}/events") or {}).get("items") or []
    return [e for e in items if e.get("reason") == reason]


def deployment_history(cluster: Cluster, ns: str, name: str) -> list[Any]:
    """spec.replicas of every version of the Deployment the emulator stored."""
    return [o["spec"].get("replicas") for _, r, t, o in list(cluster.emu._log)
            if r.plural == "deployments" and o["metadata"].get("namespace") == ns
            and o["metadata"]["name"] == f"{name}-worker" and t != "DELETED"]


@pytest.mark.slow
def test_a_burst_scales_up_within_a_poll_and_down_after_the_window(
        cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any, operator: OperatorProcess) -> None:
    apply(kubectl, namespace, "burst", redis_server.url,
          autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 5, **FAST,
                       "scaleDownStabilizationSeconds": 3})
    wait_replicas(cluster, namespace, "burst", 1, 10)
    burst(redis_server.url, namespace, 35)
    wait_replicas(cluster, namespace, "burst", 4, 3)  # ceil(35 / 10), within one poll (1 s) and a margin
    jq = wait_for(lambda: (j := cluster.get(jq_path(namespace, "burst"))) and
                  (j["status"].get("autoscaling") or {}).get("desiredReplicas") == 4 and j, what="status.autoscaling")
    auto = jq["status"]["autoscaling"]
    assert auto["demand"] == 35 and auto["reason"] in ("ScaleUp", "Steady") and auto["lastScaleTime"]
    assert cond(jq, "Autoscaling")["status"] == "True"
    wait_for(lambda: any("from 1 to 4: demand 35 " in e["message"] for e in events(cluster, namespace, "ScaleUp")),
             what="a ScaleUp Event")
    # More than the max: clamped.
    burst(redis_server.url, namespace, 100)
    wait_replicas(cluster, namespace, "burst", 5, 3)
    # Drained: the first poll that sees no demand keeps the 5 workers (the 3 s window still holds
    # the burst); then down in one step to the minimum.
    purge(redis_server.url, namespace)
    auto = wait_for(lambda: (a := cluster.get(jq_path(namespace, "burst"))["status"].get("autoscaling") or {})
                    and a.get("demand") == 0 and a, what="the drained demand in status")
    assert (auto["reason"], auto["desiredReplicas"]) == ("Stabilizing", 5), auto
    wait_replicas(cluster, namespace, "burst", 1, 6)
    wait_for(lambda: events(cluster, namespace, "ScaleDown"), what="a ScaleDown Event")
    assert set(deployment_history(cluster, namespace, "burst")) <= {1, 4, 5}


@pytest.mark.slow
def test_scale_to_zero_and_the_first_job_wakes_the_fleet(
        cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any, operator: OperatorProcess) -> None:
    apply(kubectl, namespace, "zero", redis_server.url,
          autoscaling={"enabled": True, "minReplicas": 0, "maxReplicas": 3, **FAST})
    wait_replicas(cluster, namespace, "zero", 0, 10)
    # Ready once the (played) Deployment controller reports 0 of 0 rolled out.
    roll_out(cluster, namespace, "zero")
    wait_for(lambda: cond(cluster.get(jq_path(namespace, "zero")), "Ready").get("reason") == "ScaledToZero",
             what="Ready: ScaledToZero")
    Queue("q", redis_url=redis_server.url, prefix=namespace).enqueue("builtins:print", "wake up")
    wait_replicas(cluster, namespace, "zero", 1, 3)  # within one poll and a margin
    # A job scheduled for later is no demand; one already due is.
    purge(redis_server.url, namespace)
    wait_replicas(cluster, namespace, "zero", 0, 8)
    Queue("q", redis_url=redis_server.url, prefix=namespace).enqueue_in(3600, "builtins:print", "later")
    wait_for(lambda: (cluster.get(jq_path(namespace, "zero"))["status"].get("queues") or [{}])[0].get("scheduled") == 1,
             what="the scheduled job in status")
    assert replicas(cluster, namespace, "zero") == 0
    conn = redis.Redis.from_url(redis_server.url)
    scheduled = Keyspace.of(namespace).queue("q").scheduled
    (job_id,) = conn.zrange(scheduled, 0, -1)
    conn.zadd(scheduled, {job_id: int(time.time() * 1000) - 1000})  # now due (no scheduler runs here)
    wait_replicas(cluster, namespace, "zero", 1, 3)


def test_toggling_autoscaling_never_resets_replicas(
        cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any, operator: OperatorProcess) -> None:
    apply(kubectl, namespace, "tog", redis_server.url, workers={"replicas": 3})
    wait_replicas(cluster, namespace, "tog", 3, 10)
    # On, with nothing to do and a long window: starts from the current 3, keeps them.
    apply(kubectl, namespace, "tog", redis_server.url, workers={"replicas": 3}, autoscaling={
        "enabled": True, "minReplicas": 1, "maxReplicas": 10, "pollSeconds": 1,
        "scaleDownStabilizationSeconds": 3600, "targetJobsPerWorker": 10})
    wait_for(lambda: (cluster.get(jq_path(namespace, "tog"))["status"].get("autoscaling") or {}).get("reason")
             == "Stabilizing", what="the autoscaler holding 3 workers")
    assert replicas(cluster, namespace, "tog") == 3
    burst(redis_server.url, namespace, 55)
    wait_replicas(cluster, namespace, "tog", 6, 3)
    # Off: back to the user's spec.workers.replicas.
    apply(kubectl, namespace, "tog", redis_server.url, workers={"replicas": 3})
    wait_replicas(cluster, namespace, "tog", 3, 5)
    wait_for(lambda: "autoscaling" not in cluster.get(jq_path(namespace, "tog"))["status"],
             what="status.autoscaling removed")
    # Never without replicas (the API would default them to 1), never anything else.
    assert set(deployment_history(cluster, namespace, "tog")) == {3, 6}


def test_idle_pods_get_the_lowest_deletion_cost_before_a_scale_down(
        cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any, operator: OperatorProcess) -> None:
    apply(kubectl, namespace, "cost", redis_server.url,
          autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 3, **FAST})
    burst(redis_server.url, namespace, 25)
    wait_replicas(cluster, namespace, "cost", 3, 10)
    # The three pods, and their workers registered as the runtime registers them.
    space = Keyspace.of(namespace)
    conn = redis.Redis.from_url(redis_server.url)
    for pod, inflight in (("cost-busy", 7), ("cost-idle", 0), ("cost-some", 2)):
        create_pod(cluster, namespace, "cost", pod)
        conn.hset(space.worker(f"w-{pod}"), mapping={"id": f"w-{pod}", "pod": pod, "inflight": str(inflight)})
        conn.zadd(space.workers, {f"w-{pod}": time.time() + 60})
    purge(redis_server.url, namespace)
    wait_replicas(cluster, namespace, "cost", 1, 6)
    costs = {p: ((cluster.get(pods_path(namespace, p)) or {})["metadata"].get("annotations") or {}).get(DELETION_COST)
             for p in ("cost-busy", "cost-idle", "cost-some")}
    assert costs == {"cost-busy": "7", "cost-idle": "0", "cost-some": "2"}
    # Set before the replicas were lowered (the emulator's write log, in resourceVersion order).
    log = list(cluster.emu._log)
    annotated = [rv for rv, r, _, o in log if r.plural == "pods" and o["metadata"].get("namespace") == namespace
                 and DELETION_COST in (o["metadata"].get("annotations") or {})]
    lowered = next(rv for rv, r, _, o in log if r.plural == "deployments" and o["metadata"].get("namespace") == namespace
                   and o["spec"].get("replicas") == 1 and rv > min(annotated))
    assert len(annotated) == 3 and max(annotated) < lowered


@pytest.mark.slow
def test_an_hpa_on_the_deployment_makes_the_operator_stand_back(
        cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any, operator: OperatorProcess) -> None:
    apply(kubectl, namespace, "ext", redis_server.url,
          autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 5, **FAST})
    wait_replicas(cluster, namespace, "ext", 1, 10)
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "cpu"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "ext-worker"},
                    "minReplicas": 2, "maxReplicas": 4}}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(hpa))
    jq = wait_for(lambda: (j := cluster.get(jq_path(namespace, "ext"))) and
                  cond(j, "Autoscaling").get("reason") == "ExternalAutoscaler" and j, what="the ExternalAutoscaler condition")
    assert cond(jq, "Autoscaling")["status"] == "False"
    assert "HorizontalPodAutoscaler/cpu" in cond(jq, "Autoscaling")["message"]
    stands_back_then_takes_over(cluster, namespace, "ext", redis_server.url,
                                f"/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers/cpu")


def stands_back_then_takes_over(cluster: Cluster, ns: str, name: str, url: str, other: str) -> None:
    """The other autoscaler's replicas stand through polls that see demand for more; once it is
    deleted (``other``: its path), the operator scales again. It never lists autoscalers: the
    operator watches them."""
    cluster.request("PATCH", dep_path(ns, name), {"spec": {"replicas": 2}})  # the other autoscaler's write
    burst(url, ns, 40)
    mark = len(cluster.emu._requests)
    # Each poll reads the Deployment once (a pass twice): polls later the other value stands.
    wait_for(lambda: len([r for r in api_calls(cluster, mark) if r.resource.plural == "deployments"
                          and r.name == f"{name}-worker" and method(r) == "GET"]) >= 6, what="a few more polls")
    assert replicas(cluster, ns, name) == 2
    assert not [r for r in api_calls(cluster, mark)
                if r.resource.plural in ("horizontalpodautoscalers", "scaledobjects", "customresourcedefinitions")]
    # (by its own API version's path: the emulator keeps each version's objects apart)
    assert cluster.request("DELETE", other)[0] == 200
    wait_replicas(cluster, ns, name, 4, 5)
    wait_for(lambda: cond(cluster.get(jq_path(ns, name)), "Autoscaling").get("reason") in ("ScaleUp", "Steady"),
             what="the Autoscaling condition back to the operator's")


KEDA_CRD = crd_stub("keda.sh", "ScaledObject", "scaledobjects", "v1alpha1")


@pytest.mark.slow
def test_a_keda_scaled_object_makes_the_operator_stand_back(
        cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any, operator: OperatorProcess) -> None:
    # KEDA installed while the operator runs: kopf sees the CRD appear and starts watching.
    kubectl("apply", "-f", "-", input=json.dumps(KEDA_CRD))
    wait_for(lambda: cluster.get("/apis/keda.sh/v1alpha1/scaledobjects") is not None, what="the ScaledObject CRD")
    apply(kubectl, namespace, "keda", redis_server.url,
          autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 5, **FAST})
    wait_replicas(cluster, namespace, "keda", 1, 10)
    so = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "list-length"},
          "spec": {"scaleTargetRef": {"name": "keda-worker"}, "minReplicaCount": 2, "maxReplicaCount": 4,
                   "triggers": [{"type": "redis", "metadata": {"listName": "q", "listLength": "5"}}]}}
    kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(so))
    c = wait_for(lambda: (c := cond(cluster.get(jq_path(namespace, "keda")), "Autoscaling"))
                 and c.get("reason") == "ExternalAutoscaler" and c, what="the ExternalAutoscaler condition")
    assert c["status"] == "False" and "ScaledObject/list-length" in c["message"]
    stands_back_then_takes_over(cluster, namespace, "keda", redis_server.url,
                                f"/apis/keda.sh/v1alpha1/namespaces/{namespace}/scaledobjects/list-length")
