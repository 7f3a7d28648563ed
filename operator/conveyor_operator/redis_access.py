"""A JobQueue's Redis as the operator sees it: the URL (from the spec or its Secret), the TLS
files (from Secrets), and one client per JobQueue kept across resyncs, autoscaling polls and
pod recovery.

A client is built with the same URL forms and TLS files the workers get
(``RedisTarget.parse(url, tls).client(...)``) and kept until the URL, the TLS spec or the key
prefix changes, a read through it fails (the next use builds a new one from freshly read
Secrets: a rotated CA or client certificate is picked up that way), or the JobQueue is
forgotten. Without the cache every resync tick opened a new connection per JobQueue.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import redis

from conveyor.connection import RedisTarget, TlsFiles, describe
from conveyor.errors import ConfigError
from conveyor.keys import DEFAULT_PREFIX

from . import builders, metrics
from .builders import Owner
from .k8s import Api, ApiError, NotFound
from .settings import Settings
from .status import read_depth
from .tlsfiles import TlsFileStore

# The field naming each TLS file's Secret key, for messages.
TLS_FIELDS = {builders.TLS_CA_FILE: "spec.redis.tls.caSecretRef.key",
              builders.TLS_CERT_FILE: "spec.redis.tls.clientCertSecretRef.certKey",
              builders.TLS_KEY_FILE: "spec.redis.tls.clientCertSecretRef.keyKey"}

# Problems found on the Redis side: the resync sees them come and go without a full pass.
REDIS_PROBLEMS = frozenset({"SecretMissing", "SecretKeyMissing", "SecretUnreadable", "TLSSecretMissing",
                            "TLSSecretKeyMissing", "TLSSecretUnreadable", "TLSFilesUnwritable",
                            "RedisConfigInvalid", "RedisUnreachable"})

Problem = tuple[str, str]


@dataclass
class Conn:
    """A JobQueue's kept client and what it was built from."""

    key: tuple[str, str, str]   # url, TLS spec, prefix: any change builds a new client
    client: Any
    target: RedisTarget
    tls: TlsFiles
    prefix: str


def prefix_of(spec: dict[str, Any]) -> str:
    return spec["redis"].get("prefix") or DEFAULT_PREFIX


