import pytest

from velollmd.cache.keys import (
    canonical_json,
    exact_key,
    last_user_text,
    partition_key,
    query_text,
    tenant_namespace,
)

BASE = {"model": "llama3", "messages": [{"role": "system", "content": "be brief"},
                                        {"role": "user", "content": "hi"}]}
IDENT = dict(endpoint="/v1/chat/completions", model_identity="sha256:abc", tenant="sk-1")
DEFAULTS = {"temperature": 0.8, "top_p": 0.95, "top_k": 40}


def key(request, **over):
    return exact_key(request, **{**IDENT, "defaults": DEFAULTS, **over})


OUTPUT_PARAMS = [
    ("temperature", 0.0), ("top_p", 0.5), ("top_k", 5), ("min_p", 0.1), ("seed", 7),
    ("max_tokens", 10), ("max_completion_tokens", 11), ("stop", ["\n"]),
    ("presence_penalty", 0.5), ("frequency_penalty", 0.5), ("repeat_penalty", 1.2),
    ("logit_bias", {"50256": -100}), ("n", 2), ("logprobs", True), ("top_logprobs", 3),
    ("response_format", {"type": "json_object"}),
    ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("tool_choice", "required"), ("parallel_tool_calls", False), ("num_ctx", 4096),
    ("reasoning_effort", "high"), ("reasoning", {"effort": "low"}),
    ("options", {"num_ctx": 2048}), ("options", {"temperature": 0.1}),
    ("some_future_field", 1),
]


@pytest.mark.parametrize("name,value", OUTPUT_PARAMS)
def test_each_output_param_changes_key(name, value):
    assert key({**BASE, name: value}) != key(BASE)


@pytest.mark.parametrize("over", [
    {"endpoint": "/api/chat"}, {"model_identity": "sha256:def"}, {"tenant": "sk-2"},
    {"tenant": None},
])
def test_identity_changes_key(over):
    assert key(BASE, **over) != key(BASE)


def test_model_name_and_messages_change_key():
    assert key({**BASE, "model": "llama3:8b"}) != key(BASE)
    other = {**BASE, "messages": [BASE["messages"][0], {"role": "user", "content": "hello"}]}
    assert key(other) != key(BASE)
    system = {**BASE, "messages": [{"role": "system", "content": "be long"}, BASE["messages"][1]]}
    assert key(system) != key(BASE)


@pytest.mark.parametrize("name,value", [
    ("stream", True), ("stream_options", {"include_usage": True}), ("user", "bob"),
    ("metadata", {"trace": "1"}), ("store", True), ("keep_alive", "5m"),
])
def test_transport_fields_do_not_change_key(name, value):
    assert key({**BASE, name: value}) == key(BASE)


def test_key_order_does_not_matter():
    reordered = dict(reversed(list({**BASE, "seed": 1, "top_k": 3}.items())))
    assert key(reordered) == key({**BASE, "seed": 1, "top_k": 3})


def test_explicit_default_equals_omitted():
    assert key({**BASE, "temperature": 0.8, "top_p": 0.95}) == key(BASE)
    assert key({**BASE, "temperature": None}) == key(BASE)
    assert key({**BASE, "options": {"top_k": 40}}) == key(BASE)


TOOL = {"type": "function", "function": {"name": "f", "parameters": {}}}


@pytest.mark.parametrize("neutral", [
    {"n": 1}, {"logprobs": False}, {"top_logprobs": 0}, {"stop": []}, {"logit_bias": {}},
    {"frequency_penalty": 0}, {"presence_penalty": 0.0}, {"response_format": {"type": "text"}},
    {"tool_choice": "none"}, {"tools": []}, {"parallel_tool_calls": True}, {"echo": False},
    {"best_of": 1},
])
def test_the_apis_neutral_values_equal_omitted(neutral):
    assert key({**BASE, **neutral}) == key(BASE)


def test_tool_choice_auto_is_neutral_only_with_tools():
    assert key({**BASE, "tools": [TOOL], "tool_choice": "auto"}) == key({**BASE, "tools": [TOOL]})
    assert key({**BASE, "tools": [TOOL], "tool_choice": "none"}) != key({**BASE, "tools": [TOOL]})
    assert key({**BASE, "logprobs": 0}) != key(BASE)          # a completion's chosen-token logprobs


def test_aliases_are_folded():
    assert key({**BASE, "max_tokens": 5}) == key({**BASE, "max_completion_tokens": 5})
    assert key({**BASE, "max_tokens": 5}) == key({**BASE, "options": {"num_predict": 5}})
    assert key({**BASE, "stop": "END"}) == key({**BASE, "stop": ["END"]})


def test_raw_api_key_never_in_namespace():
    ns = tenant_namespace("sk-secret-123")
    assert "sk-secret" not in ns and len(ns) == 32
    assert tenant_namespace(None) == tenant_namespace("") == "public"


def test_canonical_json_is_compact_and_sorted():
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": 3}]}) == b'{"a":[1,{"c":3,"d":2}],"b":1}'


def test_partition_ignores_only_last_user_text():
    other = {**BASE, "messages": [BASE["messages"][0], {"role": "user", "content": "yo"}]}
    p = partition_key(BASE, **IDENT)
    assert partition_key(other, **IDENT) == p
    assert key(other) != key(BASE)
    assert partition_key({**BASE, "seed": 3}, **IDENT) != p
    sys2 = {**BASE, "messages": [{"role": "system", "content": "x"}, BASE["messages"][1]]}
    assert partition_key(sys2, **IDENT) != p


def test_partition_keeps_images_of_last_turn():
    def turn(url):
        return {**BASE, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": url}}]}]}
    assert partition_key(turn("a.png"), **IDENT) != partition_key(turn("b.png"), **IDENT)


def test_last_user_text():
    msgs = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert last_user_text(msgs) == "a\nb"
    assert last_user_text([{"role": "system", "content": "s"}]) is None
    assert query_text({"model": "m", "prompt": "why"}) == "why"


def test_ollamas_context_is_in_the_exact_key_and_keeps_the_request_off_the_semantic_tier():
    """The same prompt after other turns (another `context`) is another request; and a request
    whose answer carries its own prompt's token ids is never served another prompt's answer."""
    turn = {**BASE, "context": []}
    assert len({key(BASE), key(turn), key({**turn, "context": [1, 2]}), key({**turn, "context": [2, 1]})}) == 4
    assert key({**turn, "context": [1, 2]}) == key({**turn, "context": [1, 2]})
    assert query_text(BASE) == "hi" and query_text(turn) is None
