"""A prompt's fingerprint: a cheap stand-in for its token ids, good enough to route by prefix.

Tokenizing every prompt would cost a backend round trip per request. Instead a prompt is cut
into pieces (a role marker per message, then the content in CHUNK_CHARS-character chunks)
and each piece is hashed. Two prompts share a prefix of pieces exactly when they share that
prefix of text at piece boundaries, so a conversation that grows turn by turn (or a prompt
that grows by appending) keeps matching its earlier turns. Token counts are estimated
(CHARS_PER_TOKEN) so that matches can be weighed in tokens and the Scheduler's block budget
can be fed stable pseudo-token ids: equal pieces give equal ids.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from ..api.request import GenerateRequest

CHUNK_CHARS = 256
CHARS_PER_TOKEN = 4           # rough; real tokenizers give 2-5 characters per token
MESSAGE_OVERHEAD_TOKENS = 4   # role header and separators of a chat template
_ID_MASK = 0x3FFFFFFF         # pseudo-token ids are non-negative int32


@dataclass(frozen=True)
class Fingerprint:
    """Piece hashes and their estimated token counts, in prompt order."""
    hashes: tuple[int, ...]
    num_tokens: tuple[int, ...]

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)

    def common_prefix_tokens(self, other: Fingerprint | None) -> int:
        """Estimated tokens of the longest common prefix of pieces."""
        if other is None:
            return 0
        total = 0
        for mine, theirs, num in zip(self.hashes, other.hashes, self.num_tokens):
            if mine != theirs:
                break
            total += num
        return total

    def pseudo_token_ids(self) -> list[int]:
        """num_tokens ids per piece, derived from its hash: equal prefixes, equal ids."""
        ids: list[int] = []
        for piece_hash, num in zip(self.hashes, self.num_tokens):
            base = piece_hash & _ID_MASK
            ids.extend((base + i) & _ID_MASK for i in range(num))
        return ids


def fingerprint_of(request: GenerateRequest) -> Fingerprint:
    """The fingerprint of a chat request's messages or a completion request's prompt."""
    hashes: list[int] = []
    num_tokens: list[int] = []
    if request.endpoint == "chat":
        for message in request.body.get("messages") or []:
            _add_piece(hashes, num_tokens, ("role", message.get("role")), MESSAGE_OVERHEAD_TOKENS)
            _add_text(hashes, num_tokens, _message_text(message))
    else:
        prompt = request.body.get("prompt")
        _add_text(hashes, num_tokens, prompt if isinstance(prompt, str) else json.dumps(prompt))
    return Fingerprint(tuple(hashes), tuple(num_tokens))


def _message_text(message: dict) -> str:
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
    if message.get("tool_calls"):
        text += json.dumps(message["tool_calls"], sort_keys=True)
    return text


def _add_text(hashes: list[int], num_tokens: list[int], text: str) -> None:
    for start in range(0, len(text), CHUNK_CHARS):
        chunk = text[start:start + CHUNK_CHARS]
        _add_piece(hashes, num_tokens, chunk, -(-len(chunk) // CHARS_PER_TOKEN))


def _add_piece(hashes: list[int], num_tokens: list[int], piece, num: int) -> None:
    hashes.append(hash(piece))
    num_tokens.append(num)
