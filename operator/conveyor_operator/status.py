"""JobQueue status: metav1.Condition bookkeeping (pure) and queue depth read from Redis."""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Any

from conveyor import depth, scripts
from conveyor.connection import RedisTarget, TlsFiles
from conveyor.keys import Keyspace

READY, PROGRESSING, DEGRADED = "Ready", "Progressing", "Degraded"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Cond:
    type: str
    status: bool
    reason: str
    message: str


def set_condition(old: list[dict[str, Any]] | None, cond: Cond, generation: int) -> list[dict[str, Any]]:
    """``old`` with the condition of ``cond``'s type set (the others kept as they are)."""
    merged = merge_conditions([c for c in old or [] if c.get("type") == cond.type], [cond], generation)
    return [c for c in old or [] if c.get("type") != cond.type] + merged


def merge_conditions(old: list[dict[str, Any]] | None, new: list[Cond], generation: int,
                     at: str | None = None) -> list[dict[str, Any]]:
    """metav1.Condition list: lastTransitionTime only moves when the status flips."""
    by_type = {c.get("type"): c for c in old or []}
    out = []
    for c in new:
        status = "True" if c.status else "False"
        prev = by_type.get(c.type)
        since = prev["lastTransitionTime"] if prev and prev.get("status") == status and prev.get("lastTransitionTime") else (at or now())
        out.append({"type": c.type, "status": status, "observedGeneration": generation,
                    "lastTransitionTime": since, "reason": c.reason, "message": c.message})
    return out


@dataclass(frozen=True)
class Rollout:
    """Where the worker Deployment stands, judged as ``kubectl rollout status`` judges it:
    the controller has seen the current generation, every desired pod runs the current
    template, no pod of an older one is left, and every desired pod is ready and available."""

    want: int        # desired replicas: the operator's, else the Deployment's spec.replicas
    seen: bool       # the Deployment controller has observed the current generation
    updated: int
    ready: int
    available: int
    old: int         # pods of an older template still counted in status.replicas

    @classmethod
    def of(cls, deployment: dict[str, Any], desired: int | None) -> Rollout:
        meta, dstatus = deployment.get("metadata") or {}, deployment.get("status") or {}
        # The API server defaults spec.replicas to 1; an autoscaler may own the value.
        want = desired if desired is not None else int((deployment.get("spec") or {}).get("replicas", 1))
        updated = int(dstatus.get("updatedReplicas") or 0)
        return cls(want=want,
                   seen=int(dstatus.get("observedGeneration") or 0) >= int(meta.get("generation") or 0),
                   updated=updated, ready=int(dstatus.get("readyReplicas") or 0),
                   available=int(dstatus.get("availableReplicas") or 0),
                   old=max(0, int(dstatus.get("replicas") or 0) - updated))

    @property
    def current(self) -> bool:
        """Every worker runs the current template (what Progressing=False says)."""
        return self.seen and self.updated >= self.want and self.old == 0

    @property
    def done(self) -> bool:
        return self.current and self.ready >= self.want and self.available >= self.want

    def describe(self) -> str:
        if not self.seen:
            return "the Deployment controller has not observed the current worker template yet"
        text = f"{self.updated} of {self.want} updated, {self.ready} ready"
        if self.available < min(self.ready, self.want):  # not yet past minReadySeconds
            text += f", {self.available} available"
        if self.old:
            text += f", {self.old} old pending termination"
        return text


