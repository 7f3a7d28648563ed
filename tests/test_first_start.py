"""A new user's first start (issue 12, items 1, 6, 7, 8): the worker imports the user's own
code, every CLI failure is one line naming its cause, a burst worker runs overdue
scheduled jobs and gives up on an unreachable Redis, and cron options need the scheduler.

Through the real `conveyor` command and real worker processes.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conveyor import JobStatus, Queue
from conveyor.embedded import free_port
from conveyor.keys import QueueKeys
from support import WORKER_ENV, cli, fetch, wait_until

CONVEYOR = str(Path(sys.executable).parent / "conveyor")  # the console script a user runs
DOWN = "redis://127.0.0.1:1/0"  # port 1: nothing listens, the connection is refused at once
ENV = {k: v for k, v in WORKER_ENV.items() if k not in ("CONVEYOR_REDIS_URL", "CONVEYOR_PATH", "CONVEYOR_PREFIX")}
# WORKER_ENV's PYTHONPATH may end in an empty entry, which Python reads as the current
# folder: it would hide the very thing item 1 is about.
ENV["PYTHONPATH"] = os.pathsep.join(p for p in ENV["PYTHONPATH"].split(os.pathsep) if p)


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`conveyor ARGS` as a user's shell runs it: the console script, from `cwd`."""
    return subprocess.run([CONVEYOR, *args], cwd=cwd, env={**ENV, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def one_line(res: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed command printed (stdout and stderr together)."""
    lines = (res.stdout + res.stderr).splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{res.stdout}{res.stderr}"
    assert "Traceback" not in lines[0]
    return lines[0]


def project(root: Path) -> Path:
    """A user's project: a package myapp with a task, and a module outside the allow-list."""
    (root / "myapp").mkdir(parents=True)
    (root / "myapp" / "__init__.py").write_text("")
    (root / "myapp" / "tasks.py").write_text("def shout(text):\n    return text.upper() + '!'\n")
    (root / "other.py").write_text("def ping():\n    return 'pong'\n")
    return root


# -- 1. the user's own code imports ------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["thread", "process"])
def test_worker_imports_jobs_from_the_folder_it_is_started_in(tmp_path: Path, queue: Queue, conn, redis_url,
                                                              pool: str) -> None:
    root = project(tmp_path / "proj")
    assert str(root) not in ENV["PYTHONPATH"] and "" not in ENV["PYTHONPATH"].split(os.pathsep)
    ok = queue.enqueue("myapp.tasks:shout", "ada")
    refused = queue.enqueue("other:ping")
    res = run("worker", "--redis-url", redis_url, "-q", "default", "--burst", "--pool", pool, "--concurrency", "2",
              "--allow-module", "myapp", cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert fetch(conn, ok).status is JobStatus.FINISHED, res.stdout + res.stderr
    assert fetch(conn, ok).result == "ADA!"
    # The allow-list still applies to code the worker can now import.
    failed = fetch(conn, refused)
    assert failed.status is JobStatus.FAILED
    assert "other" in failed.exc_info.message and "myapp" in failed.exc_info.message


def test_cron_module_is_imported_from_the_folder_the_worker_starts_in(tmp_path: Path, redis_url: str) -> None:
    root = project(tmp_path / "proj")
    (root / "myapp" / "schedules.py").write_text(
        "import conveyor\nconveyor.cron('30 4 * * *', 'myapp.tasks:shout', name='morning', args=('hi',))\n")
    res = run("worker", "--redis-url", redis_url, "--burst", "--with-scheduler", "--cron-module", "myapp.schedules",
              cwd=root)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "cron morning: schedule '30 4 * * *' on queue default, next tick " in res.stderr, res.stderr


@pytest.mark.parametrize("how", ["--path", "CONVEYOR_PATH"])
def test_path_and_env_add_folders_to_import_from(tmp_path: Path, queue: Queue, conn, redis_url, how: str) -> None:
    root = project(tmp_path / "proj")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "helpers.py").write_text("def double(x):\n    return 2 * x\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    a = queue.enqueue("myapp.tasks:shout", "hi")
    b = queue.enqueue("helpers:double", 21)
    args = ["worker", "--redis-url", redis_url, "--burst"]
    env = {}
    if how == "--path":
        args += ["--path", str(root), "--path", str(tmp_path / "lib")]
    else:
        env["CONVEYOR_PATH"] = os.pathsep.join([str(root), str(tmp_path / "lib")])
    res = run(*args, cwd=elsewhere, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert fetch(conn, a).result == "HI!" and fetch(conn, b).result == 42, res.stdout + res.stderr


def test_path_that_is_not_a_folder_is_one_line(tmp_path: Path, redis_url: str) -> None:
    res = run("worker", "--redis-url", redis_url, "--burst", "--path", str(tmp_path / "nope"))
    assert res.returncode == 2
    assert one_line(res) == f"Error: --path: {tmp_path / 'nope'} is not a folder"


# -- 6. one line, not a traceback ------------------------------------------------------------------

REDIS_COMMANDS = [
    ("worker", "--burst"), ("worker", "release", "w1"), ("info",), ("job", "show", "x"), ("job", "stop", "x"),
    ("job", "cancel", "x"), ("purge", "default", "--yes"), ("requeue", "x"), ("doctor",), ("demo",),
]


@pytest.mark.parametrize("args", REDIS_COMMANDS, ids=lambda a: " ".join(a))
def test_a_url_without_a_scheme_is_one_line(args: tuple[str, ...]) -> None:
    res = run(*args, "--redis-url", "localhost:6379")
    assert res.returncode != 0
    line = one_line(res)
    assert line.startswith("Error: unsupported Redis URL localhost:6379: expected redis://"), line


@pytest.mark.parametrize("args", [a for a in REDIS_COMMANDS if a[0] != "worker"], ids=lambda a: " ".join(a))
def test_redis_down_is_one_line(args: tuple[str, ...]) -> None:
    res = run(*args, "--redis-url", DOWN)
    assert res.returncode != 0
    line = one_line(res)
    assert "cannot reach Redis" in line and "127.0.0.1:1" in line, line


def test_a_missing_cron_file_or_module_is_one_line(redis_url: str) -> None:
    res = run("worker", "--redis-url", redis_url, "--burst", "--with-scheduler", "--cron-file", "/nonexistent.toml")
    assert res.returncode == 2
    assert one_line(res).endswith("ERROR conveyor.worker: cannot read cron file /nonexistent.toml: "
                                  "[Errno 2] No such file or directory: '/nonexistent.toml'")
    res = run("worker", "--redis-url", redis_url, "--burst", "--with-scheduler", "--cron-module", "nope.schedules")
    assert res.returncode == 2
    assert one_line(res).endswith("ERROR conveyor.worker: cannot import cron module 'nope.schedules': "
                                  "ModuleNotFoundError: No module named 'nope'")


def test_a_script_beside_a_clone_named_conveyor_imports_the_package(tmp_path: Path) -> None:
    # `git clone .../conveyor` makes a folder that Python would take for the package.
    (tmp_path / "conveyor" / "runtime").mkdir(parents=True)
    (tmp_path / "script.py").write_text("from conveyor import Queue\nprint(Queue.__name__)\n")
    res = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                         timeout=60)
    # scripts/setup.sh puts the source folders on the venv's path so the real package wins.
    assert res.returncode == 0 and res.stdout == "Queue\n", f"{res.stderr}(run scripts/setup.sh again?)"


# -- 7. burst: overdue scheduled jobs run; an unreachable Redis fails ----------------------------------


def test_burst_with_scheduler_runs_overdue_scheduled_jobs_before_exiting(queue: Queue, conn, run_burst) -> None:
    due = [queue.enqueue_in(0.2, "jobs:add", i, 1) for i in range(3)]
    later = queue.enqueue_in(3600, "jobs:add", 0, 0)
    wait_until(lambda: time.time() > max(j.due_at for j in due) + 0.05, 5, "the jobs to be overdue")
    w = run_burst("--with-scheduler")
    assert [fetch(conn, j).result for j in due] == [1, 2, 3], w.log()
    assert fetch(conn, later).status is JobStatus.SCHEDULED
    assert "moved 3 due scheduled jobs to their queues; running them before exiting" in w.log()
    assert conn.get(QueueKeys("default").scheduler_lock) is None  # the burst leader let go of its lock


@pytest.mark.parametrize("flag", [("--connect-timeout", "1.5"), ("CONVEYOR_CONNECT_TIMEOUT", "1.5"),
                                  pytest.param(None, marks=pytest.mark.slow)],  # the default: 10 s
                         ids=["flag", "env", "default"])
def test_burst_gives_up_on_an_unreachable_redis(spawn_worker, flag: tuple[str, str] | None) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    args, env, seconds = [], {}, "10"
    if flag and flag[0].startswith("--"):
        args, seconds = list(flag), flag[1]
    elif flag:
        env, seconds = {flag[0]: flag[1]}, flag[1]
    w = spawn_worker("--burst", *args, url=url, env=env)
    assert w.wait(90) == 1, w.log()
    lines = w.log().splitlines()
    assert "Traceback" not in w.log()
    assert [ln for ln in lines if " ERROR " in ln] == lines[-1:], w.log()
    port = url.rsplit(":", 1)[1].split("/")[0]
    assert f"gave up after {seconds}s (--connect-timeout): cannot reach Redis at {url}: " \
           f"Error 111 connecting to 127.0.0.1:{port}." in lines[-1], lines[-1]


# -- 8. cron options need the scheduler; loaded schedules are logged ---------------------------------


@pytest.mark.parametrize("args,named", [
    (("--cron-file", "/nonexistent.toml"), "--cron-file needs"),
    (("--cron-module", "myapp.schedules"), "--cron-module needs"),
    (("--cron-file", "a.toml", "--cron-module", "m"), "--cron-file and --cron-module need"),
])
def test_cron_options_without_the_scheduler_are_an_error(redis_url: str, args: tuple[str, ...], named: str) -> None:
    res = run("worker", "--redis-url", redis_url, "--burst", *args)
    assert res.returncode == 2
    assert one_line(res) == (f"Error: {named} --with-scheduler: only the scheduler enqueues cron ticks, "
                             "so without it the schedules would never run")


def test_worker_logs_its_schedules_and_their_next_ticks(tmp_path: Path, run_burst) -> None:
    path = tmp_path / "cron.toml"
    path.write_text('[[cron]]\nschedule = "0 0 1 1 *"\nfunc = "jobs:add"\nname = "new-year"\n\n'
                    '[[cron]]\nschedule = "@hourly"\nfunc = "jobs:add"\nname = "reports"\nqueue = "reports"\n')
    year = dt.datetime.now(dt.UTC).year + 1
    w = run_burst("--with-scheduler", "--cron-file", str(path))
    log = w.log()
    assert f"INFO conveyor.scheduler: cron new-year: schedule '0 0 1 1 *' on queue default, next tick " \
           f"{year}-01-01 00:00:00 UTC" in log, log
    assert "WARNING conveyor.scheduler: cron reports (@hourly) is for queue reports, which this worker does not " \
           "serve: not run by it" in log, log


def test_the_demo_says_in_one_line_that_redis_is_down() -> None:
    res = cli(DOWN, "demo", "--redis-url", DOWN)
    assert res.returncode == 1
    assert one_line(res) == "Error: cannot reach Redis: Error 111 connecting to 127.0.0.1:1. Connection refused."


def test_connect_timeout_must_not_be_negative(redis_url: str) -> None:
    res = run("worker", "--redis-url", redis_url, "--burst", "--connect-timeout", "-1")
    assert res.returncode == 2
    assert one_line(res) == "Error: --connect-timeout must be >= 0 seconds, got -1"
