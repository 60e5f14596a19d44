"""Check and coerce tool arguments against the tool's JSON Schema (the subset tools use).

Supported: type (also a list of types), nullable, properties, required, enum, items,
additionalProperties (false or a schema), default. Coercions (when coerce=True) fix what
small models get wrong: "21.5" -> 21.5, "7" -> 7, "true" -> True, 3 -> "3" for strings,
a lone value -> [value], a JSON string -> the object/array it spells, an enum value in the
wrong case, properties additionalProperties forbids (dropped), missing defaults (filled).
"""
from __future__ import annotations

import json
import re

_INT_RE = re.compile(r"[-+]?\d+")
_FLOAT_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}
_NO_VALUE = object()


def validate_and_coerce(args: dict, schema: dict, *, coerce: bool = True) -> tuple[dict, list[str], list[str]]:
    """Returns (args, fixes, errors); errors read like `$.days: expected integer, got "seven"`."""
    checker = _Checker(coerce)
    if not isinstance(schema, dict) or not schema:
        return args, [], []
    out = checker.check(args, {"type": "object", **schema} if "type" not in schema else schema, "$")
    return out, checker.fixes, checker.errors


class _Checker:
    def __init__(self, coerce: bool):
        self.coerce = coerce
        self.fixes: list[str] = []
        self.errors: list[str] = []

    def fix(self, token: str) -> None:
        if token not in self.fixes:
            self.fixes.append(token)

    def check(self, value, schema: dict, path: str):
        if not isinstance(schema, dict):
            return value
        types = _types(schema)
        if types and not any(_is_type(value, t) for t in types):
            value = self._coerce_type(value, types, path)
        if "enum" in schema:
            value = self._enum(value, schema["enum"], path)
        if isinstance(value, dict):
            return self._object(value, schema, path)
        if isinstance(value, list) and isinstance(schema.get("items"), dict):
            return [self.check(item, schema["items"], f"{path}[{i}]") for i, item in enumerate(value)]
        return value

    def _coerce_type(self, value, types: list[str], path: str):
        if self.coerce:
            for type_name in types:
                converted = _CONVERTERS.get(type_name, _no_conversion)(value)
                if converted is not _NO_VALUE:
                    self.fix(_fix_token(type_name, value))
                    return converted
        self.errors.append(f"{path}: expected {' or '.join(types)}, got {_describe(value)}")
        return value

    def _enum(self, value, allowed: list, path: str):
        if value in allowed:
            return value
        if self.coerce and isinstance(value, str):
            folded = value.strip().lower()
            for option in allowed:
                if isinstance(option, str) and option.lower() == folded:
                    self.fix("enum-case")
                    return option
        self.errors.append(f"{path}: {_describe(value)} is not one of {json.dumps(allowed)}")
        return value

    def _object(self, value: dict, schema: dict, path: str) -> dict:
        properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
        extra = schema.get("additionalProperties", True)
        out = {}
        for key, item in value.items():
            if key in properties:
                out[key] = self.check(item, properties[key], f"{path}.{key}")
            elif extra is False and properties:
                if self.coerce:
                    self.fix("dropped-property")
                    continue
                self.errors.append(f"{path}: unexpected property {key!r}")
                out[key] = item
            else:
                out[key] = self.check(item, extra, f"{path}.{key}") if isinstance(extra, dict) else item
        for key, spec in properties.items():
            if key not in out and isinstance(spec, dict) and "default" in spec and self.coerce:
                out[key] = spec["default"]
                self.fix("default-filled")
        for key in schema.get("required") or ():
            if key not in out:
                self.errors.append(f"{path}: missing required property {key!r}")
        return out


def _types(schema: dict) -> list[str]:
    declared = schema.get("type")
    types = [declared] if isinstance(declared, str) else list(declared or ())
    if types and schema.get("nullable") and "null" not in types:
        types.append("null")
    return types


def _is_type(value, type_name: str) -> bool:
    if type_name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    python_type = {"string": str, "boolean": bool, "object": dict, "array": list,
                   "null": type(None)}.get(type_name)
    return python_type is None or isinstance(value, python_type)


def _to_integer(value):
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        return int(value.strip())
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()) and float(value).is_integer():
        return int(float(value))
    return _NO_VALUE


def _to_number(value):
    if isinstance(value, str) and _FLOAT_RE.fullmatch(value.strip()):
        number = float(value.strip())
        return int(number) if _INT_RE.fullmatch(value.strip()) else number
    return _NO_VALUE


def _to_boolean(value):
    if isinstance(value, str):
        folded = value.strip().lower()
        return True if folded in _TRUE else False if folded in _FALSE else _NO_VALUE
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    return _NO_VALUE


def _to_string(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return _NO_VALUE


def _to_array(value):
    if isinstance(value, str) and value.strip().startswith("["):
        parsed = _json_or_none(value)
        if isinstance(parsed, list):
            return parsed
    if value is None:
        return _NO_VALUE
    return [value]


def _to_object(value):
    parsed = _json_or_none(value) if isinstance(value, str) else None
    return parsed if isinstance(parsed, dict) else _NO_VALUE


def _to_null(value):
    return None if isinstance(value, str) and value.strip().lower() in ("null", "none", "") else _NO_VALUE


def _no_conversion(value):
    return _NO_VALUE


def _json_or_none(text: str):
    from .repair import loads_repaired  # local: schema has no other need for repair
    try:
        return loads_repaired(text)[0]
    except ValueError:
        return None


def _describe(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return (text[:60] + "...") if len(text) > 60 else text


_CONVERTERS = {"integer": _to_integer, "number": _to_number, "boolean": _to_boolean,
               "string": _to_string, "array": _to_array, "object": _to_object, "null": _to_null}


def _fix_token(type_name: str, value) -> str:
    if type_name == "object" or (type_name == "array" and isinstance(value, str)
                                 and value.strip().startswith("[")):
        return "parsed-json-string"
    return "wrapped-array" if type_name == "array" else "coerced-" + type_name
