"""The worker settings a JobQueue produces, read the way a worker pod reads them: the
operator's worker arguments parsed by the real ``conveyor worker`` command and its policy
ConfigMap read as the policy file. So the CRD's defaults are checked against the runtime's
(WorkerSettings), not against numbers copied into a test."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from conveyor.retry import Backoff, Retry
from conveyor.settings import WorkerSettings
from conveyor_operator import builders
from conveyor_operator.builders import Owner
from conveyor_operator.spec import defaulted
from support import parse_worker

URL = "redis://redis.example:6379/0"


def pod_settings(spec: dict[str, Any], tmp_path: Path) -> WorkerSettings:
    """What ``conveyor worker`` would run with in the JobQueue's pod."""
    spec = defaulted(spec)
    args = builders.worker_args(spec)
    assert args[0] == "worker"
    policy = tmp_path / builders.POLICY_FILE
    owner = Owner(name="jq", namespace="ns", uid="u-1")
    policy.write_text(builders.configmap(owner, spec)["data"][builders.POLICY_FILE])
    args = [str(policy) if a == f"{builders.POLICY_DIR}/{builders.POLICY_FILE}" else a for a in args[1:]]
    return parse_worker(args, URL)


def test_a_minimal_jobqueue_runs_workers_with_the_runtimes_defaults(tmp_path: Path) -> None:
    got = pod_settings({"redis": {"url": URL}, "queues": ["emails"]}, tmp_path)
    # What the operator sets on purpose: its queues, the scheduler on, JSON logs (arguments off).
    expected = dataclasses.replace(WorkerSettings(redis_url=URL), queues=("emails",), with_scheduler=True,
                                   log_args=False)
    assert got == expected


def test_the_cli_defaults_are_the_runtimes_defaults(tmp_path: Path) -> None:
    assert parse_worker([], URL) == WorkerSettings(redis_url=URL)


def test_every_jobqueue_field_reaches_the_worker(tmp_path: Path) -> None:
    got = pod_settings({
        "redis": {"url": URL, "prefix": "shop"}, "queues": ["high", "low"], "leaseSeconds": 40,
        "shutdownTimeoutSeconds": 90, "resultTTLSeconds": 60, "failureTTLSeconds": 3600,
        "retry": {"max": 4, "backoff": {"base": 2, "factor": 3, "max": 100}},
        "scheduler": {"enabled": False}, "metrics": {"port": 9200},
        "workers": {"concurrency": 3, "pool": "process", "allowModules": ["myapp"], "args": ["--max-jobs-per-child", "50"]},
    }, tmp_path)
    assert (got.queues, got.prefix, got.lease_seconds, got.shutdown_timeout) == (("high", "low"), "shop", 40, 90)
    assert (got.result_ttl, got.failure_ttl) == (60, 3600)
    assert got.default_retry == Retry(max=4, backoff=Backoff(base=2, factor=3, cap=100))
    assert (got.with_scheduler, got.metrics_port, got.concurrency, got.pool) == (False, 9200, 3, "process")
    assert (got.allow_modules, got.max_jobs_per_child) == (("myapp",), 50)
