"""The one module that talks to the Kubernetes API (besides kopf itself), and the one place
the operator's credentials and connection settings come from.

One client stack. :func:`login` reads the credentials with kopf's own loaders (the pod's
service account, else the current context of $KUBECONFIG or ~/.kube/config) into one
:class:`kopf.ConnectionInfo`. The operator's ``@kopf.on.login`` handler gives kopf that
object (:meth:`Api.refresh`), and :class:`Api` makes its aiohttp session from it as kopf makes
its own (``as_ssl_context()``, ``as_http_headers()``, the proxy), on kopf's event loop: the
same HTTP library, loop, TLS setup and identity for every request the operator makes. The
Api keeps a session (connection pool) of its own because kopf's is internal to kopf.

Why this and not the alternatives: kopf's default login with the ``kubernetes`` package
installed (or ``kopf.login_via_client``) loads the kubeconfig with that package, and our
calls went through its blocking urllib3 client: two HTTP stacks, two loaders that had to
agree. Building our client from kopf's ConnectionInfo instead drops the ``kubernetes``
package. What kopf's loaders do not do: kubeconfig ``exec`` and ``auth-provider`` plugins
(cloud CLIs); run outside a cluster with a kubeconfig holding a token or a client certificate.

A token rotated on disk (projected service account tokens are) is picked up at the next
login: kopf's after a 401 (it calls the login handler again), the Api's after its own 401
(:meth:`Api.refresh`, then the request is made once more).

Owned objects are written with server-side apply (field manager ``conveyor-operator``,
force): applying the same desired object twice is a no-op on the server, a field the
operator stops sending is removed, and fields it never sends (``replicas`` while
autoscaling is enabled, whatever other controllers add) are left alone. The autoscaler
applies a Deployment's ``replicas`` alone under its own manager (``conveyor-autoscaler``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import aiohttp
import kopf

FIELD_MANAGER = "conveyor-operator"

PLURALS = {
    "Deployment": "deployments",
    "ConfigMap": "configmaps",
    "Service": "services",
    "Secret": "secrets",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "ServiceMonitor": "servicemonitors",
    "JobQueue": "jobqueues",
    "CustomResourceDefinition": "customresourcedefinitions",
    "Event": "events",
    "Pod": "pods",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "ScaledObject": "scaledobjects",
}


class ApiError(Exception):
    def __init__(self, status: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status, self.reason, self.message = status, reason, message


class NotFound(ApiError):
    pass


def path(api_version: str, kind: str, namespace: str | None = None, name: str | None = None,
         subresource: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{quote(namespace)}"
    base += f"/{PLURALS[kind]}"
    if name:
        base += f"/{quote(name)}"
    if subresource:
        base += f"/{subresource}"
    return base


def login(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo:
    """The operator's credentials, with kopf's own loaders: the pod's service account when it
    has one, else the kubeconfig's current context. kopf.LoginError when there are none."""
    try:
        info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
    except Exception as exc:  # an unreadable kubeconfig: KeyError, OSError, yaml's errors
        raise kopf.LoginError(f"cannot read the kubeconfig: {exc!r}") from exc
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: no service account token, no $KUBECONFIG or ~/.kube/config")
    return info


