"""Translation between OpenAI shapes and Ollama's /api/chat and /api/generate shapes.

Both directions live here: OpenAI requests going to an Ollama backend, and Ollama-native
requests from clients going to any other backend. Ollama differs from OpenAI in ways that
break clients when forgotten: tool-call arguments are objects (OpenAI: JSON strings) and
carry no ids, durations are nanoseconds, usage is prompt_eval_count / eval_count, sampling
parameters live in `options`, and streams are NDJSON ending with a `done: true` object.
"""
from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime, timezone

from ..errors import BadRequest
from . import wirejson
from .chunks import chunk_choice, chunk_head
from .ids import new_call_id
from .request import max_tokens_of, one_prompt
from .tools import name_and_schema, parse_tool_choice

OPTION_FIELDS = {          # OpenAI field -> Ollama option
    "temperature": "temperature", "top_p": "top_p", "seed": "seed", "top_k": "top_k",
    "min_p": "min_p", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "repetition_penalty": "repeat_penalty",   # vLLM's name
    "repeat_penalty": "repeat_penalty",        # after it: given both, Ollama's own wins (and reads back)
}
MAX_NUM_PREDICT = 1 << 30       # Ollama takes any num_predict; no context is longer than this
# Ollama options that configure the model load, not one request: nothing to pass on (num_ctx
# and num_keep are passed: a request's context is sized by one and its prompt cut by the other,
# as Ollama does).
LOAD_OPTIONS = frozenset({"num_gpu", "main_gpu", "num_thread", "num_batch", "use_mmap",
                          "use_mlock", "numa", "low_vram", "vocab_only", "f16_kv"})


def ollama_format(tools: list[dict], tool_choice) -> dict | None:
    """A JSON schema for Ollama's `format` that forces a {"name", "arguments"} call, or None
    when tool_choice does not force a call."""
    mode, name = parse_tool_choice(tool_choice)
    if mode not in ("required", "named"):
        return None
    schemas = dict(map(name_and_schema, tools or ()))
    schemas.pop(None, None)
    names = [name] if mode == "named" else list(schemas)
    options = [{"type": "object", "required": ["name", "arguments"],
                "properties": {"name": {"const": n, "enum": [n]},
                               "arguments": schemas[n] or {"type": "object"}}}
               for n in names if n in schemas]
    if not options:
        return None
    return options[0] if len(options) == 1 else {"anyOf": options}


