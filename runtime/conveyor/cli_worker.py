"""Start-up plumbing of ``conveyor worker``: where the user's code is imported from, cron
options that only the scheduler reads, and how long a burst worker waits for Redis."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import click

from .cli_options import UsageLine
from .errors import ConfigError
from .limits import Limits, parse_count, parse_rate

ENV_PATH = "CONVEYOR_PATH"
# A burst worker is usually a CI step or a cron job: it must fail, not hang, when Redis
# never comes. A long-running worker waits for ever (Redis may be starting beside it).
BURST_CONNECT_TIMEOUT = 10.0


def _paths_option(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    # Read by hand: click would split CONVEYOR_PATH on whitespace, not on os.pathsep.
    if not value and os.environ.get(ENV_PATH):
        value = tuple(p for p in os.environ[ENV_PATH].split(os.pathsep) if p)
    for p in value:
        if not os.path.isdir(p):
            where = "--path" if ctx.get_parameter_source("paths") is click.core.ParameterSource.COMMANDLINE \
                else ENV_PATH
            raise UsageLine(f"{where}: {p} is not a folder")
    return value


def worker_start_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--path, --connect-timeout and the --limit-* options, for the worker command."""
    f = click.option("--limit-burst", metavar="N", help="With --limit-rate: starts allowed at once (default: "
                     "100 ms worth of the rate).")(f)
    f = click.option("--limit-max-concurrency", metavar="N|none", help="Like --limit-rate: at most N jobs of each "
                     "queue served running across all workers.")(f)
    f = click.option("--limit-rate", metavar="N/s|N/m|N/h|none",
                     help="Write this flow control to every queue served, at start (a JobQueue's spec.limits); "
                          "giving any --limit-* option clears the limits not given. Default: leave them as they are "
                          "(conveyor queue set).")(f)
    f = click.option("--path", "paths", multiple=True, callback=_paths_option, metavar="DIR",
                     help="Also import job functions and cron modules from DIR (repeatable; env CONVEYOR_PATH, "
                          "os.pathsep-separated). The current folder is always searched, after these.")(f)
    return click.option("--connect-timeout", type=float, default=None, envvar="CONVEYOR_CONNECT_TIMEOUT",
                        show_envvar=True,
                        help=f"Seconds to wait for Redis at start, then exit 1 (default: {BURST_CONNECT_TIMEOUT:g} "
                             "with --burst, else wait for ever; 0: wait for ever).")(f)


def import_paths(paths: tuple[str, ...]) -> list[str]:
    """Put the --path folders, then the current folder, first on sys.path; returns them.

    The ``conveyor`` console script puts its own bin folder there instead, so the
    project a user starts the worker from would not be importable (RQ and ``python -m``
    both search it). Absolute, so a job that changes the working folder changes nothing.
    Process-pool children get the same sys.path (procpool).
    """
    wanted = list(dict.fromkeys(os.path.abspath(p) for p in (*paths, os.getcwd())))
    sys.path[:] = wanted + [p for p in sys.path if p not in wanted]
    return wanted


def check_cron_options(with_scheduler: bool, cron_files: tuple[str, ...], cron_modules: tuple[str, ...]) -> None:
    """Cron options without the scheduler would load schedules that never run: refuse them."""
    given = [name for name, value in (("--cron-file", cron_files), ("--cron-module", cron_modules)) if value]
    if given and not with_scheduler:
        raise UsageLine(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} --with-scheduler: "
                        "only the scheduler enqueues cron ticks, so without it the schedules would never run")


def connect_timeout(value: float | None, burst: bool) -> float | None:
    if value is None:
        return BURST_CONNECT_TIMEOUT if burst else None
    if value < 0:
        raise UsageLine(f"--connect-timeout must be >= 0 seconds, got {value:g}")
    return value or None


def start_up(options: dict[str, Any]) -> None:
    """Check and apply the worker command's start-up options (in place, before WorkerSettings)."""
    check_cron_options(bool(options["with_scheduler"]), options["cron_files"], options["cron_modules"])
    options["connect_timeout"] = connect_timeout(options["connect_timeout"], bool(options["burst"]))
    import_paths(options.pop("paths"))


def limits_option(rate: Any, max_concurrency: Any, burst: Any) -> Limits | None:
    """The --limit-* options as the limits a worker declares at start (None: none given)."""
    if rate is None and max_concurrency is None and burst is None:
        return None
    try:
        return Limits(parse_rate(rate, "--limit-rate") if rate is not None else None,
                      parse_count(max_concurrency, "--limit-max-concurrency") if max_concurrency is not None else None,
                      parse_count(burst, "--limit-burst") if burst is not None else None)
    except ConfigError as exc:
        raise UsageLine(str(exc)) from None
