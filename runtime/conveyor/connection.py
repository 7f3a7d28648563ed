"""Where Redis is: one URL form for the client, the worker, the CLI and the operator.

    redis://[user:pass@]host:6379/0          one server (rediss:// for TLS, unix:///path.sock)
    redis+sentinel://[user:pass@]h1:26379,h2:26379/<master>/<db>
                                             the master a Sentinel group names, followed through
                                             failovers (rediss+sentinel:// for TLS everywhere);
                                             ?sentinel_username=&sentinel_password= authenticate
                                             to the sentinels, user:pass@ to the data nodes
    redis+cluster://[user:pass@]h1:7000,h2:7001
                                             a Redis Cluster, from any of its nodes (rediss+cluster://)

TLS client files come from the URL query (``ssl_ca_certs``, ``ssl_certfile``,
``ssl_keyfile``), or from CONVEYOR_REDIS_CA_FILE / _CERT_FILE / _KEY_FILE (the operator
mounts them from Secrets), or from the CLI flags that set those. A file that does not
exist is named at once, not reported later as a failed handshake.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import ClusterNode, RedisCluster
from redis.sentinel import Sentinel

from .errors import ConfigError, ConveyorError, RedisFull

ENV_URL = "CONVEYOR_REDIS_URL"
ENV_CA_FILE = "CONVEYOR_REDIS_CA_FILE"
ENV_CERT_FILE = "CONVEYOR_REDIS_CERT_FILE"
ENV_KEY_FILE = "CONVEYOR_REDIS_KEY_FILE"
DEFAULT_URL = "redis://localhost:6379/0"

SERVER, SENTINEL, CLUSTER = "server", "sentinel", "cluster"
_SCHEMES = {
    "redis": (SERVER, False), "rediss": (SERVER, True), "unix": (SERVER, False),
    "redis+sentinel": (SENTINEL, False), "rediss+sentinel": (SENTINEL, True), "sentinel": (SENTINEL, False),
    "redis+cluster": (CLUSTER, False), "rediss+cluster": (CLUSTER, True),
}
# Query options of sentinel and cluster URLs (server URLs take all of redis-py's own).
_TLS_QUERY = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile")
_QUERY = {*_TLS_QUERY, "sentinel_username", "sentinel_password", "username", "password", "ssl_check_hostname"}
_SECRET = re.compile(r"password", re.I)


@dataclass(frozen=True)
class TlsFiles:
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_env(cls, ca_file: str | None = None, cert_file: str | None = None,
                 key_file: str | None = None) -> TlsFiles:
        return cls(ca_file or os.environ.get(ENV_CA_FILE) or None, cert_file or os.environ.get(ENV_CERT_FILE) or None,
                   key_file or os.environ.get(ENV_KEY_FILE) or None)

    def options(self) -> dict[str, str]:
        out = {}
        for name, path, what in (("ssl_ca_certs", self.ca_file, "CA file"), ("ssl_certfile", self.cert_file,
                                 "client certificate file"), ("ssl_keyfile", self.key_file, "client key file")):
            if path:
                if not os.path.isfile(path):
                    raise ConfigError(f"the TLS {what} {path} does not exist")
                out[name] = path
        if bool(self.cert_file) != bool(self.key_file):
            raise ConfigError("a TLS client certificate needs both a certificate file and a key file")
        return out


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL with its TLS files: builds sync and asyncio clients of the right kind."""

    url: str
    kind: str
    tls: bool
    hosts: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    options: dict[str, Any] = field(default_factory=dict)  # for the data nodes
    sentinel_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str | None = None, tls_files: TlsFiles | None = None) -> RedisTarget:
        url = resolve_url(url)
        scheme = url.split("://", 1)[0].lower() if "://" in url else ""
        if scheme not in _SCHEMES:
            raise ConfigError(f"unsupported Redis URL {mask_url(url)}: expected redis://, rediss://, unix://, "
                              "redis+sentinel://host:port,.../<master>/<db> or redis+cluster://host:port,...")
        kind, tls = _SCHEMES[scheme]
        files = (tls_files or TlsFiles.from_env()).options()
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        TlsFiles(*(query.get(k) for k in _TLS_QUERY)).options()  # the URL's own files exist
        if kind == SERVER:
            # redis-py reads the rest of the query itself (ssl_certfile=..., socket_timeout=...).
            return cls(url, kind, tls, options=files if tls else {})
        if unknown := sorted(set(query) - _QUERY):
            raise ConfigError(f"unknown option {unknown[0]!r} in Redis URL {mask_url(url)}")
        userinfo, _, hostlist = parts.netloc.rpartition("@")
        hosts = tuple(_host(h, url) for h in hostlist.split(",") if h)
        if not hosts:
            raise ConfigError(f"no host in Redis URL {mask_url(url)}")
        options: dict[str, Any] = {}
        if userinfo:
            user, _, password = userinfo.partition(":")
            options.update(username=unquote(user) or None, password=unquote(password) or None)
        for key in ("username", "password"):
            if key in query:
                options[key] = query.pop(key)
        tls_options: dict[str, Any] = {**files, **{k: query.pop(k) for k in _TLS_QUERY if k in query}}
        if "ssl_check_hostname" in query:
            tls_options["ssl_check_hostname"] = query.pop("ssl_check_hostname").lower() in ("1", "true", "yes")
        if tls:
            options.update(ssl=True, **tls_options)
        path = [p for p in parts.path.split("/") if p]
        if kind == CLUSTER:
            if path and path != ["0"]:
                raise ConfigError(f"a Redis Cluster has only database 0, got /{'/'.join(path)} in {mask_url(url)}")
            return cls(url, kind, tls, hosts, options={k: v for k, v in options.items() if v is not None})
        if not path or len(path) > 2:
            raise ConfigError(f"a Sentinel URL names its master: redis+sentinel://host:port,.../<master>/<db>, "
                              f"got {mask_url(url)}")
        db = _int(path[1], "database", url) if len(path) == 2 else 0
        sentinel_options: dict[str, Any] = {k.removeprefix("sentinel_"): v for k, v in query.items()}
        if tls:
            sentinel_options.update(ssl=True, **tls_options)
        return cls(url, kind, tls, hosts, unquote(path[0]), db, {k: v for k, v in options.items() if v is not None},
                   sentinel_options)

    @property
    def masked(self) -> str:
        return mask_url(self.url)

    @property
    def ca_file(self) -> str | None:
        query = dict(parse_qsl(urlsplit(self.url).query))
        return self.options.get("ssl_ca_certs") or query.get("ssl_ca_certs")

    @property
    def is_cluster(self) -> bool:
        return self.kind == CLUSTER

    def client(self, **extra: Any) -> Any:
        """A sync client (redis.Redis, or RedisCluster for a cluster URL)."""
        if self.kind == SERVER:
            return redis.Redis.from_url(self.url, **{**self.options, **extra})
        if self.kind == SENTINEL:
            sentinel = Sentinel(list(self.hosts), sentinel_kwargs={**self.sentinel_options, **_timeouts(extra)},
                                **{**self.options, **extra})
            return sentinel.master_for(self.master, db=self.db)
        return RedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in self.hosts], **{**self.options, **extra})

    def aclient(self, *, blocking_pool: bool = False, **extra: Any) -> Any:
        """An asyncio client of the same kind. ``blocking_pool``: on a plain server, a burst of
        coroutines beyond the pool's 100 connections waits for one (20 s) instead of failing
        with "Too many connections" (for apps; the worker knows its own few connections)."""
        if self.kind == SERVER:
            if blocking_pool:
                pool = aioredis.BlockingConnectionPool.from_url(self.url, **{**self.options, **extra})
                return aioredis.Redis.from_pool(pool)
            return aioredis.Redis.from_url(self.url, **{**self.options, **extra})
        if self.kind == SENTINEL:
            sentinel = AsyncSentinel(list(self.hosts), sentinel_kwargs={**self.sentinel_options, **_timeouts(extra)},
                                     **{**self.options, **extra})
            return sentinel.master_for(self.master, db=self.db)
        extra = {k: v for k, v in extra.items() if k != "retry"}  # the cluster client takes no per-node retry
        return AsyncRedisCluster(startup_nodes=[AsyncClusterNode(h, p) for h, p in self.hosts],
                                 **{**self.options, **extra})


