"""Validation of OpenAI Responses API request bodies (POST /v1/responses).

The top-level fields are checked here, under their own names (`max_output_tokens`, not chat's
`max_tokens`); items, tools and `text.format` are checked while wire/responses_input.py
translates them. Fields OpenAI has that a local server cannot honour are refused by name;
fields that change nothing here (`include`, `prompt_cache_key`, `service_tier`, ...) are
accepted and ignored, as clients such as Codex CLI always send some of them.
"""
from __future__ import annotations

from .validate import NUMBER, _check_range, _check_type, _fail, check_reasoning_effort, check_verbosity

UNSUPPORTED = {"background": "background responses are not supported by this server",
               "conversation": "the Conversations API is not supported here; use previous_response_id",
               "prompt": "stored prompt templates are not supported by this server"}
MAX_METADATA_KEYS = 16
REASONING_SUMMARIES = ("auto", "concise", "detailed")


def validate_responses(body: dict, *, count_only: bool = False) -> dict:
    """A POST /v1/responses body (`count_only`: of /v1/responses/input_tokens, where `input`
    may be left out when `previous_response_id` names the turns to count). A null field is
    left out: every optional field of OpenAI's is nullable, null meaning its default."""
    body = {name: value for name, value in body.items() if value is not None}
    if not isinstance(body.get("model"), str) or not body["model"]:
        _fail("model", "a non-empty string is required")
    if body.get("input") is None and not (count_only and body.get("previous_response_id")):
        _fail("input", "is required")
    for name, why in UNSUPPORTED.items():
        if body.get(name):
            _fail(name, why)
    for name in ("temperature", "top_p"):
        _check_type(body, name, NUMBER, "a number")
    _check_type(body, "max_output_tokens", int, "an integer")
    _check_type(body, "top_logprobs", int, "an integer")
    for name in ("stream", "store", "parallel_tool_calls"):
        _check_type(body, name, bool, "a boolean")
    for name in ("instructions", "previous_response_id", "user"):
        _check_type(body, name, str, "a string")
    _check_reasoning(body.get("reasoning"))
    if isinstance(body.get("text"), dict):
        check_verbosity(body["text"], "text.verbosity")
    if body.get("truncation") not in (None, "auto", "disabled"):
        _fail("truncation", "must be 'auto' or 'disabled'")
    _check_range(body, "temperature", 0, 2)
    _check_range(body, "top_p", 0, 1)
    _check_range(body, "max_output_tokens", 1, 1 << 30)
    _check_range(body, "top_logprobs", 0, 20)
    _check_metadata(body.get("metadata"))
    return body


def _check_reasoning(reasoning) -> None:
    """`reasoning`: {effort, summary}, each one of OpenAI's values or null (Codex CLI sends it
    on every request)."""
    if reasoning is None:
        return
    if not isinstance(reasoning, dict):
        _fail("reasoning", "expected an object")
    check_reasoning_effort(reasoning, "effort", "reasoning.effort")
    for name in ("summary", "generate_summary"):
        if reasoning.get(name) is not None and reasoning[name] not in REASONING_SUMMARIES:
            _fail(f"reasoning.{name}", f"must be one of {', '.join(REASONING_SUMMARIES)}")


def _check_metadata(metadata) -> None:
    """OpenAI's rule: at most 16 string pairs, keys up to 64 characters, values up to 512."""
    if metadata is None:
        return
    if not isinstance(metadata, dict):
        _fail("metadata", "expected an object of string values")
    if len(metadata) > MAX_METADATA_KEYS:
        _fail("metadata", f"at most {MAX_METADATA_KEYS} keys")
    for key, value in metadata.items():
        if len(key) > 64 or not isinstance(value, str) or len(value) > 512:
            _fail(f"metadata.{key[:64]}", "keys are strings of up to 64 characters, values of up to 512")
