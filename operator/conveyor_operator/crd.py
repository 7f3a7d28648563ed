"""The JobQueue CustomResourceDefinition, as Python data: the single source of truth.

``crds/jobqueues.conveyor.dev.yaml`` is generated from :func:`crd` and a test checks that
the committed file matches. Regenerate it with::

    python -m conveyor_operator.crd > crds/jobqueues.conveyor.dev.yaml

The operator applies the schema's defaults itself (:mod:`conveyor_operator.spec`), so it
behaves the same whether or not the API server defaulted the object.
"""

from __future__ import annotations

import sys
from typing import Any

from . import reserved

# Re-exported: part of this module's surface.
from .crd_flow import AUTOSCALING as AUTOSCALING
from .crd_flow import LIMITS as LIMITS
from .crd_flow import REPLICAS_WHILE_AUTOSCALING as REPLICAS_WHILE_AUTOSCALING
from .openapi import free_list, free_object, integer, number, quantity_map, rule, string, string_map
from .reserved import PREFIX_ENV as PREFIX_ENV
from .reserved import REDIS_URL_ENV as REDIS_URL_ENV
from .reserved import RESERVED_ENV as RESERVED_ENV

GROUP = "conveyor.dev"
VERSION = "v1alpha1"
KIND = "JobQueue"
PLURAL = "jobqueues"
SINGULAR = "jobqueue"
SHORT_NAMES = ["jq"]
API_VERSION = f"{GROUP}/{VERSION}"
NAME = f"{PLURAL}.{GROUP}"

QUEUE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"  # conveyor.validation.check_queue_name
MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"  # conveyor.validation.check_module_names
MAX_QUEUES = 32
MAX_NAME = 50  # child names add "-metrics" etc. and must stay DNS labels (<= 63)
# Every scheme conveyor.connection.RedisTarget.parse takes; the TLS ones are the rediss* three.
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "rediss+sentinel", "sentinel",
                 "redis+cluster", "rediss+cluster")
TLS_SCHEMES = ("rediss", "rediss+sentinel", "rediss+cluster")
REDIS_URL_PATTERN = r"^(rediss?|unix|rediss?\+sentinel|sentinel|rediss?\+cluster)://"
# conveyor.keys.check_prefix: 1-64 of letters, digits and _ . : -, starting with a letter or
# digit, no trailing colon (so no braces: the prefix never carries a Cluster hash tag).
PREFIX_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.:-]{0,62}[A-Za-z0-9_.-])?$"
MAX_PREFIX = 64
SECRET_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


# A worker pod that names no resources still gets a scheduling request and a memory ceiling:
# BestEffort pods are evicted first and one leaking job could take a node's memory.
DEFAULT_WORKER_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}}

SECRET_KEY_REF = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": string("Name of a Secret in the JobQueue's namespace.", pattern=SECRET_NAME_PATTERN, minLength=1),
        "key": string("Key in the Secret.", default="url", minLength=1),
    },
}

_TLS_URL = " || ".join(f"self.url.startsWith('{s}://')" for s in TLS_SCHEMES)
_TLS_URLS_TEXT = ", ".join(f"{s}://" for s in TLS_SCHEMES[:-1]) + f" or {TLS_SCHEMES[-1]}://"
TLS_URL_MESSAGE = f"redis.tls.enabled needs a TLS URL: {_TLS_URLS_TEXT}"

