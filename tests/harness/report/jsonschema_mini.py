"""A small JSON Schema (draft 2020-12) validator for the keywords results.schema.json uses.

The project's allowed libraries have no JSON Schema validator, and pydantic validates the
model, not the schema file that other tools read. This checks documents against the schema
file itself, independently of pydantic; a keyword it does not know is an error, so a schema
change that needs more is noticed.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

_ANNOTATIONS = {"title", "description", "default", "$schema", "$id", "$defs", "examples"}
_KNOWN = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "enum",
    "const",
    "$ref",
    "anyOf",
    "format",
    "minimum",
    "pattern",
}
_TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


class SchemaError(ValueError):
    pass


def _type_ok(value: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, _TYPES[name])


def validate(doc: Any, schema: dict[str, Any]) -> None:
    """Raise SchemaError (with a JSON path) if ``doc`` does not satisfy ``schema``."""
    _check(doc, schema, schema, "$")


def _check(value: Any, node: dict[str, Any], root: dict[str, Any], path: str) -> None:
    unknown = set(node) - _KNOWN
    if unknown:
        raise SchemaError(f"schema keyword(s) not supported by the test validator: {unknown}")
    if "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/$defs/"):
            raise SchemaError(f"unsupported $ref {ref}")
        _check(value, root["$defs"][ref.removeprefix("#/$defs/")], root, path)
    if "type" in node:
        types = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not any(_type_ok(value, t) for t in types):
            raise SchemaError(f"{path}: expected {types}, got {type(value).__name__}")
    if "const" in node and value != node["const"]:
        raise SchemaError(f"{path}: expected {node['const']!r}")
    if "enum" in node and value not in node["enum"]:
        raise SchemaError(f"{path}: {value!r} not one of {node['enum']}")
    if "anyOf" in node:
        errors = []
        for sub in node["anyOf"]:
            try:
                _check(value, sub, root, path)
                break
            except SchemaError as exc:
                errors.append(str(exc))
        else:
            raise SchemaError(f"{path}: no alternative matches: {errors}")
    if "minimum" in node and _type_ok(value, "number") and value < node["minimum"]:
        raise SchemaError(f"{path}: {value} < {node['minimum']}")
    if isinstance(value, str):
        if "pattern" in node and not re.search(node["pattern"], value):
            raise SchemaError(f"{path}: {value!r} does not match {node['pattern']}")
        if node.get("format") == "date-time":
            if not re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$", value):
                raise SchemaError(f"{path}: {value!r} is not an RFC 3339 date-time")
            datetime.fromisoformat(value.replace("Z", "+00:00"))
    if isinstance(value, dict):
        for key in node.get("required", []):
            if key not in value:
                raise SchemaError(f"{path}: missing required {key!r}")
        props = node.get("properties", {})
        extra = node.get("additionalProperties", True)
        for key, item in value.items():
            if key in props:
                _check(item, props[key], root, f"{path}.{key}")
            elif extra is False:
                raise SchemaError(f"{path}: unexpected property {key!r}")
            elif isinstance(extra, dict):
                _check(item, extra, root, f"{path}.{key}")
    if isinstance(value, list) and "items" in node:
        for i, item in enumerate(value):
            _check(item, node["items"], root, f"{path}[{i}]")
