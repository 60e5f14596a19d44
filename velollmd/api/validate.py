"""Validation of OpenAI request bodies (chat, completions, embeddings).

Validation names the offending field in a 400 (`param`), the way OpenAI does; fields we do
not know pass through untouched (backends such as llama.cpp and vLLM accept extras like
top_k or min_p).
"""
from __future__ import annotations

import json

from ..errors import BadRequest
from ..wire.request import REASONING_EFFORTS, logit_bias_value, wants_json
from ..wire.vllm import CONSTRAINT_KINDS, GUIDED_FIELDS, STRUCTURED_OUTPUT_OPTIONS, VLLM_REQUEST_FIELDS

MAX_STOP_SEQUENCES = 16                 # stop strings a request may give, the same on every backend

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
NUMBER = (int, float)
MAX_TOOLS = 1024        # OpenAI allows 128; each tool costs parsing and schema work on the loop
VERBOSITIES = ("low", "medium", "high")


def _fail(param: str, message: str):
    raise BadRequest(f"Invalid '{param}': {message}", param=param, code="invalid_value")


def _check_type(body: dict, name: str, types, what: str) -> None:
    if name in body and body[name] is not None:
        value = body[name]
        if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
            _fail(name, f"expected {what}, got a boolean")
        if not isinstance(value, types):
            _fail(name, f"expected {what}, got {type(value).__name__}")


def _check_range(body: dict, name: str, low, high) -> None:
    value = body.get(name)
    if value is not None and not (low <= value <= high):
        _fail(name, f"must be between {low} and {high}, got {value}")


# Checked in this order, each only when the body has the field: (name, types, what) then
# (name, low, high), then the others: a body with several bad fields gets the 400 of the first.
SAMPLING_TYPES = (
    *((name, NUMBER, "a number") for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty",
                                              "min_p", "repetition_penalty", "repeat_penalty")),
    *((name, int, "an integer") for name in ("max_tokens", "max_completion_tokens", "seed", "n", "top_k",
                                             "top_logprobs")),
)
SAMPLING_RANGES = (("temperature", 0, 2), ("top_p", 0, 1), ("presence_penalty", -2, 2),
                   ("frequency_penalty", -2, 2), ("max_tokens", 1, 1 << 30),
                   ("max_completion_tokens", 1, 1 << 30), ("n", 1, 128), ("top_logprobs", 0, 20))
OTHER_TYPES = (("stream", bool, "a boolean"), ("logprobs", (bool, int), "a boolean"), ("user", str, "a string"),
               ("logit_bias", dict, "an object"))


def _sampling_plain() -> dict[str, tuple]:
    """Field -> (the exact types of a value that passes its checks, low, high); low and high
    None when it has no range."""
    ranges = {name: (low, high) for name, low, high in SAMPLING_RANGES}
    plain = {name: (types if isinstance(types, tuple) else (types,), *ranges.get(name, (None, None)))
             for name, types, _what in (*SAMPLING_TYPES, *OTHER_TYPES)}
    return {**plain, "stop": ((str, type(None)), None, None), "stream_options": ((type(None),), None, None)}


SAMPLING_PLAIN = _sampling_plain()
SAMPLING_FIELDS = frozenset(SAMPLING_PLAIN)


def _check_sampling(body: dict, ranges: dict | None = None) -> None:
    """The fields the body has, each passed at once when its value is plainly fine (of an exact
    type its checks take, within its range); any other value, and a body that fails, goes
    through every check in the order above, so that a 400 names the same field as ever. A
    loop over every field's `name in body` cost more than the checks of the present ones.
    `ranges`: {name: (low, high)} in place of OpenAI's, for an API whose own are wider ("stop":
    how many stop strings)."""
    for name in SAMPLING_FIELDS.intersection(body):
        value = body[name]
        types, low, high = SAMPLING_PLAIN[name]
        if type(value) not in types or low is not None and not low <= value <= high:
            return _check_sampling_in_order(body, ranges)
    return None


