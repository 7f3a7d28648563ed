"""Who may see the dashboard and who may act through it.

- Authentication: a bearer token (``Authorization: Bearer T``, or once ``?token=T``, which
  sets an HttpOnly cookie) or HTTP basic credentials, both from the environment. Without
  either the dashboard serves only the loopback interface (:func:`check_bind`), unless it is
  read-only.
- CSRF: every action is a POST that must carry the token of a signed cookie in its form
  (double submit): a page of another site can make the browser send the cookie, not read it.
  A cross-site Origin header is refused too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass

from ..errors import ConveyorError

ENV_TOKEN = "CONVEYOR_DASHBOARD_TOKEN"
ENV_USER = "CONVEYOR_DASHBOARD_USER"
ENV_PASSWORD = "CONVEYOR_DASHBOARD_PASSWORD"
ENV_SECRET = "CONVEYOR_DASHBOARD_SECRET"  # signs the CSRF cookie; set it alike on every replica
TOKEN_COOKIE = "conveyor_token"
CSRF_COOKIE = "conveyor_csrf"


@dataclass(frozen=True)
class Access:
    token: str | None = None
    username: str | None = None
    password: str | None = None
    read_only: bool = False
    secret: bytes = b""

    def __post_init__(self) -> None:
        if (self.username is None) != (self.password is None):
            raise ConveyorError(f"set both {ENV_USER} and {ENV_PASSWORD}, or neither")
        if self.token is not None and not self.token:
            raise ConveyorError(f"{ENV_TOKEN} is set but empty")
        if not self.secret:
            object.__setattr__(self, "secret", secrets.token_bytes(32))

    @classmethod
    def from_env(cls, read_only: bool = False) -> Access:
        secret = os.environ.get(ENV_SECRET, "").encode()
        return cls(os.environ.get(ENV_TOKEN), os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD), read_only, secret)

    @property
    def protected(self) -> bool:
        return self.token is not None or self.username is not None

    # -- authentication ---------------------------------------------------------------------

    def allows(self, authorization: str | None, cookie_token: str | None) -> bool:
        if not self.protected:
            return True
        scheme, _, value = (authorization or "").partition(" ")
        if self.token is not None:
            offered = value if scheme.lower() == "bearer" else cookie_token
            if offered is not None and hmac.compare_digest(offered.encode(), self.token.encode()):
                return True
        if self.username is not None and self.password is not None and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return False
            return hmac.compare_digest(user.encode(), self.username.encode()) and hmac.compare_digest(
                password.encode(), self.password.encode())
        return False

    def token_matches(self, offered: str) -> bool:
        return self.token is not None and hmac.compare_digest(offered.encode(), self.token.encode())

    # -- CSRF --------------------------------------------------------------------------------

    def new_csrf(self) -> str:
        nonce = secrets.token_urlsafe(18)
        return f"{nonce}.{self.sign(nonce)}"

    def csrf_valid(self, cookie: str | None, submitted: str | None) -> bool:
        if not cookie or not submitted or not hmac.compare_digest(cookie.encode(), submitted.encode()):
            return False
        nonce, _, sig = cookie.partition(".")
        return self.verify(nonce, sig)

    def sign(self, value: str) -> str:
        return hmac.new(self.secret, value.encode(), hashlib.sha256).hexdigest()[:32]

    def verify(self, value: str, sig: str) -> bool:
        return hmac.compare_digest(sig.encode(), self.sign(value).encode())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, access: Access) -> None:
    """Refuse to serve a non-loopback address to anyone who can reach it."""
    if is_loopback(host) or access.protected or access.read_only:
        return
    raise ConveyorError(
        f"refusing to serve the dashboard on {host} without authentication: set {ENV_TOKEN} "
        f"(or {ENV_USER} and {ENV_PASSWORD}), or pass --read-only")
