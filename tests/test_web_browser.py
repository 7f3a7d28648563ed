"""The dashboard in a real headless Chromium (Debian's chromium, driven by Playwright), served
by a real `conveyor dashboard` process, over jobs that real workers ran. Slow: --all."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conveyor import JobStatus, Queue
from conveyor.embedded import free_port
from support import WORKER_ENV, WorkerProcess, fetch, wait_status, wait_until

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture
def dashboard(redis_url: str) -> Iterator[str]:
    """A `conveyor dashboard` process on a free port; its base URL."""
    port = free_port()
    env = {**WORKER_ENV, "CONVEYOR_REDIS_URL": redis_url}
    for name in ("CONVEYOR_DASHBOARD_TOKEN", "CONVEYOR_DASHBOARD_USER", "CONVEYOR_DASHBOARD_PASSWORD"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "conveyor", "dashboard", "--port", str(port), "--refresh", "0.5"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            with urllib.request.urlopen(base + "/", timeout=2):
                return True
        except OSError:
            return False

    try:
        wait_until(up, 20, "the dashboard to answer")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def page() -> Iterator[Any]:
    """A Chromium page that fails the test on any console error or uncaught exception."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1280, "height": 800})
        tab.set_default_timeout(15_000)
        tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
        tab.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        tab.on("dialog", lambda d: d.accept())  # the confirmation of stop, cancel, delete
        yield tab
        browser.close()
    assert not problems, problems


def test_overview_failed_job_traceback_and_retry(
        conn: redis.Redis, queue: Queue, dashboard: str, page: Any, run_burst: Callable[..., WorkerProcess]) -> None:
    queue.enqueue_many([Queue.prepare_data("jobs:add", (i, i)) for i in range(30)])
    bad = queue.enqueue("jobs:fail", "the disk is full")
    Queue("emails", connection=conn).enqueue_in(3600, "jobs:add", 1, 2)
    run_burst("-q", "default")
    page.goto(dashboard + "/")
    row = page.locator("table.queues tr", has=page.locator("a", has_text="default")).first
    cells = row.locator("td.n").all_inner_texts()
    assert cells[:7] == ["0", "0", "0", "0", "1", "30", "0"], cells
    assert page.locator("table.queues a", has_text="emails").is_visible()
    if os.environ.get("CONVEYOR_SCREENSHOTS"):
        page.screenshot(path=str(DOCS / "dashboard-overview.png"), full_page=True)
    row.locator("td.n a").nth(4).click()  # the failed count
    page.locator(f"a:text-is('{bad.id}')").click()
    traceback = page.locator("pre.traceback")
    assert "ValueError: the disk is full" in traceback.inner_text()
    assert 'raise ValueError(message)' in traceback.inner_text()
    if os.environ.get("CONVEYOR_SCREENSHOTS"):
        page.screenshot(path=str(DOCS / "dashboard-failed-job.png"), full_page=True)
    page.locator("button", has_text="Retry").click()
    assert f"job {bad.id} is back on queue default" in page.locator("p.flash.ok").inner_text()
    assert page.locator(".summary .st").first.inner_text() == "queued"
    assert fetch(conn, bad).status == JobStatus.QUEUED


def test_the_page_updates_itself(conn: redis.Redis, queue: Queue, dashboard: str, page: Any) -> None:
    queue.enqueue("jobs:add", 1, 2)
    page.goto(dashboard + "/queues/default/ready")
    assert page.locator("table.jobs td.id a").count() == 1
    url = page.url
    queue.enqueue("jobs:add", 3, 4)
    wait_until(lambda: page.locator("table.jobs td.id a").count() == 2, 10, "the list to show the new job")
    assert page.url == url
    assert page.evaluate("performance.getEntriesByType('navigation').length") == 1  # no reload


def test_stop_a_running_job_from_its_page(
        conn: redis.Redis, queue: Queue, dashboard: str, page: Any, spawn_worker: Callable[..., WorkerProcess]) -> None:
    spawn_worker()
    job = queue.enqueue("jobs:busy", 60)
    wait_status(conn, job.id, JobStatus.STARTED)
    page.goto(f"{dashboard}/jobs/default/{job.id}")
    page.locator("button", has_text="Stop").click()
    assert "stopped: it is canceled" in page.locator("p.flash.ok").inner_text()
    assert fetch(conn, job).status == JobStatus.CANCELED
    wait_until(lambda: page.locator(".summary .st").first.inner_text() == "canceled", 10, "the page to say canceled")


def test_a_phone_sized_screen_scrolls_tables_not_the_page(
        conn: redis.Redis, queue: Queue, dashboard: str, page: Any) -> None:
    queue.enqueue("jobs:add", 1, 2)
    page.set_viewport_size({"width": 390, "height": 800})
    page.goto(dashboard + "/")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 1, f"the page is {overflow}px wider than a phone screen"
    assert page.locator("header input[name=id]").is_visible()
