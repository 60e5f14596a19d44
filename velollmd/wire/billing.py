"""Claude Code's billing-header line, removed from the start of a system prompt.

Claude Code (2.1.36 on) begins its system prompt with a line such as
`x-anthropic-billing-header: cc_version=2.1.119.47e; cc_entrypoint=cli; cch=a7754;` whose
values change on every request. Anthropic's own servers read it as metadata; to a local model
it is noise at position 0 of the prompt, and left there it defeats every prefix reuse: the
exact-cache key, the router's prefix fingerprint and the backend's own KV-cache prefix. The
Anthropic front door drops it from the prompt; the cache key and the fingerprint ignore it
too, for requests that reach the OpenAI door with it (a translating proxy in front of us).
"""
from __future__ import annotations

BILLING_PREFIX = "x-anthropic-billing-header:"


def strip_billing_line(text: str) -> str:
    """`text` without a leading billing-header line (and the blank lines after it)."""
    if not text.startswith(BILLING_PREFIX):
        return text
    _, _, rest = text.partition("\n")
    return rest.lstrip("\n")


def without_billing_header(messages: list) -> list:
    """`messages` with the billing line cut from a leading system message; the same list
    object when there is none (the common case costs one startswith)."""
    if not messages or not isinstance(messages[0], dict) or messages[0].get("role") != "system":
        return messages
    content = messages[0].get("content")
    if isinstance(content, str):
        if not content.startswith(BILLING_PREFIX):
            return messages
        return [{**messages[0], "content": strip_billing_line(content)}, *messages[1:]]
    if isinstance(content, list) and content and isinstance(content[0], dict) \
            and str(content[0].get("text", "")).startswith(BILLING_PREFIX):
        first = {**content[0], "text": strip_billing_line(content[0]["text"])}
        parts = [first, *content[1:]] if first["text"] else content[1:]
        return [{**messages[0], "content": parts}, *messages[1:]]
    return messages
