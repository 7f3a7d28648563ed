"""The ``conveyor`` command line."""

from __future__ import annotations

import faulthandler
import json
import signal
import sys
import time
from typing import Any, cast

import click
import redis

from . import __version__, keys, logs
from .cli_commands import enqueue, info
from .cli_dashboard import dashboard
from .cli_options import REDIS_OPTIONS, Group, UsageLine, Where, allow_modules_option, queues_option, redis_options
from .cli_queue import queue
from .cli_worker import limits_option, start_up, worker_start_options
from .connection import ENV_URL, describe, error_line, resolve_url
from .errors import ConveyorError
from .settings import DEFAULT_METRICS_PORT, POOLS, WorkerSettings


@click.group(cls=Group)
@click.version_option(__version__, prog_name="conveyor")
def main() -> None:
    """Conveyor: a lease-based Redis job queue."""


main.add_command(enqueue)
main.add_command(info)
main.add_command(dashboard)
main.add_command(queue)


# A group that runs the worker itself when no subcommand follows (``conveyor worker -q a``).
@main.group(invoke_without_command=True)
@REDIS_OPTIONS[0]
@REDIS_OPTIONS[1]
@REDIS_OPTIONS[2]
@REDIS_OPTIONS[3]
@REDIS_OPTIONS[4]
@click.option("-q", "--queues", "queues", multiple=True, callback=queues_option, metavar="Q1,Q2",
              help="Queues to serve, highest priority first (repeatable or comma-separated; default 'default'; "
                   "env CONVEYOR_QUEUES).")
@click.option("-c", "--concurrency", envvar="CONVEYOR_CONCURRENCY", show_envvar=True, type=int, default=10, show_default=True, help="Jobs run at once.")
@click.option("--pool", envvar="CONVEYOR_POOL", show_envvar=True, type=click.Choice(POOLS), default="thread", show_default=True,
              help="Where sync jobs run: threads, child processes (hard timeouts), or nowhere (async jobs only).")
@click.option("--prefetch", type=int, default=None, envvar="CONVEYOR_PREFETCH", show_envvar=True,
              help="Jobs claimed beyond those running (default: adaptive, about 50 ms of work while jobs are short, none for long jobs).")
@click.option("--burst", envvar="CONVEYOR_BURST", show_envvar=True, is_flag=True, help="Exit once the queues are empty.")
@click.option("--default-timeout", envvar="CONVEYOR_DEFAULT_TIMEOUT", show_envvar=True, type=float, default=180.0, show_default=True, help="Seconds a job may run unless it sets its own timeout.")
@click.option("--lease-seconds", envvar="CONVEYOR_LEASE_SECONDS", show_envvar=True, type=float, default=15.0, show_default=True, help="Lease length; renewed every third of it.")
@click.option("--shutdown-timeout", envvar="CONVEYOR_SHUTDOWN_TIMEOUT", show_envvar=True, type=float, default=25.0, show_default=True, help="Seconds running jobs get after SIGTERM.")
@click.option("--max-jobs-per-child", envvar="CONVEYOR_MAX_JOBS_PER_CHILD", show_envvar=True, type=int, default=0, show_default=True, help="Recycle a process-pool child after this many jobs (0: never).")
@click.option("--allow-pickle", envvar="CONVEYOR_ALLOW_PICKLE", show_envvar=True, is_flag=True, help="Run pickled jobs. Pickle executes code: only if you trust everyone who can write to Redis.")
@click.option("--allow-module", "allow_modules", multiple=True, callback=allow_modules_option, metavar="PKG",
              help="Run only jobs whose function lives in PKG or its submodules (repeatable or comma-separated; "
                   "env CONVEYOR_ALLOW_MODULES). Without it: anything importable except the standard library.")
@click.option("--with-scheduler", is_flag=True, envvar="CONVEYOR_WITH_SCHEDULER", show_envvar=True,
              help="Also run the scheduler (delayed jobs, interval retries, lease reaping, cron); one worker leads per queue.")
@click.option("--scheduler-lock-seconds", type=float, default=5.0, show_default=True, envvar="CONVEYOR_SCHEDULER_LOCK_SECONDS",
              help="TTL of the scheduler leader's lock: a dead leader is replaced within it.")
