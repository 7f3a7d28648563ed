"""Private files for the TLS material the operator reads a JobQueue's queue depth with.

redis-py takes a CA bundle and a client certificate only as file paths, so the PEM text
read from a JobQueue's Secrets (spec.redis.tls.caSecretRef, clientCertSecretRef) is
written here: one directory (0700) per JobQueue under one process-wide temporary
directory, each file 0600. A file is rewritten (atomically) only when its Secret's
content changed; a file the JobQueue no longer asks for is removed, the JobQueue's
directory goes when it is deleted, and the whole tree when the operator exits.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import weakref
from typing import Any

from conveyor.connection import TlsFiles

from .builders import TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE


def _dir_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", key) or "_"


class TlsFileStore:
    def __init__(self, parent: str | None = None) -> None:
        self._parent = parent  # None: TMPDIR, else /tmp
        self._root: str | None = None
        self._guard = threading.Lock()
        self._cleanup: weakref.finalize[..., Any] | None = None

    @property
    def root(self) -> str:
        """The process-wide directory, made on first use."""
        with self._guard:
            if self._root is None:
                self._root = tempfile.mkdtemp(prefix="conveyor-operator-tls-", dir=self._parent)  # 0700
                self._cleanup = weakref.finalize(self, shutil.rmtree, self._root, True)
            return self._root

    def directory(self, key: str) -> str:
        return os.path.join(self.root, _dir_name(key))

    def files(self, key: str, contents: dict[str, str]) -> TlsFiles:
        """Write ``contents`` (file name in ca.crt / tls.crt / tls.key -> PEM text) for the
        JobQueue ``key`` (its uid) and return their paths. Raises OSError if it cannot."""
        if not contents:
            self.forget(key)
            return TlsFiles()
        unknown = set(contents) - {TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE}
        if unknown:
            raise ValueError(f"unknown TLS file names: {sorted(unknown)}")
        where = self.directory(key)
        os.makedirs(where, mode=0o700, exist_ok=True)
        for name in os.listdir(where):
            if name not in contents:
                os.unlink(os.path.join(where, name))
        for name, text in contents.items():
            _write_if_changed(os.path.join(where, name), text.encode())
        paths = {name: os.path.join(where, name) for name in contents}
        return TlsFiles(paths.get(TLS_CA_FILE), paths.get(TLS_CERT_FILE), paths.get(TLS_KEY_FILE))

    def forget(self, key: str) -> None:
        if self._root is not None:
            shutil.rmtree(self.directory(key), ignore_errors=True)

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()


def _write_if_changed(path: str, data: bytes) -> None:
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except FileNotFoundError:
        pass
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".new-")  # 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
