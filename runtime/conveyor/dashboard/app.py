"""The dashboard as an ASGI app (Starlette, Jinja2 templates, assets in the package).

Pages are rendered on the server and escaped by Jinja's autoescape (job IDs, arguments and
tracebacks are untrusted text); a small script re-fetches the live part of the page every
few seconds. Handlers are plain functions, which Starlette runs in its thread pool, over
the synchronous client: every read and action is a function of reads.py or actions.py.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import redis
from starlette.applications import Starlette
from starlette.datastructures import URL
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import errors, keys
from ..connection import error_line
from ..job import Job
from ..validation import check_queue_name
from . import actions, reads
from .security import CSRF_COOKIE, TOKEN_COOKIE, Access

HERE = Path(__file__).parent
FLASH_COOKIE = "conveyor_flash"
# The one path served without authentication: the kubelet's probes (and a load balancer's
# health check) cannot log in. It answers "ok" from the process alone: no Redis, no data.
HEALTHZ = "/healthz"


@dataclass(frozen=True)
class Settings:
    """How one dashboard app reads Redis and what it shows."""

    prefix: str | None = None
    access: Access = field(default_factory=Access)
    hide_args: frozenset[str] = frozenset()  # queues whose arguments and results are not shown ("*": all)
    refresh_seconds: float = 3.0
    # Host headers served (None: any). `conveyor dashboard` on loopback without auth allows only
    # loopback names, so a page elsewhere cannot reach it by DNS rebinding.
    allowed_hosts: tuple[str, ...] | None = None

    def hides(self, queue: str) -> bool:
        return "*" in self.hide_args or queue in self.hide_args


def create_app(connection: redis.Redis, settings: Settings | None = None) -> Starlette:
    """The dashboard over ``connection``; mount it in your own app (``Mount("/jobs", app)``)
    or serve it with ``conveyor dashboard``."""
    settings = settings or Settings()
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters.update(age=_age, when=_when)
    templates.env.globals["link"] = _link
    views = _Views(connection, keys.Keyspace.of(settings.prefix), settings, templates)
    routes = [
        Route("/", views.overview, name="overview"),
        Route(HEALTHZ, _healthz, methods=["GET", "HEAD"], name="healthz"),
        Route("/search", views.search, name="search"),
        Route("/queues/{queue}/{state}", views.queue, name="queue"),
        Route("/jobs/{queue}/{job_id}", views.job, name="job"),
        Route("/actions/job", views.job_action, methods=["POST"], name="job_action"),
        Route("/actions/queue", views.queue_action, methods=["POST"], name="queue_action"),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [Middleware(_Guard, access=settings.access)]
    if settings.allowed_hosts is not None:
        middleware.insert(0, Middleware(TrustedHostMiddleware, allowed_hosts=list(settings.allowed_hosts),
                                        www_redirect=False))
    async def redis_down(request: Request, exc: Exception) -> Response:
        # One line instead of a bare 500: the live refresh keeps trying and recovers by itself.
        return PlainTextResponse(f"Redis did not answer: {error_line(exc)}", status_code=503,
                                 headers={"Cache-Control": "no-store"})

    return Starlette(routes=routes, middleware=middleware, exception_handlers={redis.RedisError: redis_down})


class _Guard:
    """Authentication on every request; a valid ``?token=`` becomes an HttpOnly cookie."""

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.access.protected or _route_path(scope) == HEALTHZ:
            return await self.app(scope, receive, send)
        request = Request(scope)
        offered = request.query_params.get("token")
        if offered is not None and self.access.token_matches(offered):
            clean = request.url.remove_query_params("token")
            response: Response = RedirectResponse(str(clean), status_code=303)
            response.set_cookie(TOKEN_COOKIE, offered, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
            return await response(scope, receive, send)
        if self.access.allows(request.headers.get("authorization"), request.cookies.get(TOKEN_COOKIE)):
            return await self.app(scope, receive, send)
        headers = {"WWW-Authenticate": 'Basic realm="conveyor"'} if self.access.username else {}
        await PlainTextResponse("authentication required", status_code=401, headers=headers)(scope, receive, send)


def _route_path(scope: Scope) -> str:
    """The request's path inside this app (without the mount point or --root-path), as the
    router matches it."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root + "/") else path


def _healthz(request: Request) -> Response:
    return PlainTextResponse("ok", headers={"Cache-Control": "no-store"})


@jinja2.pass_context
def _link(context: dict[str, Any], name: str, /, **params: Any) -> str:
    """A link as an absolute path (the mount point included), not a URL: right behind a
    proxy, a port-forward or TLS termination alike."""
    return str(context["request"].url_for(name, **params).path)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