REDIS = {
    "type": "object",
    "description": "Where the queues live. Give exactly one of url or secretRef; the URL reaches "
                   f"the workers only through the {REDIS_URL_ENV} environment variable.",
    "properties": {
        "url": string("A Redis URL: redis:// or rediss:// (one server), unix:///path.sock, "
                    "redis+sentinel://[user:pass@]h1:26379,h2:26379/<master>/<db> (rediss+sentinel://, sentinel://), "
                    "redis+cluster://[user:pass@]h1:7000,h2:7001 (rediss+cluster://). "
                    "Prefer secretRef when the URL carries a password.",
                    max_length=2048, pattern=REDIS_URL_PATTERN, minLength=1),
        "secretRef": {**SECRET_KEY_REF, "description": "A Secret key holding the Redis URL."},
        "prefix": string("Key prefix of every key the workers use (--prefix); apps with different prefixes "
                       "share a Redis unseen. 1-64 letters, digits and _ . : -, starting with a letter or "
                       "digit, no trailing colon. Unset: conveyor.",
                       max_length=MAX_PREFIX, pattern=PREFIX_PATTERN, minLength=1),
        "tls": {
            "type": "object",
            "description": f"TLS to Redis. With enabled, a url must use {_TLS_URLS_TEXT}. The files are "
                           "mounted from the Secrets at /etc/conveyor/tls/, and the operator reads the same "
                           "Secrets to report queue depth.",
            "properties": {
                "enabled": {"type": "boolean", "default": False},
                "caSecretRef": {
                    "type": "object",
                    "required": ["name"],
                    "description": "A Secret key with the CA bundle (PEM) that signed Redis's certificate, "
                                   "mounted at /etc/conveyor/tls/ca.crt.",
                    "properties": {
                        "name": string("Name of a Secret in the JobQueue's namespace.", pattern=SECRET_NAME_PATTERN,
                                     minLength=1),
                        "key": string("Key in the Secret.", default="ca.crt", minLength=1),
                    },
                },
                "clientCertSecretRef": {
                    "type": "object",
                    "required": ["name"],
                    "description": "A Secret with a client certificate and its key (PEM), for a Redis that "
                                   "requires client certificates (tls-auth-clients yes); mounted at "
                                   "/etc/conveyor/tls/tls.crt and tls.key. A kubernetes.io/tls Secret fits as is.",
                    "properties": {
                        "name": string("Name of a Secret in the JobQueue's namespace.", pattern=SECRET_NAME_PATTERN,
                                     minLength=1),
                        "certKey": string("Key of the certificate in the Secret.", default="tls.crt", minLength=1),
                        "keyKey": string("Key of the private key in the Secret.", default="tls.key", minLength=1),
                    },
                },
            },
        },
    },
    "x-kubernetes-validations": [
        rule("has(self.url) != has(self.secretRef)", "give exactly one of redis.url or redis.secretRef", "FieldValueInvalid"),
        rule(f"!has(self.url) || !has(self.tls) || !self.tls.enabled || {_TLS_URL}",
              TLS_URL_MESSAGE, "FieldValueInvalid"),
    ],
}

RETRY = {
    "type": "object",
    "description": "Default retry policy for jobs enqueued without their own: intervals or exponential backoff.",
    "required": ["max"],
    "properties": {
        "max": integer(0, 1000, desc="Retries after the first attempt."),
        "intervals": {"type": "array", "maxItems": 32, "minItems": 1,
                      "description": "Seconds before each retry; the last one repeats.",
                      "items": number(0, 31536000)},
        "backoff": {
            "type": "object",
            "description": "base * factor ** (retry - 1) seconds, capped at max.",
            "properties": {
                "base": number(0, 86400, default=1, exclusive_min=True),
                "factor": number(1, 100, default=2),
                "max": number(0, 31536000, default=300, exclusive_min=True),
            },
            "x-kubernetes-validations": [rule("self.max >= self.base", "retry.backoff.max must be >= retry.backoff.base")],
        },
        "jitter": number(0, 1, desc="Random spread as a fraction of each delay (0-1)."),
    },
    "x-kubernetes-validations": [
        rule("!(has(self.intervals) && has(self.backoff))", "retry takes intervals or backoff, not both"),
    ],
}

