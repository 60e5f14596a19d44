"""JSON schemas (Ollama's `format: {...}`, OpenAI's response_format json_schema, Anthropic's
output format) as the recogniser's schema nodes (engine/json_constraint.py).

The subset is enforced exactly, and anything outside it is refused by name (a 400), never
ignored: `type` object (with `properties`, `required`, `additionalProperties`), array (with
`items`), string, number, integer, boolean, null; `enum` and `const`; the annotations (title,
description, ...). An object is written with every one of its properties, in the schema's
order, and no other (as llama.cpp's and Ollama's schema grammars write the required ones): that
satisfies `required` and `additionalProperties` whatever they say. The top level is an object.
"""
from __future__ import annotations

import json

_ANNOTATIONS = frozenset(("title", "description", "$schema", "$id", "$comment", "default", "examples"))
_KEYWORDS = frozenset(("type", "properties", "required", "additionalProperties", "items", "enum", "const"))
_TYPES = {"string": str, "number": (int, float), "integer": int, "boolean": bool, "null": type(None),
          "object": dict, "array": list}


class SchemaError(ValueError):
    """A schema outside the subset the engine enforces; the message says where and why."""


def compile_schema(schema) -> tuple:
    """The root node of `schema`, which must describe an object."""
    node = _node(schema, "schema")
    if node is None or node[0] != "object":
        raise SchemaError('the top level must be an object schema ({"type": "object", ...})')
    return node


def _node(schema, where: str) -> tuple | None:
    if schema is True or schema == {}:
        return None                                    # any JSON value
    if not isinstance(schema, dict):
        raise SchemaError(f"{where}: expected a schema object, got {json.dumps(schema)}")
    unknown = sorted(set(schema) - _KEYWORDS - _ANNOTATIONS)
    if unknown:
        raise SchemaError(f"{where}: {unknown[0]!r} is not enforced by the engine's JSON schema mode")
    kind = schema.get("type")
    if kind is not None and not (isinstance(kind, str) and kind in _TYPES):
        raise SchemaError(f"{where}: type {json.dumps(kind)} is not enforced (one type name only)")
    if "const" in schema or "enum" in schema:
        return _literal(schema, kind, where)
    if kind == "object":
        return _object(schema, where)
    if kind == "array":
        return ("array", _node(schema.get("items", True), f"{where}.items"))
    if kind in ("string", "number", "integer"):
        return (kind,)
    if kind == "boolean":
        return ("literal", (b"true", b"false"))
    if kind == "null":
        return ("literal", (b"null",))
    raise SchemaError(f"{where}: a schema needs a 'type', 'enum' or 'const'")


def _object(schema: dict, where: str) -> tuple:
    properties = schema.get("properties", {})
    if not isinstance(properties, dict):
        raise SchemaError(f"{where}.properties: expected an object")
    required = schema.get("required", [])
    if not isinstance(required, list) or any(name not in properties for name in required):
        raise SchemaError(f"{where}.required: names a property that 'properties' does not describe")
    return ("object", tuple((_compact(name), _node(value, f"{where}.properties.{name}"))
                            for name, value in properties.items()))


def _literal(schema: dict, kind: str | None, where: str) -> tuple:
    values = [schema["const"]] if "const" in schema else schema["enum"]
    if not isinstance(values, list):
        raise SchemaError(f"{where}.enum: expected an array")
    if kind is not None:
        values = [v for v in values if _is_type(v, kind)]
    if not values:
        raise SchemaError(f"{where}: no value of its enum / const has its type")
    return ("literal", tuple(dict.fromkeys(_compact(v) for v in values)))


def _is_type(value, kind: str) -> bool:
    if isinstance(value, bool):
        return kind == "boolean"
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES[kind])


def _compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
