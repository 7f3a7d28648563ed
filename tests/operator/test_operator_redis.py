"""End to end, Redis side: the operator as a real `kopf run` process reads queue depth from a
TLS-only redis-server that requires client certificates (CA and client pair from Secrets),
and counts only the jobs of a JobQueue's key prefix. JobQueues and Secrets applied with the
real kubectl."""

from __future__ import annotations

import glob
import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from conveyor import Queue
from deployments import TlsRedis
from op_helpers import Cluster, Kubectl, OperatorProcess, cond, dep_path, jobqueue, jq_path, wait_for

pytestmark = pytest.mark.usefixtures("operator")


def apply_secret(kubectl: Kubectl, ns: str, kind: str, name: str, *args: str) -> None:
    """kubectl create secret ... applied (kubectl create would send protobuf to the emulator)."""
    doc = kubectl("create", "secret", kind, name, *args, "--dry-run=client", "-o", "json").stdout
    kubectl("apply", "-n", ns, "-f", "-", input=doc)


def depth_is(cluster: Cluster, ns: str, name: str, expected: list[dict[str, Any]]) -> Any:
    def check() -> Any:
        jq = cluster.get(jq_path(ns, name))
        return jq and (jq.get("status") or {}).get("queues") == expected and jq
    return check


def degraded(cluster: Cluster, ns: str, name: str, reason: str) -> Any:
    def check() -> Any:
        jq = cluster.get(jq_path(ns, name))
        return jq and cond(jq, "Degraded").get("reason") == reason and cond(jq, "Degraded")
    return check


def mtls_redis_spec(server: TlsRedis, ca: str = "redis-ca", client: str = "conveyor-client") -> dict[str, Any]:
    return {"url": server.url, "tls": {"enabled": True, "caSecretRef": {"name": ca},
                                       "clientCertSecretRef": {"name": client}}}


def test_tls_redis_requiring_client_certificates_reports_depth(
        cluster: Cluster, kubectl: Kubectl, namespace: str, tls_redis: TlsRedis, operator: OperatorProcess) -> None:
    q = f"{namespace}-mtls"
    conn = tls_redis.client()
    for i in range(2):
        Queue(q, connection=conn).enqueue("builtins:print", i)
    conn.close()
    apply_secret(kubectl, namespace, "generic", "redis-ca", f"--from-file=ca.crt={tls_redis.ca_file}")
    apply_secret(kubectl, namespace, "tls", "conveyor-client", f"--cert={tls_redis.cert_file}",
                 f"--key={tls_redis.key_file}")
    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue("mtls", redis=mtls_redis_spec(tls_redis), queues=[q]))

    jq = wait_for(depth_is(cluster, namespace, "mtls", [{"name": q, "ready": 2, "scheduled": 0, "due": 0, "claimed": 0, "failed": 0}]),
                  what="the queue depth read over mutual TLS")
    assert jq["status"]["depth"] == 2
    assert (cond(jq, "Degraded")["status"], cond(jq, "Degraded")["reason"]) == ("False", "AsExpected")

    # The workers get the same Secret keys, mounted, and the env naming them.
    pod = cluster.get(dep_path(namespace, "mtls"))["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["CONVEYOR_REDIS_CA_FILE"] == "/etc/conveyor/tls/ca.crt"
    assert (env["CONVEYOR_REDIS_CERT_FILE"], env["CONVEYOR_REDIS_KEY_FILE"]) == ("/etc/conveyor/tls/tls.crt",
                                                                                "/etc/conveyor/tls/tls.key")
    assert [s["secret"]["name"] for v in pod["volumes"] if v["name"] == "redis-tls"
            for s in v["projected"]["sources"]] == ["redis-ca", "conveyor-client"]

    # The operator's own copies: private, one directory per JobQueue, the Secrets' bytes.
    (where,) = glob.glob(os.path.join(operator.env["TMPDIR"], "conveyor-operator-tls-*", jq["metadata"]["uid"]))
    assert stat.S_IMODE(os.stat(where).st_mode) == 0o700
    assert sorted(os.listdir(where)) == ["ca.crt", "tls.crt", "tls.key"]
    for name, source in (("ca.crt", tls_redis.ca_file), ("tls.crt", tls_redis.cert_file), ("tls.key", tls_redis.key_file)):
        assert stat.S_IMODE(os.stat(os.path.join(where, name)).st_mode) == 0o600
        assert open(os.path.join(where, name), "rb").read() == Path(source).read_bytes()

    kubectl("delete", "jq", "mtls", "-n", namespace, "--timeout=20s")
    wait_for(lambda: not os.path.exists(where), what="the operator to remove the JobQueue's TLS files")


def test_missing_tls_secret_and_key_have_their_own_reasons(
        cluster: Cluster, kubectl: Kubectl, namespace: str, tls_redis: TlsRedis) -> None:
    kubectl("apply", "-n", namespace, "-f", "-",
            input=jobqueue("tlsmiss", redis=mtls_redis_spec(tls_redis, client="pair"), queues=["q"]))
    c = wait_for(degraded(cluster, namespace, "tlsmiss", "TLSSecretMissing"), what="TLSSecretMissing")
    assert c["message"] == (f'Secret "redis-ca" (spec.redis.tls.caSecretRef) was not found in namespace "{namespace}"; '
                            f'workers cannot start until it exists')
    apply_secret(kubectl, namespace, "generic", "redis-ca", f"--from-file=ca.crt={tls_redis.ca_file}")
    apply_secret(kubectl, namespace, "generic", "pair", f"--from-file=tls.crt={tls_redis.cert_file}")  # no tls.key
    c = wait_for(degraded(cluster, namespace, "tlsmiss", "TLSSecretKeyMissing"), what="TLSSecretKeyMissing")
    assert c["message"] == 'Secret "pair" has no key "tls.key" (spec.redis.tls.clientCertSecretRef.keyKey)'


def test_no_client_certificate_is_named_then_recovered(
        cluster: Cluster, kubectl: Kubectl, namespace: str, tls_redis: TlsRedis) -> None:
    q = f"{namespace}-q"
    apply_secret(kubectl, namespace, "generic", "redis-ca", f"--from-file=ca.crt={tls_redis.ca_file}")
    only_ca = {"url": tls_redis.url, "tls": {"enabled": True, "caSecretRef": {"name": "redis-ca"}}}
    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue("nocert", redis=only_ca, queues=[q]))
    # A Redis with tls-auth-clients refuses a client without a certificate: said so, in one line.
    c = wait_for(degraded(cluster, namespace, "nocert", "RedisUnreachable"), what="RedisUnreachable")
    assert c["message"].startswith(f"cannot reach Redis at {tls_redis.url}: ") and "\n" not in c["message"]
    assert c["message"].endswith("give one with spec.redis.tls.clientCertSecretRef")

    apply_secret(kubectl, namespace, "tls", "pair", f"--cert={tls_redis.cert_file}", f"--key={tls_redis.key_file}")
    kubectl("patch", "jq", "nocert", "-n", namespace, "--type", "merge",
            "-p", json.dumps({"spec": {"redis": {"tls": {"clientCertSecretRef": {"name": "pair"}}}}}))
    wait_for(degraded(cluster, namespace, "nocert", "AsExpected"), what="Degraded=False once the client pair is given")
    assert cluster.get(jq_path(namespace, "nocert"))["status"]["queues"][0]["name"] == q


