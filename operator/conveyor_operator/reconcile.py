"""One reconcile pass for a JobQueue: desired objects applied, problems found, status written.

Used by every kopf handler (create, update, resume) and the resync loop, so the same
code repairs drift and refreshes status. It never raises for what a user can fix
(missing Secret, unreachable Redis, no image): it reports it as ``Outcome.problem``,
which sets Degraded and lets the caller retry with backoff.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

import redis

from conveyor.connection import RedisTarget, TlsFiles, describe
from conveyor.errors import ConfigError
from conveyor.keys import DEFAULT_PREFIX

from . import builders, crd
from .builders import Owner
from .k8s import Api, ApiError, NotFound
from .scaler import Scaler
from .settings import Settings
from .spec import defaulted, problems
from .status import DEGRADED, conditions_for, set_condition, deployment_problem, merge_conditions, now, queue_depth, total_depth
from .tlsfiles import TlsFileStore

# The field naming each TLS file's Secret key, for messages.
TLS_FIELDS = {builders.TLS_CA_FILE: "spec.redis.tls.caSecretRef.key",
              builders.TLS_CERT_FILE: "spec.redis.tls.clientCertSecretRef.certKey",
              builders.TLS_KEY_FILE: "spec.redis.tls.clientCertSecretRef.keyKey"}

EventFn = Callable[[str, str, str], None]  # (type, reason, message)

# Finalizers earlier versions had kopf put on every JobQueue (ours, and kopf's default name):
# removed from every JobQueue the operator sees, since nothing would ever remove them once
# the operator is uninstalled and deleting the JobQueue (or its namespace) would hang.
LEGACY_FINALIZERS = (f"{crd.GROUP}/finalizer", "kopf.zalando.org/KopfFinalizerMarker")


@dataclass
class Outcome:
    problem: tuple[str, str] | None = None   # (reason, message)
    permanent: bool = False                  # retrying cannot help until the spec changes
    status: dict[str, Any] = field(default_factory=dict)


class Reconciler:
    def __init__(self, api: Api, settings: Settings, tls_files: TlsFileStore | None = None) -> None:
        self.api = api
        self.settings = settings
        self.tls_files = tls_files or TlsFileStore()
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # JobQueues deleted (by uid, never reused): a resync pass still holding one's old body
        # must not re-create its objects or TLS files. A few dozen bytes per deletion.
        self._gone: set[str] = set()
        self.scaler = Scaler(api)

    def _lock(self, uid: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(uid, threading.Lock())

    def forget(self, uid: str) -> None:
        """The JobQueue is gone: its lock and its private TLS files (after any pass in flight)."""
        with self._lock(uid):
            self._gone.add(uid)
            self.tls_files.forget(uid)
        with self._locks_guard:
            self._locks.pop(uid, None)
        self.scaler.forget(uid)

    def release(self, body: dict[str, Any]) -> None:
        """Remove the LEGACY_FINALIZERS from a JobQueue (someone else's stay). A concurrent
        change to its finalizers fails the patch; the change's own event brings a retry."""
        meta = body.get("metadata") or {}
        current = list(meta.get("finalizers") or [])
        if any(f in LEGACY_FINALIZERS for f in current):
            try:
                self.api.remove_finalizers(crd.API_VERSION, crd.KIND, meta.get("namespace"), meta["name"], current,
                                           LEGACY_FINALIZERS)
            except NotFound:
                pass
            except ApiError as exc:
                if exc.status not in (409, 422):
                    raise

    def close(self) -> None:
        self.tls_files.close()

    def redis_client(self, body: dict[str, Any]) -> tuple[Any | None, str, tuple[str, str] | None]:
        """A client for the JobQueue's Redis, its key prefix, and the problem when there is none:
        the URL, TLS files and prefix the depth read uses (pod recovery reaches the same Redis)."""
        owner = Owner.of(body)
        spec = defaulted(body.get("spec"))
        if problems(spec, owner.name):
            return None, DEFAULT_PREFIX, ("InvalidSpec", "the JobQueue's spec is invalid")
        with self._lock(owner.uid or owner.name):
            return self._redis_client(owner, spec)

    def _redis_client(self, owner: Owner, spec: dict[str, Any]) -> tuple[Any | None, str, tuple[str, str] | None]:
        prefix = spec["redis"].get("prefix") or DEFAULT_PREFIX
        url, problem = self._redis_url(owner, spec)
        tls, tls_problem = self._tls_files(owner, spec)
        if url is None or tls is None:
            return None, prefix, problem or tls_problem
        t = self.settings.redis_timeout
        try:
            return RedisTarget.parse(url, tls).client(socket_connect_timeout=t, socket_timeout=t), prefix, None
        except ConfigError as exc:
            return None, prefix, ("RedisConfigInvalid", str(exc))

    def autoscale(self, body: dict[str, Any], event: EventFn | None = None) -> None:
        """One autoscaling poll (the operator's autoscale loop calls it every pollSeconds)."""
        owner = Owner.of(body)
        spec = defaulted(body.get("spec"))
        uid = owner.uid or owner.name
        if problems(spec, owner.name) or not spec["autoscaling"]["enabled"]:
            return
        with self._lock(uid):
            if uid in self._gone:
                return
            client, prefix, problem = self._redis_client(owner, spec)
            try:
                changed = self.scaler.poll(owner, spec, client, prefix, problem, event or (lambda *_: None))
            finally:
                if client is not None:
                    client.close()
            if changed:
                self._write_autoscaling(owner, spec)

    def _write_autoscaling(self, owner: Owner, spec: dict[str, Any]) -> None:
        current = self.api.get(crd.API_VERSION, crd.KIND, owner.namespace, owner.name)
        if current is None:
            return
        auto, cond = self.scaler.report(owner.uid or owner.name, spec)
        old = current.get("status") or {}
        status: dict[str, Any] = {"autoscaling": auto}
        if cond is not None:
            gen = int(old.get("observedGeneration") or current["metadata"].get("generation") or 0)
            status["conditions"] = set_condition(old.get("conditions"), cond, gen)
        try:
            self.api.patch_status(crd.API_VERSION, crd.KIND, owner.namespace, owner.name, status)
        except NotFound:
            pass

    def reconcile(self, body: dict[str, Any], event: EventFn | None = None) -> Outcome:
        owner = Owner.of(body)
        with self._lock(owner.uid or owner.name):
            if (owner.uid or owner.name) in self._gone:
                return Outcome()
            return self._reconcile(body, owner, event or (lambda *_: None))

    # -------------------------------------------------------------------------------------------

    def _reconcile(self, body: dict[str, Any], owner: Owner, event: EventFn) -> Outcome:
        spec = defaulted(body.get("spec"))
        generation = int(body["metadata"].get("generation") or 0)
        errors = problems(spec, owner.name)
        if errors:
            problem = ("InvalidSpec", "; ".join(errors))
            return self._finish(body, owner, spec, problem, None, None, event, permanent=True)

        image = spec["workers"].get("image") or self.settings.default_image
        problem: tuple[str, str] | None = None
        url, redis_problem = self._redis_url(owner, spec)
        # A URL from a Secret is fingerprinted into the pods' checksum: rotating it rolls them.
        digest = hashlib.sha256(url.encode()).hexdigest() if url and "secretRef" in spec["redis"] else ""
        desired = [builders.configmap(owner, spec), builders.service(owner, spec), builders.pdb(owner, spec)]
        if image:
            try:
                replicas = self.scaler.prepare(owner, spec)
            except ApiError as exc:
                return self._finish(body, owner, spec, ("ApplyFailed", f"could not set the worker replicas: {exc}"),
                                    None, None, event, generation=generation)
            desired.append(builders.deployment(owner, spec, image, digest, replicas))
        else:
            problem = ("ImageMissing", "spec.workers.image is empty and the operator has no default image "
                                       "(set CONVEYOR_OPERATOR_DEFAULT_IMAGE)")
        try:
            for obj in desired:
                self.api.apply(obj)
            problem = problem or self._service_monitor(owner, spec, event)
        except ApiError as exc:
            problem = problem or ("ApplyFailed", f"could not apply the worker objects: {exc}")

        tls, tls_problem = self._tls_files(owner, spec)
        problem = problem or redis_problem or tls_problem
        depth = None
        if url is not None and tls is not None:
            depth, depth_problem = self._depth(url, spec, tls)
            problem = problem or depth_problem
        deployment = self.api.get("apps/v1", "Deployment", owner.namespace, builders.names(owner.name)["deployment"])
        # What the operator found first (the likelier cause: an unreachable Redis also stalls
        # rollouts), then what the Deployment controller reports.
        problem = problem or deployment_problem(deployment)
        return self._finish(body, owner, spec, problem, deployment, depth, event, generation=generation)

    def _service_monitor(self, owner: Owner, spec: dict[str, Any], event: EventFn) -> tuple[str, str] | None:
        sm = builders.service_monitor(owner, spec)
        name = sm["metadata"]["name"]
        if builders.wants_service_monitor(spec):
            if not self.api.crd_exists("servicemonitors.monitoring.coreos.com"):
                event("Warning", "ServiceMonitorUnavailable",
                      "metrics.serviceMonitor.enabled is set but the ServiceMonitor CRD "
                      "(monitoring.coreos.com) is not installed; skipping it")
                return None
            self.api.apply(sm)
            return None
        # Asked before, not now: remove the one this JobQueue owns (and nobody else's).
        try:
            current = self.api.get(sm["apiVersion"], "ServiceMonitor", owner.namespace, name)
        except ApiError:  # the CRD is not installed: nothing to remove
            return None
        if current and any(r.get("uid") == owner.uid for r in current["metadata"].get("ownerReferences") or []):
            self.api.delete(sm["apiVersion"], "ServiceMonitor", owner.namespace, name)
        return None

    def _redis_url(self, owner: Owner, spec: dict[str, Any]) -> tuple[str | None, tuple[str, str] | None]:
        redis_spec = spec["redis"]
        if "url" in redis_spec:
            return redis_spec["url"], None
        ref = redis_spec["secretRef"]
        key = ref.get("key", "url")
        try:
            return self.api.secret_value(owner.namespace, ref["name"], key), None
        except NotFound:
            return None, ("SecretMissing", f'Secret "{ref["name"]}" (spec.redis.secretRef) was not found in namespace '
                                           f'"{owner.namespace}"; workers cannot start until it exists')
        except KeyError:
            return None, ("SecretKeyMissing", f'Secret "{ref["name"]}" has no key "{key}" (spec.redis.secretRef.key)')
        except ApiError as exc:
            return None, ("SecretUnreadable", f'cannot read Secret "{ref["name"]}": {exc}')

    def _tls_files(self, owner: Owner, spec: dict[str, Any]) -> tuple[TlsFiles | None, tuple[str, str] | None]:
        """The JobQueue's TLS Secrets as private files (the workers get the same keys mounted);
        None and the problem when a Secret or key is missing."""
        sources = builders.tls_sources(spec)
        wanted: dict[str, set[str]] = {}
        for secret, key in sources.values():
            wanted.setdefault(secret, set()).add(key)
        values: dict[str, dict[str, str]] = {}
        for secret, keys in wanted.items():
            refs = sorted({TLS_FIELDS[f].rsplit(".", 1)[0] for f, (s, _) in sources.items() if s == secret})
            try:
                values[secret] = self.api.secret_values(owner.namespace, secret, sorted(keys))
            except NotFound:
                return None, ("TLSSecretMissing", f'Secret "{secret}" ({", ".join(refs)}) was not found in namespace '
                                                  f'"{owner.namespace}"; workers cannot start until it exists')
            except KeyError as exc:
                key = exc.args[0]
                fields = ", ".join(TLS_FIELDS[f] for f, (s, k) in sources.items() if (s, k) == (secret, key))
                return None, ("TLSSecretKeyMissing", f'Secret "{secret}" has no key "{key}" ({fields})')
            except ApiError as exc:
                return None, ("TLSSecretUnreadable", f'cannot read Secret "{secret}" ({", ".join(refs)}): {exc}')
            except ValueError:  # not UTF-8: DER, or not a certificate at all
                return None, ("TLSSecretUnreadable", f'Secret "{secret}" ({", ".join(refs)}) holds binary data '
                                                     f'where PEM text was expected')
        contents = {file: values[secret][key] for file, (secret, key) in sources.items()}
        try:
            return self.tls_files.files(owner.uid or owner.name, contents), None
        except OSError as exc:
            return None, ("TLSFilesUnwritable", f"the operator cannot write the TLS files to read queue depth "
                                                f"(its /tmp): {exc}")

    def _depth(self, url: str, spec: dict[str, Any], tls: TlsFiles,
               ) -> tuple[list[dict[str, Any]] | None, tuple[str, str] | None]:
        target: RedisTarget | str = url
        try:
            target = RedisTarget.parse(url, tls)
            return queue_depth(url, list(spec["queues"]), timeout=self.settings.redis_timeout,
                               prefix=spec["redis"].get("prefix") or DEFAULT_PREFIX, tls=tls), None
        except ConfigError as exc:
            return None, ("RedisConfigInvalid", str(exc))
        except (redis.RedisError, OSError, ValueError) as exc:
            uses_tls = isinstance(target, RedisTarget) and target.tls
            return None, ("RedisUnreachable", self._in_spec_terms(describe(exc, target), spec, tls, uses_tls))

    @staticmethod
    def _in_spec_terms(message: str, spec: dict[str, Any], tls: TlsFiles, uses_tls: bool) -> str:
        """A runtime error line, with the operator's private file paths named as the Secret keys
        they come from, and the TLS hints given as JobQueue fields. A Redis that requires client
        certificates closes the connection after the handshake: the client sees its alert, an
        EOF or a reset, depending on timing."""
        sources = builders.tls_sources(spec)
        for file, path in ((builders.TLS_CA_FILE, tls.ca_file), (builders.TLS_CERT_FILE, tls.cert_file),
                           (builders.TLS_KEY_FILE, tls.key_file)):
            if path and file in sources:
                message = message.replace(path, 'Secret "{}" key "{}"'.format(*sources[file]))
        message = message.replace("set ssl_ca_certs or CONVEYOR_REDIS_CA_FILE", "set spec.redis.tls.caSecretRef")
        low = message.lower().replace("_", " ")
        if uses_tls and not tls.cert_file and any(
                sign in low for sign in ("certificate required", "eof occurred in violation of protocol",
                                         "connection reset by peer")):
            message += ("; if Redis requires client certificates (tls-auth-clients), give one with "
                        "spec.redis.tls.clientCertSecretRef")
        return message

    def _finish(self, body: dict[str, Any], owner: Owner, spec: dict[str, Any], problem: tuple[str, str] | None,
                deployment: dict[str, Any] | None, depth: list[dict[str, Any]] | None, event: EventFn,
                generation: int | None = None, permanent: bool = False) -> Outcome:
        old = body.get("status") or {}
        gen = int(body["metadata"].get("generation") or 0) if generation is None else generation
        auto, auto_cond = self.scaler.report(owner.uid or owner.name, spec) if spec.get("autoscaling") else (None, None)
        external = auto_cond is not None and auto_cond.reason == "ExternalAutoscaler"
        desired = None if spec.get("autoscaling", {}).get("enabled") or external \
            else spec.get("workers", {}).get("replicas")
        conds = merge_conditions(old.get("conditions"), conditions_for(problem=problem, desired=desired,
                                                                       deployment=deployment)
                                 + ([auto_cond] if auto_cond else []), gen)
        dstatus = (deployment or {}).get("status") or {}
        status: dict[str, Any] = {
            "observedGeneration": gen,
            "replicas": int(dstatus.get("replicas") or 0),
            "readyReplicas": int(dstatus.get("readyReplicas") or 0),
            "updatedReplicas": int(dstatus.get("updatedReplicas") or 0),
            "selector": builders.selector_string(owner.name),
            "conditions": conds,
            "autoscaling": auto,
        }
        if depth is not None:
            status["queues"] = depth
            status["depth"] = total_depth(depth)
            status["depthObservedAt"] = now()
        changed = {k: v for k, v in status.items() if k != "depthObservedAt" and old.get(k) != v}
        if changed:
            try:
                self.api.patch_status(crd.API_VERSION, crd.KIND, owner.namespace, owner.name, status)
            except NotFound:
                pass  # deleted meanwhile
        old_degraded = next((c for c in old.get("conditions") or [] if c.get("type") == DEGRADED), {})
        if problem and (old_degraded.get("status") != "True" or old_degraded.get("reason") != problem[0]):
            event("Warning", problem[0], problem[1])
        elif not problem and old_degraded.get("status") == "True":
            event("Normal", "Recovered", f"no longer degraded ({old_degraded.get('reason')})")
        return Outcome(problem=problem, permanent=permanent, status=status)
