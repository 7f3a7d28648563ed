"""The web dashboard's views and actions against a real Redis with real jobs, run by real
worker processes (finished, failed with a traceback, scheduled, running)."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable

import redis

from conveyor import JobStatus, Queue
from support import WorkerProcess, fetch, wait_status, wait_until, worker_id
from web_client import act, client

ROW = re.compile(r'<td class="id"><a href="/jobs/[^/]+/([0-9a-f]+)">')


def ids_on(page: str) -> list[str]:
    return ROW.findall(page)


def test_overview_shows_queues_counts_workers_and_leader(
        conn: redis.Redis, queue: Queue, spawn_worker: Callable[..., WorkerProcess]) -> None:
    queue.enqueue("jobs:add", 1, 2)
    queue.enqueue("jobs:fail", "kaput")
    queue.enqueue_in(3600, "jobs:add", 3, 4)
    w = spawn_worker("--with-scheduler", "-c", "2")
    wid = worker_id(w)
    long_one = queue.enqueue("jobs:sleep", 30)
    wait_status(conn, long_one.id, JobStatus.STARTED)
    web = client(conn)

    def cells() -> list[str]:
        row = re.search(r'<a href="/queues/default/ready">default</a>.*?</tr>', web.get("/").text, re.S)
        assert row
        return re.findall(r'<td class="n[^"]*">(?:<a [^>]+>)?([^<]*)', row.group(0))

    # ready, scheduled, prefetched, running, failed, finished, canceled (outcomes are recorded
    # in the worker's next round trip: poll)
    expected = ["0", "1", "0", "1", "1", "1", "0"]
    wait_until(lambda: cells()[:7] == expected, 10, f"the overview to count {expected}, last {cells()[:7]}")
    def led() -> str | None:
        page = web.get("/").text
        return page if re.search(rf'<td class="id">{re.escape(wid)}</td>\s*</tr>', page) else None

    page = wait_until(led, 10, "the worker in the scheduler leader column")
    assert f'<td class="id">{wid}' in page  # the live worker's row


def test_a_failed_job_shows_its_traceback_and_retry_puts_it_back(
        conn: redis.Redis, queue: Queue, run_burst: Callable[..., WorkerProcess]) -> None:
    job = queue.enqueue("jobs:fail", "the <disk> is full")
    run_burst()
    web = client(conn)
    listing = web.get("/queues/default/failed").text
    assert ids_on(listing) == [job.id]
    page = web.get(f"/jobs/default/{job.id}").text
    assert "ValueError" in page and 'raise ValueError(message)' in html.unescape(page)  # the traceback's source line
    assert "the &lt;disk&gt; is full" in page and "<disk>" not in page
    ok, message = act(web, "requeue", "default", job.id)
    assert ok, message
    assert f"job {job.id} is back on queue default" == message
    assert fetch(conn, job).status == JobStatus.QUEUED
    # The same retry again: the job moved on, and the page says so instead of failing.
    ok, message = act(web, "requeue", "default", job.id)
    assert not ok and "is not failed" in message


def test_cancel_a_queued_and_a_scheduled_job(conn: redis.Redis, queue: Queue) -> None:
    queued, scheduled = queue.enqueue("jobs:add", 1, 1), queue.enqueue_in(600, "jobs:add", 2, 2)
    web = client(conn)
    for job in (queued, scheduled):
        ok, message = act(web, "cancel", "default", job.id)
        assert ok, message
        assert fetch(conn, job).status == JobStatus.CANCELED
    assert queue.count == 0 and conn.zcard(queue.keys.scheduled) == 0


def test_stop_a_running_job_on_a_real_worker(
        conn: redis.Redis, queue: Queue, spawn_worker: Callable[..., WorkerProcess]) -> None:
    spawn_worker()
    job = queue.enqueue("jobs:busy", 60)
    wait_status(conn, job.id, JobStatus.STARTED)
    web = client(conn)
    assert 'value="stop"' in web.get(f"/jobs/default/{job.id}").text
    ok, message = act(web, "stop", "default", job.id)
    assert ok, message
    assert fetch(conn, job).status == JobStatus.CANCELED
    # A stop on a job that has ended is refused in one line.
    ok, message = act(web, "stop", "default", job.id)
    assert not ok and "canceled, not started" in message


def test_delete_only_an_ended_job(conn: redis.Redis, queue: Queue, run_burst: Callable[..., WorkerProcess]) -> None:
    done = queue.enqueue("jobs:add", 1, 2)
    run_burst()
    waiting = queue.enqueue("jobs:add", 3, 4)
    web = client(conn)
    ok, message = act(web, "delete", "default", waiting.id)
    assert not ok and "has not ended" in message
    assert fetch(conn, waiting).status == JobStatus.QUEUED
    ok, message = act(web, "delete", "default", done.id)
    assert ok, message
    assert not conn.exists(queue.keys.job(done.id)) and conn.zscore(queue.keys.finished, done.id) is None
    assert web.get(f"/jobs/default/{done.id}").status_code == 404


def test_purge_needs_the_queue_name_typed(conn: redis.Redis, queue: Queue) -> None:
    queue.enqueue_many([Queue.prepare_data("jobs:add", (i, i)) for i in range(5)])
    web = client(conn)
    ok, message = act(web, "purge", "default", confirm="yes")
    assert not ok and "type the queue's name" in message
    assert queue.count == 5
    ok, message = act(web, "purge", "default", confirm="default")
    assert ok and message == "purged queue default: 5 waiting job(s) deleted"
    assert queue.count == 0


def test_pages_are_ranges_newest_first(conn: redis.Redis, queue: Queue) -> None:
    jobs = queue.enqueue_many([Queue.prepare_data("jobs:add", (i, i)) for i in range(120)])
    web = client(conn)
    first, third = web.get("/queues/default/ready").text, web.get("/queues/default/ready?page=3").text
    assert ids_on(first) == [j.id for j in reversed(jobs)][:50]
    assert ids_on(third) == [j.id for j in reversed(jobs)][100:]
    assert "page 1 of 3" in first and "120 job(s) ready" in first


def test_failed_jobs_filtered_by_exception_type_and_requeued_together(
        conn: redis.Redis, queue: Queue, run_burst: Callable[..., WorkerProcess]) -> None:
    value_errors = [queue.enqueue("jobs:fail", f"v{i}") for i in range(3)]
    type_error = queue.enqueue("jobs:add", 1)  # missing an argument: TypeError
    run_burst()
    web = client(conn)
    page = web.get("/queues/default/failed?exc_type=ValueError").text
    assert sorted(ids_on(page)) == sorted(j.id for j in value_errors)
    assert "3 job(s) failed of type ValueError" in page
    ok, message = act(web, "requeue_type", "default", exc_type="ValueError")
    assert ok and message.startswith("3 failed job(s) of type ValueError back on queue default")
    assert all(fetch(conn, j).status == JobStatus.QUEUED for j in value_errors)
    assert fetch(conn, type_error).status == JobStatus.FAILED


def test_arguments_are_text_and_can_be_hidden(conn: redis.Redis, queue: Queue) -> None:
    job = queue.enqueue("jobs:echo", "<script>alert('x')</script>", token="s3cret")
    page = client(conn).get(f"/jobs/default/{job.id}").text
    assert "<script>alert" not in page and "&lt;script&gt;alert(" in page
    assert "s3cret" in page
    hidden = client(conn, hide_args=frozenset({"default"})).get(f"/jobs/default/{job.id}").text
    assert "s3cret" not in hidden and "not shown" in hidden


def test_a_pickled_job_is_never_unpickled(conn: redis.Redis) -> None:
    job = Queue("default", connection=conn, serializer="pickle").enqueue("jobs:identity", "pickled-secret")
    page = client(conn).get(f"/jobs/default/{job.id}").text
    assert "pickled-secret" not in page and "not unpickled" in page


def test_search_finds_a_job_by_id_and_says_when_it_cannot(conn: redis.Redis, queue: Queue) -> None:
    job = Queue("other", connection=conn).enqueue("jobs:add", 1, 2)
    web = client(conn)
    found = web.get(f"/search?id={job.id}")
    assert found.status_code == 303 and found.headers["location"] == f"/jobs/other/{job.id}"
    missing = web.get("/search?id=0123456789abcdef")
    assert missing.status_code == 404 and "no job &#39;0123456789abcdef&#39; in any queue" in missing.text


def test_the_live_part_alone_for_a_refresh(conn: redis.Redis, queue: Queue) -> None:
    queue.enqueue("jobs:add", 1, 2)
    web = client(conn)
    part = web.get("/", headers={"X-Conveyor-Partial": "1"}).text
    assert "<html" not in part and "<h2>Queues</h2>" in part and "/queues/default/ready" in part
    queue.enqueue("jobs:add", 3, 4)
    again = web.get("/", headers={"X-Conveyor-Partial": "1"}).text
    assert re.search(r'<a href="/queues/default/ready">2</a>', again)


def test_mounted_under_a_path_links_stay_inside(conn: redis.Redis, queue: Queue) -> None:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.testclient import TestClient

    from conveyor.dashboard import create_app

    job = queue.enqueue("jobs:add", 1, 2)
    host = Starlette(routes=[Mount("/ops/jobs", create_app(conn))])
    web = TestClient(host)
    page = web.get("/ops/jobs/").text
    assert 'href="/ops/jobs/queues/default/ready"' in page and 'href="/ops/jobs/static/app.css"' in page
    assert web.get(f"/ops/jobs/jobs/default/{job.id}").status_code == 200
    assert web.get("/ops/jobs/static/app.js").status_code == 200


def test_ended_jobs_are_counted_per_ten_seconds_and_charted(
        conn: redis.Redis, queue: Queue, run_burst: Callable[..., WorkerProcess]) -> None:
    import time

    queue.enqueue_many([Queue.prepare_data("jobs:add", (i, i)) for i in range(20)])
    queue.enqueue_many([Queue.prepare_data("jobs:fail", ("x",)) for _ in range(7)])
    run_burst()
    counts = {k.decode(): int(v) for k, v in conn.hgetall(queue.keys.rate).items()}
    assert sum(v for k, v in counts.items() if k.startswith("finished:")) == 20
    assert sum(v for k, v in counts.items() if k.startswith("failed:")) == 7
    # The chart reads complete buckets: put a minute of 2 jobs/s (and 0.5 failures/s) behind now.
    conn.delete(queue.keys.rate)
    bucket = int(time.time() // 10)
    for b in range(bucket - 6, bucket):
        conn.hset(queue.keys.rate, mapping={f"finished:{b}": 20, f"failed:{b}": 5})
    page = client(conn).get("/").text
    row = re.search(r'<a href="/queues/default/ready">default</a>.*?</tr>', page, re.S)
    assert row and re.search(r'<td class="n">2\.0</td>\s*<td class="n alert">0\.5</td>', row.group(0)), row
    assert re.search(r'<span class="big">2\.0</span> jobs/s finished', page)
    assert page.count("<polyline") == 4  # the fleet's chart and the queue's, two lines each


def test_a_rate_key_of_the_wrong_type_never_stops_an_outcome(
        conn: redis.Redis, queue: Queue, run_burst: Callable[..., WorkerProcess]) -> None:
    conn.rpush(queue.keys.rate, "not a hash")
    ok, bad = queue.enqueue("jobs:add", 1, 2), queue.enqueue("jobs:fail", "x")
    run_burst()
    assert fetch(conn, ok).status == JobStatus.FINISHED and fetch(conn, ok).result == 3
    assert fetch(conn, bad).status == JobStatus.FAILED
    assert client(conn).get("/").status_code == 200  # the chart shows nothing for it, the page still renders


def test_the_timeline_has_every_attempt_once(
        conn: redis.Redis, queue: Queue, run_burst: Callable[..., WorkerProcess]) -> None:
    from conveyor import Retry

    job = queue.enqueue("jobs:fail", "again", retry=Retry(max=1, intervals=[0]))
    run_burst("--with-scheduler")
    page = client(conn).get(f"/jobs/default/{job.id}").text
    timeline = page[page.index("<h2>Timeline</h2>"):]
    whats = re.findall(r"<tr><td>([^<]+)</td>", timeline)
    assert whats == ["enqueued", "attempt 1", "attempt 2", "failed"], whats
    assert timeline.count("ValueError: again") == 2
    assert len(re.findall(r'<td class="id">[^<]+</td><td class="id">[^<]+</td>', timeline)) == 2  # execution, worker


def test_cron_schedules_show_their_last_and_next_tick(
        conn: redis.Redis, queue: Queue, tmp_path, spawn_worker: Callable[..., WorkerProcess]) -> None:
    import time

    path = tmp_path / "cron.toml"
    path.write_text('[[cron]]\nschedule = "* * * * *"\nfunc = "jobs:add"\nname = "every-minute"\nargs = [1, 2]\n')
    minute = int(time.time()) // 60 * 60
    conn.hset(queue.keys.cron, "every-minute", minute - 60)  # the previous tick ran: this one is due now
    spawn_worker("--with-scheduler", "--cron-file", str(path))
    wait_until(lambda: conn.hexists(queue.keys.cron_info, "every-minute"), 15, "the leader to describe the schedule")

    def read() -> tuple[float, float, str]:
        return (float(conn.hget(queue.keys.cron, "every-minute")),
                json.loads(conn.hget(queue.keys.cron_info, "every-minute"))["next"], client(conn).get("/").text)

    def steady() -> tuple[float, float, str] | None:
        """A page read between two equal readings of the schedule (a minute may turn meanwhile)."""
        first = read()
        return first if read()[:2] == first[:2] else None

    last, nxt, page = wait_until(steady, 15, "a page between two ticks")
    row = re.search(r"<tr><td>default</td><td>every-minute</td>.*?</tr>", page, re.S)
    assert row, page
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(0), re.S)
    assert cells[2] == "<code>* * * * *</code>" and cells[3] == "jobs:add"
    assert nxt - last == 60
    assert cells[4].startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(last)))
    assert cells[5].startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(nxt)))
    assert 0 < ttl(conn, queue.keys.cron_info) <= 7 * 86400


def ttl(conn: redis.Redis, key: str) -> int:
    return int(conn.ttl(key))


def test_redis_down_is_one_line_not_a_crash() -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from conveyor.embedded import free_port

    dead = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    reply = client(dead).get("/")
    assert reply.status_code == 503 and reply.text.startswith("Redis did not answer: ")
    assert "\n" not in reply.text.strip()
