"""JSON schemas (Ollama's `format: {...}`, OpenAI's response_format json_schema, Anthropic's
output format) as the recogniser's schema nodes (engine/json_constraint.py).

The subset is enforced exactly, and anything outside it is refused by name (a 400), never
ignored: `type` object (with `properties`, `required`, `additionalProperties`, `maxProperties`), array (with
`items`, `minItems`, `maxItems`), string, number, integer, boolean, null; `enum` and `const`;
`$ref` to the schema's `$defs` / `definitions` (not recursively); `anyOf` / `oneOf` and a list
of types (`["string", "null"]`) whose choices each start with a different character (a string
or null, an object or null: pydantic's Optional), enum and const choices merged; `allOf` of
one schema; the annotations (title, description, ...). An object is written with every one of
its properties, in the schema's order, and no other (as llama.cpp's and Ollama's schema
grammars write the required ones): that satisfies `required` and `additionalProperties`
whatever they say. An object without `properties` is a map (pydantic's dict[str, X]): any keys,
each value of its `additionalProperties` schema (any value when that is true or absent), at
most `maxProperties` of them; `additionalProperties: false` there is the empty object. The
top level is an object.
"""
from __future__ import annotations

import json

_ANNOTATIONS = frozenset(("title", "description", "$schema", "$id", "$comment", "default", "examples",
                          "$defs", "definitions"))
_KEYWORDS = frozenset(("type", "properties", "required", "additionalProperties", "items", "enum", "const",
                       "minItems", "maxItems", "maxProperties", "$ref", "anyOf", "oneOf", "allOf"))
_TYPES = {"string": str, "number": (int, float), "integer": int, "boolean": bool, "null": type(None),
          "object": dict, "array": list}
_NUMBER_STARTS = frozenset(b"-0123456789")


class SchemaError(ValueError):
    """A schema outside the subset the engine enforces; the message says where and why."""


def compile_schema(schema) -> tuple:
    """The root node of `schema`, which must describe an object."""
    node = _Compiler(schema).node(schema, "schema")
    if node is None or node[0] not in ("object", "map"):
        raise SchemaError('the top level must be an object schema ({"type": "object", ...})')
    return node