@click.option("--max-deliveries", type=int, default=3, show_default=True, envvar="CONVEYOR_MAX_DELIVERIES",
              help="Times a job may lose its worker (lease expired) before it fails as abandoned.")
@click.option("--cron-file", "cron_files", multiple=True, type=click.Path(dir_okay=False),
              help="TOML file of [[cron]] schedules (repeatable).")
@click.option("--cron-module", "cron_modules", multiple=True, help="Module that registers schedules with conveyor.cron() (repeatable).")
@click.option("--result-ttl", type=int, default=None, envvar="CONVEYOR_RESULT_TTL",
              help="Seconds to keep finished jobs that set no result_ttl (default 500; 0 deletes, -1 keeps).")
@click.option("--failure-ttl", type=int, default=None, envvar="CONVEYOR_FAILURE_TTL",
              help="Seconds to keep failed jobs that set no failure_ttl (default 7 days).")
@click.option("--policy-file", envvar="CONVEYOR_POLICY_FILE", show_envvar=True, type=click.Path(dir_okay=False),
              help="JSON policy for jobs without their own: retry, result_ttl, failure_ttl (the operator's ConfigMap).")
@click.option("--require-noeviction", is_flag=True, envvar="CONVEYOR_REQUIRE_NOEVICTION", show_envvar=True,
              help="Refuse to start when Redis's maxmemory-policy is not noeviction (an evicting Redis loses jobs).")
@click.option("--metrics-port", type=int, default=DEFAULT_METRICS_PORT, show_default=True, envvar="CONVEYOR_METRICS_PORT", show_envvar=True,
              help="Port for /metrics, /healthz and /readyz (0 disables; the default keeps clear of node_exporter's 9100).")
@click.option("--metrics-host", default="0.0.0.0", show_default=True, envvar="CONVEYOR_METRICS_HOST")
@click.option("--name", envvar="CONVEYOR_NAME", show_envvar=True, help="Worker ID (default host.pid.random).")
@click.option("--log-level", envvar="CONVEYOR_LOG_LEVEL", show_envvar=True, type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True)
@click.option("--log-format", envvar="CONVEYOR_LOG_FORMAT", show_envvar=True, type=click.Choice(["text", "json"]),
              default="text", show_default=True, help="json: one object per line, with job_id, execution_id, queue, duration.")
@click.option("--log-tracebacks/--no-log-tracebacks", envvar="CONVEYOR_LOG_TRACEBACKS", show_envvar=True, default=True,
              show_default=True, help="Log a failed job's traceback on its WARNING line (off: on a DEBUG line).")
@click.option("--log-args/--no-log-args", envvar="CONVEYOR_LOG_ARGS", show_envvar=True, default=None,
              help="Show each job's arguments (shortened) on the line that logs how it ended (default: on for text logs, off for json).")
@worker_start_options
def worker(redis_url: str | None, queues: tuple[str, ...], log_level: str, log_format: str, **options: object) -> None:
    """Run a worker (``conveyor worker release`` gives back a lost worker's jobs)."""
    if click.get_current_context().invoked_subcommand:
        return
    start_up(options)  # --path, --connect-timeout, cron options that need the scheduler
    logs.setup(log_level, log_format, batched=True)  # a write per loop turn, not per line
    try:
        settings = worker_settings(redis_url, queues, log_format, options)
    except ConveyorError as exc:
        raise UsageLine(str(exc)) from None
    from .worker import Worker

    # `kill -USR1 <pid>` dumps every thread's stack to stderr: for a worker that seems stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    sys.exit(Worker(settings).run())


def worker_settings(redis_url: str | None, queues: tuple[str, ...], log_format: str,
                    options: dict[str, object]) -> WorkerSettings:
    """The worker command's parsed options as WorkerSettings (tests parse the operator's worker
    arguments through here, so the CRD's defaults are checked against the runtime's)."""
    options = dict(options)
    policy_file = options.pop("policy_file")
    policy = WorkerSettings.read_policy(cast(str, policy_file)) if policy_file else {}  # click.Path: a str
    # A flag given on the command line wins over the policy file, which wins over defaults.
    for key in ("result_ttl", "failure_ttl"):
        if options[key] is None:
            options.pop(key)
    options["prefix"] = options["prefix"] or keys.DEFAULT_PREFIX
    options["limits"] = limits_option(options.pop("limit_rate"), options.pop("limit_max_concurrency"),
                                      options.pop("limit_burst"))
    if options["log_args"] is None:  # JSON logs feed pipelines that keep them: arguments only if asked
        options["log_args"] = log_format == "text"
    return WorkerSettings(redis_url=resolve_url(redis_url), queues=queues, **{**policy, **options})


