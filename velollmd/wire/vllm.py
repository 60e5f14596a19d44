"""vLLM's extra request fields (sent through the openai client's `extra_body`), read once.

vLLM takes a structured output as `guided_json` / `guided_choice` / `guided_regex` /
`guided_grammar` or, since 0.10.2, as `structured_outputs: {"json" | "choice" | "regex" |
"grammar" | "json_object" | "structural_tag": ...}`; the JSON kinds become `response_format`
at validation (api/validate.py), which every backend honours, as do llama-server's own
`json_schema` and `grammar` fields (the same JSON; GBNF). The others, and the sampling
extras below, each backend honours or refuses with a 400 naming the field (see
backends/base.refuse_unhonoured), never answering as if they had not been asked.
"""
from __future__ import annotations

# The kinds of structured output other than JSON, as a backend names what it honours.
CONSTRAINT_KINDS = ("choice", "regex", "grammar", "structural_tag")
GUIDED_FIELDS = tuple(f"guided_{kind}" for kind in CONSTRAINT_KINDS if kind != "structural_tag")
# llama-server's own `grammar` field (GBNF): a kind of its own, as vLLM reads no GBNF under that name.
GBNF = "gbnf"
# vLLM sampling extras -> the value that asks for nothing (vLLM's default).
SAMPLING_EXTRAS = {"min_tokens": 0, "include_stop_str_in_output": False, "stop_token_ids": [],
                   "ignore_eos": False, "skip_special_tokens": True}


def vllm_constraint(body: dict) -> tuple[str, str, object] | None:
    """(kind, the field as the request spelled it, its value) of a structured output other
    than JSON (validated: at most one), or None."""
    for kind in CONSTRAINT_KINDS:
        value = body.get(f"guided_{kind}")
        if value is not None:
            return kind, f"guided_{kind}", value
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
    return asked


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