def test_depth_counts_only_the_jobqueues_prefix(cluster: Cluster, kubectl: Kubectl, namespace: str,
                                                redis_server: Any) -> None:
    q = f"{namespace}-shared"  # one queue name, three apps on one Redis
    for prefix, jobs in (("billing", 2), (None, 3), ("billing:v2", 4)):
        queue = Queue(q, redis_url=redis_server.url, prefix=prefix)
        for i in range(jobs):
            queue.enqueue("builtins:print", i)
    kubectl("apply", "-n", namespace, "-f", "-",
            input=jobqueue("billing", redis={"url": redis_server.url, "prefix": "billing"}, queues=[q]))
    kubectl("apply", "-n", namespace, "-f", "-", input=jobqueue("plain", redis={"url": redis_server.url}, queues=[q]))
    wait_for(depth_is(cluster, namespace, "billing", [{"name": q, "ready": 2, "scheduled": 0, "due": 0, "claimed": 0, "failed": 0}]),
             what="depth 2 under prefix billing")
    wait_for(depth_is(cluster, namespace, "plain", [{"name": q, "ready": 3, "scheduled": 0, "due": 0, "claimed": 0, "failed": 0}]),
             what="depth 3 under the default prefix")
    args = cluster.get(dep_path(namespace, "billing"))["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--prefix") + 1] == "billing"
    assert "--prefix" not in cluster.get(dep_path(namespace, "plain"))["spec"]["template"]["spec"]["containers"][0]["args"]
    # A new prefix: the pods roll (new args) and the depth follows.
    kubectl("patch", "jq", "billing", "-n", namespace, "--type", "merge", "-p", '{"spec": {"redis": {"prefix": "billing:v2"}}}')
    wait_for(depth_is(cluster, namespace, "billing", [{"name": q, "ready": 4, "scheduled": 0, "due": 0, "claimed": 0, "failed": 0}]),
             what="depth 4 under prefix billing:v2")