DURATION_RE = re.compile(r"([0-9]*\.?[0-9]+)(ns|us|µs|ms|s|m|h)")
DURATION_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def keep_alive_seconds(value) -> float | None:
    """Ollama's `keep_alive` in seconds: a number of seconds or a Go duration ("5m", "1h30m",
    "300ms"; a plain number string counts as seconds); negative keeps the model for good
    (math.inf); None (absent or null) is the server's default. ValueError for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"invalid keep_alive {value!r}: expected a duration such as \"5m\" or seconds")
    if isinstance(value, str):
        value = _duration_s(value.strip())
    if not math.isfinite(value):
        raise ValueError(f"invalid keep_alive {value!r}")
    return math.inf if value < 0 else float(value)


def _duration_s(text: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    try:
        return sign * float(body)                     # "300": seconds
    except ValueError:
        pass
    pieces = DURATION_RE.findall(body)
    if not body or "".join(number + unit for number, unit in pieces) != body:
        raise ValueError(f"invalid keep_alive {text!r}: expected a duration such as \"5m\" or seconds")
    return sign * sum(float(number) * DURATION_UNITS_S[unit] for number, unit in pieces)


def now_rfc3339() -> str:
    return rfc3339(time.time())


def rfc3339(wall_time: float) -> str:
    """A wall-clock time as Ollama writes its times (UTC, `Z`)."""
    return datetime.fromtimestamp(wall_time, timezone.utc).isoformat().replace("+00:00", "Z")


# -- OpenAI request -> Ollama request ------------------------------------------------------

def openai_to_ollama_chat(body: dict, num_ctx: int = 0) -> dict:
    out = {"model": body["model"], "messages": [_message_to_ollama(m) for m in body["messages"]],
           "stream": bool(body.get("stream")), "options": _options_to_ollama(body, num_ctx)}
    if body.get("tools") and body.get("tool_choice") != "none":
        out["tools"] = body["tools"]
    fmt = _format_to_ollama(body.get("response_format"))
    if fmt is None and body.get("tools"):
        fmt = ollama_format(body["tools"], body.get("tool_choice"))   # forces required/named calls
    if fmt is not None:
        out["format"] = fmt
    for passthrough in ("keep_alive", "think"):
        if passthrough in body:
            out[passthrough] = body[passthrough]
    kwargs = body.get("chat_template_kwargs")
    if "think" not in out and isinstance(kwargs, dict) and isinstance(kwargs.get("enable_thinking"), bool):
        out["think"] = kwargs["enable_thinking"]
    return out


def openai_to_ollama_generate(body: dict, num_ctx: int = 0) -> dict:
    prompt = one_prompt(body.get("prompt", ""), "Ollama")
    if not isinstance(prompt, str):
        raise BadRequest("Ollama takes a text prompt, not token ids", param="prompt")
    out = {"model": body["model"], "prompt": prompt, "raw": True, "stream": bool(body.get("stream")), "options": _options_to_ollama(body, num_ctx)}
    if body.get("suffix"):        # Ollama fills in the middle with the model's template, which raw skips
        out["suffix"] = body["suffix"]
        del out["raw"]
    return out


def _options_to_ollama(body: dict, num_ctx: int) -> dict:
    options = {ollama: body[name] for name, ollama in OPTION_FIELDS.items() if body.get(name) is not None}
    max_tokens = max_tokens_of(body)
    if max_tokens:
        options["num_predict"] = max_tokens
    stop = body.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    num_ctx = body.get("num_ctx") or num_ctx
    if num_ctx:
        options["num_ctx"] = num_ctx
    options.update(body.get("options") or {})      # Ollama options given explicitly win
    return options


def _format_to_ollama(response_format):
    if not isinstance(response_format, dict):
        return None
    if response_format.get("type") == "json_object":
        return "json"
    if response_format.get("type") == "json_schema":
        return (response_format.get("json_schema") or {}).get("schema")
    return None


def _message_to_ollama(message: dict) -> dict:
    role = "system" if message.get("role") == "developer" else message.get("role")
    out = {"role": role, "content": ""}
    content = message.get("content")
    if isinstance(content, str):
        out["content"] = content
    elif isinstance(content, list):
        _refuse_other_parts(content)
        out["content"] = "".join(p.get("text", "") for p in content if p.get("type") == "text")
        images = [_image_data(p) for p in content if p.get("type") == "image_url"]
        if any(images):
            out["images"] = [i for i in images if i]
    if message.get("tool_calls"):
        out["tool_calls"] = [{"function": {"name": c["function"]["name"],
                                           "arguments": _arguments_object(c["function"].get("arguments"))}}
                             for c in message["tool_calls"]]
    if role == "tool" and message.get("name"):
        out["tool_name"] = message["name"]
    if isinstance(message.get("reasoning_content"), str) and message["reasoning_content"]:
        out["thinking"] = message["reasoning_content"]       # an earlier turn's thoughts, as Ollama keeps them
    return out


def _refuse_other_parts(content: list) -> None:
    """Ollama takes a message's text and images: any other part (audio, a file) is a 400
    naming it, never dropped without a word."""
    for part in content:
        if part.get("type") not in ("text", "image_url"):
            raise BadRequest(f"content parts of type {part.get('type')!r} cannot be sent to Ollama "
                             "(text and image_url only)", param="messages")


def _image_data(part: dict) -> str:
    url = (part.get("image_url") or {}).get("url", "") if isinstance(part.get("image_url"), dict) else part.get("image_url", "")
    return url.split(",", 1)[1] if url.startswith("data:") and "," in url else ""


def _arguments_object(arguments):
    if isinstance(arguments, dict):
        return arguments
    try:
        value = wirejson.loads(arguments or "{}")
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


# -- Ollama response -> OpenAI response ----------------------------------------------------

def _finish_reason(reply: dict, has_tool_calls: bool) -> str:
    if has_tool_calls:
        return "tool_calls"
    return "length" if reply.get("done_reason") == "length" else "stop"


def ollama_usage(reply: dict) -> dict:
    prompt, completion = int(reply.get("prompt_eval_count") or 0), int(reply.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def ollama_timings(reply: dict) -> dict:
    """llama.cpp-style timings from Ollama's nanosecond durations (kept for clients)."""
    prompt_ms = (reply.get("prompt_eval_duration") or 0) / 1e6
    predicted_ms = (reply.get("eval_duration") or 0) / 1e6
    predicted_n = reply.get("eval_count") or 0
    return {"prompt_n": reply.get("prompt_eval_count") or 0, "prompt_ms": prompt_ms,
            "predicted_n": predicted_n, "predicted_ms": predicted_ms,
            "predicted_per_second": predicted_n / (predicted_ms / 1e3) if predicted_ms else 0.0,
            "total_duration_ns": reply.get("total_duration") or 0,
            "load_duration_ns": reply.get("load_duration") or 0}


