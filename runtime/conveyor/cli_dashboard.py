"""`conveyor dashboard`: the web dashboard (conveyor.dashboard) served by uvicorn."""

from __future__ import annotations

import click

from .cli_options import UsageLine, Where, redis_options
from .errors import ConveyorError

DEFAULT_PORT = 9181
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1", "[::1]")


@click.command()
@redis_options
@click.option("--host", default="127.0.0.1", show_default=True, envvar="CONVEYOR_DASHBOARD_HOST", show_envvar=True,
              help="Address to serve. Anything but loopback needs CONVEYOR_DASHBOARD_TOKEN, "
                   "CONVEYOR_DASHBOARD_USER and _PASSWORD, or --read-only.")
# No environment variable for the port: Kubernetes sets CONVEYOR_DASHBOARD_PORT=tcp://...
# in every pod of a namespace that has a Service named conveyor-dashboard.
@click.option("--port", type=click.IntRange(0, 65535), default=DEFAULT_PORT, show_default=True)
@click.option("--read-only", is_flag=True, envvar="CONVEYOR_DASHBOARD_READ_ONLY", show_envvar=True,
              help="Show everything, change nothing: no retry, cancel, stop, delete or purge.")
@click.option("--hide-args", "hide_args", multiple=True, metavar="QUEUE",
              help="Do not show the arguments and results of this queue's jobs (repeatable; '*' for all).")
@click.option("--refresh", type=click.FloatRange(min=0.5), default=3.0, show_default=True,
              help="Seconds between live updates of an open page.")
def dashboard(where: Where, host: str, port: int, read_only: bool, hide_args: tuple[str, ...], refresh: float) -> None:
    """Serve the web dashboard: queues, workers, jobs and their tracebacks, retry/cancel/stop."""
    try:
        import uvicorn

        from .dashboard import Access, Settings, create_app
        from .dashboard.security import check_bind, is_loopback
    except ImportError as exc:
        raise click.ClickException(
            f"the dashboard needs the 'dashboard' extra ({exc.name} is missing): pip install 'conveyor[dashboard]'"
        ) from None
    try:
        access = Access.from_env(read_only)
        check_bind(host, access)
    except ConveyorError as exc:
        raise UsageLine(str(exc)) from None
    conn = where.connect()
    # Unprotected on loopback: only loopback Host headers (a page elsewhere that rebinds its
    # name to 127.0.0.1 gets no answer).
    hosts = LOOPBACK_NAMES if is_loopback(host) and not access.protected else None
    app = create_app(conn, Settings(prefix=where.space.prefix, access=access, hide_args=frozenset(hide_args),
                                    refresh_seconds=refresh, allowed_hosts=hosts))
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"conveyor dashboard on http://{shown}:{port}/" + (" (read-only)" if read_only else ""), err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)