WORKERS = {
    "type": "object",
    "default": {},
    "description": "The worker Deployment.",
    "properties": {
        "replicas": integer(0, 1000, 1, "Worker pods. While autoscaling is enabled the operator sets them from "
                                        "the queue depth, and this field (the scale subresource) cannot change."),
        "image": string("Worker image with conveyor installed; defaults to the operator's default image.", max_length=1024),
        "imagePullPolicy": {"type": "string", "enum": ["Always", "IfNotPresent", "Never"], "default": "IfNotPresent"},
        "concurrency": integer(1, 10000, 10, "Jobs each worker runs at once (--concurrency)."),
        "pool": {"type": "string", "enum": ["thread", "process", "async"], "default": "thread",
                 "description": "Where sync jobs run (--pool)."},
        "allowModules": {"type": "array", "maxItems": 64,
                         "description": "Modules whose functions the workers run, with their submodules "
                                        "(--allow-module). Unset: anything importable except the standard library.",
                         "items": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": MODULE_PATTERN}},
        "args": {"type": "array", "maxItems": 64,
                 "description": "Extra `conveyor worker` arguments, appended last. Flags the operator sets from "
                                "other fields (-q, --concurrency, --shutdown-timeout, --metrics-port, --prefix, "
                                "--redis-url...) are refused: set those fields instead.",
                 "items": {"type": "string", "maxLength": 1024},
                 "x-kubernetes-validations": reserved.args_rules()},
        "env": {"type": "array", "maxItems": 64, "description": "Extra container environment (core/v1 EnvVar).",
                "items": {"type": "object", "required": ["name"], "x-kubernetes-preserve-unknown-fields": True,
                          "properties": {"name": {"type": "string", "minLength": 1, "maxLength": 253}}},
                "x-kubernetes-validations": reserved.env_rules()},
        "envFrom": free_list("Extra container environment sources (core/v1 EnvFromSource)."),
        "resources": {
            "type": "object",
            "default": DEFAULT_WORKER_RESOURCES,
            "description": "Container resources (core/v1 ResourceRequirements). Unset: requests cpu 100m and "
                           "memory 256Mi, limit memory 512Mi. Given, it replaces that default as a whole "
                           "(resources: {} sets none).",
            "properties": {"limits": quantity_map(), "requests": quantity_map()},
        },
        "nodeSelector": string_map("Pod nodeSelector."),
        "tolerations": free_list("Pod tolerations."),
        "affinity": free_object("Pod affinity (core/v1 Affinity)."),
        "topologySpreadConstraints": free_list("Pod topologySpreadConstraints."),
        "serviceAccountName": string("Pod service account (workers need no API access).", max_length=253),
        "podLabels": string_map("Extra pod labels."),
        "podAnnotations": string_map("Extra pod annotations."),
        "priorityClassName": string("Pod priority class.", max_length=253),
    },
}

SCHEDULER = {
    "type": "object",
    "default": {},
    "description": "Every worker runs the scheduler loop (--with-scheduler); one leads each queue.",
    "properties": {"enabled": {"type": "boolean", "default": True}},
}

METRICS = {
    "type": "object",
    "default": {},
    "description": "The workers' /metrics, /healthz and /readyz port, a metrics Service, and a ServiceMonitor.",
    "properties": {
        # The worker's own default (conveyor.settings.DEFAULT_METRICS_PORT; not node_exporter's 9100).
        "port": integer(1024, 65535, 9750, "Container port for /metrics, /healthz and /readyz."),
        "serviceMonitor": {
            "type": "object",
            "default": {},
            "properties": {
                "enabled": {"type": "boolean", "default": False,
                            "description": "Create a ServiceMonitor when the monitoring.coreos.com CRD exists."},
                "interval": string("Scrape interval.", max_length=16, default="30s", pattern=r"^[0-9]+(ms|s|m|h)$"),
                "labels": string_map("Extra ServiceMonitor labels (to match a Prometheus selector)."),
            },
        },
    },
}

SPEC = {
    "type": "object",
    "required": ["redis", "queues"],
    "properties": {
        "redis": REDIS,
        "queues": {
            "type": "array",
            "description": "Queue names, served strictly in this order.",
            "minItems": 1,
            "maxItems": MAX_QUEUES,
            "items": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": QUEUE_PATTERN},
            "x-kubernetes-validations": [
                rule("self.all(q, self.exists_one(p, p == q))", "queue names must be unique", "FieldValueDuplicate"),
                rule(f"self.all(q, q.matches('{QUEUE_PATTERN}'))",
                      "queue names are 1-100 characters from letters, digits, '.', '_' and '-', starting with a letter or digit"),
            ],
        },
        "retry": RETRY,
        "leaseSeconds": integer(1, 3600, 15, "Lease length (--lease-seconds); renewed every third of it."),
        "shutdownTimeoutSeconds": integer(0, 3600, 25, "Seconds running jobs get after SIGTERM (--shutdown-timeout)."),
        "resultTTLSeconds": integer(-1, None, 500, "Keep finished jobs this long (0: delete at once, -1: forever)."),
        "failureTTLSeconds": integer(-1, None, 604800, "Keep failed jobs this long (0: delete at once, -1: forever)."),
        "workers": WORKERS,
        "scheduler": SCHEDULER,
        "metrics": METRICS,
        "autoscaling": AUTOSCALING,
        "limits": LIMITS,
    },
    "x-kubernetes-validations": [
        # A transition rule (runs on updates, the scale subresource's too): kubectl scale while the
        # operator autoscales would otherwise be accepted and silently ignored.
        rule("!(oldSelf.autoscaling.enabled && self.autoscaling.enabled) || "
             "self.workers.replicas == oldSelf.workers.replicas", REPLICAS_WHILE_AUTOSCALING, "FieldValueForbidden"),
    ],
}

CONDITION = {
    "type": "object",
    "required": ["type", "status", "lastTransitionTime", "reason", "message"],
    "properties": {
        "type": string(max_length=316),
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "observedGeneration": integer(0),
        "lastTransitionTime": {"type": "string", "format": "date-time"},
        "reason": string(max_length=1024),
        "message": string(max_length=32768),
    },
}

STATUS = {
    "type": "object",
    "properties": {
        "observedGeneration": integer(0),
        "replicas": integer(0, desc="Worker pods (the Deployment's replicas)."),
        "readyReplicas": integer(0),
        "updatedReplicas": integer(0),
        "selector": string("Label selector of the worker pods (for the scale subresource).", max_length=1024),
        "depth": integer(0, desc="Jobs not finished (ready + running or prefetched + scheduled) across all queues."),
        "depthObservedAt": {"type": "string", "format": "date-time"},
        "queues": {
            "type": "array",
            "maxItems": MAX_QUEUES,
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": string(max_length=100), "ready": integer(0), "scheduled": integer(0),
                               "due": integer(0, desc="Scheduled jobs already due."),
                               "claimed": integer(0, desc="Held by a worker: prefetched or running."),
                               "failed": integer(0)},
            },
        },
        "autoscaling": {
            "type": "object",
            "description": "The operator's autoscaler, while spec.autoscaling.enabled.",
            "properties": {
                "desiredReplicas": integer(0),
                "currentReplicas": integer(0),
                "demand": integer(0, desc="Jobs ready + held by a worker + scheduled and due, at the last poll."),
                "lastScaleTime": {"type": "string", "format": "date-time"},
                "reason": string("ScaleUp, ScaleDown, Stabilizing or Steady.", max_length=64),
            },
        },
        "conditions": {
            "type": "array",
            "maxItems": 16,
            "items": CONDITION,
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    },
}