class RedisAccess:
    def __init__(self, api: Api, settings: Settings, tls_files: TlsFileStore) -> None:
        self.api = api
        self.settings = settings
        self.tls_files = tls_files
        self._conns: dict[str, Conn] = {}
        self._guard = threading.Lock()

    # --- the JobQueue's Secrets ------------------------------------------------------------------

    def url(self, owner: Owner, spec: dict[str, Any]) -> tuple[str | None, Problem | None]:
        """The Redis URL: from the spec, or read from its Secret (one GET)."""
        redis_spec = spec["redis"]
        if "url" in redis_spec:
            return redis_spec["url"], None
        ref = redis_spec["secretRef"]
        key = ref.get("key", "url")
        try:
            return self.api.secret_value(owner.namespace, ref["name"], key), None
        except NotFound:
            return None, ("SecretMissing", f'Secret "{ref["name"]}" (spec.redis.secretRef) was not found in namespace '
                                           f'"{owner.namespace}"; workers cannot start until it exists')
        except KeyError:
            return None, ("SecretKeyMissing", f'Secret "{ref["name"]}" has no key "{key}" (spec.redis.secretRef.key)')
        except ApiError as exc:
            return None, ("SecretUnreadable", f'cannot read Secret "{ref["name"]}": {exc}')

    def tls(self, owner: Owner, spec: dict[str, Any]) -> tuple[TlsFiles | None, Problem | None]:
        """The JobQueue's TLS Secrets as private files (the workers get the same keys mounted);
        None and the problem when a Secret or key is missing."""
        sources = builders.tls_sources(spec)
        wanted: dict[str, set[str]] = {}
        for secret, key in sources.values():
            wanted.setdefault(secret, set()).add(key)
        values: dict[str, dict[str, str]] = {}
        for secret, keys in wanted.items():
            refs = sorted({TLS_FIELDS[f].rsplit(".", 1)[0] for f, (s, _) in sources.items() if s == secret})
            try:
                values[secret] = self.api.secret_values(owner.namespace, secret, sorted(keys))
            except NotFound:
                return None, ("TLSSecretMissing", f'Secret "{secret}" ({", ".join(refs)}) was not found in namespace '
                                                  f'"{owner.namespace}"; workers cannot start until it exists')
            except KeyError as exc:
                key = exc.args[0]
                fields = ", ".join(TLS_FIELDS[f] for f, (s, k) in sources.items() if (s, k) == (secret, key))
                return None, ("TLSSecretKeyMissing", f'Secret "{secret}" has no key "{key}" ({fields})')
            except ApiError as exc:
                return None, ("TLSSecretUnreadable", f'cannot read Secret "{secret}" ({", ".join(refs)}): {exc}')
            except ValueError:  # not UTF-8: DER, or not a certificate at all
                return None, ("TLSSecretUnreadable", f'Secret "{secret}" ({", ".join(refs)}) holds binary data '
                                                     f'where PEM text was expected')
        contents = {file: values[secret][key] for file, (secret, key) in sources.items()}
        try:
            return self.tls_files.files(owner.uid or owner.name, contents), None
        except OSError as exc:
            return None, ("TLSFilesUnwritable", f"the operator cannot write the TLS files to read queue depth "
                                                f"(its /tmp): {exc}")

    # --- the kept client -------------------------------------------------------------------------

    def cached(self, uid: str) -> Conn | None:
        with self._guard:
            return self._conns.get(uid)

    def conn(self, owner: Owner, spec: dict[str, Any], url: str,
             tls: TlsFiles | None = None) -> tuple[Conn | None, Problem | None]:
        """The JobQueue's client for ``url``: the kept one while nothing it was built from
        changed, else a new one (the TLS Secrets read unless ``tls`` is given)."""
        uid = owner.uid or owner.name
        key = (url, json.dumps(spec["redis"].get("tls") or {}, sort_keys=True), prefix_of(spec))
        kept = self.cached(uid)
        if kept is not None and kept.key == key:
            return kept, None
        if tls is None:
            tls, problem = self.tls(owner, spec)
            if tls is None:
                return None, problem
        t = self.settings.redis_timeout
        try:
            target = RedisTarget.parse(url, tls)
            client = target.client(socket_connect_timeout=t, socket_timeout=t)
        except ConfigError as exc:
            return None, ("RedisConfigInvalid", str(exc))
        except (redis.RedisError, OSError, ValueError) as exc:  # a Sentinel or Cluster client may connect here
            return None, ("RedisUnreachable", describe(exc, url))
        conn = Conn(key, client, target, tls, prefix_of(spec))
        with self._guard:
            old, self._conns[uid] = self._conns.get(uid), conn
        if old is not None:
            _close(old.client)
        return conn, None

    def depth(self, owner: Owner, spec: dict[str, Any], url: str, tls: TlsFiles | None = None,
              ) -> tuple[list[dict[str, Any]] | None, Problem | None]:
        """Queue depth through the kept client; a failed read drops it (the next builds anew)."""
        conn, problem = self.conn(owner, spec, url, tls)
        if conn is None:
            return None, problem
        try:
            with metrics.redis_read("depth"):
                return read_depth(conn.client, list(spec["queues"]), conn.prefix), None
        except (redis.RedisError, OSError, ValueError) as exc:
            self.drop(owner.uid or owner.name, conn)
            return None, ("RedisUnreachable", self._in_spec_terms(describe(exc, conn.target), spec, conn.tls,
                                                                  conn.target.tls))

    def drop(self, uid: str, only: Conn | None = None) -> None:
        """Close and forget the JobQueue's client (``only`` this one, if it is still kept)."""
        with self._guard:
            conn = self._conns.get(uid)
            if conn is None or (only is not None and conn is not only):
                return
            del self._conns[uid]
        _close(conn.client)

    def close(self) -> None:
        with self._guard:
            conns, self._conns = list(self._conns.values()), {}
        for conn in conns:
            _close(conn.client)

    @staticmethod
    def _in_spec_terms(message: str, spec: dict[str, Any], tls: TlsFiles, uses_tls: bool) -> str:
        """A runtime error line, with the operator's private file paths named as the Secret keys
        they come from, and the TLS hints given as JobQueue fields. A Redis that requires client
        certificates closes the connection after the handshake: the client sees its alert, an
        EOF or a reset, depending on timing."""
        sources = builders.tls_sources(spec)
        for file, path in ((builders.TLS_CA_FILE, tls.ca_file), (builders.TLS_CERT_FILE, tls.cert_file),
                           (builders.TLS_KEY_FILE, tls.key_file)):
            if path and file in sources:
                message = message.replace(path, 'Secret "{}" key "{}"'.format(*sources[file]))
        message = message.replace("set ssl_ca_certs or CONVEYOR_REDIS_CA_FILE", "set spec.redis.tls.caSecretRef")
        low = message.lower().replace("_", " ")
        if uses_tls and not tls.cert_file and any(
                sign in low for sign in ("certificate required", "eof occurred in violation of protocol",
                                         "connection reset by peer")):
            message += ("; if Redis requires client certificates (tls-auth-clients), give one with "
                        "spec.redis.tls.clientCertSecretRef")
        return message


def _close(client: Any) -> None:
    try:
        client.close()
    except Exception:  # closing a broken connection must not fail the pass that replaces it
        pass
