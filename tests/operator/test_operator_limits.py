"""spec.limits: checked alike by the CRD schema (with its CEL rule) and the operator, and passed
to the workers as the --limit-* options their own parser reads (each worker writes them to its
queues at start, see tests/test_limits.py)."""

from __future__ import annotations

from typing import Any

import pytest

from cel_admission import admission
from conveyor import Limits, Rate
from conveyor_operator import builders
from conveyor_operator.builders import Owner
from conveyor_operator.spec import defaulted, problems
from support import parse_worker

OWNER = Owner("billing", "payments", "uid-1234")


def doc(limits: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"redis": {"url": "redis://r"}, "queues": ["q"]}
    if limits is not None:
        spec["limits"] = limits
    return {"apiVersion": "conveyor.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": "x"}, "spec": spec}


def worker_args(limits: Any) -> list[str]:
    (c,) = builders.deployment(OWNER, defaulted(doc(limits)["spec"]), "img")["spec"]["template"]["spec"]["containers"]
    return list(c["args"])


@pytest.mark.parametrize("limits,expected", [
    ({"rate": "100/s", "maxConcurrency": 5}, Limits(Rate(100, 1000), 5)),
    ({"rate": "30/m", "burst": 4}, Limits(Rate(30, 60_000), None, 4)),
    ({"maxConcurrency": 2}, Limits(None, 2)),
    ({}, Limits()),  # declared empty: the workers clear every limit
    (None, None),  # no spec.limits: the workers leave the queues' limits alone
])
def test_spec_limits_reach_the_worker_settings(limits: Any, expected: Limits | None) -> None:
    assert admission(doc(limits)) == [] and problems(defaulted(doc(limits)["spec"])) == []
    args = worker_args(limits)
    assert ("--limit-rate" in args) is (limits is not None)
    i = args.index("--policy-file")  # the ConfigMap's file (test_settings_agree reads it); not needed here
    assert parse_worker(args[1:i] + args[i + 2:], "redis://r").limits == expected


@pytest.mark.parametrize("limits,schema_says,operator_says", [
    ({"rate": "100/x"}, "does not match", "spec.limits.rate must be N/s, N/m or N/h"),
    ({"rate": "0/s"}, "does not match", "spec.limits.rate must be N/s, N/m or N/h"),
    ({"rate": "fast"}, "does not match", "spec.limits.rate must be N/s, N/m or N/h"),
    ({"maxConcurrency": 0}, "less than the minimum", "spec.limits.maxConcurrency must be a whole number"),
    ({"rate": "5/s", "burst": 0}, "less than the minimum", "spec.limits.burst must be a whole number"),
    ({"burst": 3}, "limits.burst needs limits.rate", "limits.burst needs limits.rate"),
    ({"rate": "5/s", "maxConcurency": 3}, "Additional properties are not allowed", "maxConcurency"),
])
def test_bad_limits_are_refused_by_the_schema_and_the_operator(limits: Any, schema_says: str,
                                                               operator_says: str) -> None:
    errors = "\n".join(admission(doc(limits)))
    assert schema_says in errors, errors
    found = "\n".join(problems(defaulted(doc(limits)["spec"])))
    assert operator_says in found, found