def _check_sampling_in_order(body: dict, ranges: dict | None = None) -> None:
    ranges = ranges or {}
    for name, types, what in SAMPLING_TYPES:
        if name in body:
            _check_type(body, name, types, what)
    for name, low, high in SAMPLING_RANGES:
        if name in body:
            _check_range(body, name, *ranges.get(name, (low, high)))
    for name, types, what in OTHER_TYPES:
        if name in body:
            _check_type(body, name, types, what)
    if "stop" in body:
        _check_stop(body["stop"], ranges.get("stop", (0, MAX_STOP_SEQUENCES))[1])
    if "stream_options" in body:
        _check_stream_options(body)


def _check_stop(stop, max_stops: float = MAX_STOP_SEQUENCES) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        _fail("stop", "expected a string or an array of strings")
    if len(stop) > max_stops:
        _fail("stop", f"at most {max_stops} stop sequences")


def _check_logit_bias(body: dict) -> None:
    """Numeric biases (or false), the same for every backend: llama-server skipped an entry it
    could not read and answered as without it, the engine refused it. Keys may be text, which
    llama-server tokenizes (the engine takes token ids only and says so)."""
    bias = body.get("logit_bias")
    for key, value in bias.items() if isinstance(bias, dict) else ():
        try:
            logit_bias_value(key, value)
        except ValueError as exc:
            _fail("logit_bias", str(exc))


def _drop_empty_stops(body: dict) -> None:
    """An empty stop string matches nowhere (llama-server stopped at once on one, the engine
    ignored it): dropped before any backend sees it, the same on every backend."""
    stop = body.get("stop")
    if stop == "":
        del body["stop"]
    elif isinstance(stop, list) and "" in stop:
        body["stop"] = [s for s in stop if s != ""]


def _check_stream_options(body: dict) -> None:
    options = body.get("stream_options")
    if options is None:
        return
    if not isinstance(options, dict):
        _fail("stream_options", "expected an object")
    if not body.get("stream"):
        _fail("stream_options", "only allowed when 'stream' is true")
    _check_type(options, "include_usage", bool, "a boolean")


def _check_model(body: dict) -> None:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        _fail("model", "a non-empty string is required")


def _check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        _fail("messages", "a non-empty array of messages is required")
    for i, message in enumerate(messages):
        if type(message) is dict:              # the plain message, passed at once: a role and text
            role = message.get("role")
            if type(role) is str and role in ROLES and type(message.get("content")) is str \
                    and message.get("tool_calls") is None:
                continue
        _check_message(message, f"messages[{i}]")


def _check_message(message, param: str) -> None:
    if not isinstance(message, dict):
        _fail(param, "expected an object")
    if not isinstance(message.get("role"), str) or message["role"] not in ROLES:
        _fail(f"{param}.role", f"must be one of {', '.join(sorted(ROLES))}")
    content = message.get("content")
    if content is not None and not isinstance(content, (str, list)):
        _fail(f"{param}.content", "expected a string or an array of content parts")
    if isinstance(content, list):
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                _fail(f"{param}.content[{j}]", "expected a content part object with a 'type'")
            if part["type"] == "refusal" and message["role"] == "assistant":
                content[j] = part = _refusal_as_text(part, f"{param}.content[{j}]")
            if part["type"] == "text" and not isinstance(part.get("text"), str):
                _fail(f"{param}.content[{j}].text", "a text part needs its text, a string")
    if content is None and not message.get("tool_calls") and message.get("role") != "assistant":
        _fail(f"{param}.content", "is required")
    check_message_tool_calls(message.get("tool_calls"), f"{param}.tool_calls")


def _refusal_as_text(part: dict, param: str) -> dict:
    """An assistant's refusal part (OpenAI's answer shape, sent back in the history) as the
    text it is: templates and backends take text parts only (llama-server and the engine
    refused the request)."""
    if not isinstance(part.get("refusal"), str):
        _fail(f"{param}.refusal", "a refusal part needs its refusal, a string")
    return {"type": "text", "text": part["refusal"]}


def check_message_tool_calls(calls, param: str) -> None:
    """Tool calls in a message: objects whose function has a name (arguments: a JSON string or
    an object; an empty string is no arguments, "{}")."""
    if calls is None:
        return
    if not isinstance(calls, list):
        _fail(param, "expected an array of tool calls")
    for i, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            _fail(f"{param}[{i}].function.name", "each tool call needs a function with a name")
        _check_arguments(function, f"{param}[{i}].function.arguments")


