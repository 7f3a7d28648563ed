"""A Kubernetes API emulator for the operator tests: kmock's KubernetesEmulator plus the
API-server semantics that kopf, kubectl and the operator rely on.

kmock 0.8 stores objects and serves discovery; as shipped it lacks what real clients
need (the gaps are listed below). This subclass serves every request for a
known resource itself, keeping the objects in kmock's ``objects`` store (so tests can
assert on ``emu.objects[...]``), and adds:

- metadata the server owns: ``resourceVersion`` (one counter), ``uid``,
  ``creationTimestamp``, ``generation`` (bumped when anything but metadata/status
  changes), the namespace from the URL, ``generateName``;
- no-op writes that change nothing (no new resourceVersion, no watch event);
- ``/status`` isolated from the main object (each write keeps the other half), and a
  ``/scale`` subresource driven by a CRD's scale paths;
- PUT (replace, with a resourceVersion conflict check), merge patch, JSON patch (a failed
  ``test`` answers 422), a small strategic merge patch (lists of named items merged by
  name) and server-side apply per field manager (fields dropped from a manager's last apply
  are removed unless another manager's last apply, or a merge patch, still holds them);
- label and field selectors on list and watch;
- watch: ``application/json``, events after the given resourceVersion only,
  ``timeoutSeconds``, BOOKMARKs (including the initial-events-end one of watch-list);
- standard error bodies (NotFound, AlreadyExists, Conflict, Invalid);
- finalizers, deletionTimestamp, and ownerReference cascade deletion (the garbage collector,
  which also removes an object created after all its owners were deleted);
- a created CustomResourceDefinition is registered in discovery;
- Namespace objects at ``/api/v1/namespaces[/<name>]`` (k8s_namespaces.py).

Every request served stays in kmock's ``_requests`` (method, URL, query, headers with the
bearer token): api_audit.py maps one client's requests to the RBAC permissions they need.

Not emulated: admission (schema/CEL), RBAC, controllers, Table output, protobuf.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import random
import re
import string
import time
import uuid
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
import yaml

import k8s_namespaces

k8s_namespaces.install()

SERVER_META = ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp", "managedFields")


def merge_patch(target: Any, patch: Any, *, by_name: bool = False) -> Any:
    """RFC 7386 JSON merge patch. With ``by_name`` (strategic merge), lists of objects that
    all have a ``name`` are merged item by item instead of replaced."""
    if by_name and isinstance(patch, list) and isinstance(target, list) and patch and all(
            isinstance(i, dict) and "name" in i for i in patch + target):
        named = {i["name"]: i for i in target}
        out = [merge_patch(named[i["name"]], i, by_name=True) if i["name"] in named else i for i in patch]
        seen = {i["name"] for i in patch}
        return out + [i for i in target if i["name"] not in seen]
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    merged = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            merged.pop(k, None)
        else:
            merged[k] = merge_patch(merged.get(k), v, by_name=by_name)
    return merged


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Merge patch, except lists of objects that all have a ``name`` are merged by name."""
    return merge_patch(target, patch, by_name=True)


def apply_patch(last: Any, new: Any, others: list[Any] | tuple[Any, ...] = ()) -> Any:
    """Server-side apply as a merge patch: what a manager applied before and no longer
    applies is removed, unless another manager's apply still holds it (shared ownership);
    lists are atomic."""
    if not isinstance(new, dict) or not isinstance(last, dict):
        return new
    others = [o for o in others if isinstance(o, dict)]
    out = {k: apply_patch(last.get(k), v, [o[k] for o in others if k in o]) for k, v in new.items()}
    out.update({k: None for k in last if k not in new and not any(k in o for o in others)})
    return out


def match_labels(selector: str, labels: dict[str, str]) -> bool:
    for req in _split_selector(selector):
        req = req.strip()
        if not req:
            continue
        if m := re.fullmatch(r"([^\s!=]+)\s+(in|notin)\s+\((.*)\)", req):
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if (op == "in") != (key in labels and labels[key] in values):
                return False
        elif "!=" in req:
            key, value = req.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in req:
            key, value = req.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif req.startswith("!"):
            if req[1:] in labels:
                return False
        elif req not in labels:
            return False
    return True


