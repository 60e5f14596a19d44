"""validate.py's sampling and message checks: the fast passes decide as the full checks do,
and a body with several bad fields names the same one."""
import itertools

import pytest

from velollmd.api.validate import (SAMPLING_FIELDS, _check_message, _check_messages, _check_sampling,
                                   _check_sampling_in_order, validate_chat)
from velollmd.errors import BadRequest

MESSAGES = [{"role": "user", "content": "hi"}]
VALUES = (None, True, False, 0, 1, 16, 2.5, -3, 1 << 31, 0.5, "x", ["a"], [1], {}, {"include_usage": True})


def verdict(check, body: dict):
    try:
        check(body)
    except BadRequest as exc:
        return exc.param, exc.message
    return None


@pytest.mark.parametrize("name", sorted(SAMPLING_FIELDS))
def test_one_field_decided_as_in_order(name):
    for value in VALUES:
        for stream in (None, True):
            body = {name: value} if stream is None or name == "stream" else {name: value, "stream": stream}
            assert verdict(_check_sampling, body) == verdict(_check_sampling_in_order, body), (name, value)


def test_two_fields_decided_as_in_order():
    names = ("temperature", "max_tokens", "stream", "stop", "n", "user", "stream_options")
    for (a, b), (x, y) in itertools.product(itertools.combinations(names, 2), itertools.product(VALUES, repeat=2)):
        body = {a: x, b: y}
        assert verdict(_check_sampling, body) == verdict(_check_sampling_in_order, body), body


def test_several_bad_fields_name_the_first_check():
    body = {"model": "m", "messages": MESSAGES, "stream": "yes", "temperature": 5, "max_tokens": "many"}
    with pytest.raises(BadRequest) as caught:          # types before ranges, ranges before the others
        validate_chat(body)
    assert caught.value.param == "max_tokens"
    del body["max_tokens"]
    with pytest.raises(BadRequest) as caught:
        validate_chat(body)
    assert caught.value.param == "temperature"


def test_plain_bodies_pass():
    body = {"model": "m", "messages": MESSAGES, "max_tokens": 16, "temperature": 0.7, "top_p": 1, "stream": True,
            "stream_options": {"include_usage": True}, "stop": ["\n"], "seed": 3, "user": "u", "logprobs": True}
    assert validate_chat(body) is body


def test_messages_decided_as_by_the_full_checks():
    calls = [{"function": {"name": "f", "arguments": "{}"}}]
    roles = ("user", "assistant", "tool", "robot", None, ["user"])
    contents = ("hi", "", None, 3, [{"type": "text", "text": "x"}], [{"text": "x"}], [])
    for role, content, tool_calls in itertools.product(roles, contents, (None, [], calls, "x", [{}])):
        message = {"role": role, "content": content, "tool_calls": tool_calls}
        for shown in ({k: v for k, v in message.items() if v is not None}, message):
            assert verdict(_check_messages, [MESSAGES[0], shown]) == verdict(
                lambda m: _check_message(m, "messages[1]"), shown), shown
    assert verdict(_check_messages, [MESSAGES[0], "hi"])[0] == "messages[1]"


@pytest.mark.parametrize("extra, param", [
    ({"verbosity": "loud"}, "verbosity"), ({"verbosity": 1}, "verbosity"),
    ({"web_search_options": "on"}, "web_search_options"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"), ({"reasoning_effort": True}, "reasoning_effort"),
])
def test_openai_only_controls_with_a_bad_value_are_a_400_naming_them(extra, param):
    assert verdict(validate_chat, {"model": "m", "messages": MESSAGES, **extra})[0] == param


def test_web_search_is_dropped_and_verbosity_kept_as_asked():
    """No server here searches the web: the options go, as the Responses API drops its
    web_search tools; verbosity passes through (vLLM and llama-server ignore it)."""
    body = validate_chat({"model": "m", "messages": MESSAGES, "verbosity": "low", "reasoning_effort": "minimal",
                          "web_search_options": {"search_context_size": "low"}})
    assert "web_search_options" not in body and body["verbosity"] == "low" and body["reasoning_effort"] == "minimal"
