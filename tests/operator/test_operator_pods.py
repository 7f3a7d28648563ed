"""Pod-aware recovery end to end: the operator (a real `kopf run` process against the API
emulator) sees a worker pod deleted or OOM-killed and releases that worker's jobs in Redis at
once, so they run again on another worker well before their 15 s lease would run out.

Real workers with POD_NAME set stand in for the pods (see pod_helpers.py)."""

from __future__ import annotations

import datetime
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from conveyor import Job, JobStatus, Queue
from conveyor.keys import Keyspace
from conveyor_operator import pods
from op_helpers import Cluster, Kubectl, OperatorProcess, jobqueue, wait_for
from pod_helpers import create_pod, delete_pod, oom_killed, reruns, set_status, watching_pods
from support import WorkerProcess, worker_id

LEASE = "15"


# -- which pod events mean a lost worker (pure) --------------------------------------------------

LABELS = {"app.kubernetes.io/name": "conveyor-worker", "app.kubernetes.io/instance": "emails",
          "app.kubernetes.io/managed-by": "conveyor-operator"}


def pod(state: dict[str, Any] | None = None, last: dict[str, Any] | None = None, restarts: int = 0,
        labels: dict[str, str] = LABELS) -> dict[str, Any]:
    status = {"name": "worker", "restartCount": restarts, "state": state or {"running": {}}}
    if last:
        status["lastState"] = last
    return {"metadata": {"name": "emails-worker-1", "namespace": "ns", "uid": "u1", "labels": labels},
            "status": {"containerStatuses": [status]}}


def test_loss_of_a_running_pod_is_none_and_deletion_is_always_a_loss() -> None:
    assert pods.loss("MODIFIED", pod()) is None
    assert pods.loss("ADDED", pod()) is None
    gone = pods.loss("DELETED", pod())
    assert gone is not None and (gone.jobqueue, gone.pod, gone.reason, gone.before) == (
        "emails", "emails-worker-1", "deleted", None)
    oom = {"terminated": {"reason": "OOMKilled", "finishedAt": "2026-01-01T00:00:10Z", "containerID": "c://1"}}
    assert pods.loss("DELETED", pod(oom)).reason == "deleted (OOMKilled)"
    # Not ours: another app's pods, or a pod without its JobQueue's label.
    assert pods.loss("DELETED", pod(labels={**LABELS, "app.kubernetes.io/name": "other"})) is None
    assert pods.loss("DELETED", pod(labels={k: v for k, v in LABELS.items() if "instance" not in k})) is None


def test_loss_of_a_terminated_container_releases_only_workers_older_than_its_end() -> None:
    oom = {"terminated": {"reason": "OOMKilled", "finishedAt": "2026-01-01T00:00:10Z", "containerID": "c://1"}}
    now = pods.loss("MODIFIED", pod(oom))
    assert now is not None and now.reason == "OOMKilled"
    assert now.before == 1767225610.0  # finishedAt: only workers that started before it
    # Restarted: the lost instance is in lastState; its key changes with each instance.
    again = pods.loss("MODIFIED", pod({"running": {}}, last=oom, restarts=1))
    assert again is not None and again.reason == "OOMKilled (restart 1)" and again.key == now.key
    error = {"terminated": {"exitCode": 1, "finishedAt": "2026-01-01T00:01:00Z", "containerID": "c://2"}}
    second = pods.loss("MODIFIED", pod({"running": {}}, last=error, restarts=2))
    assert second is not None and second.reason == "exit code 1 (restart 2)" and second.key != now.key


# -- end to end ------------------------------------------------------------------------------------