def openai_tool_calls(calls: list[dict]) -> list[dict]:
    return [{"id": c.get("id") or new_call_id(), "type": "function",
             "function": {"name": c["function"]["name"],
                          "arguments": json.dumps(c["function"].get("arguments") or {}, ensure_ascii=False)
                          if not isinstance(c["function"].get("arguments"), str) else c["function"]["arguments"]}}
            for c in calls]


def ollama_chat_to_openai(reply: dict, model: str, request_id: str) -> dict:
    message = reply.get("message") or {}
    tool_calls = openai_tool_calls(message.get("tool_calls") or [])
    out_message = {"role": "assistant", "content": message.get("content") or ("" if not tool_calls else None)}
    if message.get("thinking"):
        out_message["reasoning_content"] = message["thinking"]
    if tool_calls:
        out_message["tool_calls"] = tool_calls
    return {"id": request_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": out_message, "logprobs": None,
                         "finish_reason": _finish_reason(reply, bool(tool_calls))}],
            "usage": ollama_usage(reply), "timings": ollama_timings(reply)}


def ollama_generate_to_openai(reply: dict, model: str, request_id: str) -> dict:
    return {"id": request_id, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": reply.get("response", ""), "logprobs": None,
                         "finish_reason": _finish_reason(reply, False)}],
            "usage": ollama_usage(reply), "timings": ollama_timings(reply)}


class OllamaChatStream:
    """Ollama NDJSON chat objects -> OpenAI chat.completion.chunk dicts."""

    def __init__(self, model: str, request_id: str, chat: bool = True):
        self.chat = chat
        self.head = chunk_head(request_id, model, int(time.time()), chat=chat)
        self.started = False
        self.num_tool_calls = 0

    def chunk(self, delta_or_text, finish_reason=None) -> dict:
        return {**self.head, "choices": [chunk_choice(delta_or_text, finish_reason, chat=self.chat)]}

    def feed(self, reply: dict) -> list[dict]:
        chunks = []
        if self.chat and not self.started:
            chunks.append(self.chunk({"role": "assistant", "content": ""}))
        self.started = True
        chunks += self._content_chunks(reply)
        if reply.get("done"):
            finish = _finish_reason(reply, self.num_tool_calls > 0)
            chunks.append(self.chunk({} if self.chat else "", finish_reason=finish))
            chunks.append({**self.head, "choices": [], "usage": ollama_usage(reply),
                           "timings": ollama_timings(reply)})
        return chunks

    def _content_chunks(self, reply: dict) -> list[dict]:
        if not self.chat:
            text = reply.get("response", "")
            return [self.chunk(text)] if text else []
        message = reply.get("message") or {}
        chunks = []
        if message.get("thinking"):
            chunks.append(self.chunk({"reasoning_content": message["thinking"]}))
        if message.get("content"):
            chunks.append(self.chunk({"content": message["content"]}))
        for call in openai_tool_calls(message.get("tool_calls") or []):
            chunks.append(self.chunk({"tool_calls": [{"index": self.num_tool_calls, **call}]}))
            self.num_tool_calls += 1
        return chunks


