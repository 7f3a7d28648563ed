"""Worker settings: one frozen dataclass, built from CLI flags or the environment."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from . import keys
from .connection import RedisTarget, TlsFiles
from .errors import InvalidArgument
from .limits import Limits
from .retry import Retry, policy_retry
from .validation import check_module_names, check_queue_name, check_ttl

POOLS = ("thread", "process", "async")


# /metrics, /healthz and /readyz. Not 9100: that is node_exporter's port, and a worker run
# on a host (or with hostNetwork) beside one would fail to bind or be scraped as the wrong
# exporter. 9750 is clear of the exporters usually found next to a worker (node 9100,
# redis 9121, process 9256, celery 9808); --metrics-port 9100 still works.
DEFAULT_METRICS_PORT = 9750

@dataclass(frozen=True)
class WorkerSettings:
    redis_url: str
    # Key prefix (keys.Keyspace): workers see only the jobs, workers and commands of theirs.
    prefix: str = keys.DEFAULT_PREFIX
    # TLS client files (else CONVEYOR_REDIS_CA_FILE / _CERT_FILE / _KEY_FILE).
    redis_ca_file: str | None = None
    redis_cert_file: str | None = None
    redis_key_file: str | None = None
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 10
    pool: str = "thread"
    burst: bool = False
    default_timeout: float = 180.0
    lease_seconds: float = 15.0
    shutdown_timeout: float = 25.0
    max_jobs_per_child: int = 0
    allow_pickle: bool = False
    # Modules (and their submodules) whose functions this worker runs; empty: anything
    # importable except the standard library and builtins (validation.check_target).
    allow_modules: tuple[str, ...] = ()
    name: str | None = None
    with_scheduler: bool = False
    scheduler_lock_seconds: float = 5.0
    # How many times a job may be handed to a worker that is then lost (lease expired)
    # before it fails as abandoned; a job's own max_deliveries wins.
    max_deliveries: int = 3
    # Policy for jobs that carry none of their own (a JobQueue's ConfigMap sets these).
    result_ttl: int = 500
    failure_ttl: int = 7 * 24 * 3600
    default_retry: Retry | None = None
    # Refuse to start when Redis may evict keys (maxmemory-policy other than noeviction):
    # an evicting Redis silently deletes queued jobs.
    require_noeviction: bool = False
    metrics_port: int = DEFAULT_METRICS_PORT  # /metrics, /healthz, /readyz; 0 disables
    metrics_host: str = "0.0.0.0"
    # Seconds to wait for Redis at start before exiting with code 1; None: wait for ever
    # (the CLI gives --burst a default of 10 s, so a CI job fails instead of hanging).
    connect_timeout: float | None = None
    cron_files: tuple[str, ...] = ()
    cron_modules: tuple[str, ...] = ()
    # Jobs claimed beyond the running ones; None adapts: about 50 ms of work while
    # jobs average under 0.1 s, none for longer jobs (they gain nothing and would
    # sit leased here while another worker idles).
    prefetch: int | None = None
    # Completions wait up to this long for company, so one round trip records several
    # (longer jobs: up to 3/4 of their average length, at most 8 ms; 0: never wait).
    flush_linger: float = 0.002
    max_batch: int = 200
    # The traceback of a failed job on its WARNING line (else on a DEBUG line of its own).
    log_tracebacks: bool = True
    # The call's arguments (shortened) on the line that ends each job (and DEBUG "started" lines);
    # off keeps them out of logs.
    log_args: bool = True
    # Flow control written to every queue served, at start (a JobQueue's spec.limits: the spec wins
    # at each rollout); None leaves the queues' limits as they are (conveyor queue set).
    limits: Limits | None = None

    def __post_init__(self) -> None:
        keys.check_prefix(self.prefix)
        self.target()  # a URL or TLS file that cannot work is named now, not at the first connect
        if not self.queues:
            raise InvalidArgument("a worker needs at least one queue")
        for q in self.queues:
            check_queue_name(q)
        if len(set(self.queues)) != len(self.queues):
            raise InvalidArgument(f"queue listed twice in {','.join(self.queues)}")
        if self.pool not in POOLS:
            raise InvalidArgument(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        _positive("concurrency", self.concurrency, integer=True)
        _positive("default_timeout", self.default_timeout)
        _positive("lease_seconds", self.lease_seconds)
        _positive("scheduler_lock_seconds", self.scheduler_lock_seconds)
        _positive("max_deliveries", self.max_deliveries, integer=True)
        if self.shutdown_timeout < 0:
            raise InvalidArgument(f"shutdown_timeout must be >= 0, got {self.shutdown_timeout}")
        _positive("max_batch", self.max_batch, integer=True)
        if not isinstance(self.flush_linger, (int, float)) or self.flush_linger < 0:
            raise InvalidArgument(f"flush_linger must be >= 0 seconds, got {self.flush_linger!r}")
        if self.connect_timeout is not None:
            _positive("connect_timeout", self.connect_timeout)
        if self.prefetch is not None and self.prefetch < 0:
            raise InvalidArgument(f"prefetch must be >= 0, got {self.prefetch}")
        check_ttl("result_ttl", self.result_ttl)
        check_ttl("failure_ttl", self.failure_ttl)
        if not 0 <= self.metrics_port <= 65535:
            raise InvalidArgument(f"metrics_port must be 0 (off) or a TCP port, got {self.metrics_port}")
        object.__setattr__(self, "allow_modules", check_module_names(self.allow_modules))
        if self.max_jobs_per_child < 0:
            raise InvalidArgument(f"max_jobs_per_child must be >= 0, got {self.max_jobs_per_child}")

    @staticmethod
    def read_policy(path: str) -> dict[str, Any]:
        """Settings from a policy file (JSON, as the operator's ConfigMap mounts it):
        {"retry": {...}, "result_ttl": 500, "failure_ttl": 604800}."""
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise InvalidArgument(f"cannot read policy file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidArgument(f"policy file {path}: expected a JSON object")
        unknown = set(data) - {"retry", "result_ttl", "failure_ttl"}
        if unknown:
            raise InvalidArgument(f"policy file {path}: unknown keys {sorted(unknown)}")
        out: dict[str, Any] = {}
        try:
            if data.get("retry") is not None:
                out["default_retry"] = policy_retry(data["retry"])
            for key in ("result_ttl", "failure_ttl"):
                if key in data:
                    out[key] = check_ttl(key, data[key])
        except InvalidArgument as exc:
            raise InvalidArgument(f"policy file {path}: {exc}") from None
        return out

    def target(self) -> RedisTarget:
        return RedisTarget.parse(self.redis_url, TlsFiles.from_env(self.redis_ca_file, self.redis_cert_file,
                                                                   self.redis_key_file))

    def with_(self, **changes: Any) -> WorkerSettings:
        return replace(self, **changes)


def _positive(name: str, value: float, integer: bool = False) -> None:
    if (integer and (isinstance(value, bool) or not isinstance(value, int))) or not value > 0:
        raise InvalidArgument(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")
