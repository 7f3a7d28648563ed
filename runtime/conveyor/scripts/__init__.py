"""The Lua scripts, one per state transition, loaded with a shared prelude.

Each ``*.lua`` file here is headed by its KEYS, ARGV and return values. At load
time the return-code constants from :mod:`conveyor.errors` and ``_lib.lua`` are
prepended, so the codes have one definition and helpers are not copied.

Scripts run by EVALSHA inside ordinary pipelines. (redis-py's own Script objects
send SCRIPT EXISTS before every pipeline, a second round trip on the hot path.)
When Redis answers NOSCRIPT (restarted, flushed) the scripts are loaded and the
pipeline sent once more; every script is safe to repeat for that case because a
script that hits NOSCRIPT never ran.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import Any, Callable, Sequence

from redis.exceptions import NoScriptError

from .. import errors

_CODES = ("OK", "STALE", "MISSING", "WRONG_STATE", "EXISTS", "DUPLICATE")


@dataclass(frozen=True)
class Script:
    name: str

    @cached_property
    def source(self) -> str:
        here = resources.files(__package__)
        consts = "".join(f"local {c} = {getattr(errors, c)}\n" for c in _CODES)
        return consts + here.joinpath("_lib.lua").read_text() + "\n" + here.joinpath(f"{self.name}.lua").read_text()

    @cached_property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()

    def __call__(self, client: Any, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Queue (on a pipeline) or send (on a client) one EVALSHA."""
        return client.evalsha(self.sha, len(keys), *keys, *args)


enqueue = Script("enqueue")
claim = Script("claim")
complete = Script("complete")
fail = Script("fail")
renew = Script("renew")
cancel = Script("cancel")
release = Script("release")
retry = Script("retry")
reap = Script("reap")
promote = Script("promote")
requeue = Script("requeue")
purge = Script("purge")
lock_renew = Script("lock_renew")
lock_release = Script("lock_release")
repair = Script("repair")  # conveyor doctor --fix
ALL = (enqueue, claim, complete, fail, renew, cancel, release, retry, reap, promote, requeue, purge, lock_renew, lock_release,
       repair)


def load(client: Any) -> None:
    pipe = client.pipeline(transaction=False)
    for script in ALL:
        pipe.script_load(script.source)
    pipe.execute()


async def aload(client: Any) -> None:
    pipe = client.pipeline(transaction=False)
    for script in ALL:
        pipe.script_load(script.source)
    await pipe.execute()


def execute(client: Any, build: Callable[[Any], None]) -> list[Any]:
    """Run a pipeline that ``build`` fills, loading the scripts if Redis lacks them."""
    for attempt in (0, 1):
        pipe = client.pipeline(transaction=False)
        build(pipe)
        try:
            return pipe.execute()
        except NoScriptError:
            if attempt:
                raise
            load(client)
    raise AssertionError("unreachable")


async def aexecute(client: Any, build: Callable[[Any], None]) -> list[Any]:
    """The asyncio twin of :func:`execute`."""
    for attempt in (0, 1):
        pipe = client.pipeline(transaction=False)
        build(pipe)
        try:
            return await pipe.execute()
        except NoScriptError:
            if attempt:
                raise
            await aload(client)
    raise AssertionError("unreachable")
