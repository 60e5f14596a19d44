"""JSON mode: an incremental JSON recogniser and the per-token constraint built on it.

The recogniser is a pushdown automaton over the bytes of the output (tokens are byte strings;
JSON's structure is ASCII, and string content is checked as UTF-8). Its language is the one of
llama.cpp's json grammar and Ollama's `format: "json"`: one object at the top level, with
objects, arrays, strings (escapes incl. \\uXXXX, no raw control characters), numbers
(-0.5e+3), true / false / null and whitespace. A whitespace run is at most MAX_WHITESPACE_RUN
bytes (llama.cpp's grammar bounds it too), so a sampler cannot pad forever; once the object is
complete only the end of the sequence remains (as with llama.cpp's grammar: nothing follows
the root object). Whitespace before the object is allowed (SentencePiece's "▁{").

With a schema (engine/json_schema.py compiles it to nodes), the same automaton also follows
the node each value must match: an object's keys are its schema's, in order (or, for a map,
free strings, as many as its maxProperties allows), and every value starts and runs as its
type allows. Runs of digits are at most MAX_DIGITS long, and every
number admitted is finite as a double (its exponent bounded).

A state is an immutable tuple (mode, aux, stack, ws): `stack` a tuple of the open containers'
frames, `aux` the mode's detail (a number's part, a literal's remaining texts, a string's
pending escape or UTF-8 bytes, the node a value must match), `ws` the current whitespace run.
`step` gives the next state or None.

JsonVocab holds what is computed once per model: each token's bytes (None for the tokens never
allowed: control, unknown, unused, empty) and the tokens of each byte string, which tokens are
plain string content (allowed anywhere inside a string), and first/second bytes for a fast full
mask. JsonConstraint is one
sequence's state over it: `allows(token)` checks one candidate, `mask()` every token.
"""
from __future__ import annotations

import threading
from typing import Sequence

import numpy as np

MAX_WHITESPACE_RUN = 20

# modes
(START, OBJ_FIRST, KEY, COLON, VALUE, ARRAY_FIRST, AFTER_VALUE, STRING, KEY_STRING, NUMBER, INTEGER, LITERAL,
 DONE) = range(13)
_WHITESPACE = frozenset(b" \t\n\r")

# NUMBER / INTEGER aux: (part, digits, limit, exponent): the part being where in
# -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? the number is, `digits` the digits of that
# part so far. Each run of digits is at most MAX_DIGITS long (llama.cpp's grammars bound them
# too), so a number cannot run on forever, and an exponent at most MAX_EXPONENT_DIGITS. Every
# number admitted is finite as a double (a JSON reader's float, JavaScript's Number): `limit` is
# the largest exponent the number may take, MAX_DECIMAL_EXPONENT less its integer digits (with
# n of them it is below 10 ** (n + exponent), and 10 ** 308 < 1.8e308, the largest double; a
# negative exponent only shrinks it), and `exponent` the exponent's value so far.
N_MINUS, N_ZERO, N_INT, N_DOT, N_FRAC, N_E, N_E_SIGN, N_EXP = range(8)
MAX_DIGITS = 16
MAX_EXPONENT_DIGITS = 3
MAX_DECIMAL_EXPONENT = 308
_NEGATIVE_EXPONENT_LIMIT = 10 ** MAX_EXPONENT_DIGITS - 1
_NUMBER_ENDS = frozenset((N_ZERO, N_INT, N_FRAC, N_EXP))
_DIGITS = frozenset(b"0123456789")

# STRING aux: 0 plain; ESCAPE after a backslash; ESCAPE + n: n hex digits of \uXXXX still to
# come; UTF8 * remaining + range: a multi-byte character's continuation bytes still to come
ESCAPE, UTF8 = 1, 10
_ESCAPED = frozenset(b'"\\/bfnrt')
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_CONTINUATION = ((0x80, 0xBF), (0xA0, 0xBF), (0x80, 0x9F), (0x90, 0xBF), (0x80, 0x8F))   # by range

# Schema nodes (engine/json_schema.py makes them): what a value may be. None: any JSON value;
# ("object", ((b'"key"', node), ...)): exactly those keys in that order; ("map", value node,
# maxProperties or None): any keys (JSON strings), each value of that node; ("array", item node,
# minItems, maxItems or None); ("string",), ("number",), ("integer",); ("literal", (b"true",
# b"false", ...)): one of the texts; ("union", (node, ...)): the one node its first byte starts
# (no two start alike). A stack frame is ("{", node, number of properties begun) or
# ("[", array node, number of items begun).
ANY_LITERALS = {0x74: (b"true",), 0x66: (b"false",), 0x6E: (b"null",)}


