import pytest

from velollmd.toolcalls.schema import validate_and_coerce

SCHEMA = {
    "type": "object",
    "properties": {
        "temp": {"type": "number"}, "days": {"type": "integer"}, "on": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"},
        "room": {"type": ["string", "null"]}, "note": {"type": "string", "nullable": True},
        "when": {"type": "object", "properties": {"hour": {"type": "integer"}}, "required": ["hour"]},
    },
    "required": ["temp"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("key,raw,expected,fix", [
    ("temp", "21.5", 21.5, "coerced-number"),
    ("days", "7", 7, "coerced-integer"),
    ("days", 7.0, 7, "coerced-integer"),
    ("on", "true", True, "coerced-boolean"),
    ("on", "False", False, "coerced-boolean"),
    ("tags", "solo", ["solo"], "wrapped-array"),
    ("tags", '["a", "b"]', ["a", "b"], "parsed-json-string"),
    ("tags", [1, "b"], ["1", "b"], "coerced-string"),
    ("unit", "FAHRENHEIT", "fahrenheit", "enum-case"),
    ("when", '{"hour": "9"}', {"hour": 9}, "parsed-json-string"),
])
def test_coercions(key, raw, expected, fix):
    args, fixes, errors = validate_and_coerce({"temp": 1, key: raw}, SCHEMA)
    assert args[key] == expected and fix in fixes and errors == []


def test_valid_arguments_pass_unchanged_apart_from_defaults():
    args = {"temp": 20, "room": None, "note": None, "unit": "celsius"}
    assert validate_and_coerce(dict(args), SCHEMA) == (args, [], [])


def test_defaults_filled_and_extra_properties_dropped():
    args, fixes, errors = validate_and_coerce({"temp": 1, "colour": "red"}, SCHEMA)
    assert args == {"temp": 1, "unit": "celsius"}
    assert fixes == ["dropped-property", "default-filled"] and errors == []


def test_errors_name_the_path():
    _, _, errors = validate_and_coerce({"days": "many", "when": {}, "unit": "kelvin"}, SCHEMA)
    assert '$.days: expected integer, got "many"' in errors
    assert "$.when: missing required property 'hour'" in errors
    assert any(e.startswith('$.unit: "kelvin" is not one of') for e in errors)
    assert "$: missing required property 'temp'" in errors


def test_no_coercion_reports_instead_of_fixing():
    args, fixes, errors = validate_and_coerce({"temp": "21.5", "x": 1}, SCHEMA, coerce=False)
    assert args == {"temp": "21.5", "x": 1} and fixes == []
    assert "$.temp: expected number, got \"21.5\"" in errors and "$: unexpected property 'x'" in errors


def test_empty_schema_accepts_anything():
    assert validate_and_coerce({"a": 1}, {}) == ({"a": 1}, [], [])
