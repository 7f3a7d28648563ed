"""Option plumbing shared by the ``conveyor`` commands: where Redis is (URL, prefix, TLS
files) as one ``Where``, list-valued options read from the environment, and a group that
turns any unhandled Redis error into one line."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
import redis

from . import keys
from .connection import ENV_CA_FILE, ENV_CERT_FILE, ENV_KEY_FILE, ENV_URL, RedisTarget, TlsFiles, describe, resolve_url
from .errors import ConveyorError


def queues_option(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    # CONVEYOR_QUEUES is read here, not by click, which would split it on whitespace and
    # turn "bad name" into two queues instead of an error.
    source = ""
    if not value and os.environ.get("CONVEYOR_QUEUES"):
        value, source = (os.environ["CONVEYOR_QUEUES"],), " (from CONVEYOR_QUEUES)"
    names = tuple(n.strip() for v in value for n in v.split(",") if n.strip())
    if value and not names:  # "-q ," or CONVEYOR_QUEUES=",": a mistake, not a wish for "default"
        raise click.BadParameter(f"{','.join(value)!r}{source} names no queue", ctx, param)
    return names or ("default",)


def allow_modules_option(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    # Read by hand for the same reason as CONVEYOR_QUEUES; WorkerSettings says which name is bad.
    if not value and os.environ.get("CONVEYOR_ALLOW_MODULES"):
        value = (os.environ["CONVEYOR_ALLOW_MODULES"],)
    return tuple(n.strip() for v in value for n in v.split(",") if n.strip())


class UsageLine(click.ClickException):
    """A usage mistake as one line and exit code 2, without click's usage banner."""

    exit_code = 2


class Group(click.Group):
    """Any Redis error a command did not handle is one line naming its cause, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except redis.RedisError as exc:
            raise click.ClickException(describe(exc, ctx.meta.get("conveyor.target"))) from None


REDIS_OPTIONS = (
    click.option("--redis-url", envvar=ENV_URL, show_envvar=True,
                 help="Redis: redis://, rediss://, unix://, redis+sentinel://h:p,.../<master>/<db>, "
                      "redis+cluster://h:p,... (default redis://localhost:6379/0)."),
    click.option("--prefix", envvar=keys.ENV_PREFIX, show_envvar=True,
                 help=f"Key prefix: apps with different prefixes share a Redis unseen (default {keys.DEFAULT_PREFIX})."),
    click.option("--redis-ca-file", envvar=ENV_CA_FILE, show_envvar=True, help="CA bundle to verify Redis's TLS certificate."),
    click.option("--redis-cert-file", envvar=ENV_CERT_FILE, show_envvar=True, help="TLS client certificate (mutual TLS)."),
    click.option("--redis-key-file", envvar=ENV_KEY_FILE, show_envvar=True, help="TLS client key (mutual TLS)."),
)


@dataclass(frozen=True)
class Where:
    target: RedisTarget
    space: keys.Keyspace

    def connect(self) -> Any:
        """A client that has answered a PING; one line naming the cause if it cannot."""
        from . import routing

        conn = self.target.client()
        try:
            routing.ping(conn)
        except redis.RedisError as exc:
            raise click.ClickException(describe(exc, self.target)) from None
        return conn


def redis_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--redis-url, --prefix and the TLS files, handed to the command as one ``where``."""

    @functools.wraps(f)
    def command(*args: Any, redis_url: str | None, prefix: str | None, redis_ca_file: str | None,
                redis_cert_file: str | None, redis_key_file: str | None, **kwargs: Any) -> Any:
        try:
            where = Where(RedisTarget.parse(resolve_url(redis_url), TlsFiles(redis_ca_file, redis_cert_file,
                                                                              redis_key_file)),
                          keys.Keyspace.of(prefix))
        except ConveyorError as exc:
            raise UsageLine(str(exc)) from None  # one line: the usage banner would bury the cause
        click.get_current_context().meta["conveyor.target"] = where.target
        return f(*args, where=where, **kwargs)

    for option in reversed(REDIS_OPTIONS):
        command = option(command)
    return command