def _check_arguments(function: dict, param: str) -> None:
    """A string or an object; an empty string is no arguments ("{}"). A string that is no JSON
    passes, as OpenAI takes it: a call the model wrote badly reached the client as written and
    comes back in the history (the llama.cpp backend rewrites it as JSON llama-server parses)."""
    arguments = function.get("arguments", "")
    if not isinstance(arguments, (str, dict)):
        _fail(param, "expected a JSON string or an object")
    if isinstance(arguments, str) and not arguments.strip():
        function["arguments"] = "{}"


def _check_tools(body: dict) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            _fail("tools", "expected an array")
        if len(tools) > MAX_TOOLS:
            _fail("tools", f"at most {MAX_TOOLS} tools, got {len(tools)}")
        for i, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                _fail(f"tools[{i}].function.name", "each tool needs a function with a name")
            if "parameters" in function and not isinstance(function["parameters"], dict):
                _fail(f"tools[{i}].function.parameters", "expected a JSON Schema object")
    _check_type(body, "parallel_tool_calls", bool, "a boolean")
    choice = body.get("tool_choice")
    if choice == "required" and not tools:
        _fail("tool_choice", "'required' needs at least one tool in 'tools'")
    if choice is None or choice in ("none", "auto", "required"):
        return
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if not isinstance(name, str):
        _fail("tool_choice", "expected 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}")
    if not any(t["function"]["name"] == name for t in tools or []):
        _fail("tool_choice", f"function {name!r} is not among the request's tools")


def _check_response_format(body: dict) -> None:
    fmt = body.get("response_format")
    if fmt is None:
        return
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind not in ("text", "json_object", "json_schema"):
        _fail("response_format", "type must be 'text', 'json_object' or 'json_schema'")
    if kind == "json_schema" and not isinstance((fmt.get("json_schema") or {}).get("schema"), dict):
        _fail("response_format.json_schema.schema", "a JSON Schema object is required")


# llama-server's own structured output fields -> the kind each is (wire/vllm.py).
LLAMACPP_CONSTRAINT_FIELDS = {"json_schema": "json", "grammar": "grammar"}


def check_vllm_fields(body: dict) -> None:
    """vLLM's extra fields (wire/vllm.py) and llama-server's `json_schema` / `grammar`: their
    types, at most one structured output in all (vLLM's rule; response_format counts),
    min_tokens within max_tokens; the JSON kinds (`guided_json`, `structured_outputs.json` /
    `.json_object`, `json_schema`) become the response_format every backend honours."""
    if VLLM_REQUEST_FIELDS.isdisjoint(body):
        return
    _check_sampling_extras(body)
    outputs = body.get("structured_outputs")
    if outputs is not None and not isinstance(outputs, dict):
        _fail("structured_outputs", "expected an object")
    _check_structured_output_options(body)
    asked = [name for name in ("guided_json", *GUIDED_FIELDS, *LLAMACPP_CONSTRAINT_FIELDS)
             if body.get(name) is not None]
    asked += [f"structured_outputs.{kind}" for kind in ("json", "json_object", *CONSTRAINT_KINDS)
              if (outputs or {}).get(kind) not in (None, False)]
    if len(asked) + wants_json(body) > 1:
        _fail(asked[-1], "only one structured output per request: one of response_format, guided_json, "
                         "guided_choice, guided_regex, guided_grammar, structured_outputs (with one kind), "
                         "structural_tag, json_schema or grammar")
    for param in asked:
        _check_structured_output(body, param)


def _check_sampling_extras(body: dict) -> None:
    for name in ("include_stop_str_in_output", "skip_special_tokens", "ignore_eos",
                 "spaces_between_special_tokens"):
        _check_type(body, name, bool, "a boolean")
    _check_type(body, "min_tokens", int, "an integer")
    _check_range(body, "min_tokens", 0, 1 << 30)
    _check_type(body, "prompt_logprobs", int, "an integer")
    _check_range(body, "prompt_logprobs", 0, 20)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens and (body.get("min_tokens") or 0) > max_tokens:
        _fail("min_tokens", f"must be at most max_tokens ({max_tokens}), got {body['min_tokens']}")
    ids = body.get("stop_token_ids")
    if ids is not None and (not isinstance(ids, list) or not all(type(t) is int and t >= 0 for t in ids)):
        _fail("stop_token_ids", "expected an array of token ids")


