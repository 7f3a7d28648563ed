"""The client's operations without I/O: each is a generator that yields what it needs Redis
to do and gets the replies back, so the sync client (:func:`run`) and the asyncio client
(:func:`arun`) share every line of checking, encoding, script calling and reply reading.

An operation yields:

- :class:`Pipeline`: one round trip of commands (a function that fills a pipeline); it gets
  every reply in place, an error reply as its exception (``scripts.execute_each``);
- :class:`Eval`: one EVALSHA sent alone on a plain server (cheaper than a pipeline of one);
  it gets the reply, or an error reply as its exception (``Script.run``);
- :class:`Pause`: a wait while another process (a worker) acts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any, NamedTuple, TypeVar

from . import scripts

T = TypeVar("T")


# NamedTuples: one is made per call on the enqueue path, where a frozen dataclass costs more.
class Pipeline(NamedTuple):
    build: Callable[[Any], object]


class Eval(NamedTuple):
    script: scripts.Script
    keys: Sequence[str]
    args: Sequence[Any]


class Pause(NamedTuple):
    seconds: float


Op = Pipeline | Eval | Pause
Steps = Generator[Op, Any, T]


def run(steps: Steps[T], client: Any) -> T:
    """Drive an operation on a sync client."""
    reply: Any = None
    while True:
        try:
            op = steps.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if isinstance(op, Eval):
            reply = op.script.run(client, op.keys, op.args)
        elif isinstance(op, Pipeline):
            reply = scripts.execute_each(client, op.build)
        else:
            time.sleep(op.seconds)
            reply = None


async def arun(steps: Steps[T], client: Any) -> T:
    """Drive an operation on an asyncio client."""
    reply: Any = None
    while True:
        try:
            op = steps.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        if isinstance(op, Eval):
            reply = await op.script.arun(client, op.keys, op.args)
        elif isinstance(op, Pipeline):
            reply = await scripts.aexecute_each(client, op.build)
        else:
            await asyncio.sleep(op.seconds)
            reply = None


def execute(build: Callable[[Any], object]) -> Steps[list[Any]]:
    """One round trip whose first error reply is raised (``scripts.execute``)."""
    replies = yield Pipeline(build)
    return scripts.raise_first(replies)
