"""What may be served from the cache and what may be stored in it. Pure functions.

Read side: `Cache-Control: no-cache` / `no-store` and `x-velollm-cache: bypass` skip the
lookup; so do requests whose answer is not reproducible (n > 1, logprobs, a completion's
`logprobs: 0` too, vLLM's prompt_logprobs, sampling with temperature > 0 and no seed unless cache_sampled).
Write side: only complete, successful single-choice responses of such requests are stored;
`no-cache` still stores the fresh answer (it only forbids serving a stored one), `no-store`
and `bypass` do not.
"""
from __future__ import annotations

from ..wire.headers import header_value
from ..wire.request import wants_logprobs
from .exact import CachedResponse
from .keys import normalize_params

COMPLETE_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "function_call"})
BYPASS_HEADER = "x-velollm-cache"


def _header(headers: dict | None, name: str) -> str:
    return str(header_value(headers, name, "")).lower()


def _cache_control(headers: dict | None) -> set[str]:
    """The Cache-Control directives; without that header, HTTP/1.0's `Pragma: no-cache` is
    `no-cache` (RFC 9111 5.4)."""
    control = _header(headers, "cache-control")
    if not control:
        return {"no-cache"} if "no-cache" in _header(headers, "pragma") else set()
    return {d.strip().split("=")[0] for d in control.split(",") if d.strip()}


def client_bypass(headers: dict | None) -> str | None:
    """"bypass" when the client asks not to be served from the cache, else None."""
    if _header(headers, BYPASS_HEADER) == "bypass":
        return "bypass"
    if _cache_control(headers) & {"no-cache", "no-store"}:
        return "bypass"
    return None


def client_forbids_store(headers: dict | None) -> bool:
    return _header(headers, BYPASS_HEADER) == "bypass" or "no-store" in _cache_control(headers)


def reproducible(request: dict, *, defaults: dict | None = None,
                 cache_sampled: bool = False) -> bool:
    """Whether the same request would give the same single answer again."""
    params = normalize_params(request, defaults)
    if params.get("n", 1) != 1 or wants_logprobs(params) or params.get("prompt_logprobs") is not None:
        return False                                            # the cache keeps no logprobs
    temperature = params.get("temperature", 1.0)    # OpenAI's default when none is known
    sampled = isinstance(temperature, (int, float)) and temperature > 0
    return cache_sampled or not sampled or params.get("seed") is not None


def response_storable(response: CachedResponse | None, *, status: int = 200,
                      aborted: bool = False) -> bool:
    """Only a complete, successful answer: no error status, no aborted stream."""
    return (response is not None and status == 200 and not aborted
            and response.finish_reason in COMPLETE_FINISH_REASONS)
