"""What a client did to the API emulator, as RBAC sees it.

kmock keeps every request the emulator serves (``emu._requests``: method, URL, query,
headers, body), watch streams and discovery included. This module picks one client's
requests by its bearer token (each kubeconfig gets its own, so the operator's requests are
told apart from the test's kubectl and HTTP calls) and maps each to the RBAC attributes the
API server authorizes it with (k8s.io/apiserver RequestInfoFactory and the verb table):

    GET name -> get, GET collection -> list, ?watch=true -> watch, POST -> create,
    PUT -> update, PATCH -> patch, DELETE name -> delete, DELETE collection -> deletecollection

A server-side apply (PATCH application/apply-patch+yaml) is authorized as ``patch`` and, when
it creates the object, also as ``create`` (the apiserver's patch handler checks create before
creating): the operator's applies are what creates its owned objects, so an apply counts as both.

Requests outside ``/api`` and ``/apis/<group>/<version>/...`` resources (discovery, /version,
/openapi) are non-resource URLs: every authenticated user may read them (system:discovery).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Sub-paths of a namespace that are the namespace's own subresources, not objects in it.
NAMESPACE_SUBRESOURCES = {"status", "finalize"}


@dataclass(frozen=True)
class Served:
    """One request as served: what was asked, and by whom (the bearer token)."""
    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    content_type: str
    token: str


@dataclass(frozen=True)
class Grant:
    """One RBAC permission a request needs. ``namespace`` None: cluster scope (a cluster-scoped
    resource, or a namespaced one across all namespaces)."""
    group: str
    resource: str  # with "/subresource" when there is one
    verb: str
    namespace: str | None

    def __str__(self) -> str:
        where = f"in namespace {self.namespace}" if self.namespace else "cluster-wide"
        return f"{self.verb} {self.group or 'core'}/{self.resource} {where}"


def served(emu: Any) -> list[Served]:
    """Every request the emulator has served so far, in order."""
    out = []
    for r in list(emu._requests):
        auth = str(r.headers.get("Authorization") or r.headers.get("authorization") or "")
        out.append(Served(str(r.method.value if hasattr(r.method, "value") else r.method).upper(), r.url.path,
                          tuple(sorted((str(k), str(v)) for k, v in r.params.items())),
                          str(r.headers.get("Content-Type") or "").split(";")[0].strip(),
                          auth.removeprefix("Bearer ").strip()))
    return out


def by_token(requests: Iterable[Served], token: str) -> list[Served]:
    return [r for r in requests if r.token == token]


def grants(request: Served) -> list[Grant]:
    """The permissions ``request`` needs; [] for a non-resource URL (see the module doc)."""
    parts = [p for p in request.path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, rest = parts[1], parts[3:]
    else:
        return []
    watch = dict(request.query).get("watch") in ("true", "1")
    if rest[0] == "watch":  # the deprecated /watch/ prefix
        watch, rest = True, rest[1:]
    namespace = None
    if rest[0] == "namespaces" and len(rest) > 1 and (len(rest) == 2 or rest[2] in NAMESPACE_SUBRESOURCES):
        pass  # the Namespace object itself (or its status/finalize): cluster-scoped
    elif rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None
    if sub:
        resource = f"{resource}/{sub}"
    if watch:
        verbs = ["watch"]
    elif request.method == "GET":
        verbs = ["get" if name else "list"]
    elif request.method == "DELETE":
        verbs = ["delete" if name else "deletecollection"]
    elif request.method == "PATCH" and request.content_type == "application/apply-patch+yaml":
        verbs = ["patch", "create"]
    else:
        verbs = [{"POST": "create", "PUT": "update", "PATCH": "patch"}.get(request.method, request.method.lower())]
    return [Grant(group, resource, v, namespace) for v in verbs]


Rules = dict[tuple[str, str], set[str]]


def rules_of(grant_set: Iterable[Grant]) -> Rules:
    """(apiGroup, resource) -> verbs, the shape of a Role's rules."""
    out: Rules = {}
    for g in grant_set:
        out.setdefault((g.group, g.resource), set()).add(g.verb)
    return out


def role_rules(role: dict[str, Any]) -> Rules:
    """A rendered Role or ClusterRole's rules as (apiGroup, resource) -> verbs."""
    out: Rules = {}
    for rule in role.get("rules") or []:
        for group in rule.get("apiGroups") or []:
            for res in rule.get("resources") or []:
                out.setdefault((group, res), set()).update(rule.get("verbs") or [])
    return out


def differences(granted: Rules, needed: Rules, where: str) -> list[str]:
    """One line per missing and per extra (apiGroup, resource, verb) of ``granted``."""
    lines = []
    for key in sorted(set(granted) | set(needed)):
        group, res = key
        for verb in sorted(needed.get(key, set()) - granted.get(key, set())):
            lines.append(f"{where}: MISSING {verb} {group or 'core'}/{res}")
        for verb in sorted(granted.get(key, set()) - needed.get(key, set())):
            lines.append(f"{where}: EXTRA {verb} {group or 'core'}/{res}")
    return lines
