"""Cache keys: canonical JSON of everything that changes a response, hashed with blake2b.

Two requests get the same exact key iff a deterministic backend would give them the same
answer: same endpoint, model (name and backend identity, e.g. an Ollama digest or a GGUF
path), tenant, messages and output-changing parameters. Fields that only change the
transport (stream, stream_options, user, metadata...) are dropped, backend defaults are
applied before hashing, the API's own neutral values are dropped (n: 1, logprobs: false,
stop: [], frequency_penalty: 0, response_format text, tool_choice "auto" with tools or "none"
without...), and aliases are folded (max_completion_tokens / num_predict -> max_tokens, a stop
string -> a one-item list), so explicit-default and omitted fields match.

Unknown fields are kept in the key on purpose: a field we do not understand may change the
output, and a miss is always safer than a wrong hit.

The partition key is the same hash with the last user turn's text replaced by a placeholder;
the semantic tier compares only queries inside one partition.
"""
from __future__ import annotations

import hashlib
import json

from ..wire.billing import without_billing_header

KEY_BYTES = 16
# Transport-only fields: never change the generated tokens.
IGNORED_FIELDS = frozenset({
    "stream", "stream_options", "user", "metadata", "store", "service_tier", "keep_alive",
    "model", "messages", "prompt", "options",
})
MAX_TOKENS_ALIASES = ("max_completion_tokens", "num_predict", "n_predict")
QUERY_PLACEHOLDER = "\x00velollm-query\x00"
# Values that mean the same as leaving the field out, for every backend (OpenAI's defaults).
NEUTRAL_VALUES = {
    "n": 1, "best_of": 1, "echo": False, "logprobs": False, "top_logprobs": 0,
    "frequency_penalty": 0, "presence_penalty": 0, "stop": [], "logit_bias": {},
    "response_format": {"type": "text"}, "tools": [], "parallel_tool_calls": True,
}


def canonical_json(obj) -> bytes:
    """Sorted keys, no whitespace, UTF-8: equal data -> equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode("utf-8", "surrogatepass")    # a lone "\ud800" too


def _digest(material: bytes, person: bytes) -> str:
    return hashlib.blake2b(material, digest_size=KEY_BYTES, person=person).hexdigest()


def tenant_namespace(api_key: str | None) -> str:
    """A stable namespace for an API key; the raw key never leaves this function."""
    if not api_key:
        return "public"
    return _digest(api_key.encode(), b"velollm-tenant")


def normalize_params(request: dict, defaults: dict | None = None) -> dict:
    """The output-changing parameters of a request, with aliases folded and defaults applied.

    Ollama-native `options` are flattened into the top level (they are the same knobs).
    A value of None means "not given" and is replaced by the default.
    """
    params = {k: v for k, v in request.items() if k not in IGNORED_FIELDS}
    options = request.get("options")
    if isinstance(options, dict):
        params.update(options)
    for alias in MAX_TOKENS_ALIASES:
        if params.get(alias) is not None and params.get("max_tokens") is None:
            params["max_tokens"] = params[alias]
        params.pop(alias, None)
    if isinstance(params.get("stop"), str):
        params["stop"] = [params["stop"]]
    params = {k: v for k, v in params.items() if v is not None and not _neutral(params, k, v)}
    for name, value in (defaults or {}).items():
        params.setdefault(name, value)
    return params


def _neutral(params: dict, name: str, value) -> bool:
    """Whether `value` of `name` means the same as its absence (a bool only equals a bool:
    a completion's `logprobs: 0` is not `false`)."""
    neutral = ("auto" if params.get("tools") else "none") if name == "tool_choice" else (
        NEUTRAL_VALUES.get(name, _NO_VALUE))
    return value == neutral and isinstance(value, bool) == isinstance(neutral, bool)


_NO_VALUE = object()


def _content_text(content) -> str | None:
    """The text of a message content (string or list of parts); None if it has no text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [p.get("text", "") for p in content
                 if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(texts) if texts else None
    return None


def _last_user_index(messages) -> int | None:
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], dict) and messages[i].get("role") == "user":
            return i
    return None


def last_user_text(messages) -> str | None:
    """The text of the last user turn (text parts joined), or None if there is none."""
    i = _last_user_index(messages or [])
    return None if i is None else _content_text(messages[i].get("content"))


def _strip_query(message: dict) -> dict:
    """The message with its text replaced by a placeholder; other parts (images) are kept."""
    content = message.get("content")
    if isinstance(content, list):
        content = [p if not (isinstance(p, dict) and p.get("type") == "text")
                   else {"type": "text", "text": QUERY_PLACEHOLDER} for p in content]
    else:
        content = QUERY_PLACEHOLDER
    return {**message, "content": content}


def _messages(request: dict):
    """Chat messages (without Claude Code's per-request billing line, wire/billing.py), or an
    Ollama/completions `prompt` seen as one user turn."""
    if "messages" in request:
        return without_billing_header(request.get("messages") or [])
    if request.get("prompt") is not None:
        return [{"role": "user", "content": request["prompt"]}]
    return []


def _key_material(request: dict, messages, *, endpoint: str, model_identity: str,
                  tenant: str | None, defaults: dict | None) -> dict:
    return {
        "endpoint": endpoint,
        "model": request.get("model", ""),
        "model_identity": model_identity,
        "tenant": tenant_namespace(tenant),
        "params": normalize_params(request, defaults),
        "messages": messages,
    }


def exact_key(request: dict, *, endpoint: str, model_identity: str, tenant: str | None = None,
              defaults: dict | None = None) -> str:
    """The exact-tier key (32 hex chars). `tenant` is the API key (hashed here) or None."""
    material = _key_material(request, _messages(request), endpoint=endpoint,
                             model_identity=model_identity, tenant=tenant, defaults=defaults)
    return _digest(canonical_json(material), b"velollm-exact")


def partition_key(request: dict, *, endpoint: str, model_identity: str,
                  tenant: str | None = None, defaults: dict | None = None) -> str:
    """Everything in the exact key except the last user turn's text."""
    messages = list(_messages(request))
    i = _last_user_index(messages)
    if i is not None:
        messages[i] = _strip_query(messages[i])
    material = _key_material(request, messages, endpoint=endpoint,
                             model_identity=model_identity, tenant=tenant, defaults=defaults)
    return _digest(canonical_json(material), b"velollm-part")


def query_text(request: dict) -> str | None:
    """The text the semantic tier compares: the last user turn (or the prompt). None for a
    request whose answer carries Ollama's `context` (its own prompt's token ids): another
    prompt's answer, however alike, would carry the wrong ones (the exact tier keys on it)."""
    if "context" in request:
        return None
    return last_user_text(_messages(request))
