import json

import pytest

from tests.toolcalls.corpus import load_repair_cases
from velollmd.toolcalls.repair import loads_repaired, parse_prefix

REPAIR_CASES = load_repair_cases()


@pytest.mark.parametrize("case", REPAIR_CASES, ids=[c["name"] for c in REPAIR_CASES])
def test_repairs_to_expected_value(case):
    value, fixes = loads_repaired(case["input"])
    assert value == case["expected"]
    assert fixes  # something was broken, so something must be reported


@pytest.mark.parametrize("text", ['{"a": 1}', "[1, 2.5, null]", '"s"', "3", '{"nested": {"x": [true]}}'])
def test_valid_json_has_no_fixes(text):
    assert loads_repaired(text) == (json.loads(text), [])


@pytest.mark.parametrize("text", ["", "   ", "hello world", "no json here at all"])
def test_hopeless_input_raises_value_error(text):
    with pytest.raises(ValueError):
        loads_repaired(text)


@pytest.mark.parametrize("text,fix", [
    ('{"a": 1,}', "trailing-comma"), ("{a: 1}", "unquoted-key"), ("{'a': 1}", "single-quotes"),
    ('{"a": True}', "python-literal"), ('{"a": 1 // x\n}', "comment"),
    ('{"a": "x\ny"}', "raw-newline"), ('{"a": [1', "truncated"), ('\ufeff{"a": 1}', "bom"),
    ('see {"a": 1} here', "text-around"), ('```json\n{"a": 1}\n```', "fence"),
])
def test_fix_tokens_name_the_repair(text, fix):
    assert fix in loads_repaired(text)[1]


def test_truncated_key_is_dropped_not_invented():
    assert loads_repaired('{"a": 1, "lo')[0] == {"a": 1}
    assert loads_repaired('{"a": 1, "b":')[0] == {"a": 1}


def test_every_prefix_of_a_document_repairs_or_raises_value_error():
    doc = json.dumps({"name": "send_email", "arguments": {"to": ["a@b.c"], "body": "hi \"x\"\nbye",
                                                          "n": -1.5e3, "ok": False, "z": None}})
    for cut in range(1, len(doc) + 1):
        try:
            value, _ = loads_repaired(doc[:cut])
        except ValueError:
            continue
        assert isinstance(value, (dict, str, int, float))
    assert loads_repaired(doc)[0] == json.loads(doc)


def test_parse_prefix_reports_where_the_value_ends():
    value, end, fixes = parse_prefix("{'a': 1} and more")
    assert value == {"a": 1} and end == len("{'a': 1}") and "single-quotes" in fixes
