"""Helpers for the chart tests: render the chart offline (helm-python-sdk), run Helm
against the API emulator in a subprocess, run the operator exactly as the installed
Deployment says. Imported by name, never as ``conftest`` (the root tests own that name).

The emulator and the operator process come from tests/operator (op_helpers.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import aiohttp.web
import helm_python
import kmock
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "operator"))

from k8s_emulator import ConveyorEmulator  # noqa: E402
from op_helpers import Cluster, OperatorProcess  # noqa: E402

CHART = ROOT / "charts" / "conveyor"
HELM_RUN = Path(__file__).resolve().parent / "helm_run.py"
KUBE_VERSION = "1.37.0"  # kubernetes-validate's schemas, and what the emulator reports


def render(values: dict[str, Any] | None = None, name: str = "conveyor",
           namespace: str = "conveyor-system") -> tuple[list[dict[str, Any]], str]:
    """``helm template``: every rendered object (in template order) and NOTES.txt."""
    out = helm_python.Chart.load(CHART).render(values or {}, name=name, namespace=namespace)
    notes = ""
    docs: list[dict[str, Any]] = []
    for path in sorted(out):
        if path.endswith("NOTES.txt"):
            notes = out[path]
            continue
        docs += [d for d in yaml.safe_load_all(out[path]) if d]
    return docs, notes


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = by_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
    return found[0]


class ChartEmulator(ConveyorEmulator):
    """Two additions for the chart tests:

    - /version reports a current Kubernetes: the chart's kubeVersion needs >= 1.28, and
      kmock 0.8 answers v1.26;
    - GET /api/v1/namespaces as every namespace that holds an object (a watch stays open and
      quiet): Helm installs into namespaces that have no Namespace object here, and kopf, when
      told to watch a list of namespaces, serves only those it lists (the base emulator serves
      Namespace objects themselves, k8s_namespaces.py, but none exist unless created).
    """

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        if raw_request.path.rstrip("/") != "/api/v1/namespaces":
            return await super().__call__(raw_request)
        await raw_request.read()
        if raw_request.query.get("watch") in ("true", "1"):
            resp = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
            await resp.prepare(raw_request)
            try:
                await asyncio.sleep(float(raw_request.query.get("timeoutSeconds") or 60))
                await resp.write_eof()
            except (ConnectionResetError, asyncio.CancelledError):
                pass
            return resp
        names = sorted({key[1] for key in list(self.objects) if key[1]})
        return aiohttp.web.json_response({
            "kind": "NamespaceList", "apiVersion": "v1", "metadata": {"resourceVersion": str(self._rv)},
            "items": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}, "status": {"phase": "Active"}}
                      for n in names]})

    async def _serve_server_version(self, request: Any) -> Any:
        major, minor, _ = KUBE_VERSION.split(".")
        return {"major": major, "minor": minor, "gitVersion": f"v{KUBE_VERSION}", "gitTreeState": "clean",
                "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"}


class ChartCluster(Cluster):
    async def _main(self) -> None:  # as Cluster._main, with ChartEmulator
        self._stop = asyncio.Event()
        async with ChartEmulator() as emu, kmock.Server(emu) as server:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                emu.resources.load_bundled()
            self.emu, self.port = emu, server.port
            self._ready.set()
            await self._stop.wait()


def helm(kubeconfig: Path, *actions: dict[str, Any], timeout: float = 60) -> list[dict[str, Any]]:
    """Run Helm actions (install/upgrade) in one subprocess with HELM_DRIVER=memory set
    before it starts; returns one release summary per action, or fails with Helm's message."""
    env = {**os.environ, "HELM_DRIVER": "memory", "HOME": str(kubeconfig.parent),
           "HELM_CACHE_HOME": str(kubeconfig.parent / "helm-cache"),
           "HELM_CONFIG_HOME": str(kubeconfig.parent / "helm-config"),
           "HELM_DATA_HOME": str(kubeconfig.parent / "helm-data")}
    proc = subprocess.run([sys.executable, str(HELM_RUN), str(kubeconfig), json.dumps(list(actions))],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"helm failed ({proc.returncode}): {proc.stderr}{proc.stdout}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


class InstalledOperator(OperatorProcess):
    """The operator started the way the chart's Deployment starts it: its command, args and
    env (plus a kubeconfig pointing at the emulator instead of the in-cluster account)."""

    def __init__(self, deployment: dict[str, Any], kubeconfig: Path, log: Path, cluster: Cluster) -> None:
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
        self.log_path, self.cluster = log, cluster
        self.liveness_port = int(env["CONVEYOR_OPERATOR_LIVENESS_PORT"])
        self.metrics_port = int(env["CONVEYOR_OPERATOR_METRICS_PORT"])
        self.argv = [str(Path(sys.executable).parent / container["command"][0]), *container.get("args", [])]
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(self.argv, env={**os.environ, **env, "KUBECONFIG": str(kubeconfig)},
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT)


def crd_validator(crd: dict[str, Any]) -> Any:
    """A JSON Schema validator from a CRD's openAPIV3Schema, strict like the API server's
    field validation (unknown fields refused unless preserved); CEL rules not evaluated
    (tests/operator/test_operator_crd.py does that for the same schema)."""
    import jsonschema

    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def convert(schema: Any, top: bool = False) -> Any:
        if isinstance(schema, list):
            return [convert(s) for s in schema]
        if not isinstance(schema, dict):
            return schema
        out = {k: convert(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
        if schema.get("exclusiveMinimum") is True:  # OpenAPI 3.0 -> JSON Schema
            out["exclusiveMinimum"] = out.pop("minimum")
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields") and not top:
            out["additionalProperties"] = False
        if schema.get("format") == "date-time":
            out.pop("format")
        return out

    return jsonschema.Draft202012Validator(convert(root, top=True))
