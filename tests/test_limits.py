"""Flow control per queue, fleet-wide (conveyor.limits, claim.lua): a rate (token bucket) and
max_concurrency, set in Redis by `conveyor queue set` or Queue.set_limits and enforced inside the
claim, so no worker exceeds them. Rates and overlaps are measured from the jobs' own records
(tests/jobs_limits.py), real redis-server, real worker processes."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import urllib.request

import pytest
import redis.asyncio as aioredis

from conveyor import AsyncQueue, Limits, Queue, Rate
from conveyor.embedded import free_port
from conveyor.errors import ConfigError
from jobs_limits import max_overlap, starts
from support import cli, wait_until, worker_id
from test_pickup import round_trips_for_one_job


def fill(q: Queue, path: object, n: int, seconds: float = 0.0, tag: str = "") -> None:
    q.enqueue_many([q.prepare_data("jobs_limits:timed", (str(path), f"{tag}{i}", seconds)) for i in range(n)])


def window(times: list[float], start: float, seconds: float) -> int:
    return sum(1 for t in times if start <= t < start + seconds)


# -- the API and the CLI -------------------------------------------------------------------------


def test_limits_are_set_kept_and_cleared(conn, queue) -> None:
    assert not queue.limits()
    limits = queue.set_limits(rate="100/s", max_concurrency=5)
    assert limits == Limits(Rate(100, 1000), 5, 10)  # burst: 100 ms worth of the rate
    assert queue.limits() == limits
    assert queue.set_limits(max_concurrency=None) == Limits(Rate(100, 1000), None, 10)  # the rate is kept
    assert queue.set_limits(rate="3/m", burst=2) == Limits(Rate(3, 60_000), None, 2)
    assert not queue.set_limits(rate=None)
    assert not conn.exists(queue.keys.limits)  # unlimited: no key, the claim reads nothing more


@pytest.mark.parametrize("kwargs", [{"rate": "0/s"}, {"rate": "10/d"}, {"rate": "ten/s"}, {"max_concurrency": 0},
                                    {"max_concurrency": -1}, {"max_concurrency": 2.5}, {"burst": 0}])
def test_bad_limits_raise_before_anything_is_written(conn, queue, kwargs) -> None:
    queue.set_limits(max_concurrency=7)
    with pytest.raises(ConfigError) as info:
        queue.set_limits(**kwargs)
    assert "\n" not in str(info.value)
    assert queue.limits() == Limits(None, 7)


def test_the_asyncio_client_shares_the_limits(conn, redis_url) -> None:
    async def main() -> tuple[Limits, Limits]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            q = AsyncQueue("default", connection=client)
            return await q.set_limits(rate="5/h", max_concurrency=2), await q.limits()
        finally:
            await client.aclose()

    set_, read = asyncio.run(main())
    assert set_ == read == Limits(Rate(5, 3_600_000), 2, 1)
    assert Queue("default", connection=conn).limits() == read


def test_cli_sets_shows_and_clears(redis_url) -> None:
    r = cli(redis_url, "queue", "set", "emails", "--rate", "100/s", "--max-concurrency", "5")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "queue emails: rate 100/s (burst 10), max concurrency 5"
    r = cli(redis_url, "queue", "show", "emails", "--json")
    assert json.loads(r.stdout) == {"queue": "emails", "rate": "100/s", "burst": 10, "max_concurrency": 5}
    r = cli(redis_url, "queue", "set", "emails", "--rate", "none", "--max-concurrency", "none")
    assert r.returncode == 0 and r.stdout.strip() == "queue emails: no limits", r.stderr


@pytest.mark.parametrize("args", [["--rate", "100/x"], ["--rate", "0/s"], ["--rate", "fast"], ["--max-concurrency", "0"],
                                  ["--max-concurrency", "many"], ["--burst", "-3"], []])
def test_cli_bad_values_are_one_line_and_exit_2(redis_url, conn, args) -> None:
    r = cli(redis_url, "queue", "set", "emails", *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not conn.exists("conveyor:{q:emails}:limits")


def test_cli_bad_queue_name_is_one_line(redis_url) -> None:
    r = cli(redis_url, "queue", "show", "no spaces")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr


# -- enforcement -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_rate_of_50_per_second_holds_within_5_percent_over_10s_with_3_workers(conn, queue, spawn_worker,
                                                                               tmp_path) -> None:
    queue.set_limits(rate="50/s")
    path = tmp_path / "runs"
    fill(queue, path, 800)
    for _ in range(3):
        spawn_worker("--concurrency", "8", "--prefetch", "50")  # prefetch asked for: a rate-limited queue gives none
    first = wait_until(lambda: starts(path), 20, "the first start")[0]
    wait_until(lambda: starts(path)[-1] >= first + 10.2, 30, "10 s of starts")
    started = window(starts(path), first, 10.0)
    # 500 tokens in 10 s, plus the burst (5) the bucket starts with.
    assert 475 <= started <= 525, started
    # No second of it ran over the rate (plus the burst): the limit holds throughout.
    per_second = [window(starts(path), first + s, 1.0) for s in range(10)]
    assert max(per_second) <= 50 + 5 + 2, per_second
    assert not conn.zcard(queue.keys.prefetched)


@pytest.mark.parametrize("seconds,prefetch", [(0.15, ()), (0.05, ("--prefetch", "20"))])
def test_max_concurrency_is_never_exceeded_across_workers(conn, queue, spawn_worker, tmp_path, seconds,
                                                          prefetch) -> None:
    queue.set_limits(max_concurrency=5)
    path = tmp_path / "runs"
    fill(queue, path, 40, seconds=seconds)
    for _ in range(3):
        spawn_worker("--concurrency", "8", *prefetch)
    wait_until(lambda: path.exists() and sum(line.startswith("end") for line in path.read_text().splitlines()) == 40,
               60, "every job to run")
    peak = max_overlap(path)
    assert peak <= 5
    assert peak >= 4  # the limit, not an idle fleet, bounded it: slots freed are taken again
    assert len(set(starts(path))) == 40


def test_limits_changed_live_take_effect_and_clearing_restores_full_speed(redis_url, conn, queue, spawn_worker,
                                                                          tmp_path) -> None:
    path = tmp_path / "runs"
    spawn_worker("--concurrency", "8")
    assert cli(redis_url, "queue", "set", "default", "--rate", "4/s").returncode == 0
    fill(queue, path, 200)
    first = wait_until(lambda: starts(path), 10, "the first start")[0]
    wait_until(lambda: starts(path)[-1] >= first + 2.0, 10, "2 s of starts")
    assert window(starts(path), first, 2.0) <= 4 * 2 + 1 + 1  # the rate, the burst and one token of slack
    assert cli(redis_url, "queue", "set", "default", "--rate", "none").returncode == 0
    # At 4/s the rest would take about 45 s; unlimited, it is done in a moment.
    wait_until(lambda: len(starts(path)) == 200, 15, "the rest of the jobs, unlimited")
    assert not conn.exists(queue.keys.limits)


def test_an_unlimited_queue_beside_a_throttled_one_is_not_slowed(conn, spawn_worker, tmp_path) -> None:
    slow, fast = Queue("slow", connection=conn), Queue("fast", connection=conn)
    slow.set_limits(rate="2/s")
    slow_path, fast_path = tmp_path / "slow", tmp_path / "fast"
    fill(slow, slow_path, 100)
    spawn_worker("-q", "slow,fast", "--concurrency", "4")  # the throttled queue first: strict priority
    wait_until(lambda: starts(slow_path), 10, "the first start of the throttled queue")
    began = time.time()
    fill(fast, fast_path, 300)
    wait_until(lambda: len(starts(fast_path)) == 300, 15, "the unlimited queue's jobs")
    slow_starts = starts(slow_path)
    # The throttled queue kept its rate meanwhile (2/s, a burst of 1, a token of slack).
    assert window(slow_starts, slow_starts[0], time.time() - slow_starts[0]) <= 2 * (time.time() - slow_starts[0]) + 2
    assert starts(fast_path)[0] - began < 5


def test_round_trips_per_job_are_unchanged_on_a_limited_queue_below_its_limit(conn, spawn_worker, tmp_path) -> None:
    """As test_pickup's idle worker: two round trips per job (the outcome, the next BLPOP and its
    claim), with a max_concurrency the queue stays below."""
    queue = Queue("default", connection=conn)
    queue.set_limits(max_concurrency=5)
    port = free_port()
    w = spawn_worker("--concurrency", "1", "--lease-seconds", "60", "--metrics-port", str(port),
                     "--metrics-host", "127.0.0.1")
    worker_id(w)
    assert round_trips_for_one_job(conn, queue, tmp_path / "runs", port) == 2, w.log()
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0


def test_a_limits_key_of_the_wrong_type_stops_only_its_queue_in_one_line(conn, spawn_worker, tmp_path) -> None:
    """A limit it cannot read is not taken for no limit (it may protect a downstream): the queue's
    claims are refused, in one line, until `conveyor doctor --fix` moves the key aside (below)."""
    bad, good = Queue("bad", connection=conn), Queue("good", connection=conn)
    conn.set(bad.keys.limits, "oops")
    fill(bad, tmp_path / "bad", 3)
    fill(good, tmp_path / "good", 3)
    w = spawn_worker("-q", "bad,good")
    wait_until(lambda: len(starts(tmp_path / "good")) == 3, 10, "the good queue's jobs")
    wait_until(lambda: "WRONGTYPE_KEY" in w.log(), 10, "the refusal logged")
    assert bad.count == 3 and not starts(tmp_path / "bad")  # kept, not run past a limit it cannot read
    assert sum("WRONGTYPE_KEY" in line for line in w.log().splitlines()) == 1


def test_doctor_moves_a_limits_key_of_the_wrong_type_aside(conn, redis_url) -> None:
    bad = Queue("bad", connection=conn)
    bad.enqueue("jobs:add", 1, 1)
    conn.set(bad.keys.limits, "oops")
    report = cli(redis_url, "doctor", "-q", "bad", "--json")
    assert json.loads(report.stdout)["queues"]["bad"]["findings"]["wrong_type_key"]["examples"] == [bad.keys.limits]
    assert cli(redis_url, "doctor", "-q", "bad", "--fix").returncode == 0
    assert conn.get(bad.keys.corrupt("limits")) == b"oops" and not conn.exists(bad.keys.limits)
    assert not bad.limits() and bad.count == 1


def test_a_worker_declares_its_limits_at_start(conn, queue, spawn_worker) -> None:
    """A JobQueue's spec.limits reach the workers as --limit-* options: the spec wins at each rollout."""
    queue.set_limits(rate="1/s", max_concurrency=9)  # a manual change the spec overrides
    w = spawn_worker("--limit-max-concurrency", "3")
    worker_id(w)
    assert queue.limits() == Limits(None, 3)  # the rate the spec does not declare is cleared


def test_bad_worker_limit_options_are_one_line_and_exit_2(spawn_worker) -> None:
    w = spawn_worker("--limit-rate", "3/fortnight")
    assert w.wait(15) == 2
    assert "--limit-rate" in w.log() and len(w.log().strip().splitlines()) == 1, w.log()


def test_throttling_is_visible_in_metrics(conn, queue, spawn_worker, tmp_path) -> None:
    queue.set_limits(rate="2/s", max_concurrency=4)
    fill(queue, tmp_path / "runs", 20)
    port = free_port()
    w = spawn_worker("--metrics-port", str(port), "--metrics-host", "127.0.0.1", "--lease-seconds", "3")
    worker_id(w)

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    wanted = ('conveyor_queue_throttled_total{queue="default",reason="rate"}',
              'conveyor_queue_limit{limit="rate_per_second",queue="default"} 2.0')
    text = wait_until(lambda: next((t for t in [scrape()] if all(w in t for w in wanted)), None), 10,
                      "the throttle and limit series")
    assert 'conveyor_queue_limit{limit="max_concurrency",queue="default"} 4.0' in text
