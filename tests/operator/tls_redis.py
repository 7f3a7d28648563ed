"""A real redis-server that speaks only TLS and requires client certificates, with a CA,
a server certificate and client certificates made by the ``openssl`` CLI in a temp dir.

    server = TlsRedis(tmp_dir).start()     # redis-server --port 0 --tls-port P --tls-auth-clients yes
    server.url                             # rediss://127.0.0.1:P/0
    server.ca, server.client_cert, server.client_key
    server.client()                        # a redis.Redis with the CA and the client pair
    server.stop()
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis

from conveyor.connection import RedisTarget, TlsFiles
from conveyor.embedded import free_port


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {proc.stderr}")


def make_ca(where: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (P-256, one day): (certificate, key)."""
    cert, key = where / f"{name}.crt", where / f"{name}.key"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", f"/CN={name}", "-keyout", key.name, "-out", cert.name, cwd=where)
    return cert, key


def make_cert(where: Path, name: str, ca: tuple[Path, Path], san: str | None = None) -> tuple[Path, Path]:
    """A certificate signed by ``ca`` (P-256, one day): (certificate, key)."""
    cert, key, csr = where / f"{name}.crt", where / f"{name}.key", where / f"{name}.csr"
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
            "-keyout", key.name, "-out", csr.name, cwd=where)
    extra = []
    if san:
        (where / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        extra = ["-extfile", f"{name}.ext"]
    openssl("x509", "-req", "-in", csr.name, "-CA", ca[0].name, "-CAkey", ca[1].name, "-CAcreateserial",
            "-days", "1", "-out", cert.name, *extra, cwd=where)
    return cert, key


class TlsRedis:
    def __init__(self, where: Path) -> None:
        if shutil.which("redis-server") is None or shutil.which("openssl") is None:
            raise RuntimeError("redis-server and openssl are needed on PATH")
        self.dir = where
        self.ca_pair = make_ca(where, "test-ca")
        self.ca = self.ca_pair[0]
        self.server_cert, self.server_key = make_cert(where, "redis-server", self.ca_pair,
                                                      san="IP:127.0.0.1,DNS:localhost")
        self.client_cert, self.client_key = make_cert(where, "conveyor-client", self.ca_pair)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    @property
    def tls_files(self) -> TlsFiles:
        return TlsFiles(str(self.ca), str(self.client_cert), str(self.client_key))

    def client(self) -> redis.Redis:
        return RedisTarget.parse(self.url, self.tls_files).client(socket_timeout=5)

    def start(self, timeout: float = 10.0) -> "TlsRedis":
        self.proc = subprocess.Popen(
            ["redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(self.server_cert), "--tls-key-file", str(self.server_key),
             "--tls-ca-cert-file", str(self.ca), "--tls-auth-clients", "yes",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir), "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server (TLS) exited at start with code {self.proc.returncode}")
            client = self.client()
            try:
                # The answer must come from our process, not another server on a reused port.
                if int(client.info("server")["process_id"]) != self.proc.pid:
                    raise RuntimeError(f"port {self.port} is taken by another redis-server")
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server (TLS) did not answer on port {self.port} within {timeout}s")
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
