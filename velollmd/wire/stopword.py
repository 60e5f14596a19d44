"""Which stop string ended an answer, where the backend says so.

OpenAI's answer shape has no field for it: `finish_reason: "stop"` is an end-of-turn token and
a stop string alike. vLLM adds `choice.stop_reason` (the string), llama.cpp names it in
`__verbose.stopping_word` when asked (`verbose: true`, see GenerateRequest.report_stop_word).
Anthropic clients need it (`stop_reason: "stop_sequence"`, `stop_sequence`); the cache keeps
it so that a replay says the same.
"""
from __future__ import annotations


def stop_word_of(answer: dict, choice: dict) -> str | None:
    """The stop string named by an answer (or chunk) and its choice, else None."""
    word = choice.get("stop_reason") or (answer.get("__verbose") or {}).get("stopping_word")
    return word if isinstance(word, str) and word else None
