"""Tokenizer.from_gguf(metadata): SentencePiece ("llama") and GPT-2 byte-level BPE ("gpt2").

Token ids equal llama.cpp's (llama-server's /tokenize) for the same GGUF: the same special-token
partition (longest special token first), the same merge algorithms and tie-breaking, the same
pre-tokenizer splits (pretokenize.py), the same defaults and end-of-generation detection as
src/llama-vocab.cpp. Not covered: WPM/UGM/RWKV vocabularies, the per-model LSTRIP/RSTRIP token
attributes (phi-3, jina), and pre-tokenizers other than the gpt2/llama3/qwen2/default families.
"""
from __future__ import annotations

import enum
from typing import Any, Iterable, Mapping

from velollmd.engine import pretokenize
from velollmd.engine.pretokenize import as_text, byte_decode, byte_encode, utf8

SPACE_MARK = "\u2581"        # SentencePiece's visible space


class TokenizerError(ValueError):
    """The GGUF's tokenizer metadata is missing, malformed or of an unsupported kind."""


class TokenAttr(enum.IntFlag):
    """llama.cpp's token attributes (from tokenizer.ggml.token_type, plus detected ones)."""
    UNDEFINED = 0
    UNKNOWN = 1 << 0
    UNUSED = 1 << 1
    NORMAL = 1 << 2
    CONTROL = 1 << 3
    USER_DEFINED = 1 << 4
    BYTE = 1 << 5


# GGUF token_type value (gguf.TokenType) -> attribute.
_TYPE_ATTR = {1: TokenAttr.NORMAL, 2: TokenAttr.UNKNOWN, 3: TokenAttr.CONTROL,
              4: TokenAttr.USER_DEFINED, 5: TokenAttr.UNUSED, 6: TokenAttr.BYTE}
_SPECIAL_ATTRS = TokenAttr.CONTROL | TokenAttr.UNKNOWN

# tokenizer.ggml.pre -> (splitter kind, ignore_merges, add_bos default): llama.cpp's table.
_PRE_KINDS: dict[str, tuple[str, bool, bool]] = {
    "default": ("default", False, False),
    **{name: ("llama3", True, True) for name in (
        "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2")},
    **{name: ("llama3", False, False) for name in ("dbrx", "smaug-bpe")},
    **{name: ("qwen2", False, False) for name in (
        "qwen2", "deepseek-r1-qwen", "megrez", "stablelm2", "hunyuan", "kormo")},
    **{name: ("gpt2", False, False) for name in (
        "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0",
        "mellum", "exaone4", "mpt", "olmo", "jais", "trillion", "granite-docling")},
}

# Texts llama.cpp treats as end of turn / end of generation whatever their token type.
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<\uff5cend\u2581of\u2581sentence\uff5c>",
              "<end_of_utterance>")
_EOG_TEXTS = frozenset(_EOT_TEXTS + (
    "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "</s>", "<|eom_id|>", "[EOS]", "<eos>",
    "<turn|>", "<|tool_response>", "[e~["))
# FIM token kind -> texts llama.cpp recognises it by when the GGUF names no id for it.
_FIM_TEXTS: dict[str, tuple[str, ...]] = {
    "fim_pre": ("<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\uff5cfim\u2581begin\uff5c>", "<PRE>",
                "\u2581<PRE>", "<|code_prefix|>", "<|prefix|>"),
    "fim_suf": ("<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\uff5cfim\u2581hole\uff5c>", "<SUF>",
                "\u2581<SUF>", "<|code_suffix|>", "<|suffix|>"),
    "fim_mid": ("<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\uff5cfim\u2581end\uff5c>", "<MID>",
                "\u2581<MID>", "<|code_middle|>", "<|middle|>"),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}
_FIM_EOG = ("fim_pad", "fim_rep", "fim_sep")         # end of generation, as llama.cpp has them
_SNIPPET_LINE = "\n\n--- snippet ---\n\n"           # llama.cpp's chunk separator without FIM_SEP
_ALWAYS_RENDERED = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")   # gpt-oss


