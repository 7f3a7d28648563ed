"""Building blocks of the JobQueue CRD's OpenAPI v3 schema (structural-schema nodes).

Kept apart from :mod:`conveyor_operator.crd`, which assembles them into the CRD, so each
module stays small: these are the generic node shapes, crd holds what a JobQueue means.
"""

from __future__ import annotations

from typing import Any


def integer(minimum: int | None = None, maximum: int | None = None, default: int | None = None,
            desc: str = "") -> dict[str, Any]:
    s: dict[str, Any] = {"type": "integer"}
    if desc:
        s["description"] = desc
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    if default is not None:
        s["default"] = default
    return s


def number(minimum: float | None = None, maximum: float | None = None, default: float | None = None,
           desc: str = "", exclusive_min: bool = False) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "number"}
    if desc:
        s["description"] = desc
    if minimum is not None:
        s["minimum"] = minimum
        if exclusive_min:
            s["exclusiveMinimum"] = True
    if maximum is not None:
        s["maximum"] = maximum
    if default is not None:
        s["default"] = default
    return s


def string(desc: str = "", max_length: int = 253, **extra: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"type": "string", "maxLength": max_length}
    if desc:
        s["description"] = desc
    s.update(extra)
    return s


def rule(rule: str, message: str, reason: str | None = None, field_path: str | None = None) -> dict[str, Any]:
    """One x-kubernetes-validations entry (a CEL rule and the message the API server gives)."""
    r: dict[str, Any] = {"rule": rule, "message": message}
    if reason:
        r["reason"] = reason
    if field_path:
        r["fieldPath"] = field_path
    return r


def free_object(desc: str) -> dict[str, Any]:
    """A Kubernetes core type we pass through untouched (affinity, resources...)."""
    return {"type": "object", "description": desc, "x-kubernetes-preserve-unknown-fields": True}


def free_list(desc: str, max_items: int = 64) -> dict[str, Any]:
    return {"type": "array", "description": desc, "maxItems": max_items,
            "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}


def string_map(desc: str) -> dict[str, Any]:
    return {"type": "object", "description": desc, "maxProperties": 64,
            "additionalProperties": {"type": "string", "maxLength": 4096}}


def quantity_map() -> dict[str, Any]:
    """A core/v1 ResourceList: resource name -> quantity (int or string)."""
    return {"type": "object", "additionalProperties": {"x-kubernetes-int-or-string": True,
                                                       "anyOf": [{"type": "integer"}, {"type": "string"}]}}
