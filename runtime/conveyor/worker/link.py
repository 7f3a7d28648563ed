"""The worker's link to Redis, and what it knows about Redis's health.

Every part of the worker sends its round trips through one :class:`RedisLink`, so
health is judged in one place:

- an error *reply* (a full Redis, a key of the wrong type, a refused script) belongs to
  one command; the caller gets it in place of that reply and handles it;
- a reset or refused connection is first checked on a fresh connection: a pooled
  connection that went stale while Redis restarted is replaced quietly; otherwise it is
  an outage;
- silence (packets dropped, no reset) is noticed by a probe within ``silence``
  seconds (max(lease/3, 2 s)): commands time out after half of that, never 30 s.

An outage gets one ERROR line, turns /readyz 503 and is retried with backoff by one task;
every part waits for :meth:`wait_up`. When Redis is back: one INFO line, fresh
connections, and :attr:`back_at`, from which reapers wait a whole lease so that live
workers renew their leases before anyone takes their jobs.

redis-py's own retries are off: it would re-send a pipeline whose reply was lost and
run a claim twice.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from typing import Any

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import routing, scripts
from ..connection import RedisTarget, cause, db_of, describe, error_line
from .metrics import WorkerMetrics

log = logging.getLogger("conveyor.worker")

DOWN_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, TimeoutError)
CONNECT_TIMEOUT = 5.0  # seconds to open a connection to Redis
IDLE_BLOCK = 5.0  # seconds an idle worker blocks in BLPOP before re-checking its queues anyway


class RedisUnreachable(Exception):
    """Redis did not answer within the worker's --connect-timeout."""


class LinkDown(Exception):
    """Redis did not answer; the link has taken note and reconnects."""


class RefusalLog:
    """One warning while Redis refuses a part of a component's round trip (an error reply, not
    an outage), one line when it accepts that part again: never a line per attempt."""

    def __init__(self, component: str) -> None:
        self.component = component
        self._refused: set[str] = set()

    def refused(self, part: str, reply: Any) -> bool:
        """True if `reply` is an error reply (then the caller skips that part)."""
        if isinstance(reply, ResponseError):
            if part not in self._refused:
                self._refused.add(part)
                log.warning("%s: Redis refused the %s: %s", self.component, part, cause(reply))
            return True
        if part in self._refused:
            self._refused.discard(part)
            log.info("%s: Redis accepts the %s again", self.component, part)
        return False


class State(enum.Enum):
    CONNECTING = "connecting"
    UP = "up"
    DOWN = "down"
    CLOSED = "closed"