def _split_selector(selector: str) -> list[str]:
    return re.split(r",(?![^()]*\))", selector)


def match_fields(selector: str, obj: dict[str, Any]) -> bool:
    for req in selector.split(","):
        if not req:
            continue
        negate = "!=" in req
        path, value = re.split(r"!=|==|=", req, maxsplit=1)
        actual: Any = obj
        for part in path.split("."):
            actual = actual.get(part) if isinstance(actual, dict) else None
        if (str(actual if actual is not None else "") == value) == negate:
            return False
    return True


class ApiStatus(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}


@attrs.define(kw_only=True)
class ConveyorEmulator(kmock.KubernetesEmulator):
    _rv: int = attrs.field(default=0, init=False)
    _log: list[tuple[int, Any, str, dict[str, Any]]] = attrs.field(factory=list, init=False)
    _changed: asyncio.Condition | None = attrs.field(default=None, init=False)
    _applied: dict[tuple[Any, str | None, str, str], Any] = attrs.field(factory=dict, init=False)
    _scales: dict[Any, dict[str, str]] = attrs.field(factory=dict, init=False)

    # -- entry point -----------------------------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or not isinstance(res.plural, str) or res not in self.resources:
            if res is not None and isinstance(res.plural, str):
                return self._status(ApiStatus(404, "NotFound", "the server could not find the requested resource"))
            return await super()._handle(request)
        if self._changed is None:
            self._changed = asyncio.Condition()
        try:
            if request.method == "GET" and request.params.get("watch") in ("true", "1"):
                return await self._watch(request)
            async with self._changed:
                result = self._serve(request)
                self._changed.notify_all()
            return aiohttp.web.json_response(result)
        except ApiStatus as exc:
            return self._status(exc)

    def _status(self, exc: ApiStatus) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                                          "message": exc.message, "reason": exc.reason, "details": exc.details,
                                          "code": exc.code}, status=exc.code)

    async def _serve_version(self, request: kmock.Request) -> Any:
        # Subresources carry no short names or categories (kubectl warns about ambiguity otherwise).
        listing = await super()._serve_version(request)
        listing["groupVersion"] = listing["groupVersion"].lstrip("/")  # "v1" for the core group, not "/v1"
        for r in listing.get("resources", []):
            if "/" in r["name"]:
                r["shortNames"], r["categories"] = [], []
                r["verbs"] = ["get", "patch", "update"]
        return listing

    # -- helpers ---------------------------------------------------------------------------------

    def _info(self, res: Any) -> Any:
        return self.resources[res]

    def _kind(self, res: Any) -> str:
        return self._info(res).kind or res.plural.capitalize()

    def _api_version(self, res: Any) -> str:
        return f"{res.group}/{res.version}" if res.group else res.version

    def _not_found(self, res: Any, name: str) -> ApiStatus:
        gr = f"{res.plural}.{res.group}" if res.group else res.plural
        return ApiStatus(404, "NotFound", f'{gr} "{name}" not found',
                         {"name": name, "group": res.group, "kind": res.plural})

    def _live(self, key: Any) -> dict[str, Any] | None:
        obj = self.objects[key] if key in self.objects else None
        return None if obj is None or obj.deleted else copy.deepcopy(obj.raw)

    def _namespace(self, request: kmock.Request) -> str | None:
        return request.namespace if self._info(request.resource).namespaced is not False else None

    def _record(self, res: Any, type_: str, obj: dict[str, Any]) -> None:
        self._log.append((self._rv, res, type_, copy.deepcopy(obj)))

    def _store(self, key: Any, new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        """Write ``new`` over ``old`` (None: create); a no-op change stays a no-op."""
        res = key[0]
        if old is not None:
            strip = lambda o: {**o, "metadata": {k: v for k, v in o["metadata"].items() if k != "resourceVersion"}}
            if strip(new) == strip(old):
                return old
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        self._rv += 1
        new["metadata"]["resourceVersion"] = str(self._rv)
        meta = new["metadata"]
        if old is not None and meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self.objects[key].create(new)
            self._remove(key)
            return new
        if key in self.objects:
            self.objects[key].create(new)
        else:
            self.objects[key] = new
        self._record(res, "ADDED" if old is None else "MODIFIED", new)
        if res.group == "apiextensions.k8s.io" and res.plural == "customresourcedefinitions":
            self._register_crd(new)
        owners = {r.get("uid") for r in meta.get("ownerReferences") or []}
        if old is None and owners and not any(self._uid_live(uid) for uid in owners):
            self._remove(key)  # the garbage collector: created after its owners went
        return new

    def _remove(self, key: Any) -> None:
        obj = self._live(key)
        if obj is None:
            return
        self.objects[key].delete()
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._record(key[0], "DELETED", obj)
        # The garbage collector: dependents go with their owner (background propagation).
        uid = obj["metadata"].get("uid")
        for dkey in list(self.objects):
            dep = self._live(dkey)
            if dep and any(r.get("uid") == uid for r in dep["metadata"].get("ownerReferences") or []):
                self._delete(dkey, dep)

    def _uid_live(self, uid: Any) -> bool:
        for k in list(self.objects):
            obj = self.objects[k]
            if obj is not None and not obj.deleted and (obj.raw.get("metadata") or {}).get("uid") == uid:
                return True
        return False

    def _delete(self, key: Any, obj: dict[str, Any]) -> dict[str, Any]:
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                new = copy.deepcopy(obj)
                new["metadata"]["deletionTimestamp"] = _now()
                return self._store(key, new, obj)
            return obj
        self._remove(key)
        return obj

    def _register_crd(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        names = spec.get("names") or {}
        for v in spec.get("versions") or []:
            if not v.get("served", True):
                continue
            sub = v.get("subresources") or {}
            res = kmock.resource(spec["group"], v["name"], names["plural"])
            self.resources[res] = kmock.ResourceInfo(
                kind=names.get("kind"), singular=names.get("singular"), shortnames=names.get("shortNames") or [],
                categories=names.get("categories") or [], namespaced=spec.get("scope") == "Namespaced",
                verbs=["get", "list", "watch", "create", "update", "patch", "delete"], subresources=list(sub))
            if "scale" in sub:
                self._scales[res] = sub["scale"]

    # -- plain requests ----------------------------------------------------------------------------

    def _serve(self, request: kmock.Request) -> dict[str, Any]:
        res, name, sub = request.resource, request.name, request.subresource
        ns = self._namespace(request)
        method = request.method.value if hasattr(request.method, "value") else str(request.method)
        if name is None:
            if method == "GET":
                return self._list(request, ns)
            if method == "POST":
                return self._create(request, ns)
            raise ApiStatus(405, "MethodNotAllowed", f"{method} on a collection is not supported here")
        key = (res, ns, name)
        old = self._live(key)
        if sub == "scale":
            return self._scale(request, key, old, method)
        if method == "GET":
            if old is None:
                raise self._not_found(res, name)
            return old
        if method == "DELETE":
            if old is None:
                raise self._not_found(res, name)
            return self._delete(key, old)
        if method not in ("PUT", "PATCH"):
            raise ApiStatus(405, "MethodNotAllowed", f"{method} is not supported")
        body = self._body(request)
        ctype = (request.headers.get("Content-Type") or "application/json").split(";")[0].strip()
        if old is None:
            if ctype == "application/apply-patch+yaml":  # apply creates
                self._applied[(*key, request.params.get("fieldManager", ""))] = copy.deepcopy(body)
                return self._create(request, ns, body=body, name=name)
            raise self._not_found(res, name)
        if method == "PUT":
            new = copy.deepcopy(body)
            rv = (new.get("metadata") or {}).get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise ApiStatus(409, "Conflict", f'Operation cannot be fulfilled on {res.plural} "{name}": the object '
                                                 "has been modified; please apply your changes to the latest version "
                                                 "and try again", {"name": name, "kind": res.plural})
        elif ctype == "application/json-patch+json":
            try:
                new = jsonpatch.apply_patch(old, body)
            except jsonpatch.JsonPatchTestFailed as exc:
                raise ApiStatus(422, "Invalid", f"the server rejected our request: {exc}") from None
            except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
                raise ApiStatus(422, "Invalid", f"the server rejected our request: {exc}") from None
        elif ctype == "application/strategic-merge-patch+json":
            new = strategic_merge_patch(old, body)
            self._owns_update(key, request, body, sub)
        elif ctype == "application/apply-patch+yaml":
            mkey = (*key, request.params.get("fieldManager", ""))
            others = [cfg for k, cfg in self._applied.items() if k[:3] == key and k != mkey]
            new = merge_patch(old, apply_patch(self._applied.get(mkey), body, others))
            self._applied[mkey] = copy.deepcopy(body)
        else:
            new = merge_patch(old, body)
            self._owns_update(key, request, body, sub)
        return self._update(key, old, new, status_only=sub == "status")

    def _owns_update(self, key: Any, request: kmock.Request, body: Any, sub: str | None) -> None:
        """A patch's fields are owned by its writer too (managedFields of an Update operation), so
        an apply that stops sending a field another client wrote leaves it (e.g. an HPA's replicas)."""
        if sub != "status" and isinstance(body, dict):
            mkey = (*key, "update:" + request.params.get("fieldManager", ""))
            self._applied[mkey] = merge_patch(self._applied.get(mkey) or {}, body)

    def _body(self, request: kmock.Request) -> Any:
        try:
            return yaml.safe_load(request.body or b"") if request.body else {}
        except yaml.YAMLError as exc:
            raise ApiStatus(400, "BadRequest", f"cannot parse the body: {exc}") from None

    def _update(self, key: Any, old: dict[str, Any], new: dict[str, Any], status_only: bool) -> dict[str, Any]:
        res = key[0]
        has_status = "status" in (self._info(res).subresources or ())
        if status_only:  # /status: only status moves
            merged = copy.deepcopy(old)
            merged["status"] = new.get("status")
            if merged["status"] is None:
                merged.pop("status")
            new = merged
        else:
            new.setdefault("metadata", {})
            for k in SERVER_META:
                if k in old["metadata"]:
                    new["metadata"][k] = old["metadata"][k]
                else:
                    new["metadata"].pop(k, None)
            new["metadata"]["name"], new["metadata"]["namespace"] = old["metadata"]["name"], old["metadata"].get("namespace")
            if not new["metadata"].get("namespace"):
                new["metadata"].pop("namespace")
            new.setdefault("apiVersion", old.get("apiVersion"))
            new.setdefault("kind", old.get("kind"))
            if has_status:  # the main resource never writes status
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            body_of = lambda o: {k: v for k, v in o.items() if k not in ("metadata", "status")}
            if body_of(new) != body_of(old):
                new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
        return self._store(key, new, old)

    def _create(self, request: kmock.Request, ns: str | None, body: Any = None, name: str | None = None) -> dict[str, Any]:
        res = request.resource
        obj = copy.deepcopy(self._body(request) if body is None else body)
        if not isinstance(obj, dict):
            raise ApiStatus(400, "BadRequest", "the body must be an object")
        meta = obj.setdefault("metadata", {})
        if ns and meta.get("namespace") and meta["namespace"] != ns:
            raise ApiStatus(400, "BadRequest", "the namespace of the provided object does not match the namespace "
                                               "sent on the request")
        if ns:
            meta["namespace"] = ns
        if not meta.get("name") and name:
            meta["name"] = name
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
        if not meta.get("name"):
            raise ApiStatus(422, "Invalid", "metadata.name: Required value: name or generateName is required")
        key = (res, ns, meta["name"])
        if self._live(key) is not None:
            gr = f"{res.plural}.{res.group}" if res.group else res.plural
            raise ApiStatus(409, "AlreadyExists", f'{gr} "{meta["name"]}" already exists',
                            {"name": meta["name"], "group": res.group, "kind": res.plural})
        obj.setdefault("apiVersion", self._api_version(res))
        obj.setdefault("kind", self._kind(res))
        if "status" in (self._info(res).subresources or ()):
            obj.pop("status", None)
        for k in ("resourceVersion", "deletionTimestamp"):
            meta.pop(k, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        return self._store(key, obj, None)

    def _list(self, request: kmock.Request, ns: str | None) -> dict[str, Any]:
        res = request.resource
        items = [o for o in self._matching(request, ns)]
        return {"kind": f"{self._kind(res)}List", "apiVersion": self._api_version(res),
                "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _matching(self, request: kmock.Request, ns: str | None) -> list[dict[str, Any]]:
        out = []
        for key in list(self.objects):
            if key[0] == request.resource and (ns is None or key[1] == ns):
                obj = self._live(key)
                if obj is not None and self._selected(request, obj):
                    out.append(obj)
        return out

    def _selected(self, request: kmock.Request, obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return (match_labels(request.params.get("labelSelector", ""), labels)
                and match_fields(request.params.get("fieldSelector", ""), obj))

    def _scale(self, request: kmock.Request, key: Any, obj: dict[str, Any] | None, method: str) -> dict[str, Any]:
        paths = self._scales.get(key[0])
        if paths is None:
            raise ApiStatus(404, "NotFound", "the server could not find the requested resource")
        if obj is None:
            raise self._not_found(key[0], key[2])

        def get(o: Any, p: str) -> Any:
            for part in p.strip(".").split("."):
                o = o.get(part) if isinstance(o, dict) else None
            return o

        if method in ("PUT", "PATCH"):
            body = self._body(request)
            replicas = (body.get("spec") or {}).get("replicas")
            if replicas is not None:
                new = copy.deepcopy(obj)
                target = new
                *parents, last = paths["specReplicasPath"].strip(".").split(".")
                for part in parents:
                    target = target.setdefault(part, {})
                target[last] = int(replicas)
                obj = self._update(key, obj, new, status_only=False)
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {k: obj["metadata"].get(k) for k in ("name", "namespace", "uid", "resourceVersion")},
                "spec": {"replicas": get(obj, paths["specReplicasPath"]) or 0},
                "status": {"replicas": get(obj, paths["statusReplicasPath"]) or 0,
                           "selector": get(obj, paths.get("labelSelectorPath", "")) or ""}}

    # -- watch -----------------------------------------------------------------------------------

    async def _watch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        assert self._changed is not None
        res, ns = request.resource, self._namespace(request)
        params = request.params
        timeout = float(params.get("timeoutSeconds") or 1800)
        deadline = time.monotonic() + timeout
        since = params.get("resourceVersion") or ""
        bookmarks = params.get("allowWatchBookmarks") == "true"
        initial = params.get("sendInitialEvents") == "true" or since in ("", "0")
        resp = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await resp.prepare(request._raw_request)

        async def send(event: dict[str, Any]) -> None:
            await resp.write(json.dumps(event).encode() + b"\n")

        try:
            async with self._changed:
                pos = len(self._log)
                if initial:
                    events = [{"type": "ADDED", "object": o} for o in self._matching(request, ns)]
                else:
                    events = [{"type": t, "object": o} for rv, r, t, o in self._log
                              if r == res and rv > int(since) and self._in_scope(request, ns, o)]
                rv_now = self._rv
            for e in events:
                await send(e)
            if bookmarks and params.get("sendInitialEvents") == "true":
                await send(self._bookmark(res, rv_now, initial_end=True))
            while (left := deadline - time.monotonic()) > 0:
                async with self._changed:
                    if pos == len(self._log):
                        try:
                            await asyncio.wait_for(self._changed.wait(), timeout=min(left, 30))
                        except TimeoutError:
                            pass
                    new, pos = self._log[pos:], len(self._log)
                for _rv, r, t, o in new:
                    if r == res and self._in_scope(request, ns, o):
                        await send({"type": t, "object": o})
                if not new and bookmarks:
                    await send(self._bookmark(res, self._rv))
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp

    def _in_scope(self, request: kmock.Request, ns: str | None, obj: dict[str, Any]) -> bool:
        return (ns is None or obj.get("metadata", {}).get("namespace") == ns) and self._selected(request, obj)

    def _bookmark(self, res: Any, rv: int, initial_end: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"type": "BOOKMARK", "object": {"kind": self._kind(res), "apiVersion": self._api_version(res),
                                               "metadata": meta}}


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
