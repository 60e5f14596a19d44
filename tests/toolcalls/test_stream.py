import pytest

from tests.toolcalls.corpus import load_tools
from velollmd.toolcalls.stream import ToolCallStream

TOOLS = load_tools()["default"]


def feed_all(stream, chunks, cut=False):
    events = []
    for chunk in chunks:
        events.append(stream.feed(chunk))
    events.append(stream.finish(cut=cut))
    return events


def test_prose_passes_through_as_it_arrives():
    stream = ToolCallStream(TOOLS)
    assert [e.content for e in stream.feed("Hello ")] == ["Hello"]
    assert [e.content for e in stream.feed("world, how")] == [" world, how"]
    assert [e.content for e in stream.finish()] == []
    assert stream.result.content == "Hello world, how" and stream.finish_reason is None


def test_partial_marker_is_held_then_the_call_is_emitted_whole():
    stream = ToolCallStream(TOOLS)
    assert [e.content for e in stream.feed("Checking.<tool_c")] == ["Checking."]
    assert stream.feed('all>{"name": "search", "arguments": {"query"') == []
    events = stream.feed(': "x"}}</tool_call>')
    assert len(events) == 1 and events[0].is_call and events[0].index == 0
    assert events[0].name == "search" and events[0].id.startswith("call_")
    delta = events[0].tool_call_delta()
    assert delta["type"] == "function" and delta["function"]["arguments"] == '{"query": "x", "max_results": 5}'
    assert stream.finish() == [] and stream.finish_reason == "tool_calls"


def test_a_marker_that_is_not_completed_is_released_as_content():
    stream = ToolCallStream(TOOLS)
    events = feed_all(stream, ["a <tool", "box> b"])
    assert "".join(e.content for group in events for e in group) == "a <toolbox> b"


def test_leading_json_that_is_no_call_is_released_once_it_closes():
    stream = ToolCallStream(TOOLS)
    assert stream.feed('{"answer": ') == []
    assert "".join(e.content for e in stream.feed('42} and')) == '{"answer": 42} and'
    stream.finish()
    assert stream.result.content == '{"answer": 42} and' and stream.result.tool_calls == []


def test_each_call_is_emitted_when_its_segment_closes():
    stream = ToolCallStream(TOOLS)
    first = stream.feed('<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>\n<tool_')
    second = stream.feed('call>{"name": "search", "arguments": {"query": "b"}}</tool_call>')
    assert [e.index for e in first] == [0] and [e.index for e in second] == [1]


def test_without_tools_the_stream_is_a_passthrough():
    stream = ToolCallStream([])
    assert [e.content for e in stream.feed('<tool_call>{"name"')] == ['<tool_call>{"name"']


def test_backend_parsed_calls_join_the_same_numbering():
    stream = ToolCallStream(TOOLS)
    events = stream.add_calls([{"function": {"name": "search", "arguments": '{"query": "z"}'}}])
    assert events[0].index == 0 and events[0].arguments == '{"query": "z", "max_results": 5}'


def test_parallel_tool_calls_false_streams_only_the_first_call():
    stream = ToolCallStream(TOOLS, parallel_tool_calls=False)
    events = feed_all(stream, ['<tool_call>{"name": "search", "arguments": {"query": "a"}}</tool_call>',
                               '<tool_call>{"name": "search", "arguments": {"query": "b"}}</tool_call>'])
    calls = [e for batch in events for e in batch if e.is_call]
    assert [(c.index, c.arguments) for c in calls] == [(0, '{"query": "a", "max_results": 5}')]
    assert len(stream.result.tool_calls) == 1 and "dropped-parallel" in stream.result.fixes


