"""Fixtures for the operator tests: the API emulator served over HTTP from a background
thread, a kubeconfig pointing at it, the real kubectl, the operator as a real
``python -m conveyor_operator`` (kopf run) process, and real redis-servers (one plain, one
TLS-only requiring client certificates). Helpers live in op_helpers.py; the TLS server is tests/deployments.py's."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from conveyor.embedded import EmbeddedRedis
from deployments import TlsRedis
from op_helpers import CRD_FILE, Cluster, Kubectl, OperatorProcess, served_cluster, wait_for


@pytest.fixture(scope="session")
def cluster() -> Any:
    c = Cluster().start()
    yield c
    c.stop()


@pytest.fixture(scope="session")
def kubeconfig(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cluster.write_kubeconfig(tmp_path_factory.mktemp("kube") / "config")


@pytest.fixture(scope="session")
def kubectl(kubeconfig: Path) -> Kubectl:
    return Kubectl(kubeconfig)


@pytest.fixture(scope="session")
def crd_installed(kubectl: Kubectl, cluster: Cluster) -> None:
    kubectl("apply", "-f", str(CRD_FILE))
    wait_for(lambda: cluster.get("/apis/conveyor.dev/v1alpha1"), what="the JobQueue CRD in discovery")


@pytest.fixture(scope="session")
def operator(crd_installed: None, kubeconfig: Path, cluster: Cluster,
             tmp_path_factory: pytest.TempPathFactory) -> Any:
    # Its own TMPDIR, so tests can look at the private TLS files it writes there.
    op = OperatorProcess(kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log", cluster,
                         TMPDIR=str(tmp_path_factory.mktemp("operator-tmp")))
    try:
        wait_for(op.watching, timeout=20, what="the operator to watch JobQueues")
        yield op
    finally:
        op.stop()


@pytest.fixture
def own_cluster(tmp_path: Path) -> Any:
    """An emulator of its own with the JobQueue CRD, for tests that count everything an operator
    does (the session's cluster holds every other test's JobQueues)."""
    with served_cluster(tmp_path) as (cluster, kubectl, _):
        yield cluster, kubectl


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def redis_server() -> Any:
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_redis() -> Any:
    with TlsRedis() as server:
        yield server