# -- Ollama-native request (from a client) -> OpenAI request --------------------------------

def ollama_chat_request_to_openai(body: dict) -> dict:
    out = {"model": body.get("model"), "messages": [_message_from_ollama(m) for m in body.get("messages") or []],
           "stream": body.get("stream", True) is not False}
    if body.get("tools"):
        out["tools"] = body["tools"]
    _options_from_ollama(body, out)
    out.update(_chat_logprobs(body), **_thinking_switch(body))
    return out


THINK_LEVELS = frozenset({"low", "medium", "high"})     # gpt-oss's, as Ollama's `think` takes them


def _thinking_switch(body: dict) -> dict:
    """Ollama's `think: true|false` as the chat template switch that vLLM, llama-server and the
    engine read (`chat_template_kwargs.enable_thinking`); a level ("high") as OpenAI's
    `reasoning_effort`, which vLLM and the llama.cpp backend give gpt-oss's template."""
    think = body.get("think")
    if isinstance(think, bool):
        return {"chat_template_kwargs": {"enable_thinking": think}}
    return {"reasoning_effort": think} if think in THINK_LEVELS else {}


def _chat_logprobs(body: dict) -> dict:
    """Ollama's `logprobs` / `top_logprobs` for chat; top_logprobs only when asked for (0 and
    none mean the same: each token without alternatives)."""
    if not body.get("logprobs"):
        return {}
    return {"logprobs": True, **({"top_logprobs": body["top_logprobs"]} if body.get("top_logprobs") else {})}


