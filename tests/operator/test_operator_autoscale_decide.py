"""The autoscaling decisions (conveyor_operator.autoscale): pure, so tested on their own."""

from __future__ import annotations

import pytest

from conveyor_operator.autoscale import Policy, Sample, decide, recommend, window

P = Policy(min_replicas=1, max_replicas=10, target=10, poll_seconds=1, window_seconds=30)


def test_recommendation_is_demand_over_target_rounded_up_and_clamped() -> None:
    assert [recommend(d, P) for d in (0, 1, 10, 11, 95, 1000)] == [1, 1, 1, 2, 10, 10]
    assert recommend(0, Policy(min_replicas=0, target=10)) == 0
    assert recommend(-5, Policy(min_replicas=0, target=10)) == 0


def test_policy_from_spec_defaults_and_floors() -> None:
    p = Policy.of({"autoscaling": {"minReplicas": 0, "maxReplicas": 4, "targetJobsPerWorker": 5,
                                   "pollSeconds": 0, "scaleDownStabilizationSeconds": 2}})
    assert p == Policy(0, 4, 5, 1.0, 2.0)
    assert Policy.of({}).poll_seconds == 5


def test_scale_up_at_once() -> None:
    d = decide([Sample(100, 5), Sample(101, 55)], now=101, current=1, policy=P, since=0)
    assert (d.desired, d.reason) == (6, "ScaleUp")
    assert "demand 55" in d.message


def test_scale_down_waits_for_the_window_and_uses_its_highest_recommendation() -> None:
    samples = [Sample(100, 80), Sample(110, 30), Sample(120, 5)]
    # 25 s after the 80-job peak: still inside the window, hold 8.
    d = decide(samples, now=125, current=8, policy=P, since=0)
    assert (d.desired, d.reason, d.recommended) == (8, "Stabilizing", 1)
    # The peak left the window: the highest left is 3 (30 jobs).
    d = decide(window(samples, 131, P), now=131, current=8, policy=P, since=0)
    assert (d.desired, d.reason) == (3, "ScaleDown")
    d = decide(window(samples + [Sample(151, 5)], 151, P), now=151, current=3, policy=P, since=0)
    assert (d.desired, d.reason) == (1, "ScaleDown")


def test_no_scale_down_before_a_whole_window_was_observed() -> None:
    # Just turned on (or the operator restarted) with 5 replicas and nothing to do.
    d = decide([Sample(10, 0)], now=10, current=5, policy=P, since=10)
    assert (d.desired, d.reason) == (5, "Stabilizing")
    d = decide([Sample(10, 0), Sample(41, 0)], now=41, current=5, policy=P, since=10)
    assert (d.desired, d.reason) == (1, "ScaleDown")


def test_zero_and_back() -> None:
    p = Policy(min_replicas=0, max_replicas=3, target=10, window_seconds=2)
    d = decide([Sample(0, 0), Sample(3, 0)], now=3, current=1, policy=p, since=0)
    assert (d.desired, d.reason) == (0, "ScaleDown")
    d = decide([Sample(3, 0), Sample(4, 1)], now=4, current=0, policy=p, since=0)
    assert (d.desired, d.reason) == (1, "ScaleUp")


def test_clamps_apply_at_once() -> None:
    # maxReplicas lowered below the current count: down now, no window to wait for.
    d = decide([Sample(0, 1000)], now=0, current=20, policy=P, since=0)
    assert (d.desired, d.reason) == (10, "ScaleDown")
    # minReplicas raised above it: up now.
    d = decide([Sample(0, 0)], now=0, current=0, policy=Policy(min_replicas=2, target=10), since=0)
    assert (d.desired, d.reason) == (2, "ScaleUp")


def test_steady() -> None:
    d = decide([Sample(0, 20)], now=0, current=2, policy=P, since=-100)
    assert (d.desired, d.reason) == (2, "Steady")


def test_needs_a_sample() -> None:
    with pytest.raises(ValueError):
        decide([], now=0, current=1, policy=P, since=0)
