"""WorkerSettings validation, the environment, and the CLI's refusal of bad settings."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import click
import pytest

from conveyor import InvalidArgument, InvalidQueueName, WorkerSettings
from support import WORKER_ENV, parse_worker

URL = "redis://127.0.0.1:1/0"  # never contacted: settings are checked before any connection


def make(**kw) -> WorkerSettings:
    return WorkerSettings(redis_url=URL, **kw)


def test_defaults() -> None:
    s = make()
    assert s.queues == ("default",)
    assert s.concurrency == 10 and s.pool == "thread" and s.burst is False and s.allow_pickle is False


@pytest.mark.parametrize(
    "kw, exc, fragment",
    [
        ({"queues": ()}, InvalidArgument, "queue"),
        ({"queues": ("a", "b", "a")}, InvalidArgument, "queue listed twice"),
        ({"queues": ("bad name",)}, InvalidQueueName, "invalid queue name 'bad name'"),
        ({"pool": "greenlet"}, InvalidArgument, "pool"),
        ({"concurrency": 0}, InvalidArgument, "concurrency"),
        ({"concurrency": -1}, InvalidArgument, "concurrency"),
        ({"concurrency": 1.5}, InvalidArgument, "concurrency"),
        ({"concurrency": True}, InvalidArgument, "concurrency"),
        ({"default_timeout": 0}, InvalidArgument, "default_timeout"),
        ({"default_timeout": -1.0}, InvalidArgument, "default_timeout"),
        ({"lease_seconds": 0}, InvalidArgument, "lease_seconds"),
        ({"lease_seconds": -5}, InvalidArgument, "lease_seconds"),
        ({"shutdown_timeout": -1}, InvalidArgument, "shutdown_timeout"),
        ({"prefetch": -1}, InvalidArgument, "prefetch"),
        ({"max_jobs_per_child": -1}, InvalidArgument, "max_jobs_per_child"),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else ",".join(f"{k}={v[k]!r}" for k in v),
)
def test_invalid_settings(kw: dict, exc: type, fragment: str) -> None:
    with pytest.raises(exc, match=fragment):
        make(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"max_batch": 0},
        {"max_batch": -1},
        {"flush_linger": -0.5},
    ],
    ids=["max_batch=0", "max_batch=-1", "flush_linger=-0.5"],
)
def test_unvalidated_fields_are_rejected(kw: dict) -> None:
    field = next(iter(kw))
    with pytest.raises(InvalidArgument, match=field):
        make(**kw)


@pytest.mark.parametrize(
    "kw",
    [
        {"shutdown_timeout": 0},
        {"prefetch": 0},
        {"max_jobs_per_child": 0},
        {"concurrency": 1},
        {"queues": ("a", "b.c", "D-1")},
        {"pool": "process"},
        {"pool": "async"},
    ],
)
def test_boundary_settings_are_accepted(kw: dict) -> None:
    s = make(**kw)
    for k, v in kw.items():
        assert getattr(s, k) == v


def test_settings_are_frozen_and_with_revalidates() -> None:
    s = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.concurrency = 3  # type: ignore[misc]
    assert s.with_(concurrency=3).concurrency == 3
    with pytest.raises(InvalidArgument, match="concurrency"):
        s.with_(concurrency=0)


# -- the environment (read by the worker command: one parser for flags and variables) -----------


def from_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *args: str) -> WorkerSettings:
    for name in [n for n in os.environ if n.startswith("CONVEYOR_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return parse_worker(list(args), URL)


def test_the_environment_sets_worker_options(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {
        "CONVEYOR_QUEUES": "a,b",
        "CONVEYOR_CONCURRENCY": "4",
        "CONVEYOR_BURST": "true",
        "CONVEYOR_REDIS_URL": "redis://example:6380/2",
        "CONVEYOR_DEFAULT_TIMEOUT": "2.5",
        "CONVEYOR_POOL": "process",
        "CONVEYOR_PREFETCH": "3",
        "CONVEYOR_ALLOW_PICKLE": "no",
        "CONVEYOR_NAME": "w1",
        "CONVEYOR_ALLOW_MODULES": "a, b.c",
    }
    s = from_env(monkeypatch, env)
    assert s.queues == ("a", "b")
    assert s.concurrency == 4
    assert s.burst is True
    assert s.redis_url == "redis://example:6380/2"
    assert s.default_timeout == 2.5
    assert s.pool == "process"
    assert s.prefetch == 3
    assert s.allow_pickle is False
    assert s.name == "w1"
    assert s.allow_modules == ("a", "b.c")


def test_the_queue_list_is_trimmed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert from_env(monkeypatch, {"CONVEYOR_QUEUES": " high , low ,,"}).queues == ("high", "low")


@pytest.mark.parametrize("raw, expected", [("1", True), ("yes", True), ("TRUE", True), ("0", False), ("false", False)])
def test_boolean_variables(monkeypatch: pytest.MonkeyPatch, raw: str, expected: bool) -> None:
    assert from_env(monkeypatch, {"CONVEYOR_BURST": raw}).burst is expected


def test_flags_win_over_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    s = from_env(monkeypatch, {"CONVEYOR_CONCURRENCY": "4"}, "--concurrency", "2")
    assert s.concurrency == 2 and s.burst is False


@pytest.mark.parametrize(
    "var, raw",
    [
        ("CONVEYOR_CONCURRENCY", "x"),
        ("CONVEYOR_CONCURRENCY", "1.5"),
        ("CONVEYOR_BURST", "maybe"),
        ("CONVEYOR_DEFAULT_TIMEOUT", "soon"),
        ("CONVEYOR_PREFETCH", "lots"),
    ],
)
def test_unparsable_values_are_refused_naming_the_variable(monkeypatch: pytest.MonkeyPatch, var: str,
                                                           raw: str) -> None:
    with pytest.raises(click.BadParameter) as info:
        from_env(monkeypatch, {var: raw})
    assert var in info.value.format_message()
    assert repr(raw) in info.value.format_message()


@pytest.mark.parametrize(
    "env, exc, fragment",
    [
        ({"CONVEYOR_CONCURRENCY": "0"}, InvalidArgument, "concurrency must be a positive integer"),
        ({"CONVEYOR_QUEUES": "a,a"}, InvalidArgument, "twice"),
        ({"CONVEYOR_QUEUES": " , ,"}, click.BadParameter, "' , ,' (from CONVEYOR_QUEUES) names no queue"),
        ({"CONVEYOR_QUEUES": "good,bad name"}, InvalidQueueName, "bad name"),
        ({"CONVEYOR_POOL": "fork"}, click.BadParameter, "fork"),
    ],
)
def test_values_from_the_environment_are_validated(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                   exc: type[Exception], fragment: str) -> None:
    with pytest.raises(exc) as info:
        from_env(monkeypatch, env)
    text = info.value.format_message() if isinstance(info.value, click.ClickException) else str(info.value)
    assert fragment in text


# -- the CLI -----------------------------------------------------------------------------------


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "worker", "--redis-url", URL, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**WORKER_ENV, **(env or {})},
    )


def test_cli_rejects_bad_queue_name() -> None:
    proc = run_cli("-q", "bad name")
    assert proc.returncode == 2, proc.stderr
    assert "invalid queue name 'bad name'" in proc.stderr


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("-c", "0"), "concurrency"),
        (("-q", "a,a"), "twice"),
        (("--lease-seconds", "-1"), "lease_seconds"),
        (("-c", "x"), "concurrency"),
        (("--pool", "fork"), "pool"),
    ],
)
def test_cli_rejects_bad_settings(args: tuple[str, ...], fragment: str) -> None:
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr


def test_cli_accepts_comma_separated_queues_from_env(redis_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "worker", "--burst", "--redis-url", redis_url],
        capture_output=True, text=True, timeout=30, env={**WORKER_ENV, "CONVEYOR_QUEUES": "high,low"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "serving high,low" in proc.stderr


def test_cli_rejects_bad_queue_name_from_env(redis_url: str) -> None:
    # A real Redis and --burst, so that if the name is (wrongly) accepted the worker exits instead of hanging.
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", "worker", "--burst", "--redis-url", redis_url],
        capture_output=True, text=True, timeout=30, env={**WORKER_ENV, "CONVEYOR_QUEUES": "bad name"},
    )
    assert proc.returncode == 2, proc.stderr
    assert "invalid queue name 'bad name'" in proc.stderr
