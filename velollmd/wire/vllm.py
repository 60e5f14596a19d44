"""vLLM's extra request fields (sent through the openai client's `extra_body`), read once.

vLLM takes a structured output as `guided_json` / `guided_choice` / `guided_regex` /
`guided_grammar` or, since 0.10.2, as `structured_outputs: {"json" | "choice" | "regex" |
"grammar" | "json_object" | "structural_tag": ...}`; the JSON kinds become `response_format`
at validation (api/validate.py), which every backend honours, as do llama-server's own
`json_schema` and `grammar` fields (the same JSON; GBNF). The others, and the sampling
extras below, each backend honours or refuses with a 400 naming the field (see
backends/base.refuse_unhonoured), never answering as if they had not been asked.

vLLM itself reads one spelling or the other by version: the top-level fields until 0.12.0
removed them, `structured_outputs` from 0.10.2 on; either ignores the other's fields with no
more than a line in its log. `respell` sends each constraint as the vLLM behind it reads it.
"""
from __future__ import annotations

import re

# The kinds of structured output other than JSON, as a backend names what it honours.
CONSTRAINT_KINDS = ("choice", "regex", "grammar", "structural_tag")
# structured_outputs' kinds and options -> their own top-level fields in vLLM before 0.10.2
# (`structural_tag` was one too); the JSON ones reach a backend as response_format.
LEGACY_FIELDS = {"json": "guided_json", "choice": "guided_choice", "regex": "guided_regex",
                 "grammar": "guided_grammar", "structural_tag": "structural_tag",
                 "whitespace_pattern": "guided_whitespace_pattern"}
GUIDED_FIELDS = tuple(LEGACY_FIELDS[kind] for kind in CONSTRAINT_KINDS)
STRUCTURED_OUTPUTS_SINCE = (0, 10, 2)      # the first vLLM that reads `structured_outputs`
# llama-server's own `grammar` field (GBNF): a kind of its own, as vLLM reads no GBNF under that name.
GBNF = "gbnf"
# vLLM sampling extras -> the value that asks for nothing (vLLM's default).
SAMPLING_EXTRAS = {"min_tokens": 0, "include_stop_str_in_output": False, "stop_token_ids": [],
                   "ignore_eos": False, "skip_special_tokens": True}
# structured_outputs' options beside its kind -> the values that ask for nothing (vLLM's defaults;
# null too). No backend here but vLLM has them: a JSON kind's options stay in structured_outputs
# beside the response_format it becomes (api/validate.py), which vLLM merges back into one.
STRUCTURED_OUTPUT_OPTIONS = {"disable_fallback": (False,), "disable_any_whitespace": (False,),
                             "disable_additional_properties": (False,), "whitespace_pattern": (), "backend": ("auto",)}
# What a chat's add_generation_prompt / continue_final_message ask for (generation_prompt_asks).
GENERATION_PROMPT_ASKS = ("continue_final_message", "closed_final_message", "add_generation_prompt")
# Every top-level field the checks here and in api/validate.check_vllm_fields read: a body with
# none of them (most requests) asks for nothing of vLLM's, which one set lookup per key tells.
VLLM_REQUEST_FIELDS = frozenset({*LEGACY_FIELDS.values(), "structured_outputs", "grammar", "json_schema",
                                 *SAMPLING_EXTRAS, "prompt_logprobs", "spaces_between_special_tokens",
                                 "guided_decoding_backend", "continue_final_message", "add_generation_prompt"})


def vllm_constraint(body: dict) -> tuple[str, str, object] | None:
    """(kind, the field as the request spelled it, its value) of a structured output other
    than JSON (validated: at most one), or None."""
    for kind in CONSTRAINT_KINDS:
        value = body.get(LEGACY_FIELDS[kind])
        if value is not None:
            return kind, LEGACY_FIELDS[kind], value
    outputs = body.get("structured_outputs")
    for kind in CONSTRAINT_KINDS if isinstance(outputs, dict) else ():
        if outputs.get(kind) is not None:
            return kind, f"structured_outputs.{kind}", outputs[kind]
    if body.get("grammar") is not None:       # llama.cpp's own spelling: GBNF, which only it reads
        return GBNF, "grammar", body["grammar"]
    return None