class RedisLink:
    def __init__(self, target: RedisTarget, *, lease_seconds: float, metrics: WorkerMetrics,
                 closing: asyncio.Event, stats: dict[str, int]) -> None:
        self.target = target
        self.where = target.masked
        self.lease_seconds = lease_seconds
        self.silence = max(lease_seconds / 3, 2.0)
        # Retry at least this often while Redis is down, so a worker is back within this long
        # of Redis, well inside the grace other workers' reapers give it (reap_allowed).
        self.retry_cap = min(5.0, self.silence / 2)
        self.metrics = metrics
        self.stats = stats
        self._closing = closing
        options: dict[str, Any] = {"socket_connect_timeout": CONNECT_TIMEOUT, "retry": Retry(NoBackoff(), 0)}
        self.redis = target.aclient(socket_timeout=self.silence / 2, **options)
        # BLPOP parks a connection for IDLE_BLOCK: it gets one of its own, allowed to wait that long.
        self.blocking = target.aclient(socket_timeout=IDLE_BLOCK + self.silence / 2, **options)
        self.state = State.CONNECTING
        self.back_at = time.monotonic()
        self._up = asyncio.Event()
        self._last_reply = time.monotonic()
        self._down_since = 0.0
        self._reconnect: asyncio.Task[None] | None = None
        self.cut = False  # the stop closed the blocking connection under the waker (cut_blocking)
        self.db = db_of(self.redis)  # scopes fleet commands
        self.policy = "unknown"  # maxmemory-policy, read at connect

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    @property
    def up(self) -> bool:
        return self.state is State.UP

    # -- round trips ----------------------------------------------------------------------

    async def roundtrip(self, build: Callable[[Any], object]) -> list[Any]:
        """One pipeline; every reply in place (an error reply as its exception).

        Raises LinkDown when Redis did not answer (the outage is handled here).
        """
        self.stats["redis_roundtrips"] += 1
        self.metrics.roundtrips.inc()
        try:
            replies = await scripts.aexecute_each(self.redis, build)
        except DOWN_ERRORS as exc:
            await self.failed(exc)
            raise LinkDown(str(exc)) from None
        self._last_reply = time.monotonic()
        return replies

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One plain command (for pub/sub setup, pings); raises LinkDown like roundtrip."""
        try:
            reply = await getattr(self.redis, method)(*args, **kwargs)
        except DOWN_ERRORS as exc:
            await self.failed(exc)
            raise LinkDown(str(exc)) from None
        self._last_reply = time.monotonic()
        return reply

    def pubsub(self) -> Any:
        return routing.apubsub(self.redis)

    async def blpop(self, keys: list[str], timeout: float) -> Any:
        self.stats["redis_roundtrips"] += 1
        self.metrics.roundtrips.inc()
        try:
            reply = await self.blocking.blpop(keys, timeout=timeout)
        except DOWN_ERRORS as exc:
            raise await self._blocking_down(exc) from None
        self._last_reply = time.monotonic()
        return reply

    async def blpop_then(self, keys: list[str], timeout: float, build: Callable[[Any], object]) -> tuple[Any, Any]:
        """BLPOP and the one command `build` queues (a claim), in one write on the blocking
        connection: Redis leaves the command unread while the BLPOP blocks and runs it as soon as
        the BLPOP returns (a token, or its timeout), so both replies come back together: one round
        trip. Each reply in place, an error reply as its exception (the BLPOP's a list or None).

        Raises LinkDown when no reply came: the command may have run or not. (A client that
        disconnects while blocked is dropped with its unread input, but the BLPOP may have
        returned and the command run just before.) Not on a Cluster.

        On a connection of the pool, not a redis-py pipeline: its bookkeeping cost the job
        waiting for this reply a tenth of a millisecond."""
        self.stats["redis_roundtrips"] += 1
        self.metrics.roundtrips.inc()
        (command, _), = routing.record(build)
        pool = self.blocking.connection_pool
        try:
            conn = await pool.get_connection()
            try:
                if self.cut:  # the stop came while this connection was opened: send nothing
                    raise RedisConnectionError("closing")
                await conn.send_packed_command(conn.pack_commands([("BLPOP", *keys, timeout), command]))
                token, reply = await _reply(conn), await _reply(conn)
            except BaseException:
                await conn.disconnect(nowait=True)  # a reply may be unread: never reuse it as it is
                raise
            finally:
                await pool.release(conn)
        except DOWN_ERRORS as exc:
            raise await self._blocking_down(exc) from None
        self._last_reply = time.monotonic()
        return token, reply

    async def _blocking_down(self, exc: BaseException) -> LinkDown:
        if self._closing.is_set() or self.cut:  # closed under the BLPOP on purpose: not an outage
            return LinkDown("closing")
        await self.failed(exc)
        return LinkDown(str(exc))

    async def cut_blocking(self) -> None:
        """End a parked BLPOP now (a stopping worker must not wait out its block)."""
        self.cut = True
        try:
            await routing.adisconnect(self.blocking)
        except (*DOWN_ERRORS, RedisError):
            pass

    # -- health -----------------------------------------------------------------------------

    async def failed(self, exc: BaseException) -> None:
        """A round trip got no answer. Tell a stale connection from an outage."""
        if self.state is not State.UP:
            return
        silent = isinstance(exc, (RedisTimeoutError, TimeoutError))
        if not silent and await self._fresh_ping():
            log.debug("replaced a stale connection to Redis (%s)", error_line(exc))
            return
        self._mark_down(exc, silent)

    async def _fresh_ping(self) -> bool:
        # Idle pooled connections predate whatever broke this one; those in use by other
        # parts right now find out on their own, without their commands being cut.
        await self._drop_connections(inuse=False)
        try:
            await routing.aping(self.redis)
        except (*DOWN_ERRORS, RedisError):
            return False
        self._last_reply = time.monotonic()
        return True

    def _mark_down(self, exc: BaseException, silent: bool) -> None:
        if self.state is not State.UP:
            return
        self.state = State.DOWN
        self._up.clear()
        self._down_since = time.monotonic()
        self.metrics.redis_up.set(0)
        why = f"no answer within {self.silence / 2:g}s" if silent else cause(exc)
        log.error("lost Redis at %s: %s; retrying with backoff", self.where, why)
        self._reconnect = asyncio.get_running_loop().create_task(self._reconnect_loop(), name="reconnect")

    async def _reconnect_loop(self) -> None:
        await self._drop_connections()  # commands parked on a silent socket end now
        delay = 0.1
        while not self._closing.is_set():
            try:
                await routing.aping(self.redis)
                await routing.aping(self.blocking)  # on a Cluster: its slot map, read again too
                break
            except (*DOWN_ERRORS, RedisError):
                await self.nap(delay)
                delay = min(delay * 2, self.retry_cap)
        else:
            return
        await self._drop_connections()  # every pooled connection predates the outage
        self._back(f" after {time.monotonic() - self._down_since:.1f}s")

    def _back(self, how: str = "") -> None:
        self.back_at = self._last_reply = time.monotonic()
        self.state = State.UP
        self._up.set()
        self.metrics.redis_up.set(1)
        if how:
            log.info("Redis at %s is back%s", self.where, how)

    async def _drop_connections(self, inuse: bool = True) -> None:
        for client in (self.redis, self.blocking):
            try:
                await routing.adisconnect(client, inuse)
            except (*DOWN_ERRORS, RedisError):
                pass

    async def wait_up(self, *also: asyncio.Event) -> bool:
        """Wait until Redis answers again, or the worker closes, or any of `also` is set.

        Returns True if Redis is up."""
        if self.up:
            return True
        waits = [asyncio.ensure_future(e.wait()) for e in (self._closing, self._up, *also)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        return self.up

    async def watch(self) -> None:
        """Probe a quiet link, so a silent Redis is noticed within `silence` seconds."""
        # Worst case: quiet for silence/8, seen within a tick, then the ping's timeout
        # (silence/2): 11/16 of the budget, leaving room for a loaded machine.
        tick = self.silence / 16
        while not self._closing.is_set():
            await self.nap(tick)
            if self.up and time.monotonic() - self._last_reply > self.silence / 8:
                try:
                    await self.call("ping")
                except (LinkDown, RedisError):
                    pass

    def reap_allowed(self) -> bool:
        """Reap only once every live worker had a whole lease to renew after an outage (plus the
        time it may take to notice Redis is back): an outage is not a death."""
        return self.up and time.monotonic() - self.back_at >= self.lease_seconds + self.retry_cap

    # -- start and end ----------------------------------------------------------------------

    async def connect(self, stopping: asyncio.Event, timeout: float | None = None) -> bool:
        """Wait for Redis with backoff; one message when it is unreachable, one when it is back.

        With a timeout (a burst worker's default), give up after it: a CI job must fail,
        not hang, when Redis never comes. Raises :class:`RedisUnreachable` then.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        delay, complained = 0.1, False
        while not stopping.is_set():
            try:
                await self._first_contact(deadline)
                break
            except (TimeoutError, *DOWN_ERRORS, RedisError) as exc:
                if deadline is not None and loop.time() >= deadline:
                    raise RedisUnreachable(f"gave up after {timeout:g}s (--connect-timeout): "
                                           f"{describe(exc, self.target)}") from None
                if not complained:
                    # With a deadline, the give-up line is the one ERROR: this one only says why we wait.
                    how = "with backoff" if deadline is None else f"for up to {timeout:g}s (--connect-timeout)"
                    log.log(logging.ERROR if deadline is None else logging.WARNING, "%s; retrying %s",
                            describe(exc, self.target), how)
                    complained = True
                nap = delay if deadline is None else max(0.0, min(delay, deadline - loop.time()))
                try:
                    await asyncio.wait_for(stopping.wait(), nap)
                except TimeoutError:
                    pass
                delay = min(delay * 2, 10.0)
        else:
            return False
        self._back()
        if complained:
            log.info("connected to Redis at %s", self.where)
        try:  # INFO may be refused (ACLs, managed Redis): then nothing is known, nothing assumed
            infos = await routing.ainfos(self.redis, "server")
            memories = await routing.ainfos(self.redis, "memory")
        except RedisError as exc:
            log.debug("INFO refused (%s); cannot check maxmemory-policy or uptime", error_line(exc))
            return True
        # On a Cluster, the worst master decides: one evicting master loses jobs.
        policies = {str(m.get("maxmemory_policy", "unknown")) for m in memories}
        self.policy = next((p for p in sorted(policies) if p != "noeviction"), "noeviction") if policies else "unknown"
        # A Redis that restarted moments ago lost its leases to the clock, not to dead
        # workers: give live workers the rest of a lease to renew before this one reaps.
        uptime = min(float(i.get("uptime_in_seconds", 1e9)) for i in infos)
        self.back_at = time.monotonic() - min(uptime, self.lease_seconds + self.retry_cap)
        return True

    async def _first_contact(self, deadline: float | None) -> None:
        async def contact() -> None:
            await scripts.aload(self.redis)
            await routing.aping(self.blocking)  # connect now: the first BLPOP must not do the handshake

        if deadline is None:
            await contact()
            return
        # A black-holed host would hold one attempt past the deadline; a second's grace at least.
        await asyncio.wait_for(contact(), max(1.0, deadline - asyncio.get_running_loop().time()))

    async def nap(self, seconds: float) -> None:
        """Sleep, but wake at once when the worker closes."""
        try:
            await asyncio.wait_for(self._closing.wait(), seconds)
        except TimeoutError:
            pass

    async def close(self) -> None:
        self.state = State.CLOSED
        if self._reconnect is not None:
            self._reconnect.cancel()
        await routing.aclose(self.redis)
        await routing.aclose(self.blocking)


async def _reply(conn: Any) -> Any:
    try:
        return await conn.read_response()
    except ResponseError as exc:  # an error reply: the connection stays in step
        return exc