class _Views:
    def __init__(self, conn: redis.Redis, space: keys.Keyspace, settings: Settings, templates: Jinja2Templates) -> None:
        self.conn = conn
        self.space = space
        self.settings = settings
        self.templates = templates

    # -- pages --------------------------------------------------------------------------------

    def _page(self, request: Request, template: str, context: dict[str, Any], status: int = 200) -> Response:
        access = self.settings.access
        csrf = request.cookies.get(CSRF_COOKIE)
        fresh = not csrf or not access.csrf_valid(csrf, csrf)
        if fresh:
            csrf = access.new_csrf()
        partial = request.headers.get("x-conveyor-partial") == "1"
        flash = None if partial else self._flash(request)  # shown once, on a whole page
        response = self.templates.TemplateResponse(request, template, {
            **context, "csrf": csrf, "read_only": access.read_only, "flash": flash, "partial": partial,
            "now": time.time(), "refresh_ms": int(self.settings.refresh_seconds * 1000),
            "here": request.url.path + (f"?{request.url.query}" if request.url.query else ""),
        }, status_code=status)
        if fresh:
            response.set_cookie(CSRF_COOKIE, csrf or "", httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        if flash:
            response.delete_cookie(FLASH_COOKIE)
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    def overview(self, request: Request) -> Response:
        return self._page(request, "overview.html", {"info": reads.overview(self.conn, self.space)})

    def queue(self, request: Request) -> Response:
        queue, state = request.path_params["queue"], request.path_params["state"]
        try:
            page = int(request.query_params.get("page", "1"))
        except ValueError:
            page = 1
        exc_type = request.query_params.get("exc_type", "").strip()
        try:
            check_queue_name(queue)
            listing = reads.listing(self.conn, self.space, queue, state, page, exc_type)
        except errors.ConveyorError as exc:
            return self._page(request, "error.html", {"message": str(exc)}, status=404)
        return self._page(request, "queue.html", {"listing": listing, "states": reads.STATES})

    def job(self, request: Request) -> Response:
        queue, job_id = request.path_params["queue"], request.path_params["job_id"]
        try:
            check_queue_name(queue)
            job = reads.job_view(self.conn, self.space, queue, job_id, self.settings.hides(queue))
        except errors.ConveyorError as exc:
            return self._page(request, "error.html", {"message": str(exc)}, status=404)
        return self._page(request, "job.html", {"job": job})

    def search(self, request: Request) -> Response:
        job_id = request.query_params.get("id", "").strip()
        try:
            job = Job.fetch(job_id, self.conn, prefix=self.space.prefix)
        except errors.ConveyorError as exc:
            return self._page(request, "error.html", {"message": str(exc)}, status=404)
        return RedirectResponse(request.url_for("job", queue=job.queue, job_id=job.id).path, status_code=303)

    # -- actions ------------------------------------------------------------------------------

    async def _form(self, request: Request) -> dict[str, str] | Response:
        """The action's form fields, once it is allowed: not read-only, same origin, CSRF token."""
        if self.settings.access.read_only:
            return PlainTextResponse("this dashboard is read-only", status_code=403)
        origin = request.headers.get("origin")
        if origin and origin != "null" and URL(origin).netloc != request.url.netloc:
            return PlainTextResponse(f"refused: a request from another site ({origin})", status_code=403)
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if not self.settings.access.csrf_valid(request.cookies.get(CSRF_COOKIE), fields.get("csrf")):
            return PlainTextResponse("refused: missing or wrong CSRF token (reload the page)", status_code=403)
        return fields

    async def job_action(self, request: Request) -> Response:
        fields = await self._form(request)
        if isinstance(fields, Response):
            return fields
        action = actions.JOB_ACTIONS.get(fields.get("action", ""))
        queue, job_id = fields.get("queue", ""), fields.get("job_id", "")
        if action is None:
            outcome = actions.Outcome(False, f"unknown action {fields.get('action')!r}")
        else:
            outcome = await _in_thread(actions.run, action, self.conn, self.space, queue, job_id)
        return self._back(request, fields.get("next", ""), outcome)

    async def queue_action(self, request: Request) -> Response:
        fields = await self._form(request)
        if isinstance(fields, Response):
            return fields
        queue, what = fields.get("queue", ""), fields.get("action", "")
        if what == "purge":
            if fields.get("confirm") != queue:
                outcome = actions.Outcome(False, f"not purged: type the queue's name ({queue}) to confirm")
            else:
                outcome = await _in_thread(actions.run, actions.purge, self.conn, self.space, queue,
                                           fields.get("scheduled") == "1")
        elif what == "requeue_type":
            outcome = await _in_thread(actions.run, actions.requeue_type, self.conn, self.space, queue,
                                       fields.get("exc_type", ""))
        else:
            outcome = actions.Outcome(False, f"unknown action {what!r}")
        return self._back(request, fields.get("next", ""), outcome)

    def _back(self, request: Request, target: str, outcome: actions.Outcome) -> Response:
        # Only back into this site: an absolute or protocol-relative target would be an open redirect.
        safe = target.startswith("/") and not target.startswith(("//", "/\\")) and "\\" not in target
        response = RedirectResponse(target if safe else request.url_for("overview").path, status_code=303)
        payload = json.dumps({"ok": outcome.ok, "message": outcome.message})
        value = base64.urlsafe_b64encode(payload.encode()).decode()
        response.set_cookie(FLASH_COOKIE, f"{value}.{self.settings.access.sign(value)}", httponly=True,
                            samesite="strict", max_age=60)
        return response

    def _flash(self, request: Request) -> dict[str, Any] | None:
        raw = request.cookies.get(FLASH_COOKIE)
        if not raw:
            return None
        value, _, sig = raw.partition(".")
        if not self.settings.access.verify(value, sig):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(value))
        except ValueError:
            return None
        return {"ok": bool(data.get("ok")), "message": str(data.get("message", ""))}


async def _in_thread(fn: Any, *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)

