"""Redis connections: where the URL comes from and how it is shown in logs."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import redis

ENV_URL = "CONVEYOR_REDIS_URL"
ENV_CA_FILE = "CONVEYOR_REDIS_CA_FILE"  # CA bundle for rediss:// (the operator mounts one)
DEFAULT_URL = "redis://localhost:6379/0"


def client_options(url: str) -> dict[str, str]:
    """Extra client options for a URL: the CA bundle from CONVEYOR_REDIS_CA_FILE for TLS."""
    ca = os.environ.get(ENV_CA_FILE)
    if ca and urlsplit(url).scheme == "rediss":
        return {"ssl_ca_certs": ca}
    return {}


def resolve_url(url: str | None = None) -> str:
    return url or os.environ.get(ENV_URL) or DEFAULT_URL


def error_line(exc: BaseException) -> str:
    """The first line of an error, for one-line log messages (no traceback spew)."""
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def mask_url(url: str) -> str:
    """The URL without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.hostname or ""
    if parts.username:
        netloc = f"{parts.username}:***@{netloc}"
    else:
        netloc = f":***@{netloc}"
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def connect(redis_url: str | None = None, connection: redis.Redis | None = None) -> redis.Redis:
    """A sync client: the one passed in, or one built from the URL (bytes replies)."""
    if connection is not None:
        if redis_url is not None:
            raise ValueError("pass either redis_url or connection, not both")
        return connection
    url = resolve_url(redis_url)
    return redis.Redis.from_url(url, **client_options(url))
