"""The API-emulator subclass itself: each API-server semantic it adds to kmock."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from k8s_emulator import apply_patch, match_fields, match_labels, merge_patch, strategic_merge_patch
from op_helpers import Cluster, Kubectl, wait_for


def cm(name: str, **data: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": {"app": name}}, "data": data}


def test_pure_helpers() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"b": None, "d": 3}, "l": [2]}) == {"a": {"c": 2, "d": 3}, "l": [2]}
    assert strategic_merge_patch({"c": [{"name": "a", "x": 1}, {"name": "b"}]}, {"c": [{"name": "a", "y": 2}]}) == \
        {"c": [{"name": "a", "x": 1, "y": 2}, {"name": "b"}]}
    assert apply_patch({"a": 1, "b": {"c": 1, "d": 2}}, {"b": {"c": 1}}) == {"b": {"c": 1, "d": None}, "a": None}
    assert match_labels("a=1,b!=2,c in (x, y),!d", {"a": "1", "b": "3", "c": "y"})
    assert not match_labels("a=1,c notin (x,y)", {"a": "1", "c": "x"})
    assert match_fields("metadata.name=n,metadata.namespace!=x", {"metadata": {"name": "n", "namespace": "y"}})


def test_server_metadata_and_generate_name(cluster: Cluster, namespace: str) -> None:
    code, obj = cluster.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", cm("a", k="v"), "application/json")
    assert code == 200
    meta = obj["metadata"]
    assert meta["namespace"] == namespace and meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    code, obj = cluster.request("POST", f"/api/v1/namespaces/{namespace}/events",
                                {"metadata": {"generateName": "ev."}, "reason": "x"}, "application/json")
    code2, obj2 = cluster.request("POST", f"/api/v1/namespaces/{namespace}/events",
                                  {"metadata": {"generateName": "ev."}, "reason": "x"}, "application/json")
    assert code == code2 == 200 and obj["metadata"]["name"].startswith("ev.") and obj["metadata"]["name"] != obj2["metadata"]["name"]
    assert obj["kind"] == "Event" and obj["apiVersion"] == "v1"


def test_errors_are_standard(cluster: Cluster, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    cluster.request("POST", base, cm("dup"), "application/json")
    code, body = cluster.request("POST", base, cm("dup"), "application/json")
    assert (code, body["reason"], body["details"]["name"]) == (409, "AlreadyExists", "dup")
    code, body = cluster.request("GET", f"{base}/missing")
    assert (code, body["reason"], body["message"]) == (404, "NotFound", 'configmaps "missing" not found')
    code, body = cluster.request("PATCH", f"{base}/dup", [{"op": "test", "path": "/metadata/resourceVersion", "value": "0"}],
                                 "application/json-patch+json")
    assert (code, body["reason"]) == (422, "Invalid")
    code, body = cluster.request("GET", "/apis/nothing.example.com/v1/namespaces/x/things/y")
    assert code == 404


def test_put_and_conflicts(cluster: Cluster, namespace: str) -> None:
    url = f"/api/v1/namespaces/{namespace}/configmaps/p"
    assert cluster.request("PUT", url, cm("p"), "application/json")[0] == 404
    _, obj = cluster.request("POST", f"/api/v1/namespaces/{namespace}/configmaps", cm("p", a="1"), "application/json")
    stale = json.loads(json.dumps(obj))
    obj["data"] = {"a": "2"}
    code, new = cluster.request("PUT", url, obj, "application/json")
    assert code == 200 and new["data"] == {"a": "2"} and new["metadata"]["uid"] == obj["metadata"]["uid"]
    stale["data"] = {"a": "3"}
    code, body = cluster.request("PUT", url, stale, "application/json")
    assert (code, body["reason"]) == (409, "Conflict")


def test_generation_noop_and_status_isolation(cluster: Cluster, namespace: str) -> None:
    base = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    dep = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {"replicas": 1},
           "status": {"readyReplicas": 9}}
    _, obj = cluster.request("POST", base, dep, "application/json")
    assert "status" not in obj  # status is not written through the main resource
    rv = obj["metadata"]["resourceVersion"]
    _, same = cluster.request("PATCH", f"{base}/d", {"spec": {"replicas": 1}})
    assert same["metadata"]["resourceVersion"] == rv  # a no-op write is a no-op
    _, obj = cluster.request("PATCH", f"{base}/d", {"spec": {"replicas": 2}, "status": {"readyReplicas": 5}})
    assert obj["metadata"]["generation"] == 2 and "status" not in obj
    _, obj = cluster.request("PATCH", f"{base}/d/status", {"spec": {"replicas": 7}, "status": {"readyReplicas": 2}})
    assert obj["status"] == {"readyReplicas": 2} and obj["spec"]["replicas"] == 2 and obj["metadata"]["generation"] == 2
    _, obj = cluster.request("PATCH", f"{base}/d", {"metadata": {"labels": {"x": "y"}}})
    assert obj["metadata"]["generation"] == 2 and obj["status"] == {"readyReplicas": 2}


def test_server_side_apply_and_strategic_merge(cluster: Cluster, namespace: str) -> None:
    url = f"/apis/apps/v1/namespaces/{namespace}/deployments/sa?fieldManager=me&force=true"
    applied = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sa", "labels": {"a": "1", "b": "2"}},
               "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "w", "image": "i:1"}]}}}}
    code, obj = cluster.request("PATCH", url, applied, "application/apply-patch+yaml")
    assert code == 200 and obj["metadata"]["uid"]
    cluster.request("PATCH", url.split("?")[0], {"metadata": {"labels": {"other": "x"}}})  # another writer
    del applied["metadata"]["labels"]["b"]
    del applied["spec"]["replicas"]
    _, obj = cluster.request("PATCH", url, applied, "application/apply-patch+yaml")
    assert obj["metadata"]["labels"] == {"a": "1", "other": "x"}  # ours dropped, theirs kept
    assert "replicas" not in obj["spec"]
    _, obj = cluster.request("PATCH", url.split("?")[0], {"spec": {"template": {"spec": {"containers": [
        {"name": "w", "imagePullPolicy": "Always"}]}}}}, "application/strategic-merge-patch+json")
    assert obj["spec"]["template"]["spec"]["containers"] == [{"name": "w", "image": "i:1", "imagePullPolicy": "Always"}]


def test_server_side_apply_keeps_fields_another_manager_holds(cluster: Cluster, namespace: str) -> None:
    """Shared ownership: a field one manager stops applying stays while another manager's apply
    (or another client's patch) still holds it; else it is removed."""
    url = f"/apis/apps/v1/namespaces/{namespace}/deployments/shared"
    full = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "shared"},
            "spec": {"replicas": 3, "paused": True}}
    apply = lambda body, manager: cluster.request("PATCH", f"{url}?fieldManager={manager}&force=true", body,
                                                  "application/apply-patch+yaml")[1]
    apply(full, "main")
    apply({**full, "spec": {"replicas": 3}}, "scaler")  # takes replicas over (same value)
    obj = apply({**full, "spec": {"paused": True}}, "main")
    assert obj["spec"] == {"replicas": 3, "paused": True}
    assert apply({**full, "spec": {"replicas": 7}}, "scaler")["spec"]["replicas"] == 7
    # Without a co-owner the field goes.
    obj = apply({**full, "spec": {}}, "main")
    assert obj["spec"] == {"replicas": 7}
    cluster.request("PATCH", url, {"spec": {"paused": False}})  # an update by another client
    apply({**full, "spec": {"paused": True}}, "main")
    assert apply({**full, "spec": {}}, "main")["spec"] == {"replicas": 7, "paused": True}


