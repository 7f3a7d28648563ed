"""Pipelines that run the same on one server, a Sentinel master and a Redis Cluster.

A step records its commands on a plain pipeline, then :func:`send` / :func:`asend` runs
them. On one server that is one pipeline. On a Cluster the commands are grouped by the
node that owns each command's key (every Conveyor script touches one queue's hash tag,
so one slot) and each node gets one pipeline, concurrently under asyncio; the replies are
put back in the order the step recorded them. redis-py's own cluster pipeline refuses
EVALSHA and retries on its own, which could run a claim twice; this one retries only
what provably did not run: a MOVED/ASK/TRYAGAIN/CLUSTERDOWN reply (the node refused the
command), after reading the slot map again.

A connection error still raises (nobody knows which commands ran); the slot map is read
again first, so the next round trip finds a promoted replica.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from .connection import is_cluster

Command = tuple[tuple[Any, ...], dict[str, Any]]
_REFUSED = (MovedError, AskError, TryAgainError, ClusterDownError)
_ROUNDS = 4  # re-routes after MOVED before the refusal is handed to the caller
_RECORDER = redis.Redis()  # never connects: only records commands
_NODE_CLIENTS: weakref.WeakKeyDictionary[Any, dict[str, aioredis.Redis]] = weakref.WeakKeyDictionary()


def record(build: Callable[[Any], object]) -> list[Command]:
    """The commands `build` puts on a pipeline, without sending anything."""
    pipe = _RECORDER.pipeline(transaction=False)
    build(pipe)
    return [(tuple(args), dict(options)) for args, options in pipe.command_stack]


def key_of(command: Command) -> Any:
    """The key that routes a command on a Cluster (None: any node will do)."""
    args, options = command
    name = str(args[0]).upper()
    if name in ("EVALSHA", "EVAL"):
        return args[3] if int(args[2]) > 0 else None
    if name in ("PING", "PUBLISH", "TIME", "INFO", "SCRIPT LOAD", "SCRIPT", "ECHO"):
        return None
    keys = options.get("keys")
    if keys:
        return keys[0]
    return args[1] if len(args) > 1 else None


def _route(cluster: Any, indices: Iterable[int], stack: list[Command]) -> dict[str, tuple[Any, list[int]]]:
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i in indices:
        key = key_of(stack[i])
        # A command without a key (PUBLISH, PING) goes to the master of slot 0: after a
        # refresh that is a live master, which a "default node" may not be.
        slot = 0 if key is None else cluster.keyslot(key)
        node = cluster.nodes_manager.get_node_from_slot(slot)
        groups.setdefault(node.name, (node, []))[1].append(i)
    return groups


def _refused(replies: list[Any], groups: Iterable[list[int]]) -> list[int]:
    """What to send again: refused commands, and every error of a node that refused any (a
    demoted master answers MOVED to keyed commands, but an error to WAIT)."""
    out = []
    for indices in groups:
        if any(isinstance(replies[i], _REFUSED) for i in indices):
            out += [i for i in indices if isinstance(replies[i], (*_REFUSED, ReadOnlyError, ResponseError))]
    return sorted(out)


# -- sync ----------------------------------------------------------------------------------


def _run(client: Any, commands: list[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for args, options in commands:
        pipe.pipeline_execute_command(*args, **options)
    return list(pipe.execute(raise_on_error=False))


def send(client: Any, stack: list[Command]) -> list[Any]:
    """Run recorded commands; every reply in place, an error reply as its exception."""
    if not stack:
        return []
    if not is_cluster(client):
        return _run(client, stack)
    replies: list[Any] = [None] * len(stack)
    todo = list(range(len(stack)))
    for round_ in range(_ROUNDS):
        if round_:
            client.nodes_manager.initialize()
        groups = list(_route(client, todo, stack).values())
        try:
            for node, indices in groups:
                for i, reply in zip(indices, _run(client.get_redis_connection(node), [stack[i] for i in indices])):
                    replies[i] = reply
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            _refresh(client)
            raise
        todo = _refused(replies, (indices for _, indices in groups))
        if not todo:
            break
    return replies


def _refresh(client: Any) -> None:
    try:
        client.nodes_manager.initialize()
    except (RedisError, OSError):
        pass


def run(client: Any, build: Callable[[Any], object]) -> tuple[list[Command], list[Any]]:
    """Record and send in one go (on one server straight on the client's pipeline)."""
    if is_cluster(client):
        stack = record(build)
        return stack, send(client, stack)
    pipe = client.pipeline(transaction=False)
    build(pipe)
    stack = list(pipe.command_stack)
    return stack, list(pipe.execute(raise_on_error=False))


def transaction(client: Any, build: Callable[[Any], object]) -> list[Any]:
    """MULTI/EXEC of what `build` records; every reply in place. On a Cluster the commands
    must share one slot (one queue's keys do): they go to that slot's master."""
    if is_cluster(client):
        stack = record(build)
        key = next((k for k in map(key_of, stack) if k is not None), None)
        node = client.nodes_manager.get_node_from_slot(0 if key is None else client.keyslot(key))
        client = client.get_redis_connection(node)
    else:
        stack = record(build)
    pipe = client.pipeline(transaction=True)
    for args, options in stack:
        pipe.pipeline_execute_command(*args, **options)
    return list(pipe.execute(raise_on_error=False))


def ping(client: Any) -> None:
    """Raise unless every master answers (on one server: that server)."""
    if not is_cluster(client):
        client.ping()
        return
    client.nodes_manager.initialize()
    for node in client.get_primaries():
        client.get_redis_connection(node).ping()


# -- asyncio -------------------------------------------------------------------------------


def _node_client(cluster: Any, node: Any) -> aioredis.Redis:
    # Plain per-node clients of our own: redis-py's cluster nodes expose no pipeline
    # that takes recorded commands.
    clients = _NODE_CLIENTS.setdefault(cluster, {})
    if node.name not in clients:
        pool = aioredis.ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
        clients[node.name] = aioredis.Redis(connection_pool=pool)
    return clients[node.name]


async def _arun(client: Any, commands: list[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for args, options in commands:
        pipe.pipeline_execute_command(*args, **options)
    return list(await pipe.execute(raise_on_error=False))


async def asend(client: Any, stack: list[Command]) -> list[Any]:
    """The asyncio twin of :func:`send`; a Cluster's nodes are sent to concurrently."""
    if not stack:
        return []
    if not is_cluster(client):
        return await _arun(client, stack)
    await client.initialize()
    replies: list[Any] = [None] * len(stack)
    todo = list(range(len(stack)))
    for round_ in range(_ROUNDS):
        if round_:
            await client.nodes_manager.initialize()
        groups = list(_route(client, todo, stack).values())
        results = await asyncio.gather(*(_arun(_node_client(client, node), [stack[i] for i in indices])
                                         for node, indices in groups), return_exceptions=True)
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        for (_, indices), result in zip(groups, results):
            if not isinstance(result, BaseException):
                for i, reply in zip(indices, result):
                    replies[i] = reply
        if failure is not None:
            await arefresh(client)
            raise failure
        todo = _refused(replies, (indices for _, indices in groups))
        if not todo:
            break
    return replies


async def arun(client: Any, build: Callable[[Any], object]) -> tuple[list[Command], list[Any]]:
    """The asyncio twin of :func:`run`."""
    if is_cluster(client):
        stack = record(build)
        return stack, await asend(client, stack)
    pipe = client.pipeline(transaction=False)
    build(pipe)
    stack = list(pipe.command_stack)
    return stack, list(await pipe.execute(raise_on_error=False))


async def arefresh(client: Any) -> None:
    """Read a Cluster's slot map again (after a failover); nothing on one server."""
    if not is_cluster(client):
        return
    try:
        await client.nodes_manager.initialize()
    except (RedisError, OSError):
        pass


async def aping(client: Any) -> None:
    """Raise unless every master answers (on one server: that server)."""
    if not is_cluster(client):
        await client.ping()
        return
    await client.initialize()
    await client.nodes_manager.initialize()
    for node in client.get_primaries():
        await _node_client(client, node).ping()


def apubsub(client: Any, ignore_subscribe_messages: bool = True) -> Any:
    """A pub/sub on this client; on a Cluster on one live master (classic PUBLISH reaches
    every node, so any node hears every channel)."""
    if is_cluster(client):
        node = _node_client(client, client.nodes_manager.get_node_from_slot(0))
        return node.pubsub(ignore_subscribe_messages=ignore_subscribe_messages)
    return client.pubsub(ignore_subscribe_messages=ignore_subscribe_messages)


async def ainfos(client: Any, section: str) -> list[dict[str, Any]]:
    """INFO of one section from the server, or from every master of a Cluster."""
    if not is_cluster(client):
        return [dict(await client.info(section))]
    await client.initialize()
    return [dict(await _node_client(client, node).info(section)) for node in client.get_primaries()]


async def adisconnect(client: Any, inuse: bool = True) -> None:
    """Drop pooled connections (stale after an outage), a Cluster's per-node ones too."""
    for node_client in list(_NODE_CLIENTS.get(client, {}).values()):
        await node_client.connection_pool.disconnect(inuse_connections=inuse)
    if is_cluster(client):
        for node in client.get_nodes():
            await node.disconnect()
    else:
        await client.connection_pool.disconnect(inuse_connections=inuse)


async def aclose(client: Any) -> None:
    for node_client in list(_NODE_CLIENTS.pop(client, {}).values()):
        await node_client.aclose()
    await client.aclose()