@pytest.fixture
def fleet(cluster: Cluster, kubectl: Kubectl, namespace: str, redis_server: Any, operator: OperatorProcess,
          tmp_path: Path) -> Any:
    """A JobQueue, worker A (pod <ns>-a) holding two running jobs and one prefetched, worker B
    (pod <ns>-b) running one job of its own, both pods in the emulator."""
    q, prefix = f"{namespace}-q", f"p{namespace}"
    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue(
        "rec", redis={"url": redis_server.url, "prefix": prefix}, queues=[q], leaseSeconds=int(LEASE)))
    wait_for(lambda: watching_pods(cluster), what="the operator to watch pods")
    queue = Queue(q, redis_url=redis_server.url, prefix=prefix)
    path = tmp_path / "runs"
    started: list[WorkerProcess] = []

    def spawn(pod_name: str, *args: str) -> WorkerProcess:
        w = WorkerProcess(redis_server.url, ("-q", q, "--prefix", prefix, "--lease-seconds", LEASE, *args),
                          tmp_path / f"{pod_name}.log", {"POD_NAME": pod_name})
        started.append(w)
        return w

    a_jobs = [queue.enqueue("jobs_faults:until_lease_lost", str(path), f"a{i}") for i in range(2)]
    a_jobs.append(queue.enqueue("jobs_faults:record", str(path), "a-prefetched"))
    a = spawn(f"{namespace}-a", "--concurrency", "2", "--prefetch", "1")
    a_id = worker_id(a)
    wait_for(lambda: all(Job.fetch(j.id, connection=queue.connection, queue=q, prefix=prefix).worker == a_id
                         for j in a_jobs), timeout=15, what="A to hold its 3 jobs")
    wait_for(lambda: {"a0", "a1"} <= reruns(path, a.pid), what="the code of A's 2 started jobs to run")
    b = spawn(f"{namespace}-b", "--concurrency", "4")
    b_id = worker_id(b)
    own = queue.enqueue("jobs_faults:until_lease_lost", str(path), "b-own")
    wait_for(lambda: Job.fetch(own.id, connection=queue.connection, queue=q, prefix=prefix).worker == b_id,
             what="B to run its own job")
    space = Keyspace(prefix)
    for wid in (a_id, b_id):  # registered with their pod names (each housekeeping round)
        wait_for(lambda: queue.connection.hget(space.worker(wid), "pod"), what=f"{wid}'s registration")
    # A terminated container releases workers that started before its finishedAt, which the
    # kubelet writes in whole seconds: A must have started in an earlier second than its end.
    a_started = float(queue.connection.hget(space.worker(a_id), "started_at"))
    wait_for(lambda: time.time() >= int(a_started) + 1, what="the second A started in to be over")
    for w in (a, b):
        create_pod(cluster, namespace, "rec", f"{namespace}-{'a' if w is a else 'b'}")
    fetch: Callable[[str], Job] = lambda jid: Job.fetch(jid, connection=queue.connection, queue=q, prefix=prefix)
    yield {"ns": namespace, "queue": queue, "path": path, "a": a, "a_id": a_id, "b": b, "b_id": b_id,
           "a_jobs": a_jobs, "own": own, "own_exec": fetch(own.id).execution_id, "fetch": fetch, "prefix": prefix,
           "spawn": spawn}
    for w in started:
        w.stop()


def _recovered_within_3s(cluster: Cluster, f: dict[str, Any], lose: Callable[[], None], what: str,
                         capsys: pytest.CaptureFixture[str]) -> None:
    a, b, path = f["a"], f["b"], f["path"]
    a.signal(signal.SIGKILL)  # the container is gone with its pod (or the OOM killer took it)
    a.wait(5)
    t0 = time.monotonic()
    lose()
    wanted = {"a0", "a1", "a-prefetched"}
    wait_for(lambda: wanted <= reruns(path, b.pid), timeout=10, interval=0.01, what="A's jobs to run again on B")
    elapsed = time.monotonic() - t0
    with capsys.disabled():
        print(f"\n[operator] {what} -> the lost worker's 3 jobs ran again on another worker: "
              f"{elapsed * 1000:.0f} ms (lease {LEASE} s)")
    assert elapsed < 3, elapsed
    fetch = f["fetch"]
    for j in f["a_jobs"]:
        done = wait_for(lambda: (x := fetch(j.id)).status is JobStatus.FINISHED and x, what=f"job {j.id} to finish")
        assert done.worker == f["b_id"]
    charged = [fetch(j.id) for j in f["a_jobs"][:2]]
    assert all(x.orphaned == 1 and x.attempts[0].exc_type == "WorkerLost" for x in charged)
    assert fetch(f["a_jobs"][2].id).orphaned == 0  # prefetched, never started: not charged
    # The live worker's job was never touched, nor its registration.
    own = fetch(f["own"].id)
    assert own.status is JobStatus.STARTED and own.execution_id == f["own_exec"] and own.worker == f["b_id"]
    space = Keyspace(f["prefix"])
    conn = f["queue"].connection
    assert conn.exists(space.worker(f["b_id"])) and not conn.exists(space.worker(f["a_id"]))


def events_of(cluster: Cluster, ns: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in (cluster.get(f"/api/v1/namespaces/{ns}/events") or {}).get("items", [])
            if e.get("reason") == reason]


