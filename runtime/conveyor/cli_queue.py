"""``conveyor queue set`` and ``conveyor queue show``: a queue's flow control (:mod:`conveyor.limits`)."""

from __future__ import annotations

import json

import click

from .cli_options import UsageLine, Where, redis_options
from .errors import ConfigError, ConveyorError
from .limits import KEEP, Keep, Limits, parse_count, parse_rate
from .validation import check_queue_name


@click.group()
def queue() -> None:
    """A queue's flow control, fleet-wide: rate and max concurrency."""


def _queue_name(name: str) -> str:
    try:
        return check_queue_name(name)
    except ConveyorError as exc:
        raise UsageLine(str(exc)) from None


def _show(name: str, limits: Limits, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({"queue": name, "rate": str(limits.rate) if limits.rate else None,
                               "burst": limits.burst if limits.rate else None,
                               "max_concurrency": limits.max_concurrency}))
    else:
        click.echo(f"queue {name}: {limits.describe()}")


@queue.command("set")
@click.argument("name")
@click.option("--rate", metavar="N/s|N/m|N/h|none", help="At most N jobs start per second, minute or hour, "
              "across all workers (a token bucket); none clears it.")
@click.option("--max-concurrency", metavar="N|none", help="At most N jobs of the queue running (or prefetched) "
              "across all workers; none clears it.")
@click.option("--burst", metavar="N|none", help="With a rate: starts allowed at once after a quiet spell "
              "(default: 100 ms worth of the rate, at least 1).")
@click.option("--json", "as_json", is_flag=True, help="Print the limits now in force as JSON.")
@redis_options
def queue_set(name: str, rate: str | None, max_concurrency: str | None, burst: str | None, as_json: bool,
              where: Where) -> None:
    """Set or clear a queue's limits; options not given are kept. Enforced by every claim, so
    no worker exceeds them. On a queue a JobQueue declares limits for, its workers write the
    spec's limits back at their next rollout."""
    from .queue import Queue

    name = _queue_name(name)
    if rate is None and max_concurrency is None and burst is None:
        raise UsageLine("give --rate, --max-concurrency or --burst (none clears a limit)")
    try:
        new_rate = parse_rate(rate, "--rate") if rate is not None else KEEP
        new_max: int | None | Keep = parse_count(max_concurrency, "--max-concurrency") \
            if max_concurrency is not None else KEEP
        new_burst: int | None | Keep = parse_count(burst, "--burst") if burst is not None else KEEP
    except ConfigError as exc:
        raise UsageLine(str(exc)) from None
    q = Queue(name, connection=where.connect(), prefix=where.space.prefix)
    _show(name, q.set_limits(rate=new_rate, max_concurrency=new_max, burst=new_burst), as_json)


@queue.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="As JSON.")
@redis_options
def queue_show(name: str, as_json: bool, where: Where) -> None:
    """Print a queue's limits."""
    from .queue import Queue

    name = _queue_name(name)
    _show(name, Queue(name, connection=where.connect(), prefix=where.space.prefix).limits(), as_json)
