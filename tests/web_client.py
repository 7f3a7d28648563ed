"""The dashboard app (conveyor.dashboard) under Starlette's TestClient, with the helpers its
tests share: the CSRF token a page hands out, and an action posted as a browser would."""

from __future__ import annotations

import html
import re
from typing import Any

import redis
from starlette.testclient import TestClient

from conveyor.dashboard import Access, Settings, create_app
from conveyor.dashboard.security import CSRF_COOKIE

FLASH = re.compile(r'<p class="flash (ok|bad)" role="status">(.*?)</p>', re.S)


def client(conn: redis.Redis, **settings: Any) -> TestClient:
    access = settings.pop("access", Access())
    return TestClient(create_app(conn, Settings(access=access, **settings)), follow_redirects=False)


def csrf(web: TestClient) -> str:
    """The token of the CSRF cookie, as the page's forms carry it."""
    page = web.get("/")
    assert page.status_code == 200, page.text
    token = web.cookies.get(CSRF_COOKIE)
    assert token, "the page set no CSRF cookie"
    return token


def act(web: TestClient, action: str, queue: str, job_id: str = "", **fields: str) -> tuple[bool, str]:
    """Post an action with the page's CSRF token, follow the redirect, return the flash line."""
    path = "/actions/job" if job_id else "/actions/queue"
    data = {"csrf": csrf(web), "action": action, "queue": queue, "job_id": job_id, "next": "/", **fields}
    reply = web.post(path, data=data)
    assert reply.status_code == 303, reply.text
    page = web.get(reply.headers["location"])
    found = FLASH.search(page.text)
    assert found, f"no flash line after {action}:\n{page.text[:2000]}"
    return found.group(1) == "ok", html.unescape(found.group(2))
