"""What the operator benchmarks share: an API emulator with the JobQueue CRD served, a private
redis-server and a real operator process (``kopf run``) against them, all stopped at the end.

    with operator_bench("pod-loss", CONVEYOR_OPERATOR_RESYNC_SECONDS="10") as bench:
        bench.kubectl("apply", ...); bench.cluster.get(...); bench.redis_server.url
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests" / "operator"), str(ROOT / "tests")]

from conveyor.embedded import EmbeddedRedis  # noqa: E402
from op_helpers import Cluster, Kubectl, OperatorProcess, served_cluster  # noqa: E402


@dataclass
class Bench:
    tmp: Path
    cluster: Cluster
    redis_server: EmbeddedRedis
    kubectl: Kubectl
    operator: OperatorProcess


@contextlib.contextmanager
def operator_bench(name: str, **env: str) -> Iterator[Bench]:
    """The emulator, Redis and operator up (``env`` for the operator's environment)."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    redis_server = EmbeddedRedis().start()
    try:
        with served_cluster(tmp, **{"CONVEYOR_OPERATOR_RESYNC_SECONDS": "10", **env}) as (cluster, kubectl, op):
            assert op is not None
            yield Bench(tmp, cluster, redis_server, kubectl, op)
    finally:
        redis_server.stop()
