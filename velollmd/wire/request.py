"""The one internal request shape.

Every API dialect (OpenAI, Ollama, ...) turns its requests into a `GenerateRequest` whose
`body` is an OpenAI-shaped chat or completion request, validated by `api/validate.py`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import BadRequest


@dataclass
class GenerateRequest:
    endpoint: str                       # "chat" | "completion"
    body: dict                          # OpenAI-shaped request, validated
    headers: dict[str, str] = field(default_factory=dict)
    api_key: str = ""
    priority: int = 5
    raw_key: str = ""                   # hash of path + raw body + API key (the replay memo)
    report_stop_word: bool = False      # ask the backend which stop string ended the answer
    client_model: str = ""              # the name the client asked for, when an alias renamed it
    key_name: str = ""                  # the caller's configured key's name ("" = none): usage, access log
    dropped: str = ""                   # fields validated and dropped (web_search_options): x-velollm-dropped
    queue_waited_s: float = 0.0         # waited in the daemon's queue for the backend it goes to: a
                                        # backend's own queue (the engine's) has the rest of queue_timeout_s
    keeps_model: bool = False           # an Ollama route set how long its model stays loaded (its
                                        # keep_alive, Backend.keep_model); any other request: the default
    model: str = field(init=False, repr=False, compare=False)      # body["model"]
    stream: bool = field(init=False, repr=False, compare=False)    # body["stream"], made a bool

    def __post_init__(self):
        """`model` and `stream` read from the body once: every layer of a request's way asks
        for them, ~10 times a request (a property's call each time cost more than this). A
        new body comes with a new request (dataclasses.replace), which reads them again."""
        self.model = self.body["model"]
        self.stream = bool(self.body.get("stream"))

    @property
    def echo_model(self) -> str:
        """The model name answers carry: the client's own, even when an alias served it."""
        return self.client_model or self.model

    @property
    def include_usage(self) -> bool:
        return bool((self.body.get("stream_options") or {}).get("include_usage"))

    @property
    def tools(self) -> list[dict]:
        return self.body.get("tools") or []


# OpenAI's reasoning efforts -> what local servers take: "none" (no thinking) or gpt-oss's
# "low" / "medium" / "high" (OpenAI's "minimal" is the least of them, "xhigh" and "max" the most).
REASONING_EFFORTS = {"none": "none", "minimal": "low", "low": "low", "medium": "medium", "high": "high",
                     "xhigh": "high", "max": "high"}


def reasoning_effort_of(body: dict) -> str | None:
    """A chat's `reasoning_effort` as local servers take it (REASONING_EFFORTS); None when the
    request does not say (validated: api/validate.py)."""
    effort = body.get("reasoning_effort")
    return REASONING_EFFORTS.get(effort) if isinstance(effort, str) else None


def max_tokens_of(body: dict) -> int | None:
    return body.get("max_completion_tokens") or body.get("max_tokens")


def wants_logprobs(body: dict) -> bool:
    """Logprobs asked for by an OpenAI chat or completion body: chat's `logprobs: true`, or a
    legacy completion's `logprobs: N`, where 0 too asks for the chosen tokens' logprobs."""
    logprobs = body.get("logprobs")
    return (logprobs is not None and logprobs is not False) or bool(body.get("top_logprobs"))


def wants_json(body: dict) -> bool:
    """A JSON answer asked for by an OpenAI body's response_format (json_object or json_schema)."""
    fmt = body.get("response_format")
    return isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema")


def one_prompt(prompt: str | list, server: str) -> str | list[int]:
    """A completion's prompt for a `server` that answers one prompt a request: a string or
    token ids. A list of prompts (strings or token arrays) asks for a completion each: one is
    served, several are refused, never joined."""
    if not isinstance(prompt, list) or all(isinstance(t, int) for t in prompt) and prompt:
        return prompt
    if len(prompt) != 1:
        raise BadRequest(f"{server} answers one prompt per request, got {len(prompt)}; "
                         "send each prompt in a request of its own", param="prompt")
    return prompt[0]


def logit_bias_of(bias: dict | list) -> dict[int, float]:
    """OpenAI's {"token id": bias} or llama.cpp's [[id, bias], ...] as {id: bias}, for a server
    that takes token ids only (the engine; llama-server also tokenizes text keys). Not clamped
    to OpenAI's [-100, 100]: llama.cpp takes any value. ValueError saying what is wrong."""
    if not isinstance(bias, (dict, list)):
        raise ValueError("expected an object of token id -> bias")
    pairs = list(bias.items()) if isinstance(bias, dict) else bias
    out: dict[int, float] = {}
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"expected [token id, bias] pairs, got {pair!r}")
        key, value = pair
        token_id = int(key) if isinstance(key, str) and key.strip().isdigit() else key
        if not isinstance(token_id, int) or isinstance(token_id, bool):
            raise ValueError(f"token id {key!r} is not an integer")
        out[token_id] = logit_bias_value(key, value)
    return out


def logit_bias_value(key, value) -> float:
    """One logit_bias entry's bias: a number, or false for never (-inf, llama.cpp's);
    ValueError for anything else (llama-server skips such an entry without a word)."""
    if value is False:
        return -math.inf
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"bias for token {key} must be a number, got {value!r}")
    return float(value)
