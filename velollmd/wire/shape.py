"""What a backend answer must look like before anything downstream reads it.

Everything after the backend (tool-call repair, cache recording, the Ollama translation)
indexes into `choices[0]`, `message`, `delta`. A backend that sends another shape, or whose
native reply a converter cannot read, is a 502 naming the backend, never a 500.
"""
from __future__ import annotations

from ..errors import BackendError

UNREADABLE = (TypeError, KeyError, AttributeError, IndexError, ValueError)
TEXT_OR_NONE = (str, type(None))
NUMBER_TYPES = frozenset({float, int})        # a vector's numbers (a set of types: no bool)
TOKEN_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _fail(backend_name: str, what: str):
    raise BackendError(f"backend {backend_name} sent an answer velollmd cannot read: {what}",
                       code="bad_backend_response")


def check_answer(body, endpoint: str, backend_name: str) -> dict:
    """A whole chat.completion / text_completion."""
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or not choices or not _all_objects(choices):
        _fail(backend_name, "no choices")
    _check_usage(body, backend_name)
    for choice in choices:
        if endpoint == "chat":
            message = choice.get("message")
            if not isinstance(message, dict) or not isinstance(message.get("content"), TEXT_OR_NONE):
                _fail(backend_name, "a choice without a message")
            if not isinstance(message.get("tool_calls") or [], list):
                _fail(backend_name, "tool_calls is not a list")
        elif not isinstance(choice.get("text", ""), str):
            _fail(backend_name, "a choice without text")
    return body


def check_chunk(chunk, endpoint: str, backend_name: str) -> dict:
    """One stream chunk (choices may be empty: the usage chunk)."""
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not isinstance(choices, list) or not _all_objects(choices):
        _fail(backend_name, "a stream chunk without choices")
    _check_usage(chunk, backend_name)
    for choice in choices:
        if endpoint == "chat":
            delta = choice.get("delta", {})
            if not isinstance(delta, dict) or not isinstance(delta.get("content"), TEXT_OR_NONE) \
                    or not isinstance(delta.get("tool_calls") or [], list):
                _fail(backend_name, "a stream chunk with a malformed delta")
        elif not isinstance(choice.get("text", ""), str):
            _fail(backend_name, "a stream chunk without text")
    return chunk


def check_embeddings(body, backend_name: str) -> dict:
    """An embeddings list: `data`, each item an object whose embedding is a list of numbers
    (what `dimensions` and base64 read, and what the client decodes)."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not _all_objects(data):
        _fail(backend_name, "no list of embeddings")
    _check_usage(body, backend_name)
    for item in data:
        vector = item.get("embedding")
        if not isinstance(vector, list) or not set(map(type, vector)) <= NUMBER_TYPES:
            _fail(backend_name, "an embedding that is not a list of numbers")
    return body


def check_rerank(body, num_documents: int, backend_name: str) -> dict:
    """A rerank answer: `results`, each an object with the `index` of one of the request's
    documents (what `return_documents` looks up) and a numeric `relevance_score`."""
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or not _all_objects(results):
        _fail(backend_name, "no list of rerank results")
    _check_usage(body, backend_name)
    for result in results:
        index, score = result.get("index"), result.get("relevance_score")
        if type(index) is not int or not 0 <= index < num_documents or type(score) not in NUMBER_TYPES:
            _fail(backend_name, "a rerank result without a document index and a relevance_score")
    return body


def _all_objects(choices: list) -> bool:
    """Every item a dict with an integer index, when it has one (a loop: all() over a
    generator cost more for the usual one item)."""
    for choice in choices:
        if not isinstance(choice, dict) or not isinstance(choice.get("index", 0), int):
            return False
    return True


def _check_usage(body: dict, backend_name: str) -> None:
    usage = body.get("usage")
    if usage is not None and not _token_counts(usage):
        _fail(backend_name, "usage is not an object of token counts")


def _token_counts(usage) -> bool:
    """An object whose token counts (when present) are integers, not booleans."""
    if not isinstance(usage, dict):
        return False
    for key in TOKEN_COUNTS:
        count = usage.get(key, 0)
        if not isinstance(count, int) or isinstance(count, bool):
            return False
    return True
