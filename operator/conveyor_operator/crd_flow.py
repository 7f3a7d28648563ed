"""The JobQueue schema's pieces about how much work the fleet takes on: autoscaling (how
many workers). Part of :mod:`conveyor_operator.crd`, which assembles the CRD."""

from __future__ import annotations

from .openapi import integer, rule

AUTOSCALING = {
    "type": "object",
    "default": {},
    "description": "Queue-depth autoscaling by the operator. Every pollSeconds it reads the demand from Redis "
                   "(jobs ready, held by a worker and scheduled-and-due, over spec.queues) and sets the worker "
                   "Deployment's replicas to ceil(demand / targetJobsPerWorker) within [minReplicas, maxReplicas]: "
                   "up at once, down only to the highest recommendation of the last "
                   "scaleDownStabilizationSeconds. Turning it on starts from the current replicas, turning it off "
                   "returns to spec.workers.replicas. An HPA or KEDA ScaledObject on the worker Deployment takes "
                   "precedence (condition Autoscaling=False, ExternalAutoscaler).",
    "properties": {
        "enabled": {"type": "boolean", "default": False},
        "minReplicas": integer(0, 1000, 1, "Fewest workers; 0 scales to zero when there is nothing to do "
                                           "(the first job wakes the fleet within one poll)."),
        "maxReplicas": integer(1, 1000, 10, "Most workers."),
        "targetJobsPerWorker": integer(1, 1000000, 20, "Jobs (ready + running + prefetched + due) per worker "
                                                       "to aim for."),
        "pollSeconds": integer(1, 3600, 5, "How often to read the demand."),
        "scaleDownStabilizationSeconds": integer(0, 86400, 300, "Scale down only to the highest recommendation "
                                                                "of this many seconds (no flapping after a dip)."),
    },
    "x-kubernetes-validations": [
        rule("self.minReplicas <= self.maxReplicas", "autoscaling.minReplicas must be <= autoscaling.maxReplicas",
              "FieldValueInvalid"),
    ],
}

REPLICAS_WHILE_AUTOSCALING = ("spec.workers.replicas cannot change while spec.autoscaling.enabled (the operator "
                              "sets the workers from the queue depth): change autoscaling.minReplicas or "
                              "maxReplicas, or set autoscaling.enabled: false first")
