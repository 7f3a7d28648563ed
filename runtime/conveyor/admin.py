"""What the operator-facing CLI asks of Redis: fleet overview, one job, stop, purge, and
releasing a lost worker's jobs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import redis

from . import calls, depth, errors, keys, scripts, wire
from .connection import RedisTarget, is_cluster
from .job import Job, JobStatus, send_command


def fleet_info(conn: redis.Redis, queue_filter: str | None = None, space: keys.Keyspace = keys.DEFAULT) -> dict[str, Any]:
    """Queues with counts per state, live workers with their current jobs, scheduler leaders."""
    now = time.time()
    names = sorted(n.decode() for n in wire.byte_set(conn.smembers(space.queues)))
    if queue_filter is not None:
        if queue_filter not in names:
            raise errors.ConveyorError(f"unknown queue {queue_filter!r} (known: {', '.join(names) or 'none'})")
        names = [queue_filter]
    def build(pipe: Any) -> None:
        for name in names:
            k = space.queue(name)
            depth.queue(pipe, k, now)
            pipe.zcount(k.finished, now, "+inf")
            pipe.zcount(k.canceled, now, "+inf")
            pipe.get(k.scheduler_lock)
        pipe.zrangebyscore(space.workers, now, "+inf")

    replies = scripts.execute_each(conn, build)
    width = len(depth.STATES) + 3
    queues = []
    for i, name in enumerate(names):
        row = replies[i * width: (i + 1) * width]
        *_, finished, canceled, leader = [None if isinstance(r, redis.ResponseError) else r for r in row]
        counts = {state: n or 0 for state, n in depth.counts(row).items()}  # a corrupt key counts 0
        queues.append({"name": name, **counts, "finished": finished or 0, "canceled": canceled or 0,
                       "scheduler_leader": leader.decode() if leader else None})
    worker_ids = [w.decode() for w in replies[-1]]
    regs = scripts.execute(conn, lambda p: [p.hgetall(space.worker(wid)) for wid in worker_ids])
    workers = []
    for wid, reg in zip(worker_ids, regs):
        info = {k.decode(): v.decode() for k, v in reg.items()}
        if info:
            workers.append((wid, info, info.get("queues", "").split(",")))
    claimed = iter(scripts.execute(conn, lambda p: [p.smembers(space.queue(q).claimed(wid))
                                                    for wid, _, served in workers for q in served]))
    out_workers = []
    for wid, info, served in workers:
        jobs = sorted(j.decode() for q in served for j in next(claimed))
        out_workers.append({
            "id": wid, "host": info.get("host"), "pid": int(info.get("pid", 0)), "queues": served,
            "pool": info.get("pool"), "concurrency": int(info.get("concurrency", 0)), "state": info.get("state"),
            "scheduler": info.get("scheduler") == "1", "version": info.get("version"),
            "last_seen": float(info.get("last_seen", 0)), "current_jobs": jobs,
        })
    return {"queues": queues, "workers": out_workers, "redis": redis_memory(conn)}


def redis_memory(conn: redis.Redis) -> dict[str, Any]:
    """maxmemory and its policy, with a warning when the policy can evict (lose) jobs."""
    try:
        mem = memory_info(conn)
    except redis.ResponseError as exc:  # INFO refused (ACLs): nothing known
        return {"maxmemory_policy": None, "warning": f"cannot read INFO memory: {exc}"}
    policy = str(mem.get("maxmemory_policy"))
    out: dict[str, Any] = {"maxmemory_policy": policy, "maxmemory": mem.get("maxmemory"),
                           "used_memory": mem.get("used_memory")}
    if policy != "noeviction":
        out["warning"] = (f"maxmemory-policy is {policy}: when Redis fills up it evicts keys, and evicted jobs "
                          "are lost without a trace; set maxmemory-policy noeviction")
    return out


def memory_info(conn: Any) -> dict[str, Any]:
    """INFO memory; on a Cluster, that of the master whose policy is worst (not noeviction first)."""
    if not is_cluster(conn):
        return dict(wire.info(conn.info("memory")))
    per_node = conn.info("memory", target_nodes=conn.PRIMARIES)
    infos = list(per_node.values()) if isinstance(per_node, dict) and all(
        isinstance(v, dict) for v in per_node.values()) else [per_node]
    return wire.info(sorted(infos, key=lambda m: m.get("maxmemory_policy") == "noeviction")[0])


PICKLED = "<pickled: not unpickled>"


def job_details(job: Job) -> dict[str, Any]:
    """Everything about a job. The args and result of a pickled job the caller may not
    unpickle show as PICKLED, and ``refused`` says why; the rest of the job still shows."""
    refused: list[str] = []

    def decoded(value: Any) -> Any:
        try:
            return value() if callable(value) else value
        except errors.PickleRefused as exc:
            refused[:] = [str(exc)]
            return PICKLED
        except Exception as exc:  # a payload this client cannot decode is still worth showing
            return f"<undecodable: {exc}>"

    details: dict[str, Any] = {
        "id": job.id, "queue": job.queue, "status": job.status_text, "func": job.func_path,
        "args": decoded(lambda: job.args), "kwargs": decoded(lambda: job.kwargs),
        "execution_id": job.execution_id, "worker": job.worker, "deliveries": job.deliveries,
        "retries": job.retries, "orphaned": job.orphaned, "enqueued_at": job.enqueued_at,
        "due_at": job.due_at, "started_at": job.started_at, "ended_at": job.ended_at, "timeout": job.timeout,
        "suspect": job.suspect,
        "result": decoded(lambda: job.result) if job.status_text == JobStatus.FINISHED.value else None,
        "error": {"type": job.exc_info.type, "message": job.exc_info.message,
                  "traceback": job.exc_info.traceback} if job.exc_info else None,
        "ttl": job.ttl,
        "progress": {"value": p.value, "message": p.message, "updated_at": p.updated_at}
        if (p := job.progress) else None,
        "meta": job.meta or None,
        "attempts": [a.__dict__ for a in job.attempts],
    }
    if refused:
        details["refused"] = refused[0]
    return details


def stop_job(job: Job, timeout: float = 10.0) -> Job:
    """Ask the worker holding ``job`` to stop it, and wait until it has.

    A started job is interrupted and ends canceled; a prefetched one is canceled before
    it starts (it never runs)."""
    live = (JobStatus.STARTED, JobStatus.PREFETCHED)
    if job.status not in live:
        hint = "; use 'conveyor job cancel' for queued, scheduled or deferred jobs" if job.status in (
            JobStatus.QUEUED, JobStatus.SCHEDULED, JobStatus.DEFERRED) else ""
        raise errors.InvalidTransition(f"job {job.id!r} is {job.status.value}, not started{hint}")
    if not send_command(job.connection, "stop", job.queue, job.id, job.keyspace):
        raise errors.ConveyorError("no worker is listening for commands; is any worker running?")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job.refresh()
        if job.status not in live:
            return job
        time.sleep(0.05)  # polling a status that another process changes
    raise errors.ConveyorError(f"job {job.id!r} is still running after {timeout:g}s; its worker did not act on the stop")


def purge(conn: redis.Redis, queue: str, include_scheduled: bool, space: keys.Keyspace = keys.DEFAULT) -> tuple[int, int]:
    if queue.encode() not in conn.smembers(space.queues):
        raise errors.ConveyorError(f"unknown queue {queue!r}")
    k = space.queue(queue)
    [(ready, scheduled)] = scripts.execute(conn, lambda p: calls.purge(p, k, include_scheduled))
    return ready, scheduled


# -- releasing a lost worker's jobs --------------------------------------------------------------

@dataclass(frozen=True)
class Released:
    """What release_worker did on one queue."""

    worker: str
    queue: str
    requeued: list[str]
    abandoned: list[str]

    def line(self) -> str:
        return (f"worker {self.worker} queue {self.queue}: {len(self.requeued)} jobs requeued, "
                f"{len(self.abandoned)} abandoned")


def _client(connection: Any) -> Any:
    """A client from a client, a RedisTarget or a URL."""
    if isinstance(connection, str):
        connection = RedisTarget.parse(connection)
    return connection.client() if isinstance(connection, RedisTarget) else connection


def workers_on_pod(connection: Any, pod: str, prefix: str | None = None,
                   started_before: float | None = None) -> list[str]:
    """IDs of the registered workers whose registration names ``pod`` (POD_NAME); with
    ``started_before``, only those that started before it (epoch s): a restarted container's
    new worker is not the lost one."""
    conn, space = _client(connection), keys.Keyspace.of(prefix)
    ids = [w.decode() for w in conn.zrange(space.workers, 0, -1)]
    regs = scripts.execute(conn, lambda p: [p.hmget(space.worker(wid), "pod", "started_at") for wid in ids])
    out = []
    for wid, (got, started) in zip(ids, regs):
        if got is None or got.decode() != pod:
            continue
        try:
            if started_before is not None and float(started or "inf") >= started_before:
                continue
        except ValueError:
            continue  # an unreadable start time: not provably the lost worker
        out.append(wid)
    return sorted(out)


def inflight_by_pod(connection: Any, prefix: str | None = None) -> dict[str, int]:
    """Pod name (POD_NAME) -> jobs its registered workers hold (their ``inflight``: running and
    prefetched, as of each worker's last round), for every live worker that names a pod."""
    conn, space = _client(connection), keys.Keyspace.of(prefix)
    ids = [w.decode() for w in conn.zrangebyscore(space.workers, time.time(), "+inf")]
    regs = scripts.execute(conn, lambda p: [p.hmget(space.worker(wid), "pod", "inflight") for wid in ids])
    out: dict[str, int] = {}
    for pod, inflight in regs:
        if pod:
            try:
                n = int(inflight or 0)
            except ValueError:
                n = 0
            out[pod.decode()] = out.get(pod.decode(), 0) + n
    return out


def release_worker(connection: Any, worker_id: str, reason: str, prefix: str | None = None,
                   max_deliveries: int = 3, failure_ttl: int = 7 * 24 * 3600) -> list[Released]:
    """Take back now every job a lost worker held (release_worker.lua, once per queue) and
    remove its registration. Only for a worker known to be gone: a live one would see its
    outcomes rejected as stale and its jobs run twice. The queues are those of its
    registration, or every known queue once that has expired. Raises ConveyorError for a
    worker that is neither registered nor holds any job."""
    if not worker_id or any(c in worker_id for c in "\r\n\0") or len(worker_id) > 256:
        raise errors.ConveyorError(f"invalid worker ID {worker_id!r}")
    conn, space = _client(connection), keys.Keyspace.of(prefix)
    reg = conn.hget(space.worker(worker_id), "queues")
    if reg is not None:
        names = [q for q in reg.decode().split(",") if q]
    else:  # expired: look everywhere, and only where it holds something
        known = sorted(q.decode() for q in conn.smembers(space.queues))
        held = scripts.execute(conn, lambda p: [p.exists(space.queue(q).claimed(worker_id)) for q in known])
        names = [q for q, n in zip(known, held) if n]
        if not names and not conn.zscore(space.workers, worker_id):
            raise errors.ConveyorError(f"unknown worker {worker_id!r}: not registered and holding no jobs "
                                       f"(prefix {space.prefix!r})")
    reason = reason or "worker lost"
    replies = scripts.execute(conn, lambda p: [calls.release_worker(p, space.queue(q), worker_id, reason,
                                                                     max_deliveries, failure_ttl) for q in names])
    out = [Released(worker_id, q, [i.decode() for i in requeued], [i.decode() for i in abandoned])
           for q, (requeued, abandoned) in zip(names, replies)]
    scripts.execute(conn, lambda p: (p.delete(space.worker(worker_id)), p.zrem(space.workers, worker_id)))
    return out