def ollama_generate_request_to_openai(body: dict) -> tuple[str, dict]:
    """("chat" | "completion", OpenAI body): raw prompts go to /v1/completions."""
    base = {"model": body.get("model"), "stream": body.get("stream", True) is not False}
    if body.get("suffix"):         # fill in the middle: served where the backend can, else a 400 there
        base["suffix"] = body["suffix"]
    _options_from_ollama(body, base)
    # raw, or fill in the middle (Ollama renders the model's FIM template then, not the chat turn);
    # completions' logprobs counts alternatives, and 0 gives none from llama-server
    if body.get("raw") or body.get("suffix"):
        logprobs = {"logprobs": body.get("top_logprobs") or 1} if body.get("logprobs") else {}
        return "completion", {**base, **logprobs, "prompt": body.get("prompt", "")}
    base.update(_chat_logprobs(body), **_thinking_switch(body))
    messages = [{"role": "system", "content": body["system"]}] if body.get("system") else []
    user = {"role": "user", "content": body.get("prompt", "")}
    if body.get("images"):
        user["content"] = [{"type": "text", "text": body.get("prompt", "")},
                           *({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{i}"}}
                             for i in body["images"])]
    return "chat", {**base, "messages": [*messages, user]}


def _options_from_ollama(body: dict, out: dict) -> None:
    options = dict(body.get("options") or {})
    reverse = {ollama: name for name, ollama in OPTION_FIELDS.items()}
    for key in list(options):
        if key in reverse:
            out[reverse[key]] = options.pop(key)
    _as_llama_cpp_reads(out)
    num_predict = options.pop("num_predict", None)
    if isinstance(num_predict, (int, float)) and num_predict > 0:     # 0, -1, -2: no limit, as in Ollama
        out["max_tokens"] = min(int(num_predict), MAX_NUM_PREDICT)
    if options.get("stop"):
        out["stop"] = options.pop("stop")
    for key, value in options.items():                # top_k, mirostat, logit_bias...: llama.cpp and
        if key not in LOAD_OPTIONS:                    # vLLM take these at the top level
            out[key] = value
    fmt = body.get("format")
    if fmt == "json":
        out["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, dict):
        out["response_format"] = {"type": "json_schema", "json_schema": {"name": "format", "schema": fmt}}
    if "keep_alive" in body:
        out["keep_alive"] = body["keep_alive"]
    out["truncate"] = body.get("truncate") is not False     # Ollama's default: a prompt over the context is cut


def _as_llama_cpp_reads(out: dict) -> None:
    """Ollama's sampling values that mean the same as one in range, as llama.cpp's samplers read
    them: a negative temperature is greedy (0), a top_p above 1 keeps every token (1)."""
    if isinstance(out.get("temperature"), (int, float)) and out["temperature"] < 0:
        out["temperature"] = 0
    if isinstance(out.get("top_p"), (int, float)) and out["top_p"] > 1:
        out["top_p"] = 1


def _message_from_ollama(message: dict) -> dict:
    out = {"role": message.get("role"), "content": message.get("content", "")}
    if message.get("images"):
        out["content"] = [{"type": "text", "text": message.get("content", "")},
                          *({"type": "image_url", "image_url": {"url": f"data:image/png;base64,{i}"}}
                            for i in message["images"])]
    if message.get("tool_calls"):
        out["tool_calls"] = openai_tool_calls(message["tool_calls"])
    if message.get("tool_name"):
        out["name"] = message["tool_name"]
    if isinstance(message.get("thinking"), str) and message["thinking"]:
        out["reasoning_content"] = message["thinking"]     # an earlier turn's thoughts, for the template
    return out


# -- OpenAI response -> Ollama-native response (to a client) --------------------------------

def ollama_final_fields(usage: dict | None, timings: dict | None, started_ns: int, done_reason: str) -> dict:
    """Ollama's closing counts and durations (ns). With llama.cpp-style `timings` (llama-server,
    the engine) the prompt's and the generation's own times, and the wait before them (queue,
    model load: what Ollama's load_duration spans) as load_duration; else all of it as eval."""
    usage = usage or {}
    total = time.monotonic_ns() - started_ns
    prompt_ns, eval_ns = _duration_ns(timings, "prompt_ms"), _duration_ns(timings, "predicted_ms")
    if prompt_ns is None or eval_ns is None:
        prompt_ns, eval_ns = 0, total
    return {"done": True, "done_reason": done_reason, "total_duration": total,
            "load_duration": max(0, total - prompt_ns - eval_ns),
            "prompt_eval_count": usage.get("prompt_tokens", 0), "prompt_eval_duration": prompt_ns,
            "eval_count": usage.get("completion_tokens", 0), "eval_duration": eval_ns}


def _duration_ns(timings: dict | None, name: str) -> int | None:
    value = timings.get(name) if isinstance(timings, dict) else None
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        return None
    return int(value * 1e6)


def ollama_logprobs(logprobs) -> list[dict] | None:
    """Ollama's `logprobs` ([{token, logprob, top_logprobs: [{token, logprob}]}]) from an OpenAI
    choice's: chat's `content` list, or the completions' parallel `tokens` / `token_logprobs` /
    `top_logprobs` (one {token: logprob} per token); None when it has none."""
    if not isinstance(logprobs, dict):
        return None
    if "content" in logprobs:
        return [{**_token_logprob(e.get("token"), e.get("logprob")),
                 "top_logprobs": [_token_logprob(t.get("token"), t.get("logprob"))
                                  for t in _list(e.get("top_logprobs")) if isinstance(t, dict)]}
                for e in _list(logprobs["content"]) if isinstance(e, dict)]
    tokens, values = _list(logprobs.get("tokens")), _list(logprobs.get("token_logprobs"))
    tops = _list(logprobs.get("top_logprobs")) or [{}] * len(tokens)
    return [{**_token_logprob(token, value),
             "top_logprobs": [_token_logprob(t, v) for t, v in (top.items() if isinstance(top, dict) else ())]}
            for token, value, top in zip(tokens, values, tops)]


def _token_logprob(token, logprob) -> dict:
    return {"token": token if isinstance(token, str) else "",
            "logprob": logprob if isinstance(logprob, (int, float)) and not isinstance(logprob, bool) else 0.0}


def _list(value) -> list:
    return value if isinstance(value, list) else []


def ollama_tool_calls(calls: list[dict]) -> list[dict]:
    return [{"function": {"name": c["function"]["name"],
                          "arguments": _arguments_object(c["function"].get("arguments"))}} for c in calls]


def done_reason_of(finish_reason: str | None) -> str:
    return "length" if finish_reason == "length" else "stop"
