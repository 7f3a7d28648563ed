"""Watch, don't poll the API: the operator reconciles a JobQueue when an object it owns changes
or goes, and its resync only reads Redis.

The repair tests run their own API emulator and an operator whose resync interval is an hour,
so only the watch on the owned objects can explain an object coming back; the resync test uses
the session's operator (resync 0.5 s) and counts what its passes ask of the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conveyor import Queue
from op_helpers import (
    Cluster,
    Kubectl,
    OperatorProcess,
    SlowRelay,
    api_calls,
    cond,
    dep_path,
    jobqueue,
    jq_path,
    method,
    quiet,
    roll_out,
    served_cluster,
    wait_for,
)

REPAIR_SECONDS = 3.0  # "promptly": the resync below would take an hour


@pytest.fixture
def hour_resync(tmp_path: Path) -> Any:
    with served_cluster(tmp_path, CONVEYOR_OPERATOR_RESYNC_SECONDS="3600") as (cluster, kubectl, op):
        yield cluster, kubectl, op


def owned_paths(ns: str, jq: str) -> dict[str, str]:
    return {"ConfigMap": f"/api/v1/namespaces/{ns}/configmaps/{jq}-policy", "Deployment": dep_path(ns, jq),
            "Service": f"/api/v1/namespaces/{ns}/services/{jq}-metrics",
            "PodDisruptionBudget": f"/apis/policy/v1/namespaces/{ns}/poddisruptionbudgets/{jq}-worker"}


def reconciled(cluster: Cluster, ns: str, name: str) -> Any:
    return lambda: cond(cluster.get(jq_path(ns, name)), "Degraded").get("status") == "False"


def test_owned_objects_deleted_or_edited_by_hand_come_back_at_once(
        hour_resync: tuple[Cluster, Kubectl, OperatorProcess], redis_server: Any) -> None:
    cluster, kubectl, op = hour_resync
    ns = "watch"
    # Only the operator's objects cross the wire: the label filter goes to the server.
    watches = wait_for(lambda: [r for r in list(cluster.emu._requests) if r.params.get("watch") == "true"
                                and r.resource is not None and r.resource.plural in ("configmaps", "deployments")],
                       what="the watches on owned kinds")
    assert all("app.kubernetes.io/managed-by=conveyor-operator" in r.params.get("labelSelector", "") for r in watches)
    kubectl("apply", "-n", ns, "-f", "-", input=jobqueue("w", redis={"url": redis_server.url}, queues=["q"],
                                                          workers={"replicas": 2}))
    wait_for(reconciled(cluster, ns, "w"), what="the JobQueue reconciled")
    for kind, path in owned_paths(ns, "w").items():
        uid = wait_for(lambda: cluster.get(path), what=kind)["metadata"]["uid"]
        assert cluster.request("DELETE", path)[0] == 200
        back = wait_for(lambda: (o := cluster.get(path)) and o["metadata"]["uid"] != uid and o,
                        timeout=REPAIR_SECONDS, what=f"the {kind} to come back")
        # Watching puts no finalizer on what is watched.
        assert not back["metadata"].get("finalizers"), kind
    cluster.request("PATCH", dep_path(ns, "w"), {"spec": {"replicas": 7}})
    wait_for(lambda: cluster.get(dep_path(ns, "w"))["spec"]["replicas"] == 2, timeout=REPAIR_SECONDS,
             what="the edited replicas back to 2")
    # The Deployment controller's status reaches the JobQueue's without a resync.
    roll_out(cluster, ns, "w")
    wait_for(lambda: cond(cluster.get(jq_path(ns, "w")), "Ready").get("status") == "True", timeout=REPAIR_SECONDS,
             what="Ready=True from the Deployment's status")
    assert not cluster.get(jq_path(ns, "w"))["metadata"].get("finalizers")

    # Deleting the JobQueue: its objects go (the garbage collector) and stay gone, although
    # each deletion is an event the operator watches.
    kubectl("delete", "jq", "w", "-n", ns, "--timeout=10s")
    wait_for(lambda: not any(cluster.get(p) for p in owned_paths(ns, "w").values()), what="the owned objects to go")
    wait_for(quiet(cluster, 1.0), what="the operator to settle")
    assert not any(cluster.get(p) for p in owned_paths(ns, "w").values())


def test_no_reconcile_loop_and_a_change_costs_one_pass(
        hour_resync: tuple[Cluster, Kubectl, OperatorProcess], redis_server: Any) -> None:
    cluster, kubectl, op = hour_resync
    ns = "loop"
    kubectl("apply", "-n", ns, "-f", "-", input=jobqueue("l", redis={"url": redis_server.url}, queues=["q"]))
    wait_for(reconciled(cluster, ns, "l"), what="the JobQueue reconciled")
    # Its own applies are events on what it watches: they must die out, not feed each other.
    wait_for(quiet(cluster, 1.0), timeout=10, what="the operator's requests to stop")
    mark = len(cluster.emu._requests)
    kubectl("patch", "jq", "l", "-n", ns, "--type", "merge", "-p", '{"spec": {"workers": {"concurrency": 3}}}')
    wait_for(lambda: "3" in cluster.get(dep_path(ns, "l"))["spec"]["template"]["spec"]["containers"][0]["args"],
             what="the new concurrency")
    wait_for(quiet(cluster, 1.0), timeout=10, what="the operator's requests to stop after the change")
    applies = [r for r in api_calls(cluster, mark)
               if method(r) == "PATCH" and "apply-patch" in (r.headers.get("Content-Type") or "")]
    # The update's pass (4 objects), and at most one more after its own Deployment event.
    assert 4 <= len(applies) <= 8, [(r.resource.plural, r.name) for r in applies]


def test_the_resync_reads_redis_and_writes_only_a_changed_depth(
        cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any, operator: OperatorProcess) -> None:
    relay = SlowRelay(redis_server.port, delay=0)  # counts the operator's Redis requests and connections
    try:
        q = f"{namespace}-q"
        kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue("rs", redis={"url": relay.url}, queues=[q]))
        wait_for(lambda: (cluster.get(jq_path(namespace, "rs")) or {}).get("status", {}).get("depth") == 0,
                 what="a healthy JobQueue")
        wait_for(lambda: relay.requests >= 2, what="a resync's depth read")
        # The creation's passes (and the one its own objects' events bring) over: a loaded
        # machine can still be finishing them when the first resync reads Redis.
        wait_for(quiet(cluster, 1.0, namespace), timeout=20, what="the creation's passes to end")
        mark, reads, conns = len(cluster.emu._requests), relay.requests, relay.connections
        wait_for(lambda: relay.requests >= reads + 4, what="four more depth reads")  # resyncs, 0.5 s apart
        mine = [(method(r), r.resource.plural, r.name) for r in api_calls(cluster, mark) if r.namespace == namespace]
        assert mine == []  # nothing re-applied, no status written: the depth did not change
        assert relay.connections == conns  # one kept client, not a connection per pass
        Queue(q, redis_url=redis_server.url).enqueue("builtins:print", 1)
        wait_for(lambda: cluster.get(jq_path(namespace, "rs"))["status"]["depth"] == 1, what="the new depth")
        writes = [(method(r), r.resource.plural) for r in api_calls(cluster, mark)
                  if r.namespace == namespace and method(r) != "GET"]  # (the GETs are this test's)
        assert writes == [("PATCH", "jobqueues")], writes  # its status, once
    finally:
        relay.stop()
