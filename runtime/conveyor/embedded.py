"""A private redis-server on a free port, for the demo and for tests.

Started when no Redis URL is given, stopped afterwards; it keeps nothing on disk.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from types import TracebackType

import redis

from .errors import ConveyorError

INSTALL_HINT = "install it (Debian/Ubuntu: apt-get install -y redis-server; macOS: brew install redis) or pass --redis-url"


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free right now and not handed out before by this process: the OS may offer a
    port again as soon as it is closed, and two callers that bind later (a server's two
    listeners, two servers) must not both get it."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise ConveyorError("no free TCP port found on 127.0.0.1")


class EmbeddedRedis:
    def __init__(self, port: int | None = None, *, binary: str = "redis-server", args: tuple[str, ...] = ()) -> None:
        found = shutil.which(binary)
        self.args = args  # extra server options, e.g. ("--maxmemory", "2mb")
        if found is None:
            raise ConveyorError(f"redis-server was not found on PATH; {INSTALL_HINT}")
        self.binary: str = found
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self._dir = tempfile.TemporaryDirectory(prefix="conveyor-redis-")
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir.name, "--loglevel", "warning", *self.args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise ConveyorError(f"redis-server exited at start (code {self.proc.returncode}): {err.strip()}")
                try:
                    # The answer must come from our process, not another server on a reused port.
                    if int(client.info("server")["process_id"]) != self.proc.pid:
                        self.stop()
                        raise ConveyorError(f"port {self.port} is taken by another redis-server")
                    return self
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        self.stop()
                        # Kept without "from": the ConnectionError stays visible as the context.
                        raise ConveyorError(  # noqa: B904
                            f"redis-server did not answer on port {self.port} within {timeout}s")
                    time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stderr:
            self.proc.stderr.close()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.stop()