class Api:
    """Blocking calls for the operator's threads (kopf's sync handlers, the resync loops), made
    with aiohttp on kopf's event loop ``loop``. ``credentials`` is read at once (a failure is
    raised here: the operator fails at startup) and again by :meth:`refresh`."""

    def __init__(self, loop: asyncio.AbstractEventLoop, credentials: Callable[[], kopf.ConnectionInfo],
                 timeout: float = 10.0) -> None:
        self._loop, self._credentials, self._timeout = loop, credentials, timeout
        self.connection = credentials()
        self._session: aiohttp.ClientSession | None = None  # made on the loop, at the first call
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False

    def request(self, method: str, url: str, body: Any = None, query: dict[str, str] | None = None,
                content_type: str = "application/json") -> Any:
        if self._closed:
            raise ApiError(503, "Closed", "the operator is shutting down")
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            raise RuntimeError("Api calls block: make them from a thread, never on kopf's event loop")
        future = asyncio.run_coroutine_threadsafe(self._request(method, url, body, query, content_type), self._loop)
        try:
            return future.result(2 * self._timeout + 1)  # a 401 makes it two requests
        except TimeoutError:
            future.cancel()
            raise

    async def _request(self, method: str, url: str, body: Any, query: dict[str, str] | None,
                       content_type: str) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type  # JSON is YAML too: apply patches are sent as JSON
        for attempt in range(2):
            info, session = self.connection, self._session_now()
            async with session.request(method, info.server.rstrip("/") + url, params=query,
                                       data=None if body is None else json.dumps(body), headers=headers,
                                       timeout=aiohttp.ClientTimeout(total=self._timeout)) as resp:
                status, raw = resp.status, await resp.read()
            if status != 401 or attempt or await self.refresh() == info:
                break  # else a rotated token: once more with it
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = {"message": raw.decode(errors="replace")}
        if not 200 <= status < 300:
            data = data if isinstance(data, dict) else {}
            cls = NotFound if status == 404 else ApiError
            raise cls(status, str(data.get("reason", "")), str(data.get("message", "")))
        return data

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None:
            info = self.connection
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=info.as_ssl_context()), headers=info.as_http_headers(),
                proxy=info.proxy_url, trust_env=info.trust_env)
        return self._session

    async def refresh(self) -> kopf.ConnectionInfo:
        """Read the credentials again (the login handler, and a 401, call this): when they changed,
        later requests use a new session; the old one is closed once its requests are done."""
        info = self._credentials()
        if info != self.connection:
            self.connection, old, self._session = info, self._session, None
            if old is not None:
                task = asyncio.get_running_loop().create_task(self._close_later(old))
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
        return info

    async def _close_later(self, session: aiohttp.ClientSession) -> None:
        try:
            await asyncio.sleep(self._timeout)
        finally:
            await session.close()

    async def close(self) -> None:
        """At cleanup (on the loop): later calls fail at once, open sessions are closed."""
        self._closed = True
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    # --- objects -----------------------------------------------------------------------------

    def get(self, api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", path(api_version, kind, namespace, name))
            return found
        except NotFound:
            return None

    def list_objects(self, api_version: str, kind: str, namespace: str | None,
             label_selector: str | None = None) -> list[dict[str, Any]]:
        query = {"labelSelector": label_selector} if label_selector else None
        return list((self.request("GET", path(api_version, kind, namespace), query=query) or {}).get("items") or [])

    def apply(self, obj: dict[str, Any], manager: str = FIELD_MANAGER) -> dict[str, Any]:
        """Server-side apply as ``manager`` (the autoscaler applies only a Deployment's replicas,
        under its own manager, so the operator's full apply never touches them)."""
        meta = obj["metadata"]
        applied: dict[str, Any] = self.request(
            "PATCH", path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]),
            body=obj, query={"fieldManager": manager, "force": "true"}, content_type="application/apply-patch+yaml")
        return applied

    def annotate(self, api_version: str, kind: str, namespace: str | None, name: str,
                 annotations: dict[str, str]) -> None:
        """Merge ``annotations`` into the object's (a merge patch: nothing else changes)."""
        self.request("PATCH", path(api_version, kind, namespace, name),
                     body={"metadata": {"annotations": annotations}}, content_type="application/merge-patch+json")

    def delete(self, api_version: str, kind: str, namespace: str | None, name: str) -> bool:
        try:
            self.request("DELETE", path(api_version, kind, namespace, name),
                         body={"propagationPolicy": "Background"})
            return True
        except NotFound:
            return False

    def patch_status(self, api_version: str, kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.request("PATCH", path(api_version, kind, namespace, name, "status"), body={"status": status},
                     content_type="application/merge-patch+json")

    def remove_finalizers(self, api_version: str, kind: str, namespace: str | None, name: str,
                          current: list[str], remove: tuple[str, ...]) -> None:
        """Drop ``remove`` from the object's finalizers, which must still be ``current`` (a JSON
        patch test: another controller's concurrent change fails it with 422, never lost)."""
        kept = [f for f in current if f not in remove]
        ops: list[dict[str, Any]] = [{"op": "test", "path": "/metadata/finalizers", "value": current}]
        ops.append({"op": "replace", "path": "/metadata/finalizers", "value": kept} if kept
                   else {"op": "remove", "path": "/metadata/finalizers"})
        self.request("PATCH", path(api_version, kind, namespace, name), body=ops,
                     content_type="application/json-patch+json")

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event about ``involved`` (an object with apiVersion, kind and metadata).
        Posted here, not with kopf.event(): that one works only inside kopf's per-object
        handler context, and the resync loop runs outside it."""
        meta = involved.get("metadata") or {}
        at = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        namespace = meta.get("namespace") or "default"
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"generateName": f"{meta.get('name', 'x')}.", "namespace": namespace},
                 "involvedObject": {"apiVersion": involved.get("apiVersion"), "kind": involved.get("kind"),
                                    "name": meta.get("name"), "namespace": namespace, "uid": meta.get("uid")},
                 "type": type_, "reason": reason, "message": message[:1024],
                 "source": {"component": FIELD_MANAGER}, "reportingComponent": FIELD_MANAGER,
                 "firstTimestamp": at, "lastTimestamp": at, "count": 1}
        self.request("POST", path("v1", "Event", namespace), body=event)

    # --- lookups -----------------------------------------------------------------------------

    def secret_value(self, namespace: str, name: str, key: str) -> str:
        """The decoded value of one key (NotFound raised for a missing Secret, KeyError for a
        missing key, so callers can tell them apart)."""
        return self.secret_values(namespace, name, [key])[key]

    def secret_values(self, namespace: str, name: str, keys: list[str]) -> dict[str, str]:
        """Several keys of one Secret, read in one GET (a certificate and its key stay a pair);
        NotFound for a missing Secret, KeyError naming the first missing key."""
        secret = self.get("v1", "Secret", namespace, name)
        if secret is None:
            raise NotFound(404, "NotFound", f'secret "{name}" not found')
        data = secret.get("data") or {}
        string_data = secret.get("stringData") or {}
        out = {}
        for key in keys:
            if key in data:
                out[key] = base64.b64decode(data[key]).decode()
            elif key in string_data:
                out[key] = str(string_data[key])
            else:
                raise KeyError(key)
        return out

    def crd_exists(self, name: str) -> bool:
        return self.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, name) is not None
