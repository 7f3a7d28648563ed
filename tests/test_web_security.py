"""The dashboard is safe by default: CSRF on every action, authentication when asked for, no
bind beyond loopback without it, read-only mode, no open redirect."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import urllib.error
import urllib.request

import redis

from conveyor import JobStatus, Queue
from conveyor.dashboard import Access
from conveyor.embedded import free_port
from support import WORKER_ENV, cli, fetch, wait_until
from web_client import act, client, csrf


def test_an_action_without_the_csrf_token_is_refused(conn: redis.Redis, queue: Queue) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    web = client(conn)
    form = {"action": "cancel", "queue": "default", "job_id": job.id}
    assert web.post("/actions/job", data=form).status_code == 403
    # A token made up by another page (not the one this browser's cookie holds) is refused too.
    other = client(conn)
    assert web.post("/actions/job", data={**form, "csrf": csrf(other)}).status_code == 403
    csrf(web)
    forged = "x" * 24 + "." + "0" * 32
    web.cookies.set("conveyor_csrf", forged)
    assert web.post("/actions/job", data={**form, "csrf": forged}).status_code == 403
    assert fetch(conn, job).status == JobStatus.QUEUED


def test_a_request_from_another_site_is_refused(conn: redis.Redis, queue: Queue) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    web = client(conn)
    form = {"csrf": csrf(web), "action": "cancel", "queue": "default", "job_id": job.id}
    reply = web.post("/actions/job", data=form, headers={"Origin": "https://evil.example"})
    assert reply.status_code == 403 and "another site" in reply.text
    assert fetch(conn, job).status == JobStatus.QUEUED


def test_read_only_shows_no_action_and_refuses_one(conn: redis.Redis, queue: Queue) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    web = client(conn, access=Access(read_only=True))
    page = web.get(f"/jobs/default/{job.id}").text
    assert "read-only" in page and "/actions/" not in page
    assert "Purge" not in web.get("/queues/default/ready").text
    form = {"csrf": csrf(web), "action": "cancel", "queue": "default", "job_id": job.id}
    assert web.post("/actions/job", data=form).status_code == 403
    assert fetch(conn, job).status == JobStatus.QUEUED


def test_a_token_is_required_when_set(conn: redis.Redis) -> None:
    web = client(conn, access=Access(token="t0ken"))
    assert web.get("/").status_code == 401
    assert web.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert web.get("/", headers={"Authorization": "Bearer t0ken"}).status_code == 200
    assert web.get("/static/app.css").status_code == 401
    # A link with ?token= logs the browser in (an HttpOnly cookie) and drops the token from the URL.
    login = web.get("/queues/default/ready?token=t0ken")
    assert login.status_code == 303 and login.headers["location"].endswith("/queues/default/ready")
    assert "httponly" in login.headers["set-cookie"].lower()
    assert web.get("/").status_code == 200
    assert client(conn, access=Access(token="t0ken")).get("/?token=nope").status_code == 401


def test_healthz_answers_without_auth_and_shows_nothing(conn: redis.Redis, queue: Queue) -> None:
    """The kubelet's probes cannot log in: /healthz answers "ok" without credentials, and
    only that path (nor a path that merely starts with it) is let through."""
    job = queue.enqueue("jobs:add", 1, 2)
    for access in (Access(token="t0ken"), Access(username="ops", password="pw"), Access(), Access(read_only=True)):
        web = client(conn, access=access)
        reply = web.get("/healthz")
        assert (reply.status_code, reply.text) == (200, "ok"), access
        assert reply.headers["content-type"].startswith("text/plain") and "set-cookie" not in reply.headers
        assert job.id not in reply.text
        assert web.head("/healthz").status_code == 200
        if access.protected:
            for path in ("/", "/healthz/", "/healthz/../", "/healthzx", f"/jobs/default/{job.id}", "/static/app.css"):
                assert web.get(path).status_code == 401, path
            assert web.post("/healthz").status_code == 405  # only GET and HEAD, and nothing behind it
    # Mounted in another app, the path is the mount's /healthz, and the rest stays guarded.
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from conveyor.dashboard import Settings, create_app

    outer = Starlette(routes=[Mount("/ops/jobs", create_app(conn, Settings(access=Access(token="t0ken"))))])
    web = TestClient(outer, follow_redirects=False)
    assert web.get("/ops/jobs/healthz").text == "ok"
    assert web.get("/ops/jobs/").status_code == 401 and web.get("/healthz").status_code == 404


def test_basic_auth(conn: redis.Redis) -> None:
    web = client(conn, access=Access(username="ops", password="pa:ss"))
    refused = web.get("/")
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Basic")

    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    assert web.get("/", headers=basic("ops", "pa:ss")).status_code == 200
    assert web.get("/", headers=basic("ops", "pa:sS")).status_code == 401
    assert web.get("/", headers={"Authorization": "Basic !!notbase64"}).status_code == 401


def test_no_open_redirect_after_an_action(conn: redis.Redis, queue: Queue) -> None:
    job = queue.enqueue("jobs:add", 1, 2)
    web = client(conn)
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        form = {"csrf": csrf(web), "action": "cancel", "queue": "default", "job_id": job.id, "next": target}
        reply = web.post("/actions/job", data=form)
        assert reply.status_code == 303 and reply.headers["location"] == "/", target


def test_flash_cookie_cannot_be_forged(conn: redis.Redis) -> None:
    web = client(conn)
    value = base64.urlsafe_b64encode(b'{"ok": true, "message": "all your jobs are deleted"}').decode()
    web.cookies.set("conveyor_flash", f"{value}.{'0' * 32}")
    assert "all your jobs" not in web.get("/").text
    ok, _ = act(web, "purge", "default", confirm="nope")  # a real one still shows
    assert not ok


def test_serving_beyond_loopback_without_auth_is_refused(redis_url: str) -> None:
    out = cli(redis_url, "dashboard", "--host", "0.0.0.0")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "Error: refusing to serve the dashboard on 0.0.0.0 without authentication: set CONVEYOR_DASHBOARD_TOKEN "
        "(or CONVEYOR_DASHBOARD_USER and CONVEYOR_DASHBOARD_PASSWORD), or pass --read-only"]


def test_the_command_serves_the_dashboard(redis_url: str, queue: Queue) -> None:
    queue.enqueue("jobs:add", 1, 2)
    port = free_port()
    env = {**WORKER_ENV, "CONVEYOR_REDIS_URL": redis_url, "CONVEYOR_DASHBOARD_TOKEN": "tk"}
    env.pop("CONVEYOR_DASHBOARD_USER", None)
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "dashboard", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def page() -> str | None:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Authorization": "Bearer tk"})
            try:
                with urllib.request.urlopen(request, timeout=2) as reply:
                    return str(reply.read().decode())
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
                return None

        text = wait_until(page, 20, "the dashboard to answer")
        assert '<a href="/queues/default/ready">default</a>' in text
    finally:
        proc.terminate()
        proc.wait(10)
    assert os.environ.get("CONVEYOR_DASHBOARD_TOKEN") is None


def test_only_loopback_host_names_when_served_unprotected_on_loopback(redis_url: str) -> None:
    """DNS rebinding: a page at evil.example whose name now points at 127.0.0.1 sends
    Host: evil.example; an unprotected dashboard on loopback answers only loopback names."""
    port = free_port()
    env = {k: v for k, v in WORKER_ENV.items() if not k.startswith("CONVEYOR_DASHBOARD_")}
    env["CONVEYOR_REDIS_URL"] = redis_url
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "dashboard", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def status(host: str) -> int | None:
        request = urllib.request.Request(f"http://127.0.0.1:{port}/", headers={"Host": host})
        try:
            with urllib.request.urlopen(request, timeout=2) as reply:
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            return None

    try:
        assert wait_until(lambda: status(f"127.0.0.1:{port}"), 20, "the dashboard to answer") == 200
        assert status(f"localhost:{port}") == 200
        assert status(f"evil.example:{port}") == 400
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_queue_name_that_cannot_be_is_refused(conn: redis.Redis) -> None:
    web = client(conn)
    assert web.get("/queues/x}:y/ready").status_code == 404
    assert "invalid queue name" in web.get("/jobs/x}y/abc").text
    ok, message = act(web, "cancel", "a{b}", "0123456789abcdef")
    assert not ok and message.startswith("invalid queue name 'a{b}'")
