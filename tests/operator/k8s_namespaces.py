"""Namespace objects for the API emulator (kmock 0.8 cannot address them).

kmock reads ``/api/v1/namespaces/<x>/...`` as "objects in namespace <x>" without exception,
so ``/api/v1/namespaces`` (kopf lists and watches it when told which namespaces to serve)
answers 500 and ``/api/v1/namespaces/<x>`` addresses nothing. The API server's rule
(k8s.io/apiserver RequestInfoFactory) is that a path ending at a namespace's name, or at its
``status``/``finalize`` subresource, is the cluster-scoped Namespace object itself; this
applies that rule on top of kmock's path parser, which the emulator then serves like any
other cluster-scoped kind.
"""

from __future__ import annotations

from kmock._internal import parsing

NAMESPACE_SUBRESOURCES = ("status", "finalize")
_kmock_parse_path = parsing.parse_path


def parse_path(path: str) -> parsing.ParsedPath:
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (len(parts) <= 4 or (
            len(parts) == 5 and parts[4] in NAMESPACE_SUBRESOURCES)):
        return parsing.ParsedPath(group="", version="v1", plural="namespaces",
                                  name=parts[3] if len(parts) > 3 else None,
                                  subresource=parts[4] if len(parts) > 4 else None)
    return _kmock_parse_path(path)


def install() -> None:
    """Route kmock's request parsing through parse_path (idempotent)."""
    parsing.parse_path = parse_path
