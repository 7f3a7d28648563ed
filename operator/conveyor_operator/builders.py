"""Pure functions: a JobQueue (its metadata and defaulted spec) -> the objects it owns.

Nothing here talks to the API. Every builder returns a complete object to apply with
server-side apply; fields the operator does not want to own (the Deployment's
``replicas`` while autoscaling is enabled or another autoscaler targets the Deployment)
are left out, never set to a guess.

The worker contract is the ``conveyor worker`` command line; the Redis URL reaches the
container only through ``CONVEYOR_REDIS_URL``, the TLS files (from Secrets, in one
projected volume) through ``CONVEYOR_REDIS_CA_FILE`` / ``_CERT_FILE`` / ``_KEY_FILE``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from . import crd

POLICY_DIR = "/etc/conveyor"
POLICY_FILE = "policy.json"
TLS_DIR = "/etc/conveyor/tls"
TLS_VOLUME = "redis-tls"
TLS_MODE = 0o440  # owner root, group fsGroup (the worker's): the key readable by the worker only
# File in TLS_DIR -> the worker's environment variable naming it (conveyor.connection.TlsFiles).
TLS_CA_FILE, TLS_CERT_FILE, TLS_KEY_FILE = "ca.crt", "tls.crt", "tls.key"
TLS_ENV = {TLS_CA_FILE: "CONVEYOR_REDIS_CA_FILE", TLS_CERT_FILE: "CONVEYOR_REDIS_CERT_FILE",
           TLS_KEY_FILE: "CONVEYOR_REDIS_KEY_FILE"}
# The worker registers its pod's name, so the operator can release a lost pod's jobs at once.
POD_NAME_ENV = {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
GRACE_MARGIN_SECONDS = 10
CHECKSUM_ANNOTATION = "conveyor.dev/config-checksum"
MANAGED_BY = "conveyor-operator"
RUN_AS = 10001


@dataclass(frozen=True)
class Owner:
    """What the builders need to know about the JobQueue itself."""

    name: str
    namespace: str
    uid: str

    @classmethod
    def of(cls, body: dict[str, Any]) -> Owner:
        meta = body["metadata"]
        return cls(meta["name"], meta.get("namespace") or "default", meta.get("uid", ""))

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": crd.API_VERSION, "kind": crd.KIND, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


def names(name: str) -> dict[str, str]:
    return {"deployment": f"{name}-worker", "configmap": f"{name}-policy", "service": f"{name}-metrics",
            "pdb": f"{name}-worker", "servicemonitor": f"{name}-worker"}


def selector_labels(name: str) -> dict[str, str]:
    # Immutable on a Deployment: never add to these.
    return {"app.kubernetes.io/name": "conveyor-worker", "app.kubernetes.io/instance": name}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def common_labels(name: str) -> dict[str, str]:
    return {**selector_labels(name), "app.kubernetes.io/component": "worker",
            "app.kubernetes.io/part-of": "conveyor", "app.kubernetes.io/managed-by": MANAGED_BY}


def _meta(owner: Owner, name: str, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": owner.namespace, "labels": labels or common_labels(owner.name),
            "ownerReferences": [owner.reference()]}


def policy(spec: dict[str, Any]) -> dict[str, Any]:
    """The worker's policy file (conveyor.settings.WorkerSettings.read_policy)."""
    out: dict[str, Any] = {}
    retry = spec.get("retry")
    if retry is not None:
        r: dict[str, Any] = {"max": retry["max"]}
        if "backoff" in retry:
            b = retry["backoff"]
            r["backoff"] = {"base": b.get("base", 1), "factor": b.get("factor", 2), "max": b.get("max", 300)}
        elif "intervals" in retry:
            r["intervals"] = list(retry["intervals"])
        if "jitter" in retry:
            r["jitter"] = retry["jitter"]
        out["retry"] = r
    out["result_ttl"] = spec["resultTTLSeconds"]
    out["failure_ttl"] = spec["failureTTLSeconds"]
    return out


def configmap(owner: Owner, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(owner, names(owner.name)["configmap"]),
            "data": {POLICY_FILE: json.dumps(policy(spec), sort_keys=True, indent=2) + "\n"}}