def test_selectors(cluster: Cluster, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    for n in ("s1", "s2"):
        cluster.request("POST", base, cm(n), "application/json")
    names = lambda q: [o["metadata"]["name"] for o in cluster.get(base + q)["items"]]
    assert names("?labelSelector=app%3Ds1") == ["s1"]
    assert names("?fieldSelector=metadata.name%3Ds2") == ["s2"]
    assert sorted(names("")) == ["s1", "s2"]


def watch_lines(cluster: Cluster, query: str, timeout: float = 5) -> tuple[str, list[dict[str, Any]]]:
    with urllib.request.urlopen(cluster.url + query, timeout=timeout) as resp:
        return resp.headers["Content-Type"], [json.loads(line) for line in resp.read().splitlines() if line]


def test_watch(cluster: Cluster, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    _, first = cluster.request("POST", base, cm("w1"), "application/json")
    cluster.request("POST", base, cm("w2"), "application/json")
    started = time.monotonic()
    ctype, events = watch_lines(cluster, f"{base}?watch=true&timeoutSeconds=1&resourceVersion={first['metadata']['resourceVersion']}")
    assert time.monotonic() - started < 3  # timeoutSeconds ends the stream
    assert ctype.startswith("application/json")
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "w2")]  # only after the RV
    _, events = watch_lines(cluster, f"{base}?watch=true&timeoutSeconds=1&sendInitialEvents=true"
                                     "&allowWatchBookmarks=true&resourceVersionMatch=NotOlderThan")
    assert [e["type"] for e in events[:3]] == ["ADDED", "ADDED", "BOOKMARK"]
    assert events[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_cascade_deletion_and_finalizers(cluster: Cluster, namespace: str) -> None:
    base = f"/api/v1/namespaces/{namespace}/configmaps"
    _, owner = cluster.request("POST", base, {**cm("owner"), "metadata": {"name": "owner", "finalizers": ["x/y"]}},
                               "application/json")
    ref = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner["metadata"]["uid"]}
    cluster.request("POST", base, {**cm("child"), "metadata": {"name": "child", "ownerReferences": [ref]}}, "application/json")
    code, obj = cluster.request("DELETE", f"{base}/owner")
    assert code == 200 and obj["metadata"]["deletionTimestamp"]
    assert cluster.get(f"{base}/owner") and cluster.get(f"{base}/child")  # held by the finalizer
    cluster.request("PATCH", f"{base}/owner", {"metadata": {"finalizers": None}})
    assert cluster.get(f"{base}/owner") is None
    assert cluster.get(f"{base}/child") is None  # garbage-collected with its owner
    assert cluster.emu.objects["v1/configmaps", namespace, "child"].deleted
    # Created after its owner went (a controller acting on an old copy): collected at once.
    code, _ = cluster.request("POST", base, {**cm("late"), "metadata": {"name": "late", "ownerReferences": [ref]}},
                              "application/json")
    assert code == 200 and cluster.get(f"{base}/late") is None


