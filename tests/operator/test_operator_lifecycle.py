"""Deleting a JobQueue never waits for the operator: no finalizer on JobQueues, ever.

The operator used to resync with a kopf timer per JobQueue, and kopf puts a finalizer on
every object with a timer; with the chart's ``crds.keep``, JobQueues deleted after
``helm uninstall`` (or with their namespace) then hung until someone removed it by hand.
These tests run their own API emulator and operator, so they can stop the operator."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from op_helpers import Cluster, Kubectl, OperatorProcess, cond, dep_path, jobqueue, jq_path, served_cluster, wait_for

LEGACY = ["conveyor.dev/finalizer", "kopf.zalando.org/KopfFinalizerMarker"]
OTHERS = "example.com/backup"  # someone else's: never the operator's to remove


@pytest.fixture
def own_cluster(tmp_path: Path) -> Any:
    with served_cluster(tmp_path) as (cluster, kubectl, _):
        yield cluster, kubectl


def finalizers(cluster: Cluster, ns: str, name: str) -> list[str]:
    return (cluster.get(jq_path(ns, name)) or {}).get("metadata", {}).get("finalizers") or []


@pytest.mark.slow
def test_jobqueues_carry_no_finalizer_and_delete_without_the_operator(
        own_cluster: tuple[Cluster, Kubectl], tmp_path: Path, redis_server: Any) -> None:
    cluster, kubectl = own_cluster
    ns = "lifecycle"
    # Left by the previous operator version: its finalizers, one of them beside someone else's.
    for name, held_by in (("upgraded", LEGACY), ("shared", [*LEGACY, OTHERS])):
        doc = json.loads(jobqueue(name, redis={"url": redis_server.url}, queues=["q"]))
        doc["metadata"]["finalizers"] = held_by
        kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(doc))

    op = OperatorProcess(Path(kubectl.env["KUBECONFIG"]), tmp_path / "operator.log", cluster,
                         TMPDIR=str(tmp_path))
    try:
        wait_for(op.watching, timeout=20, what="the operator to watch JobQueues")
        kubectl("apply", "-n", ns, "-f", "-", input=jobqueue("fresh", redis={"url": redis_server.url}, queues=["q"]))
        for name in ("fresh", "upgraded"):
            wait_for(lambda: cond(cluster.get(jq_path(ns, name)), "Degraded").get("status") == "False",
                     what=f"{name} reconciled")
        # On resume the old finalizers go; someone else's stays.
        wait_for(lambda: finalizers(cluster, ns, "upgraded") == [], what="the legacy finalizers removed")
        wait_for(lambda: finalizers(cluster, ns, "shared") == [OTHERS], what="only the other finalizer left")
        # The watch on owned objects repairs drift, and adds no finalizer to either side.
        cluster.request("DELETE", f"/api/v1/namespaces/{ns}/configmaps/fresh-policy")
        cm = wait_for(lambda: cluster.get(f"/api/v1/namespaces/{ns}/configmaps/fresh-policy"), what="the repair")
        assert finalizers(cluster, ns, "fresh") == [] and not cm["metadata"].get("finalizers")
    finally:
        op.stop()

    # The operator is gone (helm uninstall keeps the CRD): deleting still completes at once,
    # and the owned objects go with the JobQueue (the garbage collector).
    for name in ("fresh", "upgraded"):
        kubectl("delete", "jq", name, "-n", ns, "--timeout=10s")
        assert cluster.get(jq_path(ns, name)) is None and cluster.get(dep_path(ns, name)) is None