def _utf8_lead(byte: int) -> int | None:
    """The STRING aux after a multi-byte character's lead byte; None for a byte that is none."""
    if 0xC2 <= byte <= 0xDF:
        return UTF8 * 1
    if 0xE0 <= byte <= 0xEF:
        return UTF8 * 2 + (1 if byte == 0xE0 else 2 if byte == 0xED else 0)
    if 0xF0 <= byte <= 0xF4:
        return UTF8 * 3 + (3 if byte == 0xF0 else 4 if byte == 0xF4 else 0)
    return None


def initial_state(root: tuple | None = None) -> tuple:
    """Before the first byte; `root` an object schema node (None: any object)."""
    return (START, root, (), 0)


INITIAL = initial_state()


def continued_state(prefix: bytes, root: tuple | None = None) -> tuple:
    """The state after `prefix`, the object's start already written; a ValueError saying why
    when it starts no object (of the schema `root`)."""
    state = feed(initial_state(root), prefix)
    if state is None:
        raise ValueError(f"{prefix.decode('utf-8', 'replace')!r} is not the start of a JSON object"
                         + (" of the schema" if root is not None else ""))
    return state


def is_complete(state: tuple) -> bool:
    return state[0] == DONE


def feed(state: tuple | None, data: bytes) -> tuple | None:
    """The state after `data`, None when `data` does not extend a valid JSON prefix."""
    for byte in data:
        if state is None:
            return None
        state = step(state, byte)
    return state


def step(state: tuple, byte: int) -> tuple | None:
    """The state after one byte, None when the byte makes the text no JSON prefix."""
    mode, aux, stack, ws = state
    if mode == STRING or mode == KEY_STRING:
        return _string_step(mode, aux, stack, byte)
    if mode == NUMBER or mode == INTEGER:
        return _number_step(mode, aux, stack, byte)
    if mode == LITERAL:
        return _literal_step(aux, stack, byte)
    if byte in _WHITESPACE:
        return (mode, aux, stack, ws + 1) if ws < MAX_WHITESPACE_RUN and mode != DONE else None
    return _structure_step(mode, aux, stack, byte)


def _structure_step(mode: int, aux, stack: tuple, byte: int) -> tuple | None:
    if mode == START:
        return (OBJ_FIRST, 0, (("{", aux, 0),), 0) if byte == 0x7B else None
    if mode == OBJ_FIRST:
        return _close(stack, byte) or _key_start(stack, byte)
    if mode == KEY:
        return _key_start(stack, byte)
    if mode == COLON:
        return (VALUE, aux, stack, 0) if byte == 0x3A else None
    if mode == VALUE:
        return _value_start(aux, stack, byte)
    if mode == ARRAY_FIRST:
        return _close(stack, byte) or _item_start(stack, byte)
    if mode == AFTER_VALUE:
        return _close(stack, byte) or (_next_member(stack) if byte == 0x2C else None)
    return None                                        # DONE: only the end of the sequence


def _value_start(node, stack: tuple, byte: int) -> tuple | None:
    kind = node[0] if node is not None else None
    if kind == "union":
        return next((s for choice in node[1] if (s := _value_start(choice, stack, byte)) is not None), None)
    if byte == 0x7B and kind in (None, "object", "map"):
        return (OBJ_FIRST, 0, stack + (("{", node, 0),), 0)
    if byte == 0x5B and kind in (None, "array"):
        return (ARRAY_FIRST, 0, stack + (("[", node, 0),), 0)
    if byte == 0x22 and kind in (None, "string"):
        return (STRING, 0, stack, 0)
    if (byte == 0x2D or byte in _DIGITS) and kind in (None, "number", "integer"):
        number = _number_start(byte)
        return (INTEGER if kind == "integer" else NUMBER, number, stack, 0)
    options = ANY_LITERALS.get(byte, ()) if kind is None else node[1] if kind == "literal" else ()
    return _literal_step((options, None), stack, byte) if options else None