def test_crd_registration_and_scale(cluster: Cluster, kubectl: Kubectl, crd_installed: None, namespace: str) -> None:
    listing = cluster.get("/apis/conveyor.dev/v1alpha1")
    jq = next(r for r in listing["resources"] if r["name"] == "jobqueues")
    assert jq["kind"] == "JobQueue" and jq["shortNames"] == ["jq"] and jq["namespaced"]
    assert {r["name"] for r in listing["resources"]} == {"jobqueues", "jobqueues/status", "jobqueues/scale"}
    base = f"/apis/conveyor.dev/v1alpha1/namespaces/{namespace}/jobqueues"
    cluster.request("POST", base, {"apiVersion": "conveyor.dev/v1alpha1", "kind": "JobQueue",
                                   "metadata": {"name": "s"}, "spec": {"workers": {"replicas": 1}}}, "application/json")
    kubectl("scale", "jq", "s", "-n", namespace, "--replicas=4")
    assert cluster.get(f"{base}/s")["spec"]["workers"]["replicas"] == 4
    assert cluster.get(f"{base}/s/scale")["spec"]["replicas"] == 4
    kubectl("delete", "jq", "s", "-n", namespace)  # kubectl waits on a field-selected watch
    wait_for(lambda: cluster.get(f"{base}/s") is None, what="deletion")


def test_namespaces_are_cluster_scoped_objects(cluster: Cluster, kubectl: Kubectl) -> None:
    # kopf lists and watches them when given namespaces to serve (kmock alone answers 500).
    kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ns-obj"}}))
    ns = cluster.get("/api/v1/namespaces/ns-obj")
    assert ns is not None and ns["kind"] == "Namespace" and "namespace" not in ns["metadata"]
    assert "ns-obj" in {n["metadata"]["name"] for n in (cluster.get("/api/v1/namespaces") or {})["items"]}
    # Paths below a namespace still address the objects in it.
    code, _ = cluster.request("POST", "/api/v1/namespaces/ns-obj/configmaps", cm("inside"), "application/json")
    assert code == 200 and cluster.get("/api/v1/namespaces/ns-obj/configmaps/inside")