@worker.command("release")
@click.argument("worker_id", required=False)
@click.option("--pod", help="Release every worker registered with this pod name (their POD_NAME).")
@click.option("--reason", help='Message of the started jobs\' WorkerLost attempt (default "worker lost: released by hand").')
@click.option("--max-deliveries", type=int, default=3, show_default=True, help="As the workers' --max-deliveries.")
@redis_options
def worker_release(worker_id: str | None, pod: str | None, reason: str | None, max_deliveries: int,
                   where: Where) -> None:
    """Give back now every job of a lost worker (its pod is gone), not when its leases run out.
    Only for a worker known to be dead: a live one would run its jobs twice."""
    from .admin import release_worker, workers_on_pod

    if bool(worker_id) == bool(pod):
        raise click.UsageError("give either a WORKER_ID or --pod POD")
    conn = where.connect()
    try:
        # The check above: without a WORKER_ID there is a pod.
        ids = [worker_id] if worker_id else workers_on_pod(conn, cast(str, pod), where.space.prefix)
        if not ids:
            raise ConveyorError(f"no worker is registered with pod {pod!r} (prefix {where.space.prefix!r})")
        for wid in ids:
            why = reason or f"worker lost: {f'pod {pod} ' if pod else ''}released by hand"
            released = release_worker(conn, wid, why, where.space.prefix, max_deliveries)
            for r in released:
                click.echo(logs.printable(r.line()))
            if not released:
                click.echo(logs.printable(f"worker {wid}: no jobs held; registration removed"))
    except ConveyorError as exc:
        raise click.ClickException(str(exc)) from None


def _table(rows: list[list[Any]], header: list[str]) -> str:
    # Cells hold text from Redis: escaped, so it cannot move the cursor or reorder the line.
    cells = [header] + [["-" if c is None else logs.printable(str(c)) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells)


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    d = time.time() - ts
    return f"{d:.1f}s ago" if d < 120 else f"{d / 60:.0f}m ago" if d < 7200 else f"{d / 3600:.1f}h ago"


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@main.group()
def job() -> None:
    """Look at or steer one job by its plain job ID."""


def _fetch(where: Where, job_id: str, queue: str | None, allow_pickle: bool = False) -> Any:
    from .job import Job

    try:
        return Job.fetch(job_id, connection=where.connect(), queue=queue, allow_pickle=allow_pickle,
                         prefix=where.space.prefix)
    except ConveyorError as exc:
        raise click.ClickException(str(exc)) from None


@job.command("show")
@click.argument("job_id")
@click.option("-q", "--queue", help="Queue of the job (default: found by ID).")
@redis_options
@json_option
@click.option("--allow-pickle", is_flag=True,
              help="Show the args and result of a pickled job. Unpickling runs code: only if you trust everyone "
                   "who can write to Redis.")
def job_show(job_id: str, queue: str | None, where: Where, as_json: bool, allow_pickle: bool) -> None:
    """Everything about a job: status, call, result or error, attempts."""
    from .admin import job_details

    data = job_details(_fetch(where, job_id, queue, allow_pickle))
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    from .show import lines

    attempts = data.pop("attempts")
    click.echo("\n".join(lines(data, _ago)))
    if attempts:
        click.echo("")
        click.echo(_table([[a["number"], a["execution_id"], a["exc_type"] or "ok", a["exc_message"] or ""]
                           for a in attempts], ["ATTEMPT", "EXECUTION", "OUTCOME", "MESSAGE"]))


@job.command("stop")
@click.argument("job_id")
@click.option("-q", "--queue", help="Queue of the job (default: found by ID).")
@redis_options
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds to wait for the worker.")
def job_stop(job_id: str, queue: str | None, where: Where, timeout: float) -> None:
    """Stop a running job on whichever worker runs it; it ends as canceled (not retried)."""
    from .admin import stop_job

    try:
        j = stop_job(_fetch(where, job_id, queue), timeout)
    except ConveyorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"stopped {j.id} (queue {j.queue}): now {j.status.value}")


