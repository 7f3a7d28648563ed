"""A TCP proxy between workers and a redis-server, to break the network the way it breaks.

- ``reset()``: every open connection is closed at once (the client sees a reset/EOF);
- ``blackhole()``: from now on nothing is forwarded in either direction and nothing is
  closed: packets are "dropped", the client hears silence (a silent partition);
- ``heal()``: forward again (connections that were black-holed stay dead, as after a real
  partition: they are closed so the client reconnects);
- ``lose_reply_with(needle)``: the next reply that contains ``needle`` is never delivered and
  its connection is reset (Redis did the work, the client cannot know).

It runs in a daemon thread with one selector; tests start one per scenario.
"""

from __future__ import annotations

import selectors
import socket
import threading

from conveyor.embedded import free_port


class Proxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.port = free_port()
        self._listener = socket.create_server((host, self.port))
        self._listener.setblocking(False)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._listener, selectors.EVENT_READ)
        self._peers: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._dropping = False
        self._needle: bytes | None = None
        self._refuse_after = False
        self._upstreams: set[socket.socket] = set()
        self.replies_lost = 0
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)
        self._thread.start()

    def url(self, db: int = 0) -> str:
        return f"redis://{self.target[0]}:{self.port}/{db}"

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._peers) // 2

    def reset(self) -> None:
        with self._lock:
            for s in list(self._peers):
                self._close(s)

    def blackhole(self) -> None:
        with self._lock:
            self._dropping = True

    def lose_reply_with(self, needle: bytes, then_refuse: bool = False) -> None:
        """Drop the connection carrying the first reply that contains ``needle``; with
        ``then_refuse``, also refuse every connection from then on (Redis gone for good)."""
        with self._lock:
            self._needle = needle
            self._refuse_after = then_refuse

    def heal(self) -> None:
        with self._lock:
            self._dropping = False
            for s in list(self._peers):  # black-holed connections stay dead
                self._close(s)

    def stop(self) -> None:
        self._stopped = True
        self.reset()
        self._listener.close()

    def _close(self, s: socket.socket) -> None:
        peer = self._peers.pop(s, None)
        for sock in (s, peer):
            if sock is None:
                continue
            self._peers.pop(sock, None)
            self._upstreams.discard(sock)
            try:
                self._sel.unregister(sock)
            except (KeyError, ValueError):
                pass
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                sock.close()
            except OSError:
                pass

    def _run(self) -> None:
        while not self._stopped:
            try:
                events = self._sel.select(timeout=0.05)
            except (OSError, ValueError):
                continue
            with self._lock:
                for key, _ in events:
                    sock = key.fileobj
                    if sock is self._listener:
                        self._accept()
                    elif sock in self._peers and not self._dropping:
                        self._forward(sock)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            client.close()
            return
        for s in (client, upstream):
            s.setblocking(False)
            self._sel.register(s, selectors.EVENT_READ)
        self._peers[client], self._peers[upstream] = upstream, client
        self._upstreams.add(upstream)

    def _forward(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close(sock)
            return
        if self._needle is not None and sock in self._upstreams and self._needle in data:
            self._needle = None
            self.replies_lost += 1
            if self._refuse_after:
                self._stopped = True
                self._listener.close()
                for s in list(self._peers):
                    self._close(s)
            else:
                self._close(sock)
            return
        try:
            self._peers[sock].sendall(data)
        except OSError:
            self._close(sock)