def test_deleted_pod_releases_its_workers_jobs_at_once(cluster: Cluster, fleet: dict[str, Any],
                                                       operator: OperatorProcess,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ns = fleet["ns"]
    # The session's operator: tests in this process run one at a time, so the change is this test's.
    before = operator.metrics()
    _recovered_within_3s(cluster, fleet, lambda: delete_pod(cluster, ns, f"{ns}-a"), "pod deleted", capsys)
    wait_for(lambda: operator.metrics()["conveyor_operator_released_jobs_total"]
             == before["conveyor_operator_released_jobs_total"] + 3, what="the 3 released jobs counted")
    assert operator.metrics()["conveyor_operator_released_workers_total"] == \
        before["conveyor_operator_released_workers_total"] + 1
    [ev] = wait_for(lambda: events_of(cluster, ns, "WorkerReleased"), what="a WorkerReleased Event")
    assert ev["involvedObject"]["kind"] == "JobQueue" and ev["involvedObject"]["name"] == "rec"
    assert ev["message"] == f"Released 3 jobs of worker {fleet['a_id']}: pod {ns}-a deleted"
    assert fleet["fetch"](fleet["a_jobs"][0].id).attempts[0].exc_message == f"worker lost: pod {ns}-a deleted"


def test_oom_killed_container_releases_its_workers_jobs_and_a_running_pod_is_left_alone(
        cluster: Cluster, fleet: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    ns = fleet["ns"]
    # B's pod reports a status change while it runs: nothing is released.
    set_status(cluster, ns, f"{ns}-b", {"phase": "Running", "containerStatuses": [
        {"name": "worker", "ready": False, "restartCount": 0, "state": {"running": {}}}]})
    _recovered_within_3s(cluster, fleet, lambda: oom_killed(cluster, ns, f"{ns}-a"), "container OOMKilled", capsys)
    [ev] = wait_for(lambda: events_of(cluster, ns, "WorkerReleased"), what="a WorkerReleased Event")
    assert ev["message"] == f"Released 3 jobs of worker {fleet['a_id']}: pod {ns}-a OOMKilled"
    assert fleet["fetch"](fleet["a_jobs"][0].id).attempts[0].exc_message == f"worker lost: pod {ns}-a OOMKilled"


def test_restarted_container_releases_the_lost_worker_not_its_successor(
        cluster: Cluster, fleet: dict[str, Any], operator: OperatorProcess) -> None:
    ns, fetch, conn = fleet["ns"], fleet["fetch"], fleet["queue"].connection
    space = Keyspace(fleet["prefix"])
    fleet["a"].signal(signal.SIGKILL)  # OOM-killed; the kubelet restarts the container
    fleet["a"].wait(5)
    finished = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    wait_for(lambda: time.time() >= finished.timestamp() + 1, what="the next second")
    successor = fleet["spawn"](f"{ns}-a")  # the restarted container's worker, same POD_NAME
    successor_id = worker_id(successor)
    wait_for(lambda: conn.hget(space.worker(successor_id), "pod"), what="the successor's registration")
    stamp = finished.strftime("%Y-%m-%dT%H:%M:%SZ")
    set_status(cluster, ns, f"{ns}-a", {"phase": "Running", "containerStatuses": [
        {"name": "worker", "ready": True, "restartCount": 1, "state": {"running": {"startedAt": stamp}},
         "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137, "finishedAt": stamp,
                                      "containerID": f"containerd://{ns}-a-0"}}}]})
    [ev] = wait_for(lambda: events_of(cluster, ns, "WorkerReleased"), what="a WorkerReleased Event")
    assert ev["message"] == f"Released 3 jobs of worker {fleet['a_id']}: pod {ns}-a OOMKilled (restart 1)"
    for j in fleet["a_jobs"]:
        done = wait_for(lambda: (x := fetch(j.id)).status is JobStatus.FINISHED and x, what=f"job {j.id} to finish")
        assert done.worker in (fleet["b_id"], successor_id)
    # The handler that released A has returned: it released nobody else.
    def handled() -> bool:
        text = operator.log_path.read_text(errors="replace")
        at = text.find(f"Released 3 jobs of worker {fleet['a_id']}")
        return at >= 0 and f"[{ns}/{ns}-a] Handler 'worker_pod' succeeded" in text[at:]
    wait_for(handled, what="the pod handler to finish")
    assert operator.log_path.read_text(errors="replace").count(f"{ns}/rec: Released") == 1
    # The successor runs in the same pod and was not released; neither was B.
    assert conn.exists(space.worker(successor_id)) and conn.exists(space.worker(fleet["b_id"]))
    assert not conn.exists(space.worker(fleet["a_id"]))
    assert fetch(fleet["own"].id).execution_id == fleet["own_exec"]