def conditions_for(*, problem: tuple[str, str] | None, desired: int | None, deployment: dict[str, Any] | None,
                   ) -> list[Cond]:
    """Ready / Progressing / Degraded from what reconcile saw.

    ``problem`` is (reason, message) of what the schema cannot catch (missing Secret,
    unreachable Redis, no image); ``desired`` the replicas the operator asked for (None
    while an autoscaler owns them); ``deployment`` the worker Deployment as the API has it,
    read after this pass applied it: a template change has just moved its generation past
    its observedGeneration, so the pass that applies a change already writes Ready=False and
    ``kubectl wait --for=condition=Ready`` right after ``kubectl apply`` waits for the rollout.

    Ready=True means the rollout is done (Rollout.done) and nothing is wrong; 0 of 0 wanted
    (scaled to zero) is Ready once the controller has seen that. Reasons when False:
    NoDeployment; the problem's; RollingOut (some worker does not run the current template
    yet, Progressing=True too); WorkersNotReady (all do, some are not ready or available).
    """
    degraded = Cond(DEGRADED, True, *problem) if problem else Cond(DEGRADED, False, "AsExpected", "no problems found")
    if deployment is None:
        missing = "the worker Deployment does not exist"
        return [Cond(READY, False, "NoDeployment", missing), Cond(PROGRESSING, False, "NoDeployment", missing), degraded]
    r = Rollout.of(deployment, desired)
    if r.current:
        progressing = Cond(PROGRESSING, False, "RolledOut", f"all {r.want} workers run the current configuration")
    else:
        progressing = Cond(PROGRESSING, True, "RollingOut", r.describe())
    if problem:
        ready_c = Cond(READY, False, problem[0], f"{r.describe()}, but {problem[1]}")
    elif not r.current:
        ready_c = Cond(READY, False, "RollingOut", r.describe())
    elif not r.done:
        ready_c = Cond(READY, False, "WorkersNotReady", r.describe())
    elif r.want == 0:
        ready_c = Cond(READY, True, "ScaledToZero", "0 workers wanted")
    else:
        ready_c = Cond(READY, True, "WorkersReady", r.describe())
    return [ready_c, progressing, degraded]


def deployment_problem(deployment: dict[str, Any] | None) -> tuple[str, str] | None:
    """(reason, message) of a Deployment the controller reports stuck: its rollout past
    progressDeadlineSeconds (Progressing=False, ProgressDeadlineExceeded), or pods it cannot
    create (ReplicaFailure=True, e.g. FailedCreate over a quota). None otherwise, and while
    the controller has not seen the current spec (its conditions describe an older one)."""
    meta = (deployment or {}).get("metadata") or {}
    dstatus = (deployment or {}).get("status") or {}
    if int(dstatus.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return None
    conds = {c.get("type"): c for c in dstatus.get("conditions") or []}
    failure = conds.get("ReplicaFailure") or {}
    if failure.get("status") == "True":
        return failure.get("reason") or "ReplicaFailure", failure.get("message") or "the Deployment cannot create pods"
    progressing = conds.get("Progressing") or {}
    if progressing.get("status") == "False" and progressing.get("reason") == "ProgressDeadlineExceeded":
        return "ProgressDeadlineExceeded", progressing.get("message") or "the rollout exceeded its progress deadline"
    return None


def queue_depth(url: str, queues: list[str], timeout: float = 2.0, prefix: str | None = None,
                tls: TlsFiles | None = None) -> list[dict[str, Any]]:
    """Per queue: ready (waiting: ready and recovered lists), scheduled (due of them: due now),
    claimed (held by a worker: prefetched and started) and failed (still kept). One round trip
    (per Cluster node).

    ``url`` takes every form the workers take (Sentinel, Cluster, TLS with the CA and client
    files of ``tls``, else of CONVEYOR_REDIS_CA_FILE / _CERT_FILE / _KEY_FILE)."""
    client = RedisTarget.parse(url, tls).client(socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return read_depth(client, queues, prefix)
    finally:
        client.close()


def read_depth(client: Any, queues: list[str], prefix: str | None = None) -> list[dict[str, Any]]:
    """queue_depth() through a client the caller holds (the autoscaler's poll)."""
    space = Keyspace.of(prefix)
    now_s = time.time()

    def build(pipe: Any) -> None:
        for q in queues:
            depth.queue(pipe, space.queue(q), now_s)
            depth.due(pipe, space.queue(q), now_s)

    replies = scripts.execute(client, build)
    out = []
    n = len(depth.STATES) + 1
    for i, q in enumerate(queues):
        row = replies[n * i:n * (i + 1)]
        c = {state: v or 0 for state, v in depth.counts(row).items()}
        due = 0 if isinstance(row[-1], Exception) else int(row[-1])
        out.append({"name": q, "ready": c["ready"] + c["recovered"], "scheduled": c["scheduled"], "due": due,
                    "claimed": c["prefetched"] + c["started"], "failed": c["failed"]})
    return out


def total_depth(queues: list[dict[str, Any]]) -> int:
    """status.depth: every job not finished, across the queues (waiting, running, scheduled)."""
    return sum(q["ready"] + q["claimed"] + q["scheduled"] for q in queues)


def demand(queues: list[dict[str, Any]]) -> int:
    """What the workers have to do now: ready, held (prefetched or running) and due jobs."""
    return sum(q["ready"] + q["claimed"] + q.get("due", 0) for q in queues)