def _key_start(stack: tuple, byte: int) -> tuple | None:
    """The first byte of an object's next property: any key (a map's while its maxProperties
    allows one more), or the schema's next one."""
    _, node, begun = stack[-1]
    if node is None:
        return (KEY_STRING, 0, stack, 0) if byte == 0x22 else None
    framed = stack[:-1] + (("{", node, begun + 1),)
    if node[0] == "map":
        return (KEY_STRING, 0, framed, 0) if byte == 0x22 and _map_has_room(node, begun) else None
    if begun >= len(node[1]):
        return None
    key, value_node = node[1][begun]
    return _literal_step(((key,), (COLON, value_node, framed, 0)), framed, byte)


def _map_has_room(node: tuple, begun: int) -> bool:
    return node[2] is None or begun < node[2]


def _free_key_value(stack: tuple):
    """The node of the value after a free key: any (no schema) or the map's values'."""
    node = stack[-1][1]
    return node[1] if node is not None else None


def _item_start(stack: tuple, byte: int) -> tuple | None:
    """The first byte of an array's first item, when its maxItems allows one."""
    _, node, begun = stack[-1]
    if node is not None and node[3] is not None and begun >= node[3]:
        return None
    return _value_start(node[1] if node is not None else None, stack[:-1] + (("[", node, begun + 1),), byte)


def _next_member(stack: tuple) -> tuple | None:
    """After a ',': the next array item (if maxItems allows one), or the object's next property
    (if its schema has one)."""
    kind, node, begun = stack[-1]
    if kind == "[":
        if node is None:
            return (VALUE, None, stack, 0)
        if node[3] is not None and begun >= node[3]:
            return None
        return (VALUE, node[1], stack[:-1] + (("[", node, begun + 1),), 0)
    if node is not None and node[0] == "map":
        return (KEY, 0, stack, 0) if _map_has_room(node, begun) else None
    return (KEY, 0, stack, 0) if node is None or begun < len(node[1]) else None


def _close(stack: tuple, byte: int) -> tuple | None:
    """'}' or ']' closing the innermost container, when it is the one open (and, for an
    object with a schema, after its last property; for an array, after its minItems; a map,
    after any member)."""
    if not stack:
        return None
    kind, node, begun = stack[-1]
    if kind == "[":
        enough = node is None or begun >= node[2]
        return _value_done(stack[:-1]) if byte == 0x5D and enough else None
    if byte != 0x7D or node is not None and node[0] == "object" and begun != len(node[1]):
        return None
    return _value_done(stack[:-1])


def _value_done(stack: tuple) -> tuple:
    return (AFTER_VALUE, 0, stack, 0) if stack else (DONE, 0, (), 0)


def _literal_step(aux: tuple, stack: tuple, byte: int) -> tuple | None:
    """One of the texts `options` (a keyword, an enum value, a schema's key); `then` the state
    after it (None: a value is done). A text that is complete while a longer one may go on
    (enum 1 and 12) ends when the byte continues none."""
    options, then = aux
    going = tuple(o[1:] for o in options if o and o[0] == byte)
    if going:
        if len(going) == 1 and not going[0]:
            return then if then is not None else _value_done(stack)
        return (LITERAL, (going, then), stack, 0)
    if b"" in options and then is None:
        return step(_value_done(stack), byte)
    return None


def _number_start(byte: int) -> tuple:
    """A number's aux after its first byte, a minus or a digit."""
    if byte == 0x2D:
        return (N_MINUS, 0, MAX_DECIMAL_EXPONENT, 0)
    if byte == 0x30:
        return (N_ZERO, 1, MAX_DECIMAL_EXPONENT, 0)
    return (N_INT, 1, MAX_DECIMAL_EXPONENT - 1, 0)


def _number_step(mode: int, aux: tuple, stack: tuple, byte: int) -> tuple | None:
    part = aux[0]
    nxt = _number_part(part, byte, fraction=mode == NUMBER)
    grown = _number_grown(aux, nxt, byte) if nxt is not None else None
    if grown is not None:
        return (mode, grown, stack, 0)
    if part not in _NUMBER_ENDS:
        return None
    return step(_value_done(stack), byte)              # the number ended: the byte is what follows


def _number_part(part: int, byte: int, *, fraction: bool) -> int | None:
    """The part `byte` takes a number to, None when it does not go on (INTEGER: no fraction,
    no exponent)."""
    digit = byte in _DIGITS
    if part == N_MINUS:
        return (N_ZERO if byte == 0x30 else N_INT) if digit else None
    if part in (N_ZERO, N_INT):
        if digit and part == N_INT:
            return N_INT
        return (N_DOT if byte == 0x2E else N_E if byte in b"eE" else None) if fraction else None
    if part == N_DOT or part == N_FRAC:
        return N_FRAC if digit else N_E if part == N_FRAC and byte in b"eE" else None
    if part == N_E:
        return N_EXP if digit else N_E_SIGN if byte in b"+-" else None
    return N_EXP if digit else None                    # N_E_SIGN, N_EXP