def _check_structured_output(body: dict, param: str) -> None:
    """One structured output field's value; a JSON kind moved to response_format."""
    outputs = body.get("structured_outputs") or {}
    value = body[param] if "." not in param else outputs[param.split(".", 1)[1]]
    kind = LLAMACPP_CONSTRAINT_FIELDS.get(param) or param.removeprefix("guided_").removeprefix("structured_outputs.")
    if kind == "json":
        body["response_format"] = {"type": "json_schema",
                                   "json_schema": {"name": "guided_json", "schema": _json_schema_of(param, value)}}
    elif kind == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif kind == "choice" and (not isinstance(value, list) or not value
                               or not all(isinstance(c, str) and c for c in value)):
        _fail(param, "expected a non-empty array of non-empty strings")
    elif kind in ("regex", "grammar") and (not isinstance(value, str) or not value):
        _fail(param, "expected a non-empty string")
    if kind in ("json", "json_object"):
        body.pop(param, None)
        outputs.pop(kind, None)
        if "structured_outputs" in body and not any(value is not None for value in outputs.values()):
            del body["structured_outputs"]      # options left stay for vLLM (which merges response_format in)


def _check_structured_output_options(body: dict) -> None:
    """structured_outputs' options (wire/vllm.STRUCTURED_OUTPUT_OPTIONS) and their top-level
    spellings: booleans, and strings for the whitespace pattern and the backend's name. Their
    values that ask for nothing are dropped (no server but vLLM knows them); the others are a
    backend's to honour or refuse (backends/base.refuse_unhonoured)."""
    outputs = body.get("structured_outputs") or {}
    for name, neutral in STRUCTURED_OUTPUT_OPTIONS.items():
        value = outputs.get(name)
        text = name in ("whitespace_pattern", "backend")
        if value is not None and not isinstance(value, str if text else bool):
            _fail(f"structured_outputs.{name}", "expected a string" if text else "expected a boolean")
        if name in outputs and (value is None or value in neutral):
            del outputs[name]
    _check_type(body, "guided_whitespace_pattern", str, "a string")
    _check_type(body, "guided_decoding_backend", str, "a string")


def _json_schema_of(param: str, value) -> dict:
    """A JSON schema given as an object or as its JSON text (vLLM takes both)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            _fail(param, "expected a JSON Schema object, or its JSON text")
    if not isinstance(value, dict):
        _fail(param, "expected a JSON Schema object")
    return value


def _check_top_logprobs(body: dict) -> None:
    """A chat's top_logprobs needs logprobs: true (OpenAI's rule), on every backend alike."""
    if body.get("top_logprobs") and body.get("logprobs") is not True:
        _fail("top_logprobs", "needs 'logprobs' to be true")


def check_reasoning_effort(body: dict, name: str, param: str) -> None:
    """A reasoning effort (chat's `reasoning_effort`, the Responses API's `reasoning.effort`):
    one of OpenAI's, or null."""
    effort = body.get(name)
    if effort is not None and (not isinstance(effort, str) or effort not in REASONING_EFFORTS):
        _fail(param, f"must be one of {', '.join(REASONING_EFFORTS)}")


def _check_chat_template_kwargs(body: dict) -> None:
    """vLLM's and llama-server's `chat_template_kwargs`: an object (both refuse anything else),
    its thinking switch `enable_thinking` a boolean (llama-server's rule; the engine would read
    another value as no switch at all, and vLLM's template as truthy)."""
    _check_type(body, "chat_template_kwargs", dict, "an object")
    kwargs = body.get("chat_template_kwargs") or {}
    if kwargs.get("enable_thinking") is not None and not isinstance(kwargs["enable_thinking"], bool):
        _fail("chat_template_kwargs.enable_thinking", "expected a boolean")


def check_verbosity(body: dict, param: str) -> None:
    """`verbosity` (chat's, the Responses API's `text.verbosity`): one of OpenAI's, or null.
    No local server has the control: a good value changes nothing (as vLLM ignores it)."""
    verbosity = body.get("verbosity")
    if verbosity is not None and verbosity not in VERBOSITIES:
        _fail(param, f"must be one of {', '.join(VERBOSITIES)}")


