"""Leader election for several operator replicas, with kopf's peering.

kopf pauses every operator that sees a live peer of a *higher* priority in the same peering
object; peers of the *same* priority only warn about each other (and all pause), so each
replica takes a random priority at start-up (:func:`priority`). They are negative: a
developer's ``kopf run --dev`` (666), ``kopf freeze`` (100) or a plain ``kopf run`` (0) with the
same peering still pauses the deployed operators, as kopf intends.

A dead leader is noticed when its record's ``lastseen + lifetime`` passes (kopf keeps itself
alive every ``lifetime - 5..10`` s, at least every 1 s): the lifetime bounds the failover.

kopf pauses only its own watchers. The operator's resync and autoscaling loops are its own,
so they ask its :class:`Leadership` (in conveyor_operator.state) first. kopf does not expose
its pause state to handlers; it logs each change of it (``Pausing operations ...`` / ``Resuming operations ...``) from
``kopf._core.engines.peering``, and :class:`Leadership` follows those records. A mandatory
peering starts paused in kopf, so a replica starts inactive until kopf resumes it.

The peering is always cluster-wide (a ClusterKopfPeering named per release), also when the
operator watches a list of namespaces: one object to elect from, and one CRD to install.
kopf only patches the peering object, so the operator creates it at start-up
(:func:`ensure_peering`): a Helm chart cannot create it in the release that installs its CRD.
"""

from __future__ import annotations

import logging
import random
import threading

from . import metrics
from .k8s import Api, ApiError

log = logging.getLogger("conveyor_operator.leader")
PEERING_API = "/apis/kopf.dev/v1/clusterkopfpeerings"
KOPF_PEERING_LOGGER = "kopf._core.engines.peering"


def priority() -> int:
    """A random peering priority for this replica: distinct from the others' in all likelihood
    (2**30 values), below every priority kopf's own tools use."""
    return -random.randint(1, 2 ** 30)


class Leadership(logging.Handler):
    """Whether this replica is the active one, from kopf's peering log records."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self._active = threading.Event()
        self._active.set()
        metrics.LEADER.set(1)

    @property
    def active(self) -> bool:
        return self._active.is_set()

    def set(self, active: bool) -> None:
        if active != self.active:
            log.info("this operator replica %s",
                     "is now the active one" if active else "stands by (paused by kopf's peering)")
        (self._active.set if active else self._active.clear)()
        metrics.LEADER.set(1 if active else 0)

    def follow_kopf(self) -> None:
        """Start paused, as kopf does with a mandatory peering, and follow its pause/resume records."""
        self.set(False)
        peering_log = logging.getLogger(KOPF_PEERING_LOGGER)
        # Its records must be made even under `kopf run --quiet` (WARNING): they are our signal.
        peering_log.setLevel(logging.INFO)
        if self not in peering_log.handlers:
            peering_log.addHandler(self)

    def unfollow(self) -> None:
        logging.getLogger(KOPF_PEERING_LOGGER).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        # "Pausing operations in favour of [...]", or "Pausing all operators, including self" (a tie).
        if message.startswith("Pausing "):
            self.set(False)
        elif message.startswith("Resuming operations"):
            self.set(True)


def ensure_peering(api: Api, name: str) -> None:
    """Create the ClusterKopfPeering ``name`` unless it exists (another replica may race us: fine)."""
    body = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": name}}
    try:
        api.request("GET", f"{PEERING_API}/{name}")
        return
    except ApiError as exc:
        if exc.status != 404:
            raise
    try:
        api.request("POST", PEERING_API, body=body)
        log.info("created the ClusterKopfPeering %r", name)
    except ApiError as exc:
        if exc.status != 409:
            raise
