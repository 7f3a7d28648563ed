"""/metrics, /healthz and /readyz on one port, served from a thread (stdlib wsgiref).

The thread only reads state the worker's loop writes, so a scrape or a probe never
waits on the loop or on Redis. /healthz (liveness) asks only "is the loop turning":
a Redis outage must not get every pod restarted. /readyz asks "is it claiming".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("conveyor.worker")


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: not news
        pass


class HealthServer:
    def __init__(self, registry: CollectorRegistry, *, alive: Callable[[], bool], ready: Callable[[], tuple[bool, str]]) -> None:
        self.registry = registry
        self.alive = alive
        self.ready = ready
        self._server: _Server | None = None

    def start(self, host: str, port: int) -> int | None:
        """Serve in a daemon thread; returns the bound port, or None if it is taken."""
        try:
            self._server = make_server(host, port, self._app, server_class=_Server, handler_class=_QuietHandler)
        except OSError as exc:
            log.error("cannot serve metrics and health on %s:%d (%s); continuing without them "
                      "(choose another --metrics-port, or 0 to disable)", host, port, exc)
            return None
        # shutdown() waits for the loop's next poll: at the default 0.5 s, every exit took that long.
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="conveyor-http",
                         daemon=True).start()
        return self._server.server_address[1]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "/")
        if path == "/metrics":
            body, status, ctype = generate_latest(self.registry), "200 OK", CONTENT_TYPE_LATEST
        elif path == "/healthz":
            ok = self.alive()
            body, status, ctype = (b"ok\n" if ok else b"worker loop stalled\n"), ("200 OK" if ok else "503 Service Unavailable"), "text/plain"
        elif path == "/readyz":
            ok, why = self.ready()
            body, status, ctype = (why + "\n").encode(), ("200 OK" if ok else "503 Service Unavailable"), "text/plain"
        else:
            body, status, ctype = b"not found: try /metrics, /healthz or /readyz\n", "404 Not Found", "text/plain"
        start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
        return [body]


class Heartbeat:
    """The loop stamps it every second; liveness fails when the stamp goes stale."""

    def __init__(self, stale_after: float) -> None:
        self.stale_after = stale_after
        self.last = time.monotonic()

    def beat(self) -> None:
        self.last = time.monotonic()

    def alive(self) -> bool:
        return time.monotonic() - self.last < self.stale_after
