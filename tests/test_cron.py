"""Cron schedules: validation, tick arithmetic, TOML files, and once-per-tick enqueueing."""

from __future__ import annotations

import datetime as dt
import re
import signal
import time
from pathlib import Path

import pytest
import redis

from conveyor import ConveyorError, CronJob, InvalidArgument, Job, JobStatus, Queue, cron, periodic
from conveyor.keys import QueueKeys
from support import fetch, runs, wait_until

K = QueueKeys("default")
UTC = dt.UTC


def ts(*args: int) -> float:
    return dt.datetime(*args, tzinfo=UTC).timestamp()


def wait_status(conn: redis.Redis, job_id: str, *statuses: JobStatus, timeout: float = 10.0) -> Job:
    def check() -> Job | None:
        if not conn.exists(K.job(job_id)):
            return None
        job = fetch(conn, job_id)
        return job if job.status in statuses else None

    return wait_until(check, timeout, f"job {job_id} to reach {[s.value for s in statuses]}")


def cron_job_ids(conn: redis.Redis, name: str) -> list[str]:
    return sorted(k.decode()[len(K.job_prefix):] for k in conn.keys(K.job_prefix + f"cron-{name}-*"))


def write(tmp_path: Path, text: str, name: str = "cron.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def current_minute(margin: float = 8.0) -> int:
    """The tick of the current minute, with at least `margin` seconds left in it.

    The end-to-end tests expect one particular tick: if the minute is about to
    roll over, wait for the next one rather than race the boundary.
    """
    if 60 - time.time() % 60 < margin:
        minute = int(time.time()) // 60
        wait_until(lambda: int(time.time()) // 60 != minute, margin + 1, "the next minute")
    return int(time.time()) // 60 * 60


# -- CronJob -----------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["", "* * *", "* * * *", "61 * * * *", "* 25 * * *", "every minute", "*/0 * * * *"])
def test_bad_schedules_are_rejected(schedule: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid cron schedule"):
        CronJob(schedule, "jobs:add")


@pytest.mark.parametrize("name", ["has space", "-leading-dash", ".dot", "a/b", "x:y", "n" * 82, "ümlaut"])
def test_bad_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid cron name"):
        CronJob("* * * * *", "jobs:add", name=name)


def test_bad_queue_is_rejected() -> None:
    with pytest.raises(ConveyorError):
        CronJob("* * * * *", "jobs:add", queue="no spaces")


def test_good_names_and_the_derived_default_name() -> None:
    assert CronJob("* * * * *", "jobs:add", name="n" * 81).name == "n" * 81
    assert CronJob("* * * * *", "jobs:add", name="a.b_c-1").name == "a.b_c-1"
    a = CronJob("*/5 * * * *", "jobs:add")
    b = CronJob("*/5 * * * *", "jobs:add")
    c = CronJob("*/10 * * * *", "jobs:add")
    assert re.fullmatch(r"jobs\.add-[0-9a-f]{8}", a.name)
    assert a.name == b.name and a.name != c.name  # stable, and per schedule
    assert a.job_id(1700000000) == f"cron-{a.name}-1700000000"


@pytest.mark.parametrize("schedule", ["* * * * * *", "0 0 * * * 30"])
def test_schedules_with_more_than_five_fields_are_rejected(schedule: str) -> None:
    with pytest.raises(InvalidArgument):
        CronJob(schedule, "jobs:add")


def test_last_and_next_tick_on_fixed_timestamps() -> None:
    every5 = CronJob("*/5 * * * *", "jobs:add")
    t = ts(2024, 1, 1, 0, 7, 30)
    assert every5.last_tick(t) == ts(2024, 1, 1, 0, 5)
    assert every5.next_tick(t) == ts(2024, 1, 1, 0, 10)
    assert isinstance(every5.last_tick(t), int)
    # Exactly on a tick: that tick is the last one ("at or before"), the next is strictly later.
    on = ts(2024, 1, 1, 0, 10)
    assert every5.last_tick(on) == on
    assert every5.next_tick(on) == ts(2024, 1, 1, 0, 15)
    assert every5.last_tick(on + 0.5) == on
    assert every5.last_tick(on + 299) == on

    nightly = CronJob("0 3 * * *", "jobs:add")
    assert nightly.last_tick(ts(2024, 3, 10, 2, 59, 59)) == ts(2024, 3, 9, 3, 0)
    assert nightly.last_tick(ts(2024, 3, 10, 3, 0, 1)) == ts(2024, 3, 10, 3, 0)
    assert nightly.next_tick(ts(2024, 3, 10, 2, 59, 59)) == ts(2024, 3, 10, 3, 0)
    assert nightly.next_tick(ts(2024, 12, 31, 4, 0)) == ts(2025, 1, 1, 3, 0)  # over the year end

    every_minute = CronJob("* * * * *", "jobs:add")
    t = ts(2024, 2, 29, 23, 59, 59)  # leap day, last second
    assert every_minute.last_tick(t) == ts(2024, 2, 29, 23, 59)
    assert every_minute.next_tick(t) == ts(2024, 3, 1, 0, 0)


@pytest.mark.parametrize("early", [0.5, 0.001])
def test_last_tick_is_never_in_the_future(early: float) -> None:
    every5 = CronJob("*/5 * * * *", "jobs:add")
    now = ts(2024, 1, 1, 0, 10) - early
    assert every5.last_tick(now) <= now
    assert every5.last_tick(now) == ts(2024, 1, 1, 0, 5)


def test_cron_registers_and_refuses_a_duplicate(monkeypatch) -> None:
    monkeypatch.setattr(periodic, "_registry", [])
    entry = cron("*/5 * * * *", "jobs:add", name="adder", args=(1, 2))
    assert entry.args == (1, 2) and periodic.registered() == [entry]
    with pytest.raises(InvalidArgument, match="registered twice"):
        cron("0 * * * *", "jobs:echo", name="adder")
    cron("0 * * * *", "jobs:echo", name="adder", queue="other")  # same name, other queue: fine
    assert len(periodic.registered()) == 2
    with pytest.raises(ConveyorError):
        cron("* * * * *", "not a path")


# -- TOML files ----------------------------------------------------------------------------------


def test_load_file_reads_every_key_and_applies_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
[[cron]]
schedule = "0 3 * * *"
func = "jobs:echo"
queue = "reports"
name = "nightly-report"
args = [7, "x"]
kwargs = { fmt = "pdf" }
timeout = 30.5

[[cron]]
schedule = "*/5 * * * *"
func = "jobs:add"
""")
    full, minimal = periodic.load_file(path)
    assert full == CronJob("0 3 * * *", "jobs:echo", "reports", "nightly-report", (7, "x"), {"fmt": "pdf"}, 30.5)
    assert minimal.queue == "default" and minimal.args == () and minimal.kwargs == {} and minimal.timeout is None
    assert minimal.name == CronJob("*/5 * * * *", "jobs:add").name
    assert periodic.load_file(write(tmp_path, "# nothing here\n", "empty.toml")) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ('[[cron]]\nschedule = "* * * * *"\n', "entry 1: needs 'schedule' and 'func'"),
        ('[[cron]]\nfunc = "jobs:add"\n', "needs 'schedule' and 'func'"),
        ('[[cron]]\nschedule = "* * * * *"\nfunc = "jobs:add"\n\n[[cron]]\nschedule = "* * * * *"\nfunc = "jobs:add"\n'
         'name = "b"\ncolour = "red"\n', "entry 2: needs 'schedule' and 'func'; unknown keys ['colour']"),
        ('[[cron]\nschedule = "* * * * *"\n', "cannot read cron file"),
        ('[[cron]]\nschedule = * * * * *\n', "cannot read cron file"),
        ('cron = "0 * * * *"\n', "'cron' must be an array of tables"),
        ('[[cron]]\nschedule = "* * *"\nfunc = "jobs:add"\n', "entry 1: invalid cron schedule"),
        ('[[cron]]\nschedule = "* * * * *"\nfunc = "not a path"\n', "entry 1: invalid function path"),
        ('[[cron]]\nschedule = "* * * * *"\nfunc = "jobs:add"\nname = "bad name"\n', "entry 1: invalid cron name"),
    ],
)
def test_load_file_errors_are_clear(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConveyorError) as info:
        periodic.load_file(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_load_file_of_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConveyorError, match="cannot read cron file"):
        periodic.load_file(tmp_path / "nope.toml")


@pytest.mark.parametrize(
    "text",
    [
        '[[cron]]\nschedule = "* * * * *"\nfunc = "jobs:add"\nargs = 5\n',
        '[[cron]]\nschedule = "* * * * *"\nfunc = "jobs:add"\nkwargs = [1]\n',
        'cron = [1, 2]\n',
    ],
)
def test_load_file_wrong_types_are_clear_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConveyorError):
        periodic.load_file(write(tmp_path, text))


@pytest.mark.parametrize("timeout", ['"abc"', "-1", "0"])
def test_load_file_rejects_a_bad_timeout(tmp_path: Path, timeout: str) -> None:
    path = write(tmp_path, f'[[cron]]\nschedule = "* * * * *"\nfunc = "jobs:add"\ntimeout = {timeout}\n')
    with pytest.raises(ConveyorError):
        periodic.load_file(path)


def test_load_file_rejects_duplicate_names(tmp_path: Path) -> None:
    path = write(tmp_path, '[[cron]]\nschedule = "* * * * *"\nfunc = "jobs:add"\nname = "x"\n\n'
                           '[[cron]]\nschedule = "*/2 * * * *"\nfunc = "jobs:echo"\nname = "x"\n')
    with pytest.raises(ConveyorError):
        periodic.load_file(path)


def test_worker_refuses_to_start_with_a_bad_cron_file(tmp_path: Path, spawn_worker) -> None:
    path = write(tmp_path, '[[cron]]\nschedule = "* * * * *"\nfunc = "jobs:add"\nbogus = 1\n')
    w = spawn_worker("--with-scheduler", "--cron-file", str(path))
    assert w.wait(15) == 2
    log = w.log()
    assert "unknown keys ['bogus']" in log and "Traceback" not in log


def test_bad_cron_timeout_does_not_silently_kill_the_scheduler(queue: Queue, conn, redis_url, tmp_path: Path,
                                                                spawn_worker) -> None:
    path = write(tmp_path, '[[cron]]\nschedule = "* * * * *"\nfunc = "jobs:add"\nargs = [1, 2]\ntimeout = "abc"\n')
    w = spawn_worker("--with-scheduler", "--cron-file", str(path), "--scheduler-lock-seconds", "1")
    job = queue.enqueue_in(0.3, "jobs_reliability:count", redis_url, "t:delayed")
    # Acceptable: the worker refuses the file at start (exit 2), or the scheduler keeps working.
    wait_until(lambda: w.proc.poll() is not None or fetch(conn, job.id).status is JobStatus.FINISHED, 15,
               "a startup error or the delayed job to run")  # the worker's start-up counts: generous
    assert w.proc.poll() == 2 or runs(conn, "t:delayed") == 1


# -- end to end ----------------------------------------------------------------------------------


def test_due_tick_is_enqueued_exactly_once_with_two_schedulers(queue: Queue, conn, redis_url, tmp_path: Path,
                                                               spawn_worker) -> None:
    path = write(tmp_path, f"""
[[cron]]
schedule = "* * * * *"
func = "jobs_reliability:count"
name = "every-minute"
args = ["{redis_url}", "t:cron"]
""")
    tick = current_minute()
    conn.hset(K.cron, "every-minute", tick - 60)  # the previous tick was enqueued: this one is due now
    flags = ("--with-scheduler", "--cron-file", str(path), "--scheduler-lock-seconds", "1")
    workers = [spawn_worker(*flags), spawn_worker(*flags)]
    job_id = f"cron-every-minute-{tick}"

    done = wait_status(conn, job_id, JobStatus.FINISHED, JobStatus.FAILED)
    assert done.status is JobStatus.FINISHED and done.result == 1
    assert done.deliveries == 1 and runs(conn, "t:cron") == 1
    assert int(conn.hget(K.cron, "every-minute")) == tick
    assert cron_job_ids(conn, "every-minute") == [job_id]

    # The leader remembers it enqueued the tick; a new leader does not, and must still not enqueue it again.
    leader_pid = int(conn.get(K.scheduler_lock).decode().rsplit(".", 2)[1])
    (leader,) = [w for w in workers if w.pid == leader_pid]
    (other,) = [w for w in workers if w is not leader]
    leader.signal(signal.SIGKILL)
    leader.wait(5)
    other.wait_log("leading queue default", timeout=5)
    # A delayed job promoted by the new leader proves it went through its cron step at least once.
    marker = queue.enqueue_in(0.2, "jobs_reliability:count", redis_url, "t:marker")
    wait_status(conn, marker.id, JobStatus.FINISHED)
    assert cron_job_ids(conn, "every-minute") == [job_id]
    assert runs(conn, "t:cron") == 1
    assert sum(w.log().count("cron every-minute: enqueued tick") for w in workers) == 1


def test_new_schedule_skips_the_past_tick_and_missed_ticks_are_enqueued_once(
    conn, redis_url, tmp_path: Path, spawn_worker
) -> None:
    entries = "".join(f"""
[[cron]]
schedule = "* * * * *"
func = "jobs_reliability:count"
name = "{name}"
args = ["{redis_url}", "t:{name}"]
""" for name in ("fresh", "missed", "due"))
    path = write(tmp_path, entries)
    tick = current_minute()
    conn.hset(K.cron, "missed", tick - 600)  # no scheduler ran for ten minutes
    conn.hset(K.cron, "due", tick - 60)
    spawn_worker("--with-scheduler", "--cron-file", str(path))

    # Entries are handled in file order within one scheduler step: once "due" ran,
    # "fresh" and "missed" have been looked at.
    wait_status(conn, f"cron-due-{tick}", JobStatus.FINISHED)
    wait_status(conn, f"cron-missed-{tick}", JobStatus.FINISHED)
    # First sight of "fresh": its current tick is recorded, not enqueued.
    assert int(conn.hget(K.cron, "fresh")) == tick
    assert cron_job_ids(conn, "fresh") == []
    assert runs(conn, "t:fresh") == 0
    # "missed": only the most recent missed tick, once, late; the nine older ones are skipped.
    assert cron_job_ids(conn, "missed") == [f"cron-missed-{tick}"]
    assert runs(conn, "t:missed") == 1
    assert int(conn.hget(K.cron, "missed")) == tick