def worker_args(spec: dict[str, Any]) -> list[str]:
    w = spec["workers"]
    args = ["worker", "-q", ",".join(spec["queues"]), "--concurrency", str(w["concurrency"]), "--pool", w["pool"],
            "--lease-seconds", str(spec["leaseSeconds"]), "--shutdown-timeout", str(spec["shutdownTimeoutSeconds"])]
    if spec["scheduler"]["enabled"]:
        args.append("--with-scheduler")
    args += ["--metrics-port", str(spec["metrics"]["port"]), "--policy-file", f"{POLICY_DIR}/{POLICY_FILE}",
             "--log-format", "json"]
    if spec["redis"].get("prefix"):
        args += ["--prefix", spec["redis"]["prefix"]]
    for module in w.get("allowModules") or []:
        args += ["--allow-module", module]
    return args + limit_args(spec.get("limits")) + list(w.get("args") or [])


def limit_args(limits: dict[str, Any] | None) -> list[str]:
    """spec.limits as the worker's --limit-* options: declared in full (a limit left out is
    cleared) so the spec wins at every rollout; none without spec.limits."""
    if limits is None:
        return []
    args = ["--limit-rate", limits.get("rate") or "none",
            "--limit-max-concurrency", str(limits.get("maxConcurrency") or "none")]
    return args + (["--limit-burst", str(limits["burst"])] if limits.get("burst") else [])


def tls_sources(spec: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """The TLS files the workers get: file name in TLS_DIR -> (Secret name, key), from
    spec.redis.tls.caSecretRef and clientCertSecretRef. The operator reads the same keys."""
    tls = spec["redis"].get("tls") or {}
    out: dict[str, tuple[str, str]] = {}
    if ca := tls.get("caSecretRef"):
        out[TLS_CA_FILE] = (ca["name"], ca.get("key", "ca.crt"))
    if client := tls.get("clientCertSecretRef"):
        out[TLS_CERT_FILE] = (client["name"], client.get("certKey", "tls.crt"))
        out[TLS_KEY_FILE] = (client["name"], client.get("keyKey", "tls.key"))
    return out


def redis_env(spec: dict[str, Any]) -> list[dict[str, Any]]:
    redis = spec["redis"]
    if "secretRef" in redis:
        ref = redis["secretRef"]
        env: list[dict[str, Any]] = [{"name": crd.REDIS_URL_ENV, "valueFrom": {"secretKeyRef": {
            "name": ref["name"], "key": ref.get("key", "url")}}}]
    else:
        env = [{"name": crd.REDIS_URL_ENV, "value": redis["url"]}]
    env += [{"name": TLS_ENV[file], "value": f"{TLS_DIR}/{file}"} for file in tls_sources(spec)]
    return env


def tls_volume(spec: dict[str, Any]) -> dict[str, Any] | None:
    """One projected volume with every TLS file (the CA and the client pair may come from one
    Secret or two). Secret rotations reach the files without a restart; redis-py reads them
    for each new connection."""
    by_secret: dict[str, list[dict[str, str]]] = {}
    for file, (secret, key) in tls_sources(spec).items():
        by_secret.setdefault(secret, []).append({"key": key, "path": file})
    if not by_secret:
        return None
    return {"name": TLS_VOLUME, "projected": {"defaultMode": TLS_MODE, "sources": [
        {"secret": {"name": secret, "items": items}} for secret, items in by_secret.items()]}}


def checksum(spec: dict[str, Any], image: str, redis_digest: str = "") -> str:
    """Everything a running worker read at start: a change rolls the pods. ``redis_digest``
    fingerprints the Redis URL read from the Secret, so rotating the Secret rolls them too
    (the URL itself never lands in the object). ``redis`` covers the prefix and the TLS
    Secret references; the TLS files' contents are not in it (mounted files follow rotations)."""
    config = {"args": worker_args(spec), "policy": policy(spec), "redis": spec["redis"], "image": image,
              "env": spec["workers"].get("env") or [], "envFrom": spec["workers"].get("envFrom") or [],
              "redis_secret": redis_digest}
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


FROM_SPEC = -1  # deployment(replicas=...): spec.workers.replicas, or none while autoscaling


def deployment(owner: Owner, spec: dict[str, Any], image: str, redis_digest: str = "",
               replicas: int | None = FROM_SPEC) -> dict[str, Any]:
    """``replicas``: None leaves them out (an autoscaler owns them), else the number to set."""
    w = spec["workers"]
    port = spec["metrics"]["port"]
    pod_labels = {**(w.get("podLabels") or {}), **common_labels(owner.name)}
    annotations = {**(w.get("podAnnotations") or {}), CHECKSUM_ANNOTATION: checksum(spec, image, redis_digest),
                   "prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}
    dep_spec: dict[str, Any] = {
        "selector": {"matchLabels": selector_labels(owner.name)},
        "revisionHistoryLimit": 5,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
        "template": {"metadata": {"labels": pod_labels, "annotations": annotations},
                     "spec": pod_spec(owner, spec, worker_container(spec, image))},
    }
    if replicas == FROM_SPEC:
        replicas = None if spec["autoscaling"]["enabled"] else w["replicas"]
    if replicas is not None:
        dep_spec = {"replicas": replicas, **dep_spec}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(owner, names(owner.name)["deployment"]),
            "spec": dep_spec}


def worker_container(spec: dict[str, Any], image: str) -> dict[str, Any]:
    """The worker container: ``conveyor worker``, its probes on the metrics port, locked down;
    the TLS files' mount is added by :func:`pod_spec`."""
    w = spec["workers"]
    container: dict[str, Any] = {
        "name": "worker",
        "image": image,
        "imagePullPolicy": w["imagePullPolicy"],
        "command": ["conveyor"],
        "args": worker_args(spec),
        "env": redis_env(spec) + [POD_NAME_ENV] + list(w.get("env") or []),
        "ports": [{"name": "metrics", "containerPort": spec["metrics"]["port"], "protocol": "TCP"}],
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "metrics"}, "periodSeconds": 5,
                           "timeoutSeconds": 2, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 10,
                          "timeoutSeconds": 3, "failureThreshold": 3},
        "startupProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": 2,
                         "timeoutSeconds": 2, "failureThreshold": 30},
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": [{"name": "policy", "mountPath": POLICY_DIR, "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    if w.get("envFrom"):
        container["envFrom"] = list(w["envFrom"])
    if w.get("resources"):
        container["resources"] = w["resources"]
    return container