def dropped_fields(body: dict) -> str:
    """The fields a client set that validate_chat drops (web_search_options), comma-separated,
    for the answer's x-velollm-dropped header; "" for none. Read before validate_chat."""
    return "web_search_options" if body.get("web_search_options") is not None else ""


def _drop_web_search(body: dict) -> None:
    """`web_search_options`: OpenAI's hosted web search, which no server here runs. An object,
    then dropped: the model answers from what it knows, as the Responses API drops its
    web_search tools (and vLLM ignores the field)."""
    options = body.pop("web_search_options", None)
    if options is not None and not isinstance(options, dict):
        _fail("web_search_options", "expected an object")


def _check_text_output(body: dict) -> None:
    """Spoken answers (modalities with "audio", an `audio` voice and format): no backend here
    makes audio, and a text-only answer would leave message.audio null without a word."""
    modalities = body.get("modalities")
    if modalities is not None and (not isinstance(modalities, list) or any(m != "text" for m in modalities)):
        _fail("modalities", 'only ["text"] is supported: no backend here answers in audio')
    if body.get("audio") is not None:
        _fail("audio", "audio output is not supported: no backend here answers in audio")


def validate_chat(body: dict, ranges: dict | None = None) -> dict:
    """`ranges`: sampling ranges in place of OpenAI's (see _check_sampling)."""
    _check_model(body)
    _check_messages(body.get("messages"))
    _check_sampling(body, ranges)
    _check_logit_bias(body)
    _drop_empty_stops(body)
    _check_top_logprobs(body)
    _check_tools(body)
    _check_response_format(body)
    check_vllm_fields(body)
    _check_text_output(body)
    check_reasoning_effort(body, "reasoning_effort", "reasoning_effort")
    _check_chat_template_kwargs(body)
    _check_generation_prompt(body)
    check_verbosity(body, "verbosity")
    _drop_web_search(body)
    return body


def _check_generation_prompt(body: dict) -> None:
    """vLLM's `add_generation_prompt` (default true) and `continue_final_message` (default false):
    booleans, never both true (vLLM's and llama-server's 400; vLLM's template renderer refuses
    continue_final_message with the default add_generation_prompt too, as llama-server does), and
    a continued message must be the assistant's text (llama-server would render a user's as one;
    the engine and llama-server continue no tool call)."""
    for name in ("add_generation_prompt", "continue_final_message"):
        _check_type(body, name, bool, "a boolean")
    if body.get("continue_final_message") is not True:
        return
    if body.get("add_generation_prompt") is not False:
        _fail("continue_final_message", "Cannot set both `continue_final_message` and `add_generation_prompt` "
                                        "to True (add_generation_prompt defaults to true: set it to false)")
    last = body["messages"][-1]
    if last.get("role") != "assistant":
        _fail("continue_final_message", "Cannot set `continue_final_message` to True when the last message "
                                        "is not from the assistant")
    if last.get("tool_calls"):
        _fail("continue_final_message", "the final assistant message has tool calls: only its text can be continued")


def validate_completion(body: dict, ranges: dict | None = None) -> dict:
    _check_model(body)
    if body.get("echo") is True and body.get("max_tokens") == 0:    # the prompt alone (vLLM's, legacy OpenAI's)
        ranges = {**(ranges or {}), "max_tokens": (0, 1 << 30)}
    prompt = body.get("prompt")
    if not isinstance(prompt, (str, list)):
        _fail("prompt", "a string or an array of strings is required")
    if isinstance(prompt, list) and (not prompt or not all(_is_text_or_tokens(p) for p in prompt)):
        _fail("prompt", "expected a string, an array of strings, an array of token ids or an array of "
                        "token id arrays")
    _check_sampling(body, ranges)
    _check_logit_bias(body)
    _drop_empty_stops(body)
    _check_type(body, "echo", bool, "a boolean")
    _check_type(body, "suffix", str, "a string")
    _check_input_extra(body.get("input_extra"))
    _check_completion_logprobs(body)
    _check_best_of(body)
    _check_response_format(body)
    check_vllm_fields(body)
    return body


