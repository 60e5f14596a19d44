"""engine/templates: family detection, and prompts byte-identical to the real templates under jinja2.

The oracle is each model's own chat template (tests/fixtures/chat_templates/) rendered by jinja2
in HF transformers' environment (sandboxed, trim_blocks + lstrip_blocks, `tojson` without HTML
escaping, `raise_exception`, `strftime_now`), fed the messages in the shape our renderer
documents (text parts joined by newlines, null content as "", arguments parsed from JSON).
"""
from __future__ import annotations

import copy
import datetime
import json
from pathlib import Path

import pytest

jinja2 = pytest.importorskip("jinja2")
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

from tests.engine.conversations import CASES, CONVERSATIONS, WEATHER_TOOL, call  # noqa: E402
from tests.rig.llama import tiny_gguf_tool  # noqa: E402
from velollmd.engine.templates import (  # noqa: E402
    TEMPLATE_NAMES,
    TemplateError,
    TemplateUnknown,
    detect_family,
    find_template,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates"
FIXED_DAY = datetime.datetime(2025, 3, 7)
BOS, EOS = "<BOS>", "<EOS>"


def tiny_template() -> str:
    return tiny_gguf_tool().CHAT_TEMPLATE


def fixture_text(name: str) -> str:
    return tiny_template() if name == "tiny" else (FIXTURES / name).read_text(encoding="utf-8")


# --- the oracle ------------------------------------------------------------------------------

def _raise(message):
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def jinja_render(source: str, messages: list[dict], **variables) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: FIXED_DAY.strftime(fmt)
    return env.from_string(source).render(messages=to_jinja_messages(messages), **variables)


def to_jinja_messages(messages: list[dict]) -> list[dict]:
    """OpenAI-shaped messages in the shape our renderer documents (what llama.cpp feeds jinja)."""
    out = []
    for message in copy.deepcopy(messages):
        content = message.get("content")
        if isinstance(content, list):
            message["content"] = "\n".join(part["text"] for part in content)
        elif content is None:
            message["content"] = ""
        if not message.get("tool_calls"):
            message.pop("tool_calls", None)
        for tool_call in message.get("tool_calls", ()):
            tool_call["function"]["arguments"] = json.loads(tool_call["function"]["arguments"])
        out.append(message)
    return out


RENDER_CASES = [(fx, conv) for fx, (_family, convs) in CASES.items() for conv in convs]


@pytest.mark.parametrize("fixture,conversation", RENDER_CASES)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_matches_the_real_template(fixture, conversation, add_generation_prompt):
    source = fixture_text(fixture)
    messages, tools = CONVERSATIONS[conversation]
    variables = {"add_generation_prompt": add_generation_prompt, "bos_token": BOS, "eos_token": EOS}
    if tools is not None:
        variables["tools"] = tools
    expected = jinja_render(source, messages, **variables)
    # Llama 3.2 dates its prompt with strftime_now (the oracle's is fixed); 3.1/3.3 use a fixed date
    date_string = FIXED_DAY.strftime("%d %b %Y") if CASES[fixture][0] == "llama3.2" else None
    ours = find_template(source).render(messages, tools=tools, add_generation_prompt=add_generation_prompt,
                                        bos_token=BOS, eos_token=EOS, date_string=date_string)
    assert ours == expected


def test_llama_default_dates_match_the_templates():
    messages = CONVERSATIONS["system_user"][0]
    llama31 = fixture_text("meta-llama-Llama-3.3-70B-Instruct.jinja")
    assert "Today Date: 26 Jul 2024\n" in find_template(llama31).render(messages)
    expected = jinja_render(llama31, messages, add_generation_prompt=True)
    assert find_template(llama31).render(messages) == expected
    llama32 = find_template(fixture_text("meta-llama-Llama-3.2-3B-Instruct.jinja"))
    today = datetime.datetime.now().strftime("%d %b %Y")
    assert f"Today Date: {today}\n" in llama32.render(messages)


def test_qwen3_enable_thinking_false_opens_an_empty_think_block():
    source = fixture_text("Qwen-Qwen3-0.6B.jinja")
    messages = CONVERSATIONS["system_user"][0]
    ours = find_template(source).render(messages, enable_thinking=False)
    assert ours == jinja_render(source, messages, add_generation_prompt=True, enable_thinking=False)
    assert ours.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


def test_mistral_maps_openai_call_ids_to_nine_characters_consistently():
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": None,
                 "tool_calls": [call("call_8f3e2a9b71c4", "get_weather", '{"city": "Rome"}')]},
                {"role": "tool", "tool_call_id": "call_8f3e2a9b71c4", "content": "sunny"}]
    prompt = find_template(None, override="mistral").render(messages, tools=[WEATHER_TOOL], eos_token=EOS)
    ids = [piece.split('"')[0] for piece in prompt.split('id": "')[1:]]
    assert len(ids) == 2 and ids[0] == ids[1] and len(ids[0]) == 9 and ids[0].isalnum()