class Tokenizer:
    """Text <-> token ids for one GGUF vocabulary (see module docstring)."""

    def __init__(self, *, model: str, pre: str, tokens: list[str], scores: list[float],
                 attrs: list[TokenAttr], merges: Iterable[str], special_ids: Mapping[str, int | None],
                 add_bos: bool, add_eos: bool, add_space_prefix: bool):
        self.model = model            # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
        self.pre = pre
        self._tokens = tokens
        self._scores = scores
        self._attrs = list(attrs)        # detection below adds CONTROL etc., as llama.cpp does
        self._token_to_id = {text: token_id for token_id, text in enumerate(tokens)}
        self._ranks = _merge_ranks(merges)
        self._is_bpe = model == "gpt2"
        kind, self._ignore_merges, _ = _PRE_KINDS[pre] if self._is_bpe else ("", False, False)
        self._patterns = pretokenize.PRE_PATTERNS.get(kind, ())
        self.bos_id = special_ids.get("bos")
        self.eos_id = special_ids.get("eos")
        self.eot_id = special_ids.get("eot")
        self.eom_id = special_ids.get("eom")
        self.unk_id = special_ids.get("unk")
        self.pad_id = special_ids.get("padding")
        self.fim_ids = {name: special_ids.get(name) for name in _FIM_TEXTS}     # None: not in this model
        self.add_bos = add_bos
        self.add_eos = add_eos
        self.add_space_prefix = add_space_prefix
        self._detect_special_tokens()
        self.eog_ids = self._end_of_generation_ids()
        self._special_by_length = sorted(
            (i for i, attr in enumerate(attrs) if attr & (_SPECIAL_ATTRS | TokenAttr.USER_DEFINED)),
            key=lambda i: -len(utf8(tokens[i])))
        self._piece_cache: list[bytes | None] = [None] * len(tokens)
        self._word_cache: dict[str, tuple[int, ...]] = {}

    # ---- construction ------------------------------------------------------------------------

    @classmethod
    def from_gguf(cls, metadata: Mapping[str, Any]) -> "Tokenizer":
        """Build from a GGUF key/value dict (arrays as lists or numpy arrays)."""
        model = _read_str(metadata, "tokenizer.ggml.model")
        if model not in ("llama", "gpt2"):
            raise TokenizerError(f"tokenizer.ggml.model: unsupported tokenizer {model!r} "
                                 "(supported: 'llama' = SentencePiece, 'gpt2' = byte-level BPE)")
        tokens = [as_text(t) for t in _read_array(metadata, "tokenizer.ggml.tokens")]
        if not tokens:
            raise TokenizerError("tokenizer.ggml.tokens: empty vocabulary")
        if len(set(tokens)) != len(tokens):
            raise TokenizerError("tokenizer.ggml.tokens: duplicate token in vocabulary")
        pre = _read_pre(metadata, model)
        scores = _read_numbers(metadata, "tokenizer.ggml.scores", len(tokens), float, 0.0)
        types = _read_numbers(metadata, "tokenizer.ggml.token_type", len(tokens), int, 1)
        attrs = [_TYPE_ATTR.get(t, TokenAttr.UNDEFINED) for t in types]
        merges = [as_text(m) for m in metadata.get("tokenizer.ggml.merges", ())]
        if model == "gpt2" and "tokenizer.ggml.merges" not in metadata:
            raise TokenizerError("tokenizer.ggml.merges: missing (required for a gpt2 vocabulary)")
        add_bos_default = _PRE_KINDS[pre][2] if model == "gpt2" else True
        return cls(
            model=model, pre=pre, tokens=tokens, scores=scores, attrs=attrs, merges=merges,
            special_ids=_read_special_ids(metadata, model, len(tokens)),
            add_bos=_read_bool(metadata, "tokenizer.ggml.add_bos_token", add_bos_default),
            add_eos=_read_bool(metadata, "tokenizer.ggml.add_eos_token", False),
            add_space_prefix=_read_bool(metadata, "tokenizer.ggml.add_space_prefix", model == "llama"),
        )

    def _detect_special_tokens(self) -> None:
        """llama.cpp's text-based detection: eot/eom ids when unset; CONTROL on what it finds."""
        if self.eot_id is None:
            self.eot_id = self._mark_control(self._first_id(_EOT_TEXTS))
        if self.eom_id is None:
            self.eom_id = self._mark_control(self._first_id(("<|eom_id|>",)))
        for name, texts in _FIM_TEXTS.items():
            if self.fim_ids[name] is None:
                self.fim_ids[name] = self._mark_control(self._first_id(texts))
        for text in _ALWAYS_RENDERED:
            if text in self._token_to_id:
                self._attrs[self._token_to_id[text]] = TokenAttr.USER_DEFINED

    def _mark_control(self, token_id: int | None) -> int | None:
        if token_id is not None:
            self._attrs[token_id] |= TokenAttr.CONTROL
        return token_id

    def _end_of_generation_ids(self) -> frozenset[int]:
        eog = {self.fim_ids[name] for name in _FIM_EOG}
        for text in _EOG_TEXTS & self._token_to_id.keys():
            token_id = self._token_to_id[text]
            eog.add(token_id)
            self._attrs[token_id] |= TokenAttr.CONTROL
        eog |= {self.eos_id, self.eot_id, self.eom_id}
        eog.discard(None)
        texts = {self._tokens[i]: i for i in eog}
        has_call = "<|call|>" in texts or "<|calls|>" in texts
        if "<|end|>" in texts and has_call and ("<|return|>" in texts or "<|flush|>" in texts):
            eog.discard(texts["<|end|>"])                  # o200k_harmony / solar-open
            self._attrs[texts["<|end|>"]] = TokenAttr.USER_DEFINED
        if "<|tool_response>" in texts and "</s>" in texts:
            eog.discard(texts["</s>"])                      # gemma4 / paddleocr
            self._attrs[texts["</s>"]] = TokenAttr.NORMAL
        return frozenset(eog)

    def _first_id(self, texts: Iterable[str]) -> int | None:
        ids = [self._token_to_id[t] for t in texts if t in self._token_to_id]
        return min(ids) if ids else None

    # ---- public interface --------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self._tokens)

    @property
    def can_fill_in_middle(self) -> bool:
        """The model has the prefix, suffix and middle tokens of a fill-in-the-middle prompt."""
        return all(self.fim_ids[name] is not None for name in ("fim_pre", "fim_suf", "fim_mid"))

    def fill_in_middle(self, prefix_ids: list[int], suffix_ids: list[int]) -> list[int]:
        """The fill-in-the-middle prompt of llama.cpp's infill in PSM order (llama-server's
        /infill without its repo-level extras): [BOS] FIM_PRE prefix FIM_SUF suffix FIM_MID.
        The model writes the middle next; can_fill_in_middle must hold."""
        bos = [self._required(self.bos_id, "bos")] if self.add_bos else []
        return [*bos, self.fim_ids["fim_pre"], *prefix_ids, self.fim_ids["fim_suf"], *suffix_ids,
                self.fim_ids["fim_mid"]]

    def repo_context(self, extras: list[dict]) -> list[int]:
        """The repo-level context llama-server's /infill puts before the FIM prompt for its
        `input_extra` ([{"filename", "text"}], the other files an editor sends), as llama.cpp's
        format_infill renders it (Qwen2.5-Coder's repo-level pattern): [FIM_REP] myproject, each
        chunk as [FIM_SEP] its filename ("tmp" when none) and its text, then [FIM_SEP] filename
        for the file being edited; llama.cpp's fixed names. A model without FIM_REP goes without
        that line; without FIM_SEP, each chunk follows a "--- snippet ---" line instead."""
        def text(piece: str) -> list[int]:
            return self.encode(piece, add_special=False, parse_special=False)
        rep, sep = self.fim_ids["fim_rep"], self.fim_ids["fim_sep"]
        ids = [rep, *text("myproject\n")] if rep is not None else []
        for chunk in extras:
            ids += [sep, *text(chunk.get("filename", "tmp") + "\n")] if sep is not None else text(_SNIPPET_LINE)
            ids += text(chunk["text"])
        return ids + ([sep, *text("filename\n")] if sep is not None else [])

    def is_control(self, token_id: int) -> bool:
        return bool(self._attrs[self._check_id(token_id)] & TokenAttr.CONTROL)

    def is_special(self, token_id: int) -> bool:
        """Control, unknown or unused: a token that is no text of the model's output."""
        return bool(self._attrs[self._check_id(token_id)] & (_SPECIAL_ATTRS | TokenAttr.UNUSED))

    def token_to_piece(self, token_id: int) -> str:
        """The token's vocabulary text, e.g. '▁the', 'Ġthe', '<0x0A>', '<|im_end|>'."""
        return self._tokens[self._check_id(token_id)]

    def piece_to_id(self, piece: str) -> int | None:
        """The id of the token whose vocabulary text is `piece` (token_to_piece's inverse)."""
        return self._token_to_id.get(piece)

    def token_bytes(self, token_id: int, *, special: bool = True) -> bytes:
        """The bytes the token adds to output text, as llama.cpp's token_to_piece: with special
        false, a control or unknown token adds none (llama-server's default for what it samples)."""
        cached = self._piece_cache[self._check_id(token_id)]
        if not special and self._attrs[token_id] & _SPECIAL_ATTRS:
            return b""
        if cached is None:
            cached = self._piece_cache[token_id] = self._render(token_id)
        return cached

    def decode(self, ids: Iterable[int], *, skip_special: bool = False) -> str:
        """Concatenated token bytes as text (invalid UTF-8 replaced); skip_special drops control
        and unknown tokens, as llama.cpp's token_to_piece with special=false."""
        pieces = (self.token_bytes(i, special=not skip_special) for i in ids)
        return b"".join(pieces).decode("utf-8", errors="replace")

    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids of `text`. add_special adds BOS/EOS as the vocabulary asks; parse_special
        matches control tokens written in the text as whole tokens (user-defined ones always)."""
        ids: list[int] = []
        if add_special and self.add_bos:
            ids.append(self._required(self.bos_id, "bos"))
        fragments = self._partition(text, parse_special)
        if self._is_bpe:
            for fragment in fragments:
                ids.extend(self._bpe_fragment(fragment) if isinstance(fragment, str) else (fragment,))
        else:
            self._spm_fragments(fragments, ids)
        if add_special and self.add_eos:
            ids.append(self._required(self.eos_id, "eos"))
        return ids

    # ---- encoding ----------------------------------------------------------------------------

    def _partition(self, text: str, parse_special: bool) -> list[str | int]:
        """Split text at special tokens, longest first (llama.cpp's tokenizer_st_partition)."""
        fragments: list[str | int] = [text] if text else []
        for token_id in self._special_by_length:
            if not parse_special and self._attrs[token_id] & _SPECIAL_ATTRS:
                continue
            piece = self._tokens[token_id]
            if any(isinstance(f, str) and piece in f for f in fragments):
                fragments = _split_at(fragments, piece, token_id)
        return fragments

    def _spm_fragments(self, fragments: list[str | int], ids: list[int]) -> None:
        prev_special = True            # a space prefix goes before the first text and after specials
        for fragment in fragments:
            if isinstance(fragment, int):
                ids.append(fragment)
                prev_special = True
                continue
            text = (" " + fragment) if self.add_space_prefix and prev_special else fragment
            text = text.replace(" ", SPACE_MARK)
            for symbol in pretokenize.spm_merge(text, self._token_to_id, self._scores):
                token_id = self._token_to_id.get(symbol)
                ids.extend((token_id,) if token_id is not None else self._byte_fallback(symbol))
            prev_special = False

    def _byte_fallback(self, symbol: str) -> list[int]:
        ids = []
        for byte in utf8(symbol):
            token_id = self._token_to_id.get(f"<0x{byte:02X}>")
            if token_id is None and byte < 0x80:
                token_id = self._token_to_id.get(chr(byte))
            ids.append(self._required(token_id if token_id is not None else self.unk_id,
                                      f"<0x{byte:02X}> byte"))
        return ids

    def _bpe_fragment(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in pretokenize.split_words(text, self._patterns):
            cached = self._word_cache.get(word)
            if cached is None:
                if len(self._word_cache) > 65536:
                    self._word_cache.clear()
                cached = self._word_cache[word] = tuple(self._bpe_word(byte_encode(word)))
            ids.extend(cached)
        return ids

    def _bpe_word(self, word: str) -> list[int]:
        if self._ignore_merges and word in self._token_to_id:
            return [self._token_to_id[word]]
        ids = []
        for symbol in pretokenize.bpe_merge(word, self._ranks):
            token_id = self._token_to_id.get(symbol)
            if token_id is not None:
                ids.append(token_id)
                continue
            for byte in utf8(symbol):  # llama.cpp looks up each raw byte; only ASCII can hit
                byte_id = self._token_to_id.get(chr(byte)) if byte < 0x80 else None
                if byte_id is not None:
                    ids.append(byte_id)
        return ids

    # ---- helpers -----------------------------------------------------------------------------

    def _render(self, token_id: int) -> bytes:
        attr, text = self._attrs[token_id], self._tokens[token_id]
        if attr & (_SPECIAL_ATTRS | TokenAttr.USER_DEFINED):
            return utf8(text)
        if attr & TokenAttr.NORMAL:
            if self._is_bpe:
                return byte_decode(text)
            return utf8(text.replace(SPACE_MARK, " "))
        if attr & TokenAttr.BYTE:                  # "<0xNN>"; like strtol, a malformed one gives 0
            digits = text[3:5]
            return bytes([int(digits, 16) if len(digits) == 2 and _is_hex(digits) else 0])
        return b""                       # unused / undefined tokens render as nothing

    def _check_id(self, token_id: int) -> int:
        if not 0 <= token_id < len(self._tokens):
            raise TokenizerError(f"token id {token_id} out of range (vocab size {len(self._tokens)})")
        return token_id

    @staticmethod
    def _required(token_id: int | None, name: str) -> int:
        if token_id is None:
            raise TokenizerError(f"the vocabulary has no {name} token but the text needs one")
        return token_id


def _is_hex(text: str) -> bool:
    return all(char in "0123456789abcdefABCDEF" for char in text)


def _split_at(fragments: list[str | int], piece: str, token_id: int) -> list[str | int]:
    out: list[str | int] = []
    for fragment in fragments:
        if isinstance(fragment, int) or piece not in fragment:
            out.append(fragment)
            continue
        for index, part in enumerate(fragment.split(piece)):
            if index:
                out.append(token_id)
            if part:
                out.append(part)
    return out


def _merge_ranks(merges: Iterable[str]) -> dict[tuple[str, str], int]:
    """'a b' -> rank; split at the first space after position 0, first occurrence wins."""
    ranks: dict[tuple[str, str], int] = {}
    for rank, merge in enumerate(merges):
        pos = merge.find(" ", 1)
        pair = (merge[:pos], merge[pos + 1:]) if pos >= 0 else ("", "")
        ranks.setdefault(pair, rank)
    return ranks


# ---- metadata readers ----------------------------------------------------------------------------


def _read_str(metadata: Mapping[str, Any], key: str) -> str:
    value = metadata.get(key)
    if not isinstance(value, str):
        raise TokenizerError(f"{key}: expected a string, got {type(value).__name__}")
    return value


def _read_array(metadata: Mapping[str, Any], key: str) -> list:
    value = metadata.get(key)
    if value is None or isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TokenizerError(f"{key}: expected an array, got {type(value).__name__}")
    return list(value)


def _read_numbers(metadata: Mapping[str, Any], key: str, count: int, kind: type, default):
    if key not in metadata:
        return [default] * count
    values = [kind(v) for v in _read_array(metadata, key)]
    if len(values) < count:
        raise TokenizerError(f"{key}: {len(values)} entries for {count} tokens")
    return values[:count]


def _read_bool(metadata: Mapping[str, Any], key: str, default: bool) -> bool:
    return bool(metadata[key]) if key in metadata else default


def _read_pre(metadata: Mapping[str, Any], model: str) -> str:
    if model != "gpt2":
        return "default"
    pre = str(metadata.get("tokenizer.ggml.pre") or "default")
    if pre not in _PRE_KINDS:
        raise TokenizerError(f"tokenizer.ggml.pre: unsupported pre-tokenizer {pre!r} "
                             f"(supported: {', '.join(sorted(_PRE_KINDS))})")
    return pre


_SPECIAL_ID_KEYS = {name: (f"tokenizer.ggml.{key}_token_id",) for name, key in (
    ("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("eot", "eot"), ("eom", "eom"),
    ("padding", "padding"), ("fim_pad", "fim_pad"), ("fim_rep", "fim_rep"), ("fim_sep", "fim_sep"))}
_SPECIAL_ID_KEYS.update({   # the older prefix/suffix/middle keys, read after (and over) the fim_ ones
    name: (f"tokenizer.ggml.{name}_token_id", f"tokenizer.ggml.{old}_token_id")
    for name, old in (("fim_pre", "prefix"), ("fim_suf", "suffix"), ("fim_mid", "middle"))})


def _read_special_ids(metadata: Mapping[str, Any], model: str, vocab_size: int) -> dict[str, int | None]:
    """bos/eos/unk/eot/eom/padding/fim_* ids: llama.cpp's per-model defaults, replaced by the
    GGUF keys (a key outside the vocabulary keeps the default; a default outside it is dropped)."""
    defaults = {"bos": 1, "eos": 2, "unk": 0} if model == "llama" else {"bos": 11, "eos": 11}
    ids: dict[str, int | None] = {}
    for name, keys in _SPECIAL_ID_KEYS.items():
        token_id = defaults.get(name)
        if token_id is not None and token_id >= vocab_size:
            token_id = None
        for key in keys:
            value = metadata.get(key)
            if value is not None and 0 <= int(value) < vocab_size:
                token_id = int(value)
        ids[name] = token_id
    return ids
