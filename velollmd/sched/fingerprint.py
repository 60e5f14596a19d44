"""A prompt's fingerprint: its pieces' hashes, token counts and token ids, to route by prefix.

A prompt is cut into pieces: a role marker per message, then the message's text. A text the
backend tokenized (`token_ids` maps it to its real ids, see tokens.py) becomes runs of
TOKENS_PER_PIECE real ids with exact counts. Any other text is cut into CHUNK_CHARS-character
chunks whose token counts are estimated (CHARS_PER_TOKEN). Each piece is hashed. Two prompts
share a prefix of pieces exactly when they share that prefix of text (or ids) at piece
boundaries, so a conversation that grows turn by turn (or a prompt that grows by appending)
keeps matching its earlier turns. `token_ids()` feeds the Scheduler's block budget: the real
ids where known, else stable pseudo-token ids (equal pieces give equal ids).
"""
from __future__ import annotations

import json
from array import array
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..wire.billing import without_billing_header
from ..wire.request import GenerateRequest

CHUNK_CHARS = 256
CHARS_PER_TOKEN = 4           # rough; real tokenizers give 2-5 characters per token
TOKENS_PER_PIECE = CHUNK_CHARS // CHARS_PER_TOKEN   # real ids per piece: as fine as an estimate
MESSAGE_OVERHEAD_TOKENS = 4   # role header and separators of a chat template
_ID_MASK = 0x3FFFFFFF         # pseudo-token ids are non-negative int32

TokenIds = Mapping[str, Sequence[int]]      # text -> its real token ids (int32 arrays best)


@dataclass(frozen=True)
class Fingerprint:
    """Piece hashes and token counts in prompt order; per piece its real ids, or None where
    the count is an estimate (empty: all estimated)."""
    hashes: tuple[int, ...]
    num_tokens: tuple[int, ...]
    piece_ids: tuple[array | None, ...] = field(default=(), repr=False, compare=False)  # int32 runs

    def __init__(self, hashes: tuple[int, ...], num_tokens: tuple[int, ...],
                 piece_ids: tuple[array | None, ...] = ()):
        # One dict update where the frozen dataclass's own __init__ makes an object.__setattr__
        # call per field (a request makes one Fingerprint).
        self.__dict__.update(hashes=hashes, num_tokens=num_tokens, piece_ids=piece_ids)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)

    @property
    def prefix_keys(self) -> tuple[int, ...]:
        """prefix_keys[i] stands for pieces[:i + 1]: two prompts share their first i + 1
        pieces exactly when these keys are equal (up to 64-bit hash collisions). Computed once
        (kept in the instance's dict: functools.cached_property takes a lock per first use on
        Python 3.11)."""
        keys = self.__dict__.get("_prefix_keys")
        if keys is None:
            keys, key = [], 0
            for piece_hash in self.hashes:
                key = hash((key, piece_hash))
                keys.append(key)
            keys = self.__dict__["_prefix_keys"] = tuple(keys)
        return keys

    def common_prefix_tokens(self, other: Fingerprint | None) -> int:
        """Tokens of the longest common prefix of pieces."""
        if other is None:
            return 0
        total = 0
        for mine, theirs, num in zip(self.hashes, other.hashes, self.num_tokens):
            if mine != theirs:
                break
            total += num
        return total

    def token_ids(self) -> array:
        """num_tokens ids per piece as one int32 array (the block allocator reads it without a
        copy): a piece's real ids, or its hash-derived pseudo id repeated (equal prefixes,
        equal ids; the allocator's block hashes chain positions in)."""
        ids = array("i")
        piece_ids = self.piece_ids or (None,) * len(self.hashes)
        for piece_hash, num, real in zip(self.hashes, self.num_tokens, piece_ids):
            ids.extend(real if real is not None else array("i", [piece_hash & _ID_MASK]) * num)
        return ids


def fingerprint_of(request: GenerateRequest, token_ids: TokenIds | None = None) -> Fingerprint:
    """The fingerprint of a chat request's messages or a completion request's prompt;
    texts found in `token_ids` are pieced by their real ids."""
    pieces = _Pieces(token_ids or {})
    if request.endpoint == "chat":
        for message in _messages(request):
            pieces.add(("role", message.get("role")), MESSAGE_OVERHEAD_TOKENS)
            pieces.add_text(_message_text(message))
    else:
        pieces.add_text(_prompt_text(request))
    return Fingerprint(tuple(pieces.hashes), tuple(pieces.num_tokens), tuple(pieces.ids))


def texts_of(request: GenerateRequest) -> list[str]:
    """The texts fingerprint_of pieces, in prompt order (the ones worth tokenizing)."""
    if request.endpoint == "chat":
        return [_message_text(message) for message in _messages(request)]
    return [_prompt_text(request)]


def _messages(request: GenerateRequest) -> list[dict]:
    """The messages, without Claude Code's per-request billing line (wire/billing.py)."""
    return without_billing_header(request.body.get("messages") or [])


def _message_text(message: dict) -> str:
    content = message.get("content")
    text = content if isinstance(content, str) else json.dumps(content, sort_keys=True)
    if message.get("tool_calls"):
        text += json.dumps(message["tool_calls"], sort_keys=True)
    return text


def _prompt_text(request: GenerateRequest) -> str:
    prompt = request.body.get("prompt")
    return prompt if isinstance(prompt, str) else json.dumps(prompt)


class _Pieces:
    """The three columns of a Fingerprint, appended piece by piece."""

    def __init__(self, token_ids: TokenIds):
        self.token_ids = token_ids
        self.hashes: list[int] = []
        self.num_tokens: list[int] = []
        self.ids: list[array | None] = []

    def add(self, key, num: int, ids: array | None = None) -> None:
        self.hashes.append(hash(key))
        self.num_tokens.append(num)
        self.ids.append(ids)

    def add_text(self, text: str) -> None:
        real = self.token_ids.get(text) if self.token_ids else None
        if real is not None:
            real = real if isinstance(real, array) and real.typecode == "i" else array("i", real)
            for start in range(0, len(real), TOKENS_PER_PIECE):
                run = real[start:start + TOKENS_PER_PIECE]                  # (<= 64,) int32
                self.add(run.tobytes(), len(run), run)
            return
        if len(text) <= CHUNK_CHARS:            # at most one chunk (a short message): no loop
            if text:
                self.add(text, -(-len(text) // CHARS_PER_TOKEN))
            return
        for start in range(0, len(text), CHUNK_CHARS):
            chunk = text[start:start + CHUNK_CHARS]
            self.add(chunk, -(-len(chunk) // CHARS_PER_TOKEN))
