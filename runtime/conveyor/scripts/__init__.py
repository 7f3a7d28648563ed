"""The Lua scripts, one per state transition, loaded with a shared prelude.

Each ``*.lua`` file here is headed by its KEYS, ARGV and return values, and by a
``#!lua`` line with its Redis 7 flags: transitions that move or end existing work carry
``allow-oom``, so workers drain a full Redis that producers can no longer add to. At load
time :func:`conveyor.protocol.lua_prelude` (return codes, statuses as ``S_QUEUED``, job-hash
fields as ``F_STATUS``) and ``_lib.lua`` are put after that line, so the wire names have one
definition and helpers are not copied.

Scripts run by EVALSHA inside ordinary pipelines, or alone (:meth:`Script.run`, for the
single enqueue: a pipeline costs more client time than the Lua; sent on a connection the
thread keeps, :mod:`conveyor.direct`). (redis-py's own Script
objects send SCRIPT EXISTS before every pipeline, a second round trip on the hot path.) Every command
of a pipeline gets its own reply (:func:`aexecute_each`): an error in one never throws
away what Redis did for the others. When Redis answers NOSCRIPT (restarted, flushed) the
scripts are loaded and only the commands that got NOSCRIPT are sent again: a script that
hit NOSCRIPT never ran.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any, NamedTuple

from redis.exceptions import NoScriptError, ResponseError

from .. import direct, protocol, routing
from ..connection import is_cluster

PRELUDE = protocol.lua_prelude()


@dataclass(frozen=True)
class Script:
    name: str

    @cached_property
    def source(self) -> str:
        here = resources.files(__package__)
        body = here.joinpath(f"{self.name}.lua").read_text()
        shebang, _, rest = body.partition("\n") if body.startswith("#!") else ("", "", body)
        lib = helpers_for(rest, here.joinpath("_lib.lua").read_text())
        return (shebang + "\n" if shebang else "") + PRELUDE + lib + "\n" + rest

    @cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()

    def __call__(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Queue (on a pipeline) or send (on a client) one EVALSHA."""
        return client.evalsha(self.sha, len(keys), *keys, *args)

    def run(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Send one EVALSHA on a plain client (not a Cluster), without a pipeline's cost; the
        reply, or an error reply as its exception, as :func:`execute_each` gives it. On
        NOSCRIPT the scripts are loaded and it is sent again (a script that hit NOSCRIPT
        never ran). A connection error raises."""
        def send() -> Any:
            return direct.execute(client, "EVALSHA", self.sha, len(keys), *keys, *args)

        try:
            try:
                return send()
            except NoScriptError:
                load(client)
                return send()
        except ResponseError as exc:
            return exc

    async def arun(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """The asyncio twin of :meth:`run`."""
        async def send() -> Any:
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)

        try:
            try:
                return await send()
            except NoScriptError:
                await aload(client)
                return await send()
        except ResponseError as exc:
            return exc


_DEFINES = re.compile(r"local\s+(?:function\s+(\w+)|([\w\s,]+?)\s*=)")


def helpers_for(body: str, lib: str) -> str:
    """The definitions of ``lib`` (_lib.lua) that ``body`` uses, directly or through another
    one, in their order there.

    A script's main chunk runs on every call, so every table and closure of _lib.lua it
    holds is built again each time: all of them cost an enqueue about 10 µs of server time,
    a third of its Lua. A top-level definition starts with ``local`` at column 0 and takes
    the comment lines just above it. A helper named only in a comment is included all
    the same (harmless); one in use is never left out (tests/test_protocol.py checks).
    """
    chunks = _chunks(lib)
    wanted: set[int] = set()  # indexes into chunks
    words = set(_WORD.findall(body))
    while True:  # the closure: what the body uses, what those use, ...
        more = {i for i, chunk in enumerate(chunks) if i not in wanted and chunk.names & words}
        if not more:
            break
        wanted |= more
        for i in more:
            words |= chunks[i].words
    return "".join(chunk.text for i, chunk in enumerate(chunks) if i == 0 or i in wanted)


_WORD = re.compile(r"\w+")


class _Chunk(NamedTuple):
    names: frozenset[str]  # what it defines
    text: str
    words: frozenset[str]  # what it names


@functools.lru_cache(maxsize=4)
def _chunks(lib: str) -> tuple[_Chunk, ...]:
    """_lib.lua cut into its top-level definitions, once per process (not once per script)."""
    parts: list[tuple[set[str], list[str]]] = [(set(), [])]  # the file's heading comment first
    for line in lib.splitlines(keepends=True):
        if match := _DEFINES.match(line):
            lead = parts[-1][1]
            cut = len(lead)
            while cut and lead[cut - 1].startswith("--"):
                cut -= 1
            names = {match[1]} if match[1] else {n.strip() for n in match[2].split(",")}
            parts.append((names, lead[cut:]))
            del lead[cut:]
        parts[-1][1].append(line)
    return tuple(_Chunk(frozenset(names), text := "".join(lines), frozenset(_WORD.findall(text)))
                 for names, lines in parts)


enqueue = Script("enqueue")
claim = Script("claim")
start = Script("start")
complete = Script("complete")
fail = Script("fail")
renew = Script("renew")
cancel = Script("cancel")
release = Script("release")
retry = Script("retry")
reap = Script("reap")
release_worker = Script("release_worker")  # a worker known lost: its jobs back now
disown = Script("disown")  # the jobs of a claim whose reply was lost
promote = Script("promote")
requeue = Script("requeue")
purge = Script("purge")
delete = Script("delete")  # ended jobs, from the dashboard
failed_types = Script("failed_types")  # the dashboard's filter of failed jobs by exception type
limits = Script("limits")  # flow control: conveyor queue set, Queue.set_limits, a JobQueue's workers
lock_renew = Script("lock_renew")
lock_release = Script("lock_release")
repair = Script("repair")  # conveyor doctor --fix
depend = Script("depend")  # register dependents on a dependency's queue (conveyor/deps.py)
resolve = Script("resolve")  # dependency outcomes reach the deferred jobs of a queue
watch = Script("watch")  # a waiter marks jobs and reads them (conveyor.waiting)
progress = Script("progress")  # what running jobs reported (conveyor.worker.progress)
ALL = (enqueue, claim, start, complete, fail, renew, cancel, release, retry, reap, release_worker, disown, promote,
       requeue, purge, delete, failed_types, limits, lock_renew, lock_release, repair, depend, resolve, watch, progress)


def _load_stack() -> list[routing.Command]:
    return routing.record(lambda pipe: [pipe.script_load(script.source) for script in ALL])


def load(client: Any) -> None:
    """Load every script (on a Cluster: on every master)."""
    if is_cluster(client):
        client.nodes_manager.initialize()
        for node in client.get_primaries():
            routing.send(client.get_redis_connection(node), _load_stack())
    else:
        routing.send(client, _load_stack())


async def aload(client: Any) -> None:
    if is_cluster(client):
        await client.initialize()
        for node in client.get_primaries():
            raise_first(await routing.asend(routing._node_client(client, node), _load_stack()))
    else:
        raise_first(await routing.asend(client, _load_stack()))


def _noscript(replies: list[Any]) -> list[int]:
    return [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]


def execute_each(client: Any, build: Callable[[Any], object]) -> list[Any]:
    """Run the commands ``build`` puts on a pipeline; each reply in place, an error as its
    exception (on a Cluster, one pipeline per node: :mod:`conveyor.routing`).

    A connection error still raises: then nobody knows which commands ran.
    """
    stack, replies = routing.run(client, build)
    if missing := _noscript(replies):
        load(client)
        for i, reply in zip(missing, routing.send(client, [stack[i] for i in missing])):
            replies[i] = reply
    return replies


async def aexecute_each(client: Any, build: Callable[[Any], object]) -> list[Any]:
    """The asyncio twin of :func:`execute_each`."""
    stack, replies = await routing.arun(client, build)
    if missing := _noscript(replies):
        await aload(client)
        for i, reply in zip(missing, await routing.asend(client, [stack[i] for i in missing])):
            replies[i] = reply
    return replies


def raise_first(replies: list[Any]) -> list[Any]:
    """For callers that want all or nothing: the first error reply, raised."""
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies


def execute(client: Any, build: Callable[[Any], object]) -> list[Any]:
    """Run a pipeline that ``build`` fills and raise the first error reply (client side)."""
    return raise_first(execute_each(client, build))
