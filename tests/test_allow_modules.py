"""Which job targets a worker runs: not the standard library unless allowed, only the
allow-list when there is one, checked before importing, in every pool."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from conveyor import InvalidArgument, JobStatus, Queue, Retry, WorkerSettings
from conveyor.errors import ForbiddenFunction, InvalidFunction
from conveyor.serializers import get_serializer
from conveyor.validation import check_target, import_function
from conveyor.worker.execution import call_path
from conveyor.worker.procpool import ProcessPool
from support import WORKER_ENV, fetch

SHELLS = ["os:system", "builtins:eval", "subprocess:getoutput", "posix:system", "__main__:main", "os.path:join"]


# -- the rule, as a pure function ------------------------------------------------------------


@pytest.mark.parametrize("path", SHELLS)
def test_standard_library_is_refused_without_an_allow_list(path: str) -> None:
    with pytest.raises(ForbiddenFunction) as info:
        check_target(path)
    top = path.split(":")[0].split(".")[0]
    message = str(info.value)
    assert f"--allow-module {top} " in message and "standard library" in message and "\n" not in message


@pytest.mark.parametrize("path", ["jobs:add", "conveyor.demo_jobs:add", "myapp.tasks:send", "nope.mod:fn"])
def test_anything_else_passes_without_an_allow_list(path: str) -> None:
    assert check_target(path) is None


@pytest.mark.parametrize(
    "path, allow, ok",
    [
        ("myapp:send", ("myapp",), True),
        ("myapp.tasks:send", ("myapp",), True),
        ("myapp.tasks.deep:send", ("myapp.tasks",), True),
        ("myapp:send", ("myapp.tasks",), False),  # a submodule does not allow its parent
        ("myapplication:send", ("myapp",), False),  # a shared prefix is not a submodule
        ("other:send", ("myapp", "shared"), False),
        ("os:system", ("os",), True),  # the standard library only when named
        ("subprocess:run", ("os",), False),
        ("jobs:add", ("os",), False),  # a list allows only what it names
    ],
)
def test_allow_list_allows_its_modules_and_their_submodules_only(path: str, allow: tuple[str, ...], ok: bool) -> None:
    if ok:
        check_target(path, allow)
    else:
        with pytest.raises(ForbiddenFunction, match=f"not among this worker's allowed modules \\({', '.join(allow)}\\)"):
            check_target(path, allow)


@pytest.mark.parametrize("path", ["conveyor.cli_options:os.system", "jobs:time.sleep", "conveyor.cli:sys.modules.clear"])
def test_a_path_through_an_allowed_module_cannot_reach_the_standard_library(path: str) -> None:
    with pytest.raises(ForbiddenFunction, match="leads into module"):
        import_function(path)


def test_a_standard_library_function_imported_into_an_allowed_module_is_refused() -> None:
    with pytest.raises(ForbiddenFunction, match="it is subprocess.getoutput, imported there"):
        import_function("jobs_reexport:getoutput")
    with pytest.raises(ForbiddenFunction, match="it is subprocess.getoutput, imported there"):
        import_function("jobs_reexport:getoutput", ("jobs_reexport",))
    assert import_function("jobs_reexport:own")() == "own"


def test_refusal_happens_before_import(tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from conveyor.validation import import_function\n"
            "try: import_function('jobs_marker:ping', ('jobs',))\nexcept Exception as e: print(type(e).__name__)\n"
            "print('jobs_marker' in sys.modules)")
    env = {**WORKER_ENV, "CONVEYOR_TEST_IMPORT_MARKER": str(marker)}
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)], env=env, capture_output=True,
                         text=True, timeout=30, check=True).stdout.split()
    assert out == ["ForbiddenFunction", "False"] and not marker.exists()


def test_forbidden_is_an_invalid_function() -> None:
    assert issubclass(ForbiddenFunction, InvalidFunction)


# -- the process pool's children apply the same list --------------------------------------------


def _payload(*args: object) -> bytes:
    return get_serializer("json").dumps({"a": list(args), "k": {}})


def test_call_path_refuses_for_good() -> None:
    refused = call_path("os:getpid", "json", _payload(), False, None, ())
    assert (refused.ok, refused.exc_type, refused.retryable) == (False, "ForbiddenFunction", False)
    assert "--allow-module os" in refused.exc_message
    allowed = call_path("os:getpid", "json", _payload(), False, None, ("os",))
    assert allowed.ok and int(allowed.result) > 0


def test_process_pool_children_check_the_allow_list() -> None:
    async def run() -> list:
        pool = ProcessPool(1, allow_modules=("conveyor.demo_jobs",))
        pool.start()
        try:
            return [await pool.run(path, "json", _payload(*args), 30)
                    for path, args in [("conveyor.demo_jobs:add", (2, 3)), ("os:getpid", ()), ("jobs:add", (1, 1))]]
        finally:
            pool.close()

    ok, stdlib, unlisted = asyncio.run(run())
    assert ok.ok and ok.result == b"5"
    assert stdlib.exc_type == unlisted.exc_type == "ForbiddenFunction"
    assert "(conveyor.demo_jobs)" in unlisted.exc_message and not unlisted.retryable


# -- real workers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["thread", "process", "async"])
def test_worker_refuses_shells_for_good_and_runs_the_rest(queue: Queue, conn: redis.Redis, run_burst, tmp_path: Path,
                                                          pool: str) -> None:
    marker = tmp_path / "pwned"
    retry = Retry(max=3, intervals=[0])
    shells = [
        queue.enqueue("os:system", f"touch {marker}", retry=retry),
        queue.enqueue("builtins:eval", f"open({str(marker)!r}, 'w')", retry=retry),
        queue.enqueue("subprocess:getoutput", f"touch {marker}", retry=retry),
        queue.enqueue("conveyor.cli_options:os.system", f"touch {marker}", retry=retry),
    ]
    good = queue.enqueue("jobs:async_add" if pool == "async" else "conveyor.demo_jobs:add", 2, 3)
    run_burst("--pool", pool, "-c", "2")
    for job in shells:
        job = fetch(conn, job)
        assert job.status is JobStatus.FAILED, job.func_path
        assert job.exc_info.type == "ForbiddenFunction" and "--allow-module" in job.exc_info.message
        assert job.retries == 0 and len(job.attempts) == 1, job.attempts  # not retried: no retry can allow it
    assert fetch(conn, good).result == 5
    assert not marker.exists()


def test_worker_with_an_allow_list_runs_only_those(queue: Queue, conn: redis.Redis, run_burst, tmp_path: Path) -> None:
    marker = tmp_path / "imported"
    listed = queue.enqueue("jobs:add", 1, 2)
    unlisted = queue.enqueue("conveyor.demo_jobs:add", 1, 2)
    prefixed = queue.enqueue("jobs_marker:ping")  # "jobs" does not allow "jobs_marker"
    stdlib = queue.enqueue("os:getpid")
    run_burst("--allow-module", "jobs", "--allow-module", "os", env={"CONVEYOR_TEST_IMPORT_MARKER": str(marker)})
    assert fetch(conn, listed).result == 3
    assert fetch(conn, stdlib).result > 0  # listed, so the standard library runs
    for job in (unlisted, prefixed):
        job = fetch(conn, job)
        assert job.exc_info.type == "ForbiddenFunction"
        assert "not among this worker's allowed modules (jobs, os)" in job.exc_info.message
    assert not marker.exists()  # refused before import: its module code never ran

    again = queue.enqueue("jobs_marker:ping")
    run_burst("--allow-module", "jobs_marker", env={"CONVEYOR_TEST_IMPORT_MARKER": str(marker)})
    assert fetch(conn, again).result == "pong" and marker.exists()


def test_allow_list_from_the_environment(queue: Queue, conn: redis.Redis, run_burst) -> None:
    a = queue.enqueue("jobs:add", 1, 2)
    b = queue.enqueue("conveyor.demo_jobs:add", 3, 4)
    c = queue.enqueue("jobs_marker:ping")
    run_burst(env={"CONVEYOR_ALLOW_MODULES": " jobs, conveyor.demo_jobs "})
    assert fetch(conn, a).result == 3 and fetch(conn, b).result == 7
    assert fetch(conn, c).exc_info.type == "ForbiddenFunction"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "conveyor", "worker", "--redis-url", "redis://127.0.0.1:1/0", *args],
                          capture_output=True, text=True, timeout=30, env={**WORKER_ENV, **(env or {})})


@pytest.mark.parametrize("args, env", [(("--allow-module", "myapp.tasks:send"), None),
                                       ((), {"CONVEYOR_ALLOW_MODULES": "myapp,myapp.tasks:send"})])
def test_cli_refuses_a_bad_module_name_in_one_line(args: tuple[str, ...], env: dict[str, str] | None) -> None:
    proc = run_cli(*args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "'myapp.tasks:send' is not a module name" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_settings_allow_modules() -> None:
    assert WorkerSettings(redis_url="redis://x").allow_modules == ()
    assert WorkerSettings(redis_url="redis://x", allow_modules=["a", "b.c"]).allow_modules == ("a", "b.c")
    with pytest.raises(InvalidArgument, match="not the string 'myapp'"):
        WorkerSettings(redis_url="redis://x", allow_modules="myapp")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="'my-app' is not a module name"):
        WorkerSettings(redis_url="redis://x", allow_modules=("my-app",))


def test_demo_runs_with_the_default_rule() -> None:
    proc = subprocess.run([sys.executable, "-m", "conveyor", "demo"], capture_output=True, text=True, timeout=120,
                          env=WORKER_ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 finished, 1 failed as intended" in proc.stdout