SCHEMA = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": SPEC,
        "status": STATUS,
    },
    "x-kubernetes-validations": [
        rule(f"size(self.metadata.name) <= {MAX_NAME}",
              f"a JobQueue name is at most {MAX_NAME} characters (its objects add suffixes)", "FieldValueInvalid"),
    ],
}

PRINTER_COLUMNS = [
    {"name": "Queues", "type": "string", "jsonPath": ".spec.queues", "description": "Queues served, in order."},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Depth", "type": "integer", "jsonPath": ".status.depth", "description": "Jobs not finished (ready + running + scheduled)."},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def crd() -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": NAME, "labels": {"app.kubernetes.io/part-of": "conveyor"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "plural": PLURAL, "singular": SINGULAR, "shortNames": SHORT_NAMES,
                      "listKind": f"{KIND}List", "categories": ["conveyor"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": SCHEMA},
                "subresources": {
                    "status": {},
                    "scale": {"specReplicasPath": ".spec.workers.replicas", "statusReplicasPath": ".status.replicas",
                              "labelSelectorPath": ".status.selector"},
                },
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }


def to_yaml() -> str:
    import yaml

    header = "# Generated by `python -m conveyor_operator.crd`; edit operator/conveyor_operator/crd.py instead.\n"
    body: str = yaml.safe_dump(crd(), sort_keys=False, width=120)
    return header + body


if __name__ == "__main__":  # pragma: no cover
    sys.stdout.write(to_yaml())
