"""A JobQueue's admission as the API server does it, without one: the CRD's defaults, its
openAPIV3Schema (jsonschema, with strict field validation) and its CEL rules (cel-python)."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema

from conveyor_operator import crd
from conveyor_operator.spec import apply_defaults


def strict_schema(schema: Any) -> Any:
    """The openAPIV3Schema as JSON Schema: unknown fields refused where the API server's
    strict field validation refuses them, OpenAPI 3.0's boolean exclusiveMinimum converted."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if schema.get("exclusiveMinimum") is True:
        out["exclusiveMinimum"] = schema["minimum"]
        del out["minimum"]
    if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields") and schema is not crd.SCHEMA:
        out["additionalProperties"] = False
    if schema.get("format") == "date-time":
        out.pop("format")
    return out


VALIDATOR = jsonschema.Draft202012Validator(strict_schema(crd.SCHEMA))
CEL = celpy.Environment()


def to_cel_value(schema: dict[str, Any], value: Any) -> Any:
    """JSON -> CEL with the schema's types (a `number` is a double, as on the API server)."""
    if schema.get("type") == "number" and isinstance(value, int):
        return float(value)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: to_cel_value(props.get(k, {}), v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_cel_value(schema.get("items", {}), v) for v in value]
    return value


MISSING = object()


def own_rule_failures(schema: dict[str, Any], value: Any, where: str = "", old: Any = MISSING) -> list[str]:
    """The rules at this node. Transition rules (naming oldSelf) run only on an update where
    the old object has a value here, as on the API server."""
    out = []
    for rule in schema.get("x-kubernetes-validations", []):
        activation = {"self": celpy.json_to_cel(to_cel_value(schema, value))}
        if "oldSelf" in rule["rule"]:
            if old is MISSING:
                continue
            activation["oldSelf"] = celpy.json_to_cel(to_cel_value(schema, old))
        program = CEL.program(CEL.compile(rule["rule"]))
        result = program.evaluate(activation)
        if not isinstance(result, celpy.celtypes.BoolType):
            raise AssertionError(f"rule {rule['rule']!r} at {where or '<root>'} did not give a bool: {result!r}")
        if not result:
            out.append(f"{where or '<root>'}: {rule['message']}")
    return out


def cel_failures(schema: dict[str, Any], value: Any, where: str = "", old: Any = MISSING) -> list[str]:
    """Evaluate every x-kubernetes-validations rule where the object has a value, like the API server."""
    out = own_rule_failures(schema, value, where, old)
    if isinstance(value, dict):
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                sub_old = old.get(k, MISSING) if isinstance(old, dict) else MISSING
                out += cel_failures(sub, value[k], f"{where}.{k}", sub_old)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(value):
            out += cel_failures(schema["items"], v, f"{where}[{i}]")
    return out


def admission(doc: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """What the API server would say: default, then schema, then CEL (with ``old``: an update)."""
    obj = apply_defaults(crd.SCHEMA, copy.deepcopy(doc))
    errors = [f"schema: {e.json_path}: {e.message}" for e in VALIDATOR.iter_errors(obj)]
    before = MISSING if old is None else apply_defaults(crd.SCHEMA, copy.deepcopy(old))
    return errors or cel_failures(crd.SCHEMA, obj, old=before)
