"""Dramatiq's side of the benchmark: its Redis broker, bench_jobs' functions as actors, and a
middleware that records when each worker process ran its first and last message.

The broker's Redis comes from BENCH_REDIS_URL (set it before importing). Run as
``dramatiq bench_dramatiq --processes P --threads T --queues dqbench``: its default worker,
default middleware, default logging; the Span middleware below is the only addition (a
clock read per message and one HSET when the process shuts down).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import Middleware

import bench_jobs

QUEUE = "dqbench"
SPANS = "dqbench:spans"  # pid -> "count first_start last_end", written at each worker process's shutdown
STAMPS = "dqbench:stamps"  # "sent started" per stamp job, for pickup latency
MSGS = f"dramatiq:{QUEUE}.msgs"  # the broker's hash of messages not yet acked
QUEUE_KEY = f"dramatiq:{QUEUE}"


class Span(Middleware):
    def __init__(self) -> None:
        self.first: float | None = None
        self.last = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def before_process_message(self, broker: Any, message: Any) -> None:
        if self.first is None:
            self.first = time.time()

    def after_process_message(self, broker: Any, message: Any, *, result: Any = None, exception: Any = None) -> None:
        now = time.time()
        with self._lock:
            self.count += 1
            self.last = max(self.last, now)

    def after_worker_shutdown(self, broker: Any, worker: Any) -> None:
        if self.count:
            broker.client.hset(SPANS, str(os.getpid()), f"{self.count} {self.first} {self.last}")


broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://localhost:6379/0"))
broker.add_middleware(Span())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE)
def noop() -> None:
    bench_jobs.noop()


@dramatiq.actor(queue_name=QUEUE)
def sleep10ms() -> None:
    bench_jobs.sleep10ms()


@dramatiq.actor(queue_name=QUEUE)
def stamp(sent: float) -> None:
    started = time.time()
    broker.client.rpush(STAMPS, f"{sent} {started}")


def send_many(actor: Any, n: int, chunk: int = 5000) -> None:
    """Enqueue n messages in pipelines of `chunk` (set-up only: the one-by-one rate is measured
    with plain ``actor.send()``). The broker's own enqueue, only its dispatch script's calls
    go into a pipeline."""
    dispatch = broker.scripts["dispatch"]
    try:
        for start in range(0, n, chunk):
            pipe = broker.client.pipeline(transaction=False)
            broker.scripts["dispatch"] = lambda args, keys, p=pipe: dispatch(keys=keys, args=args, client=p)
            for _ in range(min(chunk, n - start)):
                actor.send()
            pipe.execute()
    finally:
        broker.scripts["dispatch"] = dispatch