def _number_grown(aux: tuple, nxt: int, byte: int) -> tuple | None:
    """The aux once `byte` has taken the number to part `nxt`; None when a bound refuses it."""
    part, digits, limit, exponent = aux
    if byte not in _DIGITS:                            # '.', 'e', a sign: a new part begins
        return (nxt, 0, _NEGATIVE_EXPONENT_LIMIT if byte == 0x2D else limit, exponent)
    if nxt == N_EXP:
        exponent = exponent * 10 + byte - 0x30
        if digits >= MAX_EXPONENT_DIGITS or exponent > limit:
            return None
        return (nxt, digits + 1, limit, exponent)
    if digits >= MAX_DIGITS:
        return None
    return (nxt, digits + 1, limit - 1 if nxt == N_INT else limit, exponent)


def _string_step(mode: int, aux: int, stack: tuple, byte: int) -> tuple | None:
    if aux == 0:
        if byte == 0x22:
            return (COLON, _free_key_value(stack), stack, 0) if mode == KEY_STRING else _value_done(stack)
        if byte == 0x5C:
            return (mode, ESCAPE, stack, 0)
        if byte < 0x20:
            return None
        if byte < 0x80:
            return (mode, 0, stack, 0)
        lead = _utf8_lead(byte)
        return None if lead is None else (mode, lead, stack, 0)
    if aux >= UTF8:
        low, high = _CONTINUATION[aux % UTF8]
        if not low <= byte <= high:
            return None
        remaining = aux // UTF8 - 1
        return (mode, UTF8 * remaining if remaining else 0, stack, 0)
    if aux == ESCAPE:
        if byte == 0x75:                               # \u: four hex digits
            return (mode, ESCAPE + 4, stack, 0)
        return (mode, 0, stack, 0) if byte in _ESCAPED else None
    if byte not in _HEX_DIGITS:                        # ESCAPE + n: n hex digits to come
        return None
    return (mode, aux - 1 if aux > ESCAPE + 1 else 0, stack, 0)


def _is_plain_content(data: bytes) -> bool:
    """Bytes allowed anywhere inside a string: whole UTF-8 characters, no quote, backslash or
    control character."""
    if not data or b'"' in data or b"\\" in data or any(b < 0x20 for b in data):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class JsonVocab:
    """Per model, built at its first use (in the engine's thread): each token's bytes, which are
    plain string content, and their first two bytes."""

    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._lock = threading.Lock()
        self._built = False

    def built(self) -> JsonVocab:
        if self._built:
            return self
        with self._lock:
            if not self._built:
                self._build()
                self._built = True
        return self

    def _build(self) -> None:
        tokenizer = self.tokenizer
        num_tokens = min(tokenizer.vocab_size, self.vocab_size)
        self.token_bytes: list[bytes | None] = [None] * self.vocab_size
        for token_id in range(num_tokens):
            if not tokenizer.is_special(token_id):
                self.token_bytes[token_id] = tokenizer.token_bytes(token_id) or None
        self.plain = np.fromiter((t is not None and _is_plain_content(t) for t in self.token_bytes),
                                 bool, self.vocab_size)                                         # (vocab,)
        self.usable = np.fromiter((t is not None for t in self.token_bytes), bool, self.vocab_size)   # (vocab,)
        self.first = np.fromiter((t[0] if t else 0 for t in self.token_bytes), np.int16, self.vocab_size)   # (vocab,)
        self.second = np.fromiter((t[1] if t and len(t) > 1 else 256 for t in self.token_bytes),
                                  np.int16, self.vocab_size)                                   # (vocab,) 256: none
        self.length = np.fromiter((len(t) if t else 0 for t in self.token_bytes), np.int32, self.vocab_size)
        self.ids_by_bytes: dict[bytes, list[int]] = {}       # the tokens of each text (guided_choice's mask)
        for token_id, data in enumerate(self.token_bytes):
            if data is not None:
                self.ids_by_bytes.setdefault(data, []).append(token_id)