@job.command("cancel")
@click.argument("job_id")
@click.option("-q", "--queue", help="Queue of the job (default: found by ID).")
@redis_options
def job_cancel(job_id: str, queue: str | None, where: Where) -> None:
    """Cancel a queued or scheduled job."""
    j = _fetch(where, job_id, queue)
    try:
        j.cancel()
    except ConveyorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"canceled {j.id} (queue {j.queue})")


@main.command()
@click.argument("queue")
@redis_options
@click.option("--scheduled", is_flag=True, help="Delete scheduled jobs too.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge(queue: str, where: Where, scheduled: bool, yes: bool) -> None:
    """Delete the waiting jobs of a queue (started, finished and failed jobs are kept)."""
    from .admin import purge as purge_queue

    conn = where.connect()
    if not yes:
        what = "ready and scheduled" if scheduled else "ready"
        click.confirm(f"Delete every {what} job of queue {queue!r}?", abort=True)
    try:
        ready, sched = purge_queue(conn, queue, scheduled, where.space)
    except ConveyorError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"purged queue {queue}: {ready} ready" + (f", {sched} scheduled" if scheduled else "") + " jobs deleted")


@main.command()
@click.argument("job_ids", nargs=-1)
@redis_options
@click.option("-q", "--queue", help="Queue of the jobs (default: found by job ID; required with --all-failed).")
@click.option("--all-failed", is_flag=True, help="Requeue every failed job of --queue.")
def requeue(job_ids: tuple[str, ...], where: Where, queue: str | None, all_failed: bool) -> None:
    """Put failed jobs back on their queue, with a fresh retry budget."""
    from .job import Job
    from .queue import Queue

    if bool(job_ids) == all_failed:
        raise click.UsageError("give the IDs of the failed jobs to requeue, or --all-failed --queue Q"
                               if not job_ids else "give job IDs or --all-failed, not both")
    if all_failed and not queue:
        raise click.UsageError("--all-failed needs --queue")
    try:
        conn = where.connect()
        if all_failed:
            # The check above: --all-failed comes with a queue.
            count = Queue(cast(str, queue), connection=conn, prefix=where.space.prefix).requeue_all_failed()
            click.echo(f"requeued {count} failed jobs of queue {queue}")
            return
        for job_id in job_ids:
            job = Job.fetch(job_id, connection=conn, queue=queue, prefix=where.space.prefix)
            job.requeue()
            click.echo(f"requeued {job_id} on queue {job.queue}")
    except ConveyorError as exc:
        raise click.ClickException(str(exc)) from None
    except redis.RedisError as exc:
        raise click.ClickException(describe(exc, where.target)) from None


class _DoctorFailed(click.ClickException):
    exit_code = 2  # doctor's 1 means "problems found"


@main.command()
@redis_options
@click.option("-q", "--queue", help="Only this queue (default: every queue, also those known only by their keys).")
@json_option
@click.option("--fix", is_flag=True, help="Repair what was found (each finding re-checked atomically), then check again.")
def doctor(where: Where, queue: str | None, as_json: bool, fix: bool) -> None:
    """Check queues for the inconsistencies a fault can leave; exit 1 if any is found."""
    from .doctor import format_report
    from .doctor_redis import run

    try:
        report = run(where.connect(), queue, fix=fix, space=where.space)
    except click.ClickException as exc:
        raise _DoctorFailed(exc.message) from None
    except ConveyorError as exc:
        raise _DoctorFailed(error_line(exc)) from None
    except redis.RedisError as exc:
        raise _DoctorFailed(describe(exc, where.target)) from None
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo("\n".join(format_report(report)))
    sys.exit(0 if report["ok"] else 1)


@main.command()
@click.option("--redis-url", envvar=ENV_URL, show_envvar=True,
              help="Use this Redis instead of starting a private redis-server.")
def demo(redis_url: str | None) -> None:
    """Enqueue a few jobs (one fails), run a worker on them, show what happened."""
    from .demo import run_demo

    try:
        sys.exit(run_demo(redis_url))
    except ConveyorError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":
    main()
