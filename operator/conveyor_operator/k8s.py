"""The one module that talks to the Kubernetes API (besides kopf itself).

Owned objects are written with server-side apply (field manager ``conveyor-operator``,
force): applying the same desired object twice is a no-op on the server, a field the
operator stops sending is removed, and fields it never sends (``replicas`` while
autoscaling is enabled, whatever other controllers add) are left alone. The autoscaler
applies a Deployment's ``replicas`` alone under its own manager (``conveyor-autoscaler``).
"""

from __future__ import annotations

import base64
import datetime
import json
from typing import Any
from urllib.parse import quote

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


class Api:
    """Blocking calls through the kubernetes client's configured connection (in-cluster or
    kubeconfig). Safe to share between kopf's handler threads."""

    def __init__(self, timeout: float = 10.0) -> None:
        import kubernetes

        try:
            kubernetes.config.load_incluster_config()
        except kubernetes.config.ConfigException:
            kubernetes.config.load_kube_config()
        self._client = kubernetes.client.ApiClient()
        self._timeout = timeout

    def request(self, method: str, url: str, body: Any = None, query: dict[str, str] | None = None,
                content_type: str = "application/json") -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        m, full_url, headers, body, post = self._client.param_serialize(
            method, url, query_params=list((query or {}).items()), header_params=headers, body=body,
            auth_settings=["BearerToken"])
        resp = self._client.call_api(m, full_url, headers, body, post, _request_timeout=self._timeout)
        resp.read()
        raw = resp.data or b""
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = {"message": raw.decode(errors="replace")}
        if not 200 <= resp.status < 300:
            data = data if isinstance(data, dict) else {}
            cls = NotFound if resp.status == 404 else ApiError
            raise cls(resp.status, str(data.get("reason", "")), str(data.get("message", "")))
        return data

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
