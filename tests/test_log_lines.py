"""The worker's log lines: formatted cheaply, written once per event-loop turn, none lost."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import signal
import threading
import time

import redis

from conveyor import Queue
from conveyor.logs import TEXT_FORMAT, BatchedStreamHandler, JSONFormatter, TextFormatter
from conveyor.worker.calltext import LazyCall
from support import wait_until


def record(msg: str, *args: object, created: float | None = None, level: int = logging.INFO) -> logging.LogRecord:
    rec = logging.LogRecord("conveyor.worker", level, __file__, 1, msg, args, None)
    if created is not None:
        rec.created = created
        rec.msecs = int((created - int(created)) * 1000) + 0.0  # as LogRecord computes it
    return rec


# -- formatters ------------------------------------------------------------------------------------


def test_text_lines_match_the_stock_formatter_within_and_across_seconds() -> None:
    ours, stock = TextFormatter(TEXT_FORMAT), logging.Formatter(TEXT_FORMAT)
    base = 1_764_547_200.0
    for created in (base + 0.001, base + 0.5, base + 0.999, base + 1.25, base + 0.042, base + 3600.7):
        rec = record("job %s finished: %s", "j1", "f(1)", created=created)
        assert ours.format(rec) == stock.format(rec)
    # A datefmt of its own: no milliseconds, the stamp still follows the clock.
    dated, stock_dated = TextFormatter(TEXT_FORMAT, "%H:%M:%S"), logging.Formatter(TEXT_FORMAT, "%H:%M:%S")
    for created in (base + 0.2, base + 1.2, base + 1.7):
        rec = record("x", created=created)
        assert dated.format(rec) == stock_dated.format(rec)


def test_json_timestamps_keep_their_milliseconds() -> None:
    fmt = JSONFormatter()
    base = 1_764_547_200.0
    for created in (base + 0.001, base + 0.5, base + 1.25, base + 1.999, base + 1.9999996, base + 86_400.123):
        ts = json.loads(fmt.format(record("m", created=created)))["ts"]
        assert ts == dt.datetime.fromtimestamp(created, dt.UTC).isoformat(timespec="milliseconds"), created


def test_the_call_text_is_built_once_and_only_when_formatted() -> None:
    call = LazyCall("jobs:echo", "json", b'{"a": [1], "k": {}}', True)
    assert call._text is None
    assert str(call) == "jobs:echo(1)" and call._text == "jobs:echo(1)"
    call.payload = b"changed"
    assert str(call) == "jobs:echo(1)"


# -- the batched handler -----------------------------------------------------------------------


class Stream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, s: str) -> int:
        self.writes += 1
        return super().write(s)


def handler(capacity: int = 256) -> tuple[logging.Logger, BatchedStreamHandler, Stream]:
    stream = Stream()
    h = BatchedStreamHandler(stream, capacity=capacity)
    h.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger(f"test-batched-{id(h)}")
    log.propagate = False
    log.handlers[:] = [h]
    log.setLevel(logging.DEBUG)
    return log, h, stream


def test_lines_off_the_loop_are_written_at_once() -> None:
    log, _, stream = handler()
    log.info("one")
    assert stream.getvalue() == "INFO one\n"
    log.info("two")
    assert stream.getvalue() == "INFO one\nINFO two\n" and stream.writes == 2


def test_a_loop_turns_lines_are_written_together_and_warnings_at_once() -> None:
    log, _, stream = handler()

    async def main() -> None:
        for i in range(5):
            log.info("line %d", i)
        assert stream.getvalue() == ""  # held until the turn ends
        await asyncio.sleep(0)
        assert stream.getvalue() == "".join(f"INFO line {i}\n" for i in range(5)) and stream.writes == 1
        log.info("before")
        log.warning("alarm")  # written at once, after what waited before it
        assert stream.getvalue().endswith("INFO before\nWARNING alarm\n")
        log.info("last")

    asyncio.run(main())
    assert stream.getvalue().endswith("WARNING alarm\nINFO last\n")  # asyncio.run's last turns


def test_a_full_buffer_is_written_without_waiting_for_the_turn() -> None:
    log, _, stream = handler(capacity=3)

    async def main() -> None:
        for i in range(7):
            log.info("%d", i)
        assert stream.getvalue() == "INFO 0\nINFO 1\nINFO 2\nINFO 3\nINFO 4\nINFO 5\n" and stream.writes == 2

    asyncio.run(main())
    assert stream.getvalue().endswith("INFO 6\n")


def test_a_thread_writes_at_once_and_a_closed_loops_lines_are_not_lost() -> None:
    log, h, stream = handler()

    async def main() -> None:
        log.info("on the loop")
        worker = threading.Thread(target=log.info, args=("from a job thread",))
        worker.start()
        worker.join()
        # The thread's line was written at once, with the loop's line that waited before it.
        assert stream.getvalue() == "INFO on the loop\nINFO from a job thread\n"

    asyncio.run(main())
    loop = asyncio.new_event_loop()
    loop.call_soon(log.info, "held")  # in the loop's last turn: its flush is scheduled, never run
    loop.call_soon(loop.stop)
    loop.run_forever()
    loop.close()
    assert not stream.getvalue().endswith("INFO held\n")
    h.flush()  # what the worker (and logging.shutdown at exit) do
    assert stream.getvalue().endswith("INFO held\n")

    async def again() -> None:  # a new loop: its lines are scheduled on it
        log.info("new loop")
        await asyncio.sleep(0)
        assert stream.getvalue().endswith("INFO new loop\n")

    asyncio.run(again())


# -- a real worker --------------------------------------------------------------------------------


def test_a_sigtermed_worker_writes_every_line(queue: Queue, conn: redis.Redis, spawn_worker) -> None:
    quick = [queue.enqueue("jobs:add", i, 1) for i in range(30)]
    slow = queue.enqueue("jobs:sleep", 1.0)
    w = spawn_worker("--shutdown-timeout", "10")
    wait_until(lambda: slow.id in queue.started, 15, "the slow job to start")
    time.sleep(0.2)
    w.signal(signal.SIGTERM)
    assert w.wait(15) == 0
    lines = w.log().splitlines()
    for job in (*quick, slow):
        assert sum(f"INFO conveyor.worker: job {job.id} finished: " in line for line in lines) == 1, job.id
    assert not any(" started: " in line for line in lines)  # a DEBUG line
    assert " stopped: 31 jobs (31 finished, 0 failed)" in lines[-1], lines[-3:]