@pytest.mark.parametrize("chunks, content", [
    (["<tool_call>"], ""),                          # llama-server's text at max_tokens 1
    (["<tool_call>", "\n"], ""),                    # ... at max_tokens 2
    (["<tool_", "call>"], ""),                      # the marker split across chunks
    (["Checking. <tool", "_call>", "\n"], "Checking."),
    (["<tool_call>", "\n<function=get_w", "ea"], ""),  # Qwen3-Coder's XML call, cut in its name
])
def test_a_call_cut_at_or_just_after_its_marker_streams_no_markup(chunks, content):
    """The text's end cut the call before its body began: its marker is markup, never
    content (it was released as content at the end of the stream)."""
    stream = ToolCallStream(TOOLS)
    events = [e for group in feed_all(stream, chunks) for e in group]
    assert "".join(e.content for e in events if e.content) == content
    assert not any(e.is_call for e in events) and stream.result.fixes == ["dropped-cut-call"]


def contents(events) -> list[str]:
    return [e.content for e in events if e.content]


@pytest.mark.parametrize("chunks", [
    ["Let me check. <tool_"], ["Let me check. <", "tool_"], ["Let me check.", " <t", "ool_"],
])
def test_a_marker_max_tokens_cut_is_held_back_then_dropped(chunks):
    """`<tool_` at the very end of a cut answer is never content: held while it may still
    become a marker, dropped when max_tokens ends the stream there."""
    stream = ToolCallStream(TOOLS)
    fed = [e for chunk in chunks for e in stream.feed(chunk)]
    assert "".join(contents(fed)) == "Let me check."
    assert stream.finish(cut=True) == [] and stream.result.content == "Let me check."
    assert stream.result.fixes == ["dropped-cut-call"] and stream.finish_reason is None


@pytest.mark.parametrize("chunks, cut, content", [
    (["Let me check. <tool_"], False, "Let me check. <tool_"),    # not cut: the model wrote it
    (["Open the <tool", "box"], True, "Open the <toolbox"),          # the stream proves it no marker
    (["Keep a ", "<"], True, "Keep a <"),                            # one `<` may be prose
    (["Next, take ", "Action"], True, "Next, take Action"),          # a word marker's beginning
])
def test_a_held_beginning_that_is_no_cut_marker_is_released_as_text(chunks, cut, content):
    stream = ToolCallStream(TOOLS)
    events = [e for group in feed_all(stream, chunks, cut) for e in group]
    assert "".join(contents(events)) == content and stream.result.fixes == []


@pytest.mark.parametrize("chunks", [
    ["[TOOL_CALLS]"], ["[TOOL_", "CALLS] [{\"na"], ["Sure.[TOOL_CALLS]", "get_wea"],
    ["<|python_tag|>", "{\"na"], ["<|python", "_tag|>brave_search.call(query=\"we"],
])
def test_a_call_without_a_closing_tag_cut_mid_call_streams_no_markup(chunks):
    stream = ToolCallStream(TOOLS)
    events = [e for group in feed_all(stream, chunks, cut=True) for e in group]
    assert "".join(contents(events)) in ("", "Sure.")
    assert not any(e.is_call for e in events) and stream.result.fixes == ["dropped-cut-call"]


CALL = '{"name": "search", "arguments": {"query": "x"}}'


@pytest.mark.parametrize("chunks", [
    ["<tool_call><tool_call>" + CALL + "</tool_call>"],
    ["<tool_call>", "<tool_call>", CALL, "</tool_call>"],
    ["<tool_call></tool_call>", "\n", "<tool_call>" + CALL[:9], CALL[9:] + "</tool_call>"],
])
def test_an_empty_marker_before_a_call_is_held_then_dropped(chunks):
    stream = ToolCallStream(TOOLS)
    events = [e for group in feed_all(stream, chunks) for e in group]
    assert contents(events) == [] and [e.name for e in events if e.is_call] == ["search"]
    assert "dropped-empty-call" in stream.result.fixes


def test_an_empty_marker_before_text_is_released_as_that_text():
    stream = ToolCallStream(TOOLS)
    assert contents(stream.feed("Wrap calls in <tool_call></tool_call>")) == ["Wrap calls in"]
    assert contents(stream.feed(" tags.")) == [" <tool_call></tool_call> tags."]
    assert stream.finish() == [] and stream.result.fixes == []