class _Compiler:
    """One schema's compilation: its definitions, each compiled once however often it is
    referred to, and the references being expanded (a reference inside itself is refused)."""

    def __init__(self, root):
        self.root = root
        self.compiled: dict[str, tuple | None] = {}
        self.expanding: list[str] = []

    def node(self, schema, where: str) -> tuple | None:
        if schema is True or schema == {}:
            return None                                    # any JSON value
        if not isinstance(schema, dict):
            raise SchemaError(f"{where}: expected a schema object, got {json.dumps(schema)}")
        unknown = sorted(set(schema) - _KEYWORDS - _ANNOTATIONS)
        if unknown:
            raise SchemaError(f"{where}: {unknown[0]!r} is not enforced by the engine's JSON schema mode")
        combined = [k for k in ("$ref", "anyOf", "oneOf", "allOf") if k in schema]
        if combined:
            return self._combined(schema, combined, where)
        kind = schema.get("type")
        kinds = kind if isinstance(kind, list) else [kind]
        if not kinds or any(k is not None and not (isinstance(k, str) and k in _TYPES) for k in kinds):
            raise SchemaError(f"{where}: type {json.dumps(kind)} is not enforced (a type name or a list of them)")
        if "const" in schema or "enum" in schema:
            return _literal(schema, kinds, where)
        if isinstance(kind, list):
            return self._union([{**schema, "type": k} for k in kind], f"{where}.type")
        if kind == "object":
            return self._object(schema, where)
        if kind == "array":
            return self._array(schema, where)
        if kind in ("string", "number", "integer"):
            return (kind,)
        if kind == "boolean":
            return ("literal", (b"true", b"false"))
        if kind == "null":
            return ("literal", (b"null",))
        raise SchemaError(f"{where}: a schema needs a 'type', 'enum' or 'const'")

    def _combined(self, schema: dict, combined: list[str], where: str) -> tuple | None:
        """$ref, anyOf, oneOf or allOf: alone, beside annotations only."""
        keyword = combined[0]
        others = sorted(set(schema) - _ANNOTATIONS - {keyword})
        if others:
            raise SchemaError(f"{where}: {keyword!r} beside {others[0]!r} is not enforced")
        value = schema[keyword]
        if keyword == "$ref":
            return self._ref(value, f"{where}.$ref")
        if not isinstance(value, list) or not value:
            raise SchemaError(f"{where}.{keyword}: expected a non-empty array of schemas")
        if keyword == "allOf":
            if len(value) != 1:
                raise SchemaError(f"{where}.allOf: only one schema is enforced")
            return self.node(value[0], f"{where}.allOf.0")
        return self._union(value, f"{where}.{keyword}")

    def _ref(self, ref, where: str) -> tuple | None:
        if not isinstance(ref, str) or not ref.startswith(("#/$defs/", "#/definitions/")):
            raise SchemaError(f"{where}: only references into the schema's $defs are enforced, got {json.dumps(ref)}")
        if ref in self.expanding:
            raise SchemaError(f"{where}: {ref} refers to itself (a recursive schema is not enforced)")
        if ref not in self.compiled:
            section, name = ref[2:].split("/", 1)
            name = name.replace("~1", "/").replace("~0", "~")
            definitions = self.root.get(section) if isinstance(self.root, dict) else None
            if not isinstance(definitions, dict) or name not in definitions:
                raise SchemaError(f"{where}: {ref} is not defined")
            self.expanding.append(ref)
            self.compiled[ref] = self.node(definitions[name], f"schema.{section}.{name}")
            self.expanding.pop()
        return self.compiled[ref]

    def _union(self, choices: list, where: str) -> tuple | None:
        """One of `choices`: the one its first character starts (so they must not share one);
        enum / const / boolean / null choices become one literal."""
        nodes = [self.node(choice, f"{where}.{i}") for i, choice in enumerate(choices)]
        if any(node is None for node in nodes):
            return None
        nodes = [inner for node in nodes for inner in (node[1] if node[0] == "union" else (node,))]
        texts = [text for node in nodes if node[0] == "literal" for text in node[1]]
        others = [node for node in nodes if node[0] != "literal"]
        if texts:
            others.append(("literal", tuple(dict.fromkeys(texts))))
        seen: set[int] = set()
        for node in others:
            starts = _first_bytes(node)
            if starts & seen:
                raise SchemaError(f"{where}: choices that start with the same character are not enforced "
                                  f"(one string, number, object or array choice each, besides literals)")
            seen |= starts
        return others[0] if len(others) == 1 else ("union", tuple(others))

    def _object(self, schema: dict, where: str) -> tuple:
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise SchemaError(f"{where}.properties: expected an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or any(name not in properties for name in required):
            raise SchemaError(f"{where}.required: names a property that 'properties' does not describe")
        most = _bound(schema, "maxProperties", where)
        extra = schema.get("additionalProperties", True)
        if not properties and extra is not False:
            return ("map", self.node(extra, f"{where}.additionalProperties"), most)
        if most is not None and most < len(properties):
            raise SchemaError(f"{where}: maxProperties is below the number of properties, all of which are written")
        return ("object", tuple((_compact(name), self.node(value, f"{where}.properties.{name}"))
                                for name, value in properties.items()))

    def _array(self, schema: dict, where: str) -> tuple:
        low, high = _bound(schema, "minItems", where) or 0, _bound(schema, "maxItems", where)
        if high is not None and high < low:
            raise SchemaError(f"{where}: maxItems is below minItems")
        return ("array", self.node(schema.get("items", True), f"{where}.items"), low, high)


def _bound(schema: dict, name: str, where: str) -> int | None:
    """minItems, maxItems, maxProperties: a non-negative integer, or None when absent."""
    bound = schema.get(name)
    if bound is not None and not (type(bound) is int and bound >= 0):
        raise SchemaError(f"{where}.{name}: expected a non-negative integer")
    return bound


def _first_bytes(node: tuple) -> frozenset[int]:
    """The characters a value of `node` (not None, not a union) can start with."""
    kind = node[0]
    if kind == "literal":
        return frozenset(text[0] for text in node[1])
    return _NUMBER_STARTS if kind in ("number", "integer") else frozenset(
        {"object": b"{", "map": b"{", "array": b"[", "string": b'"'}[kind])


def _literal(schema: dict, kinds: list, where: str) -> tuple:
    """enum / const: its values of the schema's type(s)."""
    values = [schema["const"]] if "const" in schema else schema["enum"]
    if not isinstance(values, list):
        raise SchemaError(f"{where}.enum: expected an array")
    if None not in kinds:
        values = [v for v in values if any(_is_type(v, kind) for kind in kinds)]
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
