"""Worker pods for the pod-recovery tests and benchmark: no kubelet runs here, so real
``conveyor worker`` processes with POD_NAME set stand in for the containers, and the tests
play the kubelet: they create the Pod objects (labelled as the Deployment's template), report
a container terminated (OOMKilled) in the pod's status, or delete the pod."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

from op_helpers import Cluster, dep_path, wait_for


def pods_path(ns: str, name: str = "") -> str:
    return f"/api/v1/namespaces/{ns}/pods" + (f"/{name}" if name else "")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def create_pod(cluster: Cluster, ns: str, jobqueue: str, name: str) -> dict[str, Any]:
    """A running worker pod of the JobQueue's Deployment (its template's labels), named ``name``."""
    dep = wait_for(lambda: cluster.get(dep_path(ns, jobqueue)), what="the worker Deployment")
    template = dep["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": template["metadata"]["labels"]},
           "spec": {"containers": [{"name": "worker", "image": template["spec"]["containers"][0]["image"]}]}}
    code, body = cluster.request("POST", pods_path(ns), pod, content_type="application/json")
    assert code in (200, 201), (code, body)
    set_status(cluster, ns, name, {"phase": "Running", "containerStatuses": [
        {"name": "worker", "ready": True, "restartCount": 0, "state": {"running": {"startedAt": _now()}}}]})
    return body


def set_status(cluster: Cluster, ns: str, name: str, status: dict[str, Any]) -> None:
    code, body = cluster.request("PATCH", pods_path(ns, name) + "/status", {"status": status})
    assert code == 200, (code, body)


def oom_killed(cluster: Cluster, ns: str, name: str) -> None:
    """The kubelet's report of an OOM-killed worker container (not restarted yet)."""
    set_status(cluster, ns, name, {"phase": "Running", "containerStatuses": [
        {"name": "worker", "ready": False, "restartCount": 0, "state": {"terminated": {
            "reason": "OOMKilled", "exitCode": 137, "finishedAt": _now(),
            "containerID": f"containerd://{name}-1"}}}]})


def delete_pod(cluster: Cluster, ns: str, name: str) -> None:
    code, body = cluster.request("DELETE", pods_path(ns, name))
    assert code == 200, (code, body)


def watching_pods(cluster: Cluster) -> bool:
    return any(r.params.get("watch") == "true" and r.resource is not None and r.resource.plural == "pods"
               for r in list(cluster.emu._requests))


def reruns(path: Path, pid: int) -> set[str]:
    """Tags of the jobs recorded (tests/jobs_faults.py) by the worker process ``pid``."""
    if not path.exists():
        return set()
    return {t for t, p, _ in (line.split() for line in path.read_text().splitlines() if line) if int(p) == pid}
