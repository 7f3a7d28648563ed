"""One command on a plain sync client, on a connection the calling thread keeps for it.

redis-py's pool costs about as much client CPU per command as the rest of the command
(get_connection and release: a lock, a liveness poll, its observability hooks, ~30 µs of
an enqueue's ~100 on the 2-core bench machine). The single enqueue is the call apps make
most, one EVALSHA at a time, so each thread that enqueues keeps one connection of its own
per client pool and sends on it directly (:func:`execute`): checked as the pool checks a
connection it hands out, packed by hiredis as redis-py packs it, answered and retried as
redis-py would (the connection's own ``Retry``).

Only for a ``redis.Redis`` on a plain ``ConnectionPool`` (not a blocking pool, whose size the
app chose to bound; not Sentinel, whose connections follow the master; not a Cluster, a
single-connection client, or one with client-side caching). Held connections are not
counted in the pool's ``max_connections``: one per enqueueing thread, closed when the thread
ends or the pool is gone. After a fork the child makes its own (the parent's socket is
never used by two processes).
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

import redis
from hiredis import pack_command  # redis[hiredis] is a dependency; redis-py packs with it too
from redis.exceptions import ResponseError

_PLAIN = (redis.Connection, redis.SSLConnection, redis.UnixDomainSocketConnection)


class _Held(threading.local):
    def __init__(self) -> None:
        # pool -> (pid, connection): a pool's entry goes when the pool does.
        self.by_pool: weakref.WeakKeyDictionary[Any, tuple[int, Any]] = weakref.WeakKeyDictionary()


_held = _Held()


def eligible(client: Any) -> bool:
    """Whether :func:`execute` sends on a held connection for this client."""
    pool = getattr(client, "connection_pool", None)
    return (type(client) is redis.Redis and getattr(client, "connection", None) is None
            and type(pool) is redis.ConnectionPool and pool.connection_class in _PLAIN
            and getattr(pool, "cache", None) is None)


def _connection(pool: Any) -> Any:
    pid = os.getpid()
    entry = _held.by_pool.get(pool)
    if entry is None or entry[0] != pid:  # none yet, or the parent's (after a fork)
        entry = (pid, pool.connection_class(**pool.connection_kwargs))
        _held.by_pool[pool] = entry
    return entry[1]


def execute(client: Any, *args: Any) -> Any:
    """``client.execute_command(*args)`` for a command whose reply needs no parsing callback
    (EVALSHA); an error reply raises as redis-py raises it."""
    if not eligible(client):
        return client.execute_command(*args)
    conn = _connection(client.connection_pool)
    packed = [pack_command(args)]
    # As the pool checks a connection it hands out: one the server closed while idle (its
    # timeout, CLIENT KILL, a restart) reads as EOF; reconnect before sending, not after.
    try:
        if conn.is_connected and conn.can_read():
            conn.disconnect()
    except (redis.ConnectionError, OSError):
        conn.disconnect()

    def send() -> Any:
        conn.send_packed_command(packed)
        return conn.read_response()

    try:
        return conn.retry.call_with_retry(send, lambda _error: conn.disconnect())
    except ResponseError:
        raise  # a reply: the connection is in step
    except BaseException:
        conn.disconnect()  # interrupted or failed mid-reply: never reuse a half-read stream
        raise