class JsonConstraint:
    """One sequence's JSON state: which tokens may come next. `end_ids` (EOS and the other
    stop tokens) are allowed only once the object is complete.

    With `after` (a thinking template's end-of-thinking marker, e.g. b"</think>"), the object
    starts once the sequence has written those bytes: until then every token but the end ids
    is allowed (the model thinks freely, as Ollama and llama.cpp let it), and the marker may
    come as one token or spelled by several. What the marker's token writes after it is the
    object's start (whitespace, "{").

    `prefix`: the start of the object already written (an assistant prefill the answer
    continues, e.g. "{"); the tokens continue it. One that starts no object is a ValueError."""

    def __init__(self, vocab: JsonVocab, end_ids: Sequence[int], schema: tuple | None = None,
                 after: bytes | None = None, prefix: bytes = b""):
        self._vocab_source = vocab
        self.end_ids = frozenset(end_ids)
        self.state: tuple = continued_state(prefix, schema)
        self.after = after or None
        self._written = b""                # thinking: the last bytes written, for the marker

    @property
    def vocab(self) -> JsonVocab:
        return self._vocab_source.built()

    @property
    def thinking(self) -> bool:
        """Still before the end-of-thinking marker: the JSON has not started."""
        return self.after is not None

    @property
    def complete(self) -> bool:
        return is_complete(self.state)

    def allows(self, token_id: int) -> bool:
        if token_id in self.end_ids:
            return self.complete
        if self.thinking:
            return True
        data = self.vocab.token_bytes[token_id]
        return data is not None and feed(self.state, data) is not None

    def advance(self, token_id: int) -> None:
        if token_id in self.end_ids:
            return
        if self.thinking:
            self._think(token_id)
        else:
            self.state = feed(self.state, self.vocab.token_bytes[token_id])

    def _think(self, token_id: int) -> None:
        """A token while thinking: its bytes (a special token's text too, as "</think>" is in
        some vocabularies) checked for the marker; the object starts after it."""
        tokenizer = self.vocab.tokenizer
        written = self._written + (tokenizer.token_bytes(token_id) if token_id < tokenizer.vocab_size else b"")
        at = written.find(self.after)
        if at < 0:
            self._written = written[-(len(self.after) - 1):] if len(self.after) > 1 else b""
            return
        rest, self.after, self._written = written[at + len(self.after):], None, b""
        self.state = feed(self.state, rest) or self.state     # not a JSON start: the object comes next

    def mask(self) -> np.ndarray:
        """(vocab,) bool: every token allowed next. Tokens are filtered by their first two bytes
        (a few hundred steps), and only the survivors longer than two bytes are fed whole;
        inside a string, plain content needs no check at all."""
        if self.thinking:
            return self._end_ids_masked(np.ones(self._vocab_source.vocab_size, bool))
        vocab, state = self.vocab, self.state
        in_plain_string = state[0] in (STRING, KEY_STRING) and state[1] == 0
        todo = vocab.usable & ~vocab.plain if in_plain_string else vocab.usable         # (vocab,)
        after_first = {b: s for b in range(256) if (s := step(state, b)) is not None}
        first_ok = np.zeros(256, bool)                                                    # (256,)
        first_ok[list(after_first)] = True
        ids = np.flatnonzero(todo & first_ok[vocab.first])                                # (m,)
        pairs = vocab.first[ids].astype(np.int32) * 257 + vocab.second[ids]               # (m,)
        after_pair, pair_ok = {}, np.zeros(256 * 257, bool)                               # (256 * 257,)
        for pair in np.unique(pairs).tolist():
            first, second = divmod(pair, 257)
            after_pair[pair] = after_first[first] if second == 256 else step(after_first[first], second)
            pair_ok[pair] = after_pair[pair] is not None
        ok = pair_ok[pairs]                                                               # (m,)
        allowed = vocab.plain.copy() if in_plain_string else np.zeros(vocab.vocab_size, bool)
        for token_id, pair in zip(ids[ok].tolist(), pairs[ok].tolist()):
            data = vocab.token_bytes[token_id]
            allowed[token_id] = len(data) <= 2 or feed(after_pair[pair], data[2:]) is not None
        return self._end_ids_masked(allowed)

    def _end_ids_masked(self, allowed: np.ndarray) -> np.ndarray:
        """`allowed` with the end ids allowed only once the object is complete."""
        for token_id in self.end_ids:
            if token_id < allowed.shape[0]:
                allowed[token_id] = self.complete
        return allowed