def _check_input_extra(extras) -> None:
    """llama-server's /infill `input_extra` (the other files of a fill in the middle): a list
    of {"filename": string (optional), "text": string}, refused in llama-server's words, so
    that the engine and llama-server turn the same bodies away."""
    if extras is None:
        return
    if not isinstance(extras, list) or not all(
            isinstance(chunk, dict) and isinstance(chunk.get("text"), str)
            and isinstance(chunk.get("filename", ""), str) for chunk in extras):
        _fail("input_extra", 'must be an array of {"filename": string, "text": string}')


def _check_completion_logprobs(body: dict) -> None:
    """A completion's logprobs: how many alternatives a token, 0 to 20 on every backend (the
    engine refused more, llama-server gave 100, and answered -1 with no logprobs at all)."""
    logprobs = body.get("logprobs")
    if type(logprobs) is int and not 0 <= logprobs <= 20:
        _fail("logprobs", f"must be between 0 and 20, got {logprobs}")


def _check_best_of(body: dict) -> None:
    """best_of candidates, the n best returned: at least n (OpenAI's rule); more than n would
    need the candidates ranked, which no backend here does, so that is refused, not ignored."""
    _check_type(body, "best_of", int, "an integer")
    best_of, n = body.get("best_of"), body.get("n") or 1
    if best_of is not None and best_of < n:
        _fail("best_of", f"must be at least n ({n}), got {best_of}")
    if best_of is not None and best_of > n:
        _fail("best_of", f"more candidates than n ({n}) is not supported, got {best_of}")


def _is_token_array(value) -> bool:
    return isinstance(value, list) and all(type(t) is int for t in value)


def check_dimensions(body: dict) -> None:
    """An embedding request's `dimensions` (OpenAI's and Ollama's): a positive integer."""
    _check_type(body, "dimensions", int, "an integer")
    _check_range(body, "dimensions", 1, 1 << 20)


def validate_embeddings(body: dict) -> dict:
    _check_model(body)
    check_dimensions(body)
    value = body.get("input")
    if isinstance(value, str):
        return body
    if not isinstance(value, list) or not value or not all(_is_text_or_tokens(v) for v in value):
        _fail("input", "a string, or a non-empty array of strings, token ids or token id arrays is required")
    return body


def _is_text_or_tokens(value) -> bool:
    """One item of a completion's prompt array or an embedding request's input array: a text,
    a token id or a token id array (a boolean is no token id: true was read as token 1)."""
    return isinstance(value, str) or type(value) is int or _is_token_array(value)


def validate_rerank(body: dict) -> dict:
    """A rerank request (Jina's, Cohere's, vLLM's and llama-server's shape): `query` a string,
    `documents` a non-empty array of strings or of objects with a string `text` (Jina's and
    Cohere v1's), `top_n` a positive integer, `return_documents` a boolean. `model` is checked
    by the route (optional, as on llama-server and vLLM). Documents are given back as strings,
    which every backend takes."""
    if not isinstance(body.get("query"), str):
        _fail("query", "a string is required")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        _fail("documents", "a non-empty array of strings is required")
    body["documents"] = [_document_text(document, i) for i, document in enumerate(documents)]
    _check_type(body, "top_n", int, "an integer")
    _check_range(body, "top_n", 1, 1 << 31)
    _check_type(body, "return_documents", bool, "a boolean")
    return body


def validate_score(body: dict) -> dict:
    """vLLM's /score: `text_1` and `text_2` each a string or a non-empty array of strings, given
    back as lists; `text_1` one text (scored against each of `text_2`) or as many as `text_2`
    (scored pairwise)."""
    for name in ("text_1", "text_2"):
        texts = [body.get(name)] if isinstance(body.get(name), str) else body.get(name)
        if not isinstance(texts, list) or not texts or not all(isinstance(text, str) for text in texts):
            _fail(name, "a string or a non-empty array of strings is required")
        body[name] = texts
    if len(body["text_1"]) not in (1, len(body["text_2"])):
        _fail("text_1", f"one text, or as many as text_2 ({len(body['text_2'])}), got {len(body['text_1'])}")
    return body


def _document_text(document, index: int) -> str:
    if isinstance(document, dict) and isinstance(document.get("text"), str):
        return document["text"]
    if not isinstance(document, str):
        _fail("documents", f"item {index} must be a string or an object with a string `text`")
    return document
