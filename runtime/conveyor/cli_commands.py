"""``conveyor enqueue`` and ``conveyor info`` (with ``--watch``): the two commands people
coming from RQ reach for first. Kept apart from cli.py, which registers them."""

from __future__ import annotations

import datetime as dt
import json
import re
import sys
import time
from typing import Any

import click
import redis

from . import logs
from .cli_options import UsageLine, Where, redis_options
from .connection import describe
from .errors import ConveyorError
from .validation import function_path

# KEY=VALUE is a keyword argument; a positional string argument is JSON, so it is quoted
# ('"a=b"') and can never look like one.
_KEYWORD = re.compile(r"([A-Za-z_]\w*)=(.*)", re.DOTALL)
_CLEAR = "\033[H\033[2J"  # cursor home, clear screen: what `watch` does between frames


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        # The common slip: a bare word meant as a string. Say how to write it rather than
        # guess, because guessing makes `1` and `"1"` ambiguous.
        raise UsageLine(f"{what} {text!r} is not a JSON value; write a string as '\"{text}\"' "
                               f"(numbers, true/false/null, lists and objects as in JSON)") from None


def parse_call(values: tuple[str, ...], kwargs_json: str | None) -> tuple[list[Any], dict[str, Any]]:
    """Positional arguments and keyword arguments from the command line, each a JSON value."""
    kwargs: dict[str, Any] = {}
    if kwargs_json is not None:
        parsed = _json(kwargs_json, "--kwargs")
        if not isinstance(parsed, dict):
            raise UsageLine(f"--kwargs must be a JSON object such as '{{\"x\": 1}}', got {kwargs_json!r}")
        kwargs.update(parsed)
    args: list[Any] = []
    keyword_seen = False
    for value in values:
        m = _KEYWORD.fullmatch(value)
        if m:
            if m.group(1) in kwargs:
                raise UsageLine(f"keyword argument {m.group(1)!r} given twice")
            kwargs[m.group(1)] = _json(m.group(2), f"the value of {m.group(1)}=")
            keyword_seen = True
        elif keyword_seen:  # as in Python: f(x=1, 2) would be a syntax error
            raise UsageLine(f"positional argument {value!r} follows a keyword argument")
        else:
            args.append(_json(value, "argument"))
    return args, kwargs


@click.command()
@click.argument("func")
@click.argument("arguments", nargs=-1, metavar="[ARG|KEY=VALUE]...")
@click.option("-q", "--queue", default="default", show_default=True, help="Queue to put the job on.")
@click.option("--kwargs", "kwargs_json", metavar="JSON", help='Keyword arguments as one JSON object, e.g. \'{"x": 1}\'.')
@click.option("--job-id", help="Job ID (default: generated).")
@click.option("--timeout", type=float, help="Seconds the job may run (default: the worker's --default-timeout).")
@click.option("--delay", type=float, metavar="SECONDS", help="Run no sooner than this many seconds from now.")
@click.option("--at", "at", type=click.DateTime(), metavar="DATETIME",
              help="Run no sooner than this local time (ISO 8601, e.g. 2030-01-31T09:00:00).")
@redis_options
def enqueue(func: str, arguments: tuple[str, ...], queue: str, kwargs_json: str | None, job_id: str | None,
            timeout: float | None, delay: float | None, at: dt.datetime | None, where: Where) -> None:
    """Put FUNC(ARG..., KEY=VALUE...) on a queue and print the job's ID.

    FUNC is an import path the worker can import ('myapp.tasks:add' or 'myapp.tasks.add').
    Each ARG and VALUE is JSON: 1, 2.5, true, null, '"text"', '[1, 2]', '{"a": 1}'. Put
    '--' before arguments that start with a dash (negative numbers):

    \b
        conveyor enqueue myapp.tasks:add 1 2 -q default
        conveyor enqueue myapp.tasks:send_email '"ada@example.com"' subject='"hi"'
        conveyor enqueue myapp.tasks:add -q default -- -1 2
    """
    from .queue import Queue

    if delay is not None and at is not None:
        raise UsageLine("give --delay or --at, not both")
    if delay is not None and delay < 0:
        raise UsageLine(f"--delay must be seconds >= 0, got {delay:g}")
    try:
        function_path(func)  # a bad path is a usage error, said before any connection attempt
    except ConveyorError as exc:
        raise UsageLine(str(exc)) from None
    args, kwargs = parse_call(arguments, kwargs_json)
    options: dict[str, Any] = {k: v for k, v in (("job_id", job_id), ("timeout", timeout)) if v is not None}
    try:
        q = Queue(queue, connection=where.connect(), prefix=where.space.prefix)
        if at is not None:
            job = q.enqueue_at(at, func, *args, **options, **kwargs)
        elif delay is not None:
            job = q.enqueue_in(delay, func, *args, **options, **kwargs)
        else:
            job = q.enqueue_call(func, args, kwargs, **options)
    except ConveyorError as exc:
        raise click.ClickException(str(exc)) from None
    except TypeError as exc:  # a keyword that clashes with an option of enqueue_in/enqueue_at
        raise UsageLine(str(exc)) from None
    click.echo(job.id)