def pod_spec(owner: Owner, spec: dict[str, Any], container: dict[str, Any]) -> dict[str, Any]:
    """The worker pods' spec around ``container``: the policy and TLS volumes (a copy of the
    container mounts the TLS one), the grace period, the scheduling fields the spec sets."""
    w = spec["workers"]
    volumes: list[dict[str, Any]] = [
        {"name": "policy", "configMap": {"name": names(owner.name)["configmap"]}},
        {"name": "tmp", "emptyDir": {}},
    ]
    tls = tls_volume(spec)
    if tls:
        volumes.append(tls)
        container = {**container, "volumeMounts": [*container["volumeMounts"],
                                                   {"name": TLS_VOLUME, "mountPath": TLS_DIR, "readOnly": True}]}
    pod: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": int(math.ceil(spec["shutdownTimeoutSeconds"])) + GRACE_MARGIN_SECONDS,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": volumes,
    }
    for key in ("nodeSelector", "tolerations", "affinity", "topologySpreadConstraints", "serviceAccountName",
                "priorityClassName"):
        if w.get(key):
            pod[key] = w[key]
    return pod


def service(owner: Owner, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(owner, names(owner.name)["service"]),
            "spec": {"clusterIP": "None", "selector": selector_labels(owner.name),
                     "ports": [{"name": "metrics", "port": spec["metrics"]["port"], "targetPort": "metrics",
                                "protocol": "TCP"}]}}


def pdb(owner: Owner, spec: dict[str, Any]) -> dict[str, Any]:
    # Workers drain on SIGTERM and hand back their jobs, so one at a time is always safe.
    # Unready pods may always be evicted: a Redis outage makes every worker unready, and the
    # default policy would then block every node drain until Redis came back.
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(owner, names(owner.name)["pdb"]),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner.name)},
                     "unhealthyPodEvictionPolicy": "AlwaysAllow"}}


def service_monitor(owner: Owner, spec: dict[str, Any]) -> dict[str, Any]:
    sm = spec["metrics"]["serviceMonitor"]
    labels = {**(sm.get("labels") or {}), **common_labels(owner.name)}
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": _meta(owner, names(owner.name)["servicemonitor"], labels),
            "spec": {"selector": {"matchLabels": selector_labels(owner.name)},
                     "namespaceSelector": {"matchNames": [owner.namespace]},
                     "endpoints": [{"port": "metrics", "path": "/metrics", "interval": sm["interval"]}]}}


def wants_service_monitor(spec: dict[str, Any]) -> bool:
    return bool(spec["metrics"]["serviceMonitor"]["enabled"])
