"""Every corpus case through the pipeline whole, and through the stream in random chunks."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.toolcalls.corpus import load_cases
from velollmd.toolcalls.assemble import process_output
from velollmd.toolcalls.stream import ToolCallStream

CASES = load_cases()


def call_summary(tool_calls: list[dict]) -> list[tuple[str, object]]:
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in tool_calls]


def run_whole(case):
    return process_output(case["raw"], None, case["tools"], tool_choice=case.get("tool_choice"),
                          messages=case.get("messages"), cut=case.get("cut", False))


def run_stream(case, cuts: list[int]):
    """The stream's (content, calls, final result) for raw split at the given offsets."""
    stream = ToolCallStream(case["tools"], tool_choice=case.get("tool_choice"),
                            messages=case.get("messages"))
    raw, events, start = case["raw"], [], 0
    for cut in sorted(set(cuts)) + [len(raw)]:
        events += stream.feed(raw[start:cut])
        start = cut
    events += stream.finish(cut=case.get("cut", False))
    content = "".join(e.content for e in events if e.content is not None)
    reasoning = "".join(e.reasoning for e in events if e.reasoning is not None)
    assert (reasoning or None) == stream.result.reasoning
    calls = [{"id": e.id, "type": "function", "function": {"name": e.name, "arguments": e.arguments}}
             for e in events if e.is_call]
    assert [e.index for e in events if e.is_call] == list(range(len(calls)))
    return content, calls, stream.result


def test_corpus_size_and_families():
    assert len(CASES) >= 80
    assert len({c["name"] for c in CASES}) == len(CASES)
    families = {c["family"] for c in CASES}
    assert {"hermes", "mistral", "llama", "pythonic", "granite", "openai_shapes", "layout",
            "breakage", "schema", "negatives", "choice_loop", "deepseek", "harmony", "kimi", "glm",
            "command_r", "functionary"} <= families


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case_whole(case):
    result = run_whole(case)
    assert result.content == case["content"]
    assert call_summary(result.tool_calls) == [(c["name"], c["arguments"]) for c in case["calls"]]
    assert set(case["fixes"]) <= set(result.fixes), result.fixes
    assert result.reasoning == case.get("reasoning")
    if not case["calls"] and case["family"] == "negatives":
        assert result.fixes == [] and result.error is None
    if "error" in case:
        assert result.error and case["error"] in result.error
    elif case["calls"]:
        assert result.error is None
    assert result.loop == case.get("loop", False)
    ids = [c["id"] for c in result.tool_calls]
    assert len(set(ids)) == len(ids) and all(i.startswith("call_") or i in case.get("ids", ()) for i in ids)
    if "ids" in case:
        assert ids == case["ids"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_case_one_char_chunks(case):
    whole = run_whole(case)
    content, calls, result = run_stream(case, list(range(1, len(case["raw"]))))
    assert_same(whole, content, calls, result)


def assert_same(whole, content, calls, result):
    assert (content or None) == (whole.content or None)
    assert (result.content or None) == (whole.content or None)
    assert call_summary(calls) == call_summary(whole.tool_calls)
    assert [c["function"]["arguments"] for c in calls] == [c["function"]["arguments"] for c in whole.tool_calls]
    assert result.fixes == whole.fixes
    assert result.error == whole.error
    assert result.loop == whole.loop
    assert result.reasoning == whole.reasoning


@settings(max_examples=400, deadline=None, derandomize=True)
@given(data=st.data())
def test_random_chunks_match_whole(data):
    case = data.draw(st.sampled_from(CASES))
    size = len(case["raw"])
    cuts = data.draw(st.lists(st.integers(0, size), max_size=12)) if size else []
    whole = run_whole(case)
    content, calls, result = run_stream(case, cuts)
    assert_same(whole, content, calls, result)