def render_info(data: dict[str, Any]) -> str:
    """The text of one `conveyor info` (one frame of --watch)."""
    from .cli import _ago, _table

    if data["queues"]:
        q_rows = [[q["name"], q["ready"], q["recovered"], q["scheduled"], q["deferred"], q["prefetched"], q["started"], q["finished"],
                   q["failed"], q["canceled"], q["scheduler_leader"] or "none"] for q in data["queues"]]
        queues = _table(q_rows, ["QUEUE", "READY", "RECOVERED", "SCHEDULED", "DEFERRED", "PREFETCHED", "STARTED", "FINISHED",
                                 "FAILED", "CANCELED", "SCHEDULER"])
    else:
        # A header with nothing under it reads as "something failed to load".
        queues = "no queues yet: a queue appears when a job is first enqueued on it"
    w_rows = [[w["id"], ",".join(w["queues"]), w["pool"], w["concurrency"], w["state"], _ago(w["last_seen"]),
               ", ".join(w["current_jobs"][:5]) + (f" (+{len(w['current_jobs']) - 5})" if len(w["current_jobs"]) > 5 else "")]
              for w in data["workers"]]
    workers = (_table(w_rows, ["WORKER", "QUEUES", "POOL", "CONC", "STATE", "SEEN", "CURRENT JOBS"]) if w_rows
               else "no live workers")
    return f"{queues}\n\n{workers}"


def _frame(conn: Any, queue: str | None, where: Where) -> tuple[str, str | None]:
    """(frame text, warning for stderr)."""
    from .admin import fleet_info

    data = fleet_info(conn, queue, where.space)
    return render_info(data), data["redis"].get("warning")


@click.command()
@redis_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("-q", "--queue", help="Only this queue.")
@click.option("-w", "--watch", "interval", type=click.FloatRange(min=0.1), is_flag=False, flag_value=2.0,
              default=None, metavar="[N]",
              help="Show it again every N seconds (default 2) until Ctrl-C, like `watch`.")
def info(where: Where, as_json: bool, queue: str | None, interval: float | None) -> None:
    """Queues with counts per state, live workers and their current jobs, scheduler leaders."""
    from .admin import fleet_info

    if interval is not None and as_json:
        raise UsageLine("--watch shows the table; for JSON, run `conveyor info --json` on a timer")
    conn = where.connect()
    if interval is None:
        try:
            if as_json:
                click.echo(json.dumps(fleet_info(conn, queue, where.space), indent=2))
                return
            text, warning = _frame(conn, queue, where)
        except ConveyorError as exc:
            raise click.ClickException(str(exc)) from None
        if warning:
            click.echo(f"warning: {warning}", err=True)
        click.echo(text)
        return
    _watch(conn, queue, where, interval)


def _watch(conn: Any, queue: str | None, where: Where, interval: float) -> None:
    # On a terminal each frame replaces the last; into a pipe or file the frames follow one
    # another, each under its own header, so a log of them stays readable.
    tty = sys.stdout.isatty()
    warned = False
    try:
        while True:
            try:
                text, warning = _frame(conn, queue, where)
                if warning and not warned:
                    click.echo(f"warning: {warning}", err=True)
                    warned = True
            except ConveyorError as exc:  # e.g. -q names a queue that does not exist yet
                text = logs.printable(f"error: {exc}")
            except redis.RedisError as exc:  # Redis away for a moment: say so and keep watching
                text = logs.printable(f"error: {describe(exc, where.target)}")
            stamp = dt.datetime.now().isoformat(sep=" ", timespec="seconds")
            header = logs.printable(f"Every {interval:g}s: conveyor info{f' -q {queue}' if queue else ''}    {stamp}")
            click.echo(f"{_CLEAR if tty else ''}{header}\n\n{text}" + ("" if tty else "\n"))
            time.sleep(interval)
    except KeyboardInterrupt:
        # Ctrl-C is how one leaves a watch: not a failure, so exit 0 without "Aborted!".
        return