def _timeouts(extra: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in extra.items() if k in ("socket_timeout", "socket_connect_timeout")}


def _host(text: str, url: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host or not port:
        raise ConfigError(f"{text!r} in Redis URL {mask_url(url)} is not host:port")
    return host.strip("[]"), _int(port, "port", url)


def _int(text: str, what: str, url: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{what} {text!r} in Redis URL {mask_url(url)} is not a number") from None


def resolve_url(url: str | None = None) -> str:
    return url or os.environ.get(ENV_URL) or DEFAULT_URL


def client_options(url: str) -> dict[str, str]:
    """TLS files from the environment for a rediss:// URL (kept for callers that build clients themselves)."""
    return TlsFiles.from_env().options() if urlsplit(url).scheme == "rediss" else {}


def error_line(exc: BaseException) -> str:
    """The first line of an error, for one-line log messages (no traceback spew)."""
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def mask_url(url: str) -> str:
    """The URL without its passwords (user info and query), for logs and error messages."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{hosts}", query=query))


def connect(redis_url: str | None = None, connection: Any = None) -> Any:
    """A sync client: the one passed in, or one built from the URL (bytes replies)."""
    return _given(redis_url, connection) or RedisTarget.parse(redis_url).client()


def aconnect(redis_url: str | None = None, connection: Any = None) -> Any:
    """An asyncio client: the one passed in, or one built from the URL (bytes replies)."""
    return _given(redis_url, connection) or RedisTarget.parse(redis_url).aclient(blocking_pool=True)


def _given(redis_url: str | None, connection: Any) -> Any:
    if connection is not None and redis_url is not None:
        raise ValueError("pass either redis_url or connection, not both")
    return connection


def is_cluster(client: Any) -> bool:
    return isinstance(client, (RedisCluster, AsyncRedisCluster))


def describe(exc: BaseException, target: RedisTarget | str | None = None) -> str:
    """One line naming why Redis failed: credentials, ACL, memory, topology, TLS, or reach."""
    where = target.masked if isinstance(target, RedisTarget) else mask_url(target) if target else ""
    at = f" at {where}" if where else ""
    text = error_line(exc)
    low = text.lower()
    if isinstance(exc, redis.AuthenticationError) or "wrongpass" in low or "invalid password" in low \
            or "invalid username-password" in low or "auth" in low and "required" in low:
        return f"Redis{at} refused the credentials (wrong user or password): {text}"
    if isinstance(exc, redis.exceptions.NoPermissionError) or text.startswith("NOPERM") \
            or "user executing the script can't run" in text:
        found = re.search(r"run the '([^']+)' command", text)
        what = f"the {found.group(1).upper()} command" if found else _script_command(text) or "a command or key"
        return (f"Redis{at} refused {what} to this ACL user (NOPERM); grant the rule in the README's "
                f"'ACL' section: {text}")
    if isinstance(exc, redis.exceptions.OutOfMemoryError) or text.startswith("OOM"):
        return f"Redis{at} is full (maxmemory reached, OOM): {text}"
    if isinstance(exc, (redis.exceptions.MovedError, redis.exceptions.AskError,
                        redis.exceptions.ClusterCrossSlotError)) \
            or text.startswith(("MOVED", "ASK ", "CROSSSLOT")) or "cluster mode" in low:
        return (f"Redis{at} is a Redis Cluster node; use redis+cluster://host:port,... so commands go to "
                f"the node that owns each key: {text}")
    if isinstance(exc, redis.exceptions.ReadOnlyError) or text.startswith("READONLY") or "read only replica" in low:
        return (f"Redis{at} is a read-only replica; point at the master, or use "
                f"redis+sentinel://.../<master> to follow it: {text}")
    if "certificate verify failed" in low or isinstance(getattr(exc, "__context__", None), ssl.SSLCertVerificationError):
        ca = target.ca_file if isinstance(target, RedisTarget) else os.environ.get(ENV_CA_FILE)
        which = ca or "none given, so the system CAs; set ssl_ca_certs or CONVEYOR_REDIS_CA_FILE"
        return f"TLS certificate verify failed{at} (CA file: {which}): {text}"
    return f"cannot reach Redis{at}: {text}"


def _script_command(text: str) -> str | None:
    """A refusal inside a script names only the script and line: find the command there."""
    found = re.search(r"script: ([0-9a-f]{40}), on @user_script:(\d+)", text)
    if not found:
        return None
    from . import scripts  # late: scripts need this module

    for script in scripts.ALL:
        if script.sha == found.group(1):
            lines = script.source.splitlines()
            line = int(found.group(2))
            call = re.search(r"redis\.p?call\(\s*'(\w+)'", lines[line - 1]) if 0 < line <= len(lines) else None
            if call:
                return f"the {call.group(1).upper()} command (in script {script.name})"
            return f"a command of script {script.name}"
    return None


def db_of(client: Any) -> int:
    """The database number a client talks to (a Cluster has only 0)."""
    if is_cluster(client):
        return 0
    return int(client.connection_pool.connection_kwargs.get("db", 0) or 0)


def cause(exc: BaseException) -> str:
    """The error's first line, or, where it can be named (ACL, replica, topology, TLS), its cause."""
    named = describe(exc)
    return error_line(exc) if named.startswith("cannot reach") else named


def refusal(exc: BaseException, what: str) -> ConveyorError:
    """A typed error for a write Redis refused: a full Redis, a queue key to repair, or a
    named cause (ACL, replica, topology)."""
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        return RedisFull(
            f"Redis is full (used memory above maxmemory, policy noeviction): nothing was written to {what}. "
            "Workers keep draining; free memory or raise maxmemory, then try again")
    text = str(exc)
    if "WRONGTYPE_KEY" in text:
        return ConveyorError(f"cannot write to {what}: {text.split('WRONGTYPE_KEY ', 1)[1]}")
    if not (named := describe(exc)).startswith("cannot reach"):
        return ConveyorError(f"cannot write to {what}: {named}")
    return ConveyorError(f"Redis refused the write to {what}: {text}")