def asked_vllm_fields(body: dict) -> list[tuple[str, str]]:
    """(what is asked: a constraint kind or a sampling extra, the field naming it in a 400) for
    each vLLM field of `body` that asks for something (a default value asks for nothing)."""
    if VLLM_REQUEST_FIELDS.isdisjoint(body):
        return []
    asked = []
    constraint = vllm_constraint(body)
    if constraint is not None:
        asked.append(constraint[:2])
    for name, default in SAMPLING_EXTRAS.items():
        value = body.get(name)
        if value is not None and value != default:
            asked.append((name, name))
    if body.get("prompt_logprobs") is not None:      # the prompt's own logprobs (0: the tokens' alone)
        asked.append(("prompt_logprobs", "prompt_logprobs"))
    asked += structured_output_options(body)
    asked += generation_prompt_asks(body)
    return asked


def structured_output_options(body: dict) -> list[tuple[str, str]]:
    """(the option, the field naming it) of each structured_outputs option (and the top-level
    guided_whitespace_pattern / guided_decoding_backend, their spelling before 0.10.2) that asks
    for something: how vLLM's grammar backends shape or build the constraint."""
    outputs = body.get("structured_outputs")
    asked = [(name, f"structured_outputs.{name}") for name, neutral in STRUCTURED_OUTPUT_OPTIONS.items()
             if isinstance(outputs, dict) and outputs.get(name) is not None and outputs[name] not in neutral]
    if body.get("guided_whitespace_pattern") is not None:
        asked.append(("whitespace_pattern", "guided_whitespace_pattern"))
    if body.get("guided_decoding_backend") not in (None, "auto"):
        asked.append(("backend", "guided_decoding_backend"))
    return asked


def generation_prompt_asks(body: dict) -> list[tuple[str, str]]:
    """What a chat's `continue_final_message` / `add_generation_prompt` ask for (validated:
    never both true): "continue_final_message" (the final assistant message continued, left
    open), "closed_final_message" (add_generation_prompt false after an assistant message: the
    message closed, no new turn opened; llama-server would continue it instead), or
    "add_generation_prompt" (false after another message: the prompt ends with it, no turn opened)."""
    if body.get("continue_final_message") is True:
        return [("continue_final_message", "continue_final_message")]
    if body.get("add_generation_prompt") is not False or not isinstance(body.get("messages"), list):
        return []
    last = body["messages"][-1] if body["messages"] else None
    ends_with_assistant = isinstance(last, dict) and last.get("role") == "assistant"
    return [("closed_final_message" if ends_with_assistant else "add_generation_prompt", "add_generation_prompt")]


def reads_structured_outputs(version: str | None) -> bool | None:
    """Whether a vLLM of `version` (as its GET /version states it: "0.10.2", "0.11.1rc2.dev45+g1a2b")
    reads `structured_outputs` (0.10.2 on) rather than the guided_* fields; None when it is not
    known (not asked, no answer, no release numbers)."""
    match = re.match(r"v?(\d+)\.(\d+)(?:\.(\d+))?", version or "")
    if match is None:
        return None
    return tuple(int(part or 0) for part in match.groups()) >= STRUCTURED_OUTPUTS_SINCE


def respell(body: dict, structured_outputs: bool) -> None:
    """`body`'s structured output, in place, as one vLLM reads it: the top-level fields moved
    into `structured_outputs` (`structured_outputs` true), or out of it into their own fields.
    What an older vLLM has no field for (structured_outputs' `disable_*` options) is left out,
    as it would have ignored it; `guided_decoding_backend` stays as sent (a choice of backend,
    no constraint: 0.10.2 to 0.11 still read it). The request's own objects are not changed."""
    if structured_outputs:
        outputs = dict(body.get("structured_outputs") or {})
        for kind, name in LEGACY_FIELDS.items():
            value = body.pop(name, None)
            if value is not None and outputs.get(kind) is None:
                outputs[kind] = value
        if outputs:
            body["structured_outputs"] = outputs
        return
    for kind, value in (body.pop("structured_outputs", None) or {}).items():
        name = LEGACY_FIELDS.get(kind)
        if name is not None and value is not None and body.get(name) is None:
            body[name] = value


def choice_grammar(choices: list[str]) -> str:
    """A GBNF grammar (llama.cpp's) whose language is exactly the `choices`' texts."""
    return "root ::= " + " | ".join(_gbnf_literal(choice) for choice in choices)


def _gbnf_literal(text: str) -> str:
    """`text` as a GBNF string literal: quotes, backslashes and control characters escaped."""
    escaped = []
    for char in text:
        if char in '"\\':
            escaped.append("\\" + char)
        elif char in "\n\r\t":
            escaped.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            escaped.append(f"\\x{ord(char):02x}")
        else:
            escaped.append(char)
    return '"' + "".join(escaped) + '"'
