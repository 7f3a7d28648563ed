"""A JobQueue spec: the CRD's defaults applied, and the checks the schema and CEL rules make.

The API server defaults and validates JobQueues with the CRD; the operator does both
again here so it behaves the same on a server that did not (and so the rules are
tested in Python too). :func:`problems` mirrors every ``x-kubernetes-validations`` rule.
"""

from __future__ import annotations

import copy
from typing import Any

from conveyor.errors import ConveyorError
from conveyor.keys import check_prefix
from conveyor.retry import policy_retry
from conveyor.validation import check_module_names, check_queue_name

from . import crd, reserved
from .crd_flow import limits_problems


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural-schema defaulting, as the API server does it: a missing property with a
    default gets it, then defaults apply inside every object that is present."""
    if not isinstance(value, dict) or schema.get("type") != "object":
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [apply_defaults(schema["items"], v) for v in value]
        return value
    out = dict(value)
    for name, sub in schema.get("properties", {}).items():
        if name not in out and "default" in sub:
            out[name] = copy.deepcopy(sub["default"])
        if name in out:
            out[name] = apply_defaults(sub, out[name])
    return out


def defaulted(spec: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = apply_defaults(crd.SPEC, dict(spec or {}))
    return out


def problems(spec: dict[str, Any], name: str = "x") -> list[str]:
    """Everything the CRD's schema bounds and CEL rules would refuse, as messages (empty: valid).
    ``spec`` must be defaulted."""
    out: list[str] = unknown_fields(crd.SPEC, spec)
    if len(name) > crd.MAX_NAME:
        out.append(f"a JobQueue name is at most {crd.MAX_NAME} characters (its objects add suffixes)")
    return (out + redis_problems(spec.get("redis") or {}) + queue_problems(spec.get("queues") or [])
            + retry_problems(spec.get("retry")) + timing_problems(spec) + worker_problems(spec.get("workers") or {})
            + autoscaling_problems(spec.get("autoscaling") or {}) + limits_problems(spec.get("limits")))


def redis_problems(redis: dict[str, Any]) -> list[str]:
    out = []
    if ("url" in redis) == ("secretRef" in redis):
        out.append("give exactly one of redis.url or redis.secretRef")
    if "url" in redis and not str(redis["url"]).startswith(tuple(f"{s}://" for s in crd.REDIS_SCHEMES)):
        out.append("redis.url must start with one of " + ", ".join(f"{s}://" for s in crd.REDIS_SCHEMES))
    if "url" in redis and (redis.get("tls") or {}).get("enabled") and \
            not str(redis["url"]).startswith(tuple(f"{s}://" for s in crd.TLS_SCHEMES)):
        out.append(crd.TLS_URL_MESSAGE)
    if "prefix" in redis:
        try:
            check_prefix(redis["prefix"])
        except ConveyorError as exc:
            out.append(f"spec.redis.prefix: {exc}")
    return out


def queue_problems(queues: list[Any]) -> list[str]:
    out = []
    if not queues:
        out.append("spec.queues needs at least one queue")
    if len(queues) > crd.MAX_QUEUES:
        out.append(f"at most {crd.MAX_QUEUES} queues")
    for q in queues:
        try:
            check_queue_name(q)
        except ConveyorError as exc:
            out.append(str(exc))
    if len(set(map(str, queues))) != len(queues):
        out.append("queue names must be unique")
    return out


def retry_problems(retry: dict[str, Any] | None) -> list[str]:
    if retry is None:
        return []
    if "intervals" in retry and "backoff" in retry:
        return ["retry takes intervals or backoff, not both"]
    try:
        policy_retry(retry)
    except (ConveyorError, TypeError, ValueError) as exc:
        return [f"retry: {exc}"]
    return []


def timing_problems(spec: dict[str, Any]) -> list[str]:
    """The lease, the shutdown timeout and the TTLs."""
    out = []
    for key, lo, hi in (("leaseSeconds", 1, 3600), ("shutdownTimeoutSeconds", 0, 3600)):
        if not lo <= spec.get(key, lo) <= hi:
            out.append(f"spec.{key} must be {lo}..{hi}")
    for key in ("resultTTLSeconds", "failureTTLSeconds"):
        if spec.get(key, 0) < -1:
            out.append(f"spec.{key} must be >= -1 (-1 keeps forever)")
    return out


def worker_problems(workers: dict[str, Any]) -> list[str]:
    out = []
    if not 0 <= workers.get("replicas", 1) <= 1000:
        out.append("spec.workers.replicas must be 0..1000")
    if not 1 <= workers.get("concurrency", 1) <= 10000:
        out.append("spec.workers.concurrency must be 1..10000")
    if workers.get("pool", "thread") not in ("thread", "process", "async"):
        out.append("spec.workers.pool must be thread, process or async")
    try:
        check_module_names(workers.get("allowModules") or [], "spec.workers.allowModules")
    except ConveyorError as exc:
        out.append(str(exc))
    return out + reserved.problems(workers)


def autoscaling_problems(auto: dict[str, Any]) -> list[str]:
    if auto.get("minReplicas", 1) > auto.get("maxReplicas", 10):
        return ["autoscaling.minReplicas must be <= autoscaling.maxReplicas"]
    return []


def unknown_fields(schema: dict[str, Any], value: Any, where: str = "spec") -> list[str]:
    """Fields the schema does not know (the API server's strict field validation)."""
    out: list[str] = []
    if isinstance(value, dict) and schema.get("type") == "object" and not schema.get("x-kubernetes-preserve-unknown-fields"):
        props = schema.get("properties")
        if props is not None:
            for k, v in value.items():
                if k not in props:
                    out.append(f'unknown field "{where}.{k}"')
                else:
                    out += unknown_fields(props[k], v, f"{where}.{k}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            out += unknown_fields(schema["items"], v, f"{where}[{i}]")
    return out