@pytest.mark.parametrize("chunks, content", [
    # gpt-oss also writes the recipient before the channel: `<|start|>assistant to=functions.NAME
    # <|channel|>commentary json<|message|>`
    (["<|start|>assistant", " to=functions.get_wea"], ""),
    (["<|start|>", "assistant to=functions.get_weather", "<|channel|>", "commen"], ""),
    (["Checking.", "<|start|>assistant to=functions.get_weather<|channel|>commentary", " json"], "Checking."),
    (["<|start|>assistant to=functions.get_weather<|channel|>commentary ", "<|constrain|>", "json", "<|mess"], ""),
    # Command-R's `Action:` cut at its marker, in its fence line or in its JSON list
    (["Plan: search.\n", "Action:"], "Plan: search."),
    (["Plan: search.\nAct", "ion", ":", " "], "Plan: search."),
    (["Action: ", "``", "`js"], ""),
    (["Action: ```json\n", "[{\"tool_na"], ""),
])
def test_a_call_header_max_tokens_cut_streams_no_markup(chunks, content):
    stream = ToolCallStream(TOOLS)
    events = [e for group in feed_all(stream, chunks, cut=True) for e in group]
    assert "".join(contents(events)) == content
    assert not any(e.is_call for e in events) and stream.result.fixes == ["dropped-cut-call"]


@pytest.mark.parametrize("chunks", [
    ["Let me check.\n>>"], ["Let me check.\n>", ">"], ["Let me check.", "\n", ">", ">"],
])
def test_a_functionary_marker_begun_at_a_cut_end_is_held_then_dropped(chunks):
    """`>>` may still become Functionary's `>>>`: held back, dropped when max_tokens ends there."""
    stream = ToolCallStream(TOOLS)
    fed = [e for chunk in chunks for e in stream.feed(chunk)]
    assert "".join(contents(fed)) == "Let me check."
    assert stream.finish(cut=True) == [] and stream.result.content == "Let me check."
    assert stream.result.fixes == ["dropped-cut-call"]


@pytest.mark.parametrize("chunks, cut, content", [
    (["right with ", ">>"], False, "right with >>"),     # not cut: the model wrote it
    (["a ", ">"], True, "a >"),                          # one `>` may be prose
    (["x >", "> 2"], True, "x >> 2"),                    # the stream proves it no marker
])
def test_arrows_that_are_no_cut_functionary_marker_stream_as_text(chunks, cut, content):
    stream = ToolCallStream(TOOLS)
    events = [e for group in feed_all(stream, chunks, cut) for e in group]
    assert "".join(contents(events)) == content and stream.result.fixes == []


@pytest.mark.parametrize("chunks", [
    ["Let me check. <tool_call></tool_call>"],
    ["Let me check.", " <tool_call>", "</tool_call>", "\n"],
    ["Let me check. <tool_", "call></tool", "_call>"],
])
def test_a_lone_empty_marker_at_a_cut_end_is_dropped(chunks):
    """The empty marker was held back (it may be a repeated marker's stray); max_tokens ending
    the answer right after it means the call it opened never came: dropped, not content."""
    stream = ToolCallStream(TOOLS)
    events = [e for group in feed_all(stream, chunks, cut=True) for e in group]
    assert contents(events) == ["Let me check."] and stream.result.content == "Let me check."
    assert not any(e.is_call for e in events) and stream.result.fixes == ["dropped-empty-call"]


def test_a_lone_empty_marker_at_the_end_of_an_answer_not_cut_is_text():
    stream = ToolCallStream(TOOLS)
    events = [e for group in feed_all(stream, ["Wrap calls in", " <tool_call></tool_call>"]) for e in group]
    assert "".join(contents(events)) == "Wrap calls in <tool_call></tool_call>" and stream.result.fixes == []
