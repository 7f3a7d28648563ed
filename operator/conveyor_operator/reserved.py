"""What the operator sets in the worker container itself, and so refuses from spec.workers.

One table each for the environment (spec.workers.env) and the ``conveyor worker`` flags
(spec.workers.args); from it come the CRD's CEL rules and the operator's own check
(:func:`conveyor_operator.spec.problems`, for API servers without CEL), with the same
messages. A user flag would be appended after the operator's and win, silently: the
pod's grace period would still follow spec.shutdownTimeoutSeconds, the probes
spec.metrics.port, the status depth spec.redis.prefix.
"""

from __future__ import annotations

from typing import Any

from .openapi import rule

REDIS_URL_ENV = "CONVEYOR_REDIS_URL"
PREFIX_ENV = "CONVEYOR_PREFIX"

# Worker environment the operator sets itself (spec.workers.env may not): name -> why.
RESERVED_ENV = {REDIS_URL_ENV: f"{REDIS_URL_ENV} is set by the operator from spec.redis",
                PREFIX_ENV: f"set the key prefix with spec.redis.prefix, not {PREFIX_ENV}"}

# `conveyor worker` flags the operator passes or owns (builders.worker_args, the policy file,
# the Redis URL and TLS files in the environment): the flags, the spec field to use instead.
RESERVED_ARGS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("-q", "--queues"), "spec.queues"),
    (("-c", "--concurrency"), "spec.workers.concurrency"),
    (("--pool",), "spec.workers.pool"),
    (("--lease-seconds",), "spec.leaseSeconds"),
    (("--shutdown-timeout",), "spec.shutdownTimeoutSeconds"),
    (("--with-scheduler",), "spec.scheduler.enabled"),
    (("--metrics-port",), "spec.metrics.port"),
    (("--policy-file",), "spec.retry, spec.resultTTLSeconds and spec.failureTTLSeconds"),
    (("--result-ttl",), "spec.resultTTLSeconds"),
    (("--failure-ttl",), "spec.failureTTLSeconds"),
    (("--prefix",), "spec.redis.prefix"),
    (("--allow-module",), "spec.workers.allowModules"),
    (("--limit-rate", "--limit-max-concurrency", "--limit-burst"), "spec.limits"),
    (("--redis-url",), "spec.redis.url or spec.redis.secretRef"),
    (("--redis-ca-file",), "spec.redis.tls.caSecretRef"),
    (("--redis-cert-file", "--redis-key-file"), "spec.redis.tls.clientCertSecretRef"),
)


def args_message(flags: tuple[str, ...], field: str) -> str:
    return f"use {field} instead of {'/'.join(flags)} in spec.workers.args (the operator sets it)"


def _matches(flag: str, arg: str) -> bool:
    """``--flag``, ``--flag=value``; a short flag also with its value attached (click's ``-qhigh``)."""
    if flag.startswith("--"):
        return arg == flag or arg.startswith(flag + "=")
    return arg.startswith(flag)


def _cel_match(flag: str) -> str:
    if flag.startswith("--"):
        return f"a == '{flag}' || a.startsWith('{flag}=')"
    return f"a.startsWith('{flag}')"


def args_rules() -> list[dict[str, Any]]:
    """The CEL rules on spec.workers.args: one per row, naming the field to use."""
    return [rule(f"self.all(a, !({' || '.join(_cel_match(f) for f in flags)}))", args_message(flags, field),
                 "FieldValueForbidden")
            for flags, field in RESERVED_ARGS]


def env_rules() -> list[dict[str, Any]]:
    return [rule(f"self.all(e, e.name != '{name}')", message) for name, message in RESERVED_ENV.items()]


def problems(workers: dict[str, Any]) -> list[str]:
    """What those rules refuse in a (defaulted) spec.workers, as their messages."""
    env_names = {e.get("name") for e in workers.get("env") or [] if isinstance(e, dict)}
    out = [message for name, message in RESERVED_ENV.items() if name in env_names]
    args = [str(a) for a in workers.get("args") or []]
    out += [args_message(flags, field) for flags, field in RESERVED_ARGS
            if any(_matches(f, a) for f in flags for a in args)]
    return out