# --- refusals the real templates make too ----------------------------------------------------

@pytest.mark.parametrize("fixture,messages", [
    ("google-gemma-3-it.jinja", [{"role": "assistant", "content": "hi"}]),
    ("mistralai-Mistral-Nemo-Instruct-2407.jinja", [{"role": "user", "content": "a"},
                                                    {"role": "user", "content": "b"}]),
    ("meta-llama-Llama-3.3-70B-Instruct.jinja", CONVERSATIONS["two_calls"][0]),
])
def test_conversations_the_template_refuses_raise_template_error(fixture, messages):
    source = fixture_text(fixture)
    tools = CONVERSATIONS["two_calls"][1]
    with pytest.raises(jinja2.exceptions.TemplateError):
        jinja_render(source, messages, tools=tools, add_generation_prompt=True)
    with pytest.raises(TemplateError):
        find_template(source).render(messages, tools=tools)


@pytest.mark.parametrize("messages,field", [
    ([{"content": "no role"}], "messages[0]: missing 'role'"),
    ([{"role": "user", "content": "ok"}, {"role": "narrator", "content": "x"}], "messages[1].role"),
    ([{"role": "user", "content": 42}], "messages[0].content"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
     "messages[0].content[0]"),
    ([], "messages: empty"),
])
def test_malformed_messages_raise_a_value_error_naming_the_field(messages, field):
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        find_template(None, override="chatml").render(messages)


# --- detection -------------------------------------------------------------------------------

@pytest.mark.parametrize("fixture", list(CASES))
def test_each_real_template_is_detected_as_its_family(fixture):
    family = CASES[fixture][0]
    assert detect_family(fixture_text(fixture)) == family
    template = find_template(fixture_text(fixture))
    assert template.name == family and template.stop


@pytest.mark.parametrize("source", [
    "{% for m in messages %}{{ m.content }}{% endfor %}",
    "### Instruction: {{ messages[0].content }}\n### Response:",
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>{% endfor %}",
])
def test_unknown_template_raises_naming_the_config_key_and_names(source):
    with pytest.raises(TemplateUnknown) as excinfo:
        find_template(source)
    message = str(excinfo.value)
    assert "not recognised" in message and "chat_template" in message
    assert all(name in message for name in TEMPLATE_NAMES)


def test_missing_template_raises_unless_overridden():
    with pytest.raises(TemplateUnknown, match="chat_template"):
        find_template(None)
    assert find_template(None, override="gemma").name == "gemma"


def test_override_wins_over_detection():
    assert find_template(fixture_text("Qwen-Qwen3-0.6B.jinja"), override="chatml").name == "chatml"
    assert find_template("garbage", override="phi3").name == "phi3"
    with pytest.raises(TemplateUnknown, match="'chatml2' is not a template name.*chatml"):
        find_template(fixture_text("tiny"), override="chatml2")


def test_every_name_has_stop_strings_and_a_tool_call_format_the_extractor_knows():
    from velollmd.toolcalls.extract import MARKERS
    kinds = {kind for kind, _close in MARKERS.values()}
    for name in TEMPLATE_NAMES:
        template = find_template(None, override=name)
        assert template.name == name and template.stop
        assert template.tool_call_format in (None, "hermes", "llama3", "mistral", "phi4-mini")
    # hermes: <tool_call>; mistral: [TOOL_CALLS]; llama3: bare JSON or <|python_tag|>;
    # phi4-mini: <|tool_call|> (the extractor's "granite" marker)
    assert {"hermes", "mistral", "python-tag", "granite"} <= kinds
