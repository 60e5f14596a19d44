import json

from tests.toolcalls.corpus import load_tools
from velollmd.config import ToolsConfig
from velollmd.toolcalls.assemble import process_output

TOOLS = load_tools()["default"]


def args_of(result):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in result.tool_calls]


def test_backend_calls_with_object_arguments_and_no_id():
    result = process_output(None, [{"function": {"name": "search", "arguments": {"query": "q"}}},
                                   {"function": {"name": "search", "arguments": {"query": "r"}}}], TOOLS)
    assert args_of(result) == [("search", {"query": "q", "max_results": 5}),
                               ("search", {"query": "r", "max_results": 5})]
    ids = [c["id"] for c in result.tool_calls]
    assert all(i.startswith("call_") and len(i) == 29 for i in ids) and len(set(ids)) == 2
    assert all(c["type"] == "function" for c in result.tool_calls)
    assert result.finish_reason == "tool_calls"


def test_backend_call_with_broken_json_string_is_repaired():
    result = process_output("", [{"id": "abc", "type": "function",
                                  "function": {"name": "search", "arguments": "{'query': 'q',"}}], TOOLS)
    assert args_of(result) == [("search", {"query": "q", "max_results": 5})]
    assert result.tool_calls[0]["id"] == "abc"
    assert "single-quotes" in result.fixes and "truncated" in result.fixes


def test_backend_call_untouched_keeps_its_exact_arguments_text():
    text = '{"query":"q","max_results":2}'
    result = process_output(None, [{"id": "call_1", "type": "function",
                                    "function": {"name": "search", "arguments": text}}], TOOLS)
    assert result.tool_calls[0]["function"]["arguments"] == text and result.fixes == []


def test_backend_call_to_unknown_tool_is_dropped_with_an_error():
    result = process_output(None, [{"function": {"name": "rm_rf", "arguments": "{}"}}], TOOLS)
    assert result.tool_calls == [] and "unknown tool 'rm_rf'" in result.error


def test_duplicate_ids_are_replaced():
    call = {"id": "same", "function": {"name": "search", "arguments": {"query": "a"}}}
    other = {"id": "same", "function": {"name": "search", "arguments": {"query": "b"}}}
    ids = [c["id"] for c in process_output(None, [call, other], TOOLS).tool_calls]
    assert ids[0] == "same" and ids[1].startswith("call_")


def test_without_tools_everything_passes_through():
    result = process_output('<tool_call>{"name": "x"}</tool_call>', None, [])
    assert result.content == '<tool_call>{"name": "x"}</tool_call>' and result.tool_calls == []


def test_config_dedup_off_keeps_duplicates():
    raw = '[{"name": "search", "arguments": {"query": "a"}}, {"name": "search", "arguments": {"query": "a"}}]'
    assert len(process_output(raw, None, TOOLS).tool_calls) == 1
    assert len(process_output(raw, None, TOOLS, config=ToolsConfig(dedup=False)).tool_calls) == 2


def test_config_validate_off_skips_schema():
    raw = '{"name": "search", "arguments": {"query": 5}}'
    result = process_output(raw, None, TOOLS, config=ToolsConfig(validate=False))
    assert args_of(result) == [("search", {"query": 5})]


def test_config_coerce_off_reports_errors_for_a_retry():
    raw = '{"name": "set_temperature", "arguments": {"value": "21.5"}}'
    result = process_output(raw, None, TOOLS, config=ToolsConfig(coerce=False))
    assert args_of(result) == [("set_temperature", {"value": "21.5"})]
    assert result.error == 'set_temperature: $.value: expected number, got "21.5"'


def test_config_repair_off_extracts_only_valid_json():
    good = '<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>'
    bad = '<tool_call>{"name": "search", "arguments": {"query": "a"},}</tool_call>'
    config = ToolsConfig(repair=False)
    assert len(process_output(good, None, TOOLS, config=config).tool_calls) == 1
    result = process_output(bad, None, TOOLS, config=config)
    assert result.tool_calls == [] and result.content == bad


def test_prose_around_calls_keeps_one_separator():
    raw = 'First.\n\n<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>\n\nThen.'
    assert process_output(raw, None, TOOLS).content == "First.\n\nThen."


def test_parallel_tool_calls_false_keeps_only_the_first_call():
    raw = ('<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>'
           '<tool_call>{"name": "search", "arguments": {"query": "b"}}</tool_call>')
    result = process_output(raw, None, TOOLS, parallel_tool_calls=False)
    assert args_of(result) == [("search", {"query": "a", "max_results": 5})]
    assert "dropped-parallel" in result.fixes
    assert len(process_output(raw, None, TOOLS).tool_calls) == 2


def test_a_call_whose_arguments_are_no_json_object_reaches_the_client_as_written():
    """Not dropped with its text (an empty answer): OpenAI clients validate arguments
    themselves; the error still drives a retry for tool_choice required / named."""
    for raw, written in [('Looking.\n<tool_call>{"name": "search", "arguments": "q=cats"}</tool_call>', "q=cats"),
                         ('[TOOL_CALLS][{"name": "search", "arguments": [1, 2]}]', "[1, 2]")]:
        result = process_output(raw, None, TOOLS)
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in result.tool_calls] == [("search", written)]
        assert result.finish_reason == "tool_calls" and "invalid-arguments" in result.fixes
        assert result.error.startswith("search: arguments ")
    backend = process_output(None, [{"id": "call_1", "function": {"name": "search", "arguments": "q=cats"}}], TOOLS)
    assert [c["id"] for c in backend.tool_calls] == ["call_1"] and backend.error
