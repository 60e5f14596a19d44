#!/usr/bin/env python3
"""Write a tiny random-weight Llama GGUF for tests: `make_tiny_gguf.py OUT.gguf [--seed N] [--dtype D]
[--arch A] [--shape S] [--vocab V] [--reranker]`.

The model is useless as a language model but has properties tests rely on:

- A synthetic SentencePiece ("llama") vocab of VOCAB_SIZE tokens: unk/bos/eos, 256 `<0xNN>`
  byte tokens, ChatML control tokens, `<tool_call>`-style USER_DEFINED tokens, single
  characters and every prefix of a set of common English words (score = length, so SPM
  merges reach each word). `add_space_prefix` is false: with it, a space follows every
  special token and llama-server's tool-call grammar no longer matches the prompt.
- A ChatML chat template with Hermes-style tools, which llama-server recognises (it looks
  for `<tool_call>` in the template) and parses tool calls with its own grammar.
- Residual dimension BIAS_DIM is held at 1 in every token embedding and no layer reads it
  (norm weight 0) or writes it (zero rows in attn_output / ffn_down), so its column in
  output.weight is a per-token logit bias: control, byte and unknown tokens get
  SUPPRESS_BIAS, so every request yields exactly max_tokens tokens of valid UTF-8. The
  tool tags get TOOL_TAG_BIAS: never sampled on their own, but a request logit_bias of
  +100 on `<tool_call>` makes the model open a tool call (see force_tool_call_bias()).
- FORCED_NEXT makes a request with `tools` and logit_bias {<tool_call>: +100} return one
  real tool call, parsed by llama-server itself (finish_reason "tool_calls").
- Deterministic: the same seed and dtype give identical bytes. The file is written to a
  temporary name and renamed, so a running server that memory-mapped OUT is never hurt.

Variants (defaults give the same bytes as before these options existed):

- arch llama (adjacent-pair RoPE), qwen2 (Q/K/V biases `blk.N.attn_{q,k,v}.bias`, NEOX RoPE),
  qwen3 (per-head Q/K RMSNorm `blk.N.attn_{q,k}_norm.weight`, NEOX RoPE, no biases), gemma3
  (qwen3's Q/K norms, post-norms `blk.N.post_{attention,ffw}_norm.weight`, GELU, a sliding
  window of GEMMA3_SLIDING_WINDOW positions), gemma2 (gemma3's post-norms and GELU without Q/K
  norms, a window of GEMMA2_SLIDING_WINDOW on the even layers, gemma2's attention and final logit
  soft-capping, and no output.weight: llama.cpp's gemma2 reads its LM head from token_embd and
  refuses a file with one, so the logit-bias tricks above do not hold for it: a file for logit
  parity, not for scripted replies), phi3 (llama's weights with Q/K/V fused in
  `blk.N.attn_qkv.weight` and gate/up in `blk.N.ffn_up.weight` of 2 n_ff rows, the gate first;
  NEOX RoPE; LongRoPE's `rope_factors_{long,short}.weight`, long ones past
  PHI3_ORIGINAL_CONTEXT, with the converter's attention factor; a sliding window of
  PHI3_SLIDING_WINDOW that llama.cpp reads and ignores; the scripted replies hold as for llama:
  fusing changes no weight). Weights are random, so no Q/K permutation is
  involved; only llama.cpp's choice of RoPE differs.
- reranker (arch qwen3 only): a Qwen3-Reranker-style file that llama-server serves with
  `--reranking`: `qwen3.pooling_type` RANK (4), `qwen3.classifier.output_labels` ["yes", "no"] and
  a `cls.output.weight` (2, n_embd) head, which llama.cpp applies to the last token's hidden
  state and softmaxes (RERANK_LABELS): the score is P("yes"), in (0, 1), different per document.
  Drawn from its own seed stream after the other tensors, which keep their bytes. reranker
  "template" (`--rerank-template`) adds Qwen3-Reranker's `tokenizer.chat_template.rerank`.
- shape tiny (n_embd 128, 2 layers, ~1 MB) or small (n_embd 1024, 8 layers, 16/4 heads, n_ff
  2816: ~92M parameters, ~185 MB in F16: loads in llama-server, too big for `make test`).
- vocab spm-call / spm-think: the SPM vocab with a scripted Hermes call, or a scripted thought
  between "<think>" and "</think>" tokens and a chat template that thinks (Qwen3's family), so
  that a logit_bias on <tool_call> / <think> makes a model without a grammar call or think.
- vocab spm-fim: the SPM vocab with Qwen2.5-Coder's fill-in-the-middle tokens (FIM_TAGS, CONTROL,
  so never sampled) as its last pieces and their ids under `tokenizer.ggml.fim_*_token_id`:
  llama-server's /infill and the engine build a FIM prompt for it.
- dtype f32, f16, q8_0, q4_0, q5_0, q4_1, q5_1, q4_k, q5_k, q6_k: 1-D tensors (norms, biases) stay F32 as ggml
  requires. For quantised dtypes, token_embd and output stay Q8_0: they carry the logit-bias
  tricks (exact zeros, and -1000 or 5000 next to 2.0 in one block), which 4-bit blocks cannot
  hold. A matrix whose rows are not whole blocks of the dtype falls back as llama.cpp's
  quantizer does (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0): in the tiny shape only ffn_down
  (rows of 256) is a K-quant; in the small shape every inner matrix is. gguf-py cannot quantise
  K-quants, so quantize_q4_k / quantize_q5_k / quantize_q6_k below do it (simple min/max
  scales, not llama.cpp's search).

Usable as a script or imported (tests load it by path): build_tiny_gguf(), tiny_vocab().
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NamedTuple

import gguf
import numpy as np

VOCAB_SIZE = 1024
N_EMBD = 128
N_FF = 256
N_LAYER = 2
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = N_EMBD // N_HEAD
CONTEXT_LENGTH = 8192


class ModelShape(NamedTuple):     # not a dataclass: tests load this file without sys.modules
    n_embd: int
    n_ff: int
    n_layer: int
    n_head: int
    n_head_kv: int

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


SHAPES = {
    "tiny": ModelShape(N_EMBD, N_FF, N_LAYER, N_HEAD, N_HEAD_KV),
    "small": ModelShape(n_embd=1024, n_ff=2816, n_layer=8, n_head=16, n_head_kv=4),
}
ARCHS = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3")
GEMMA3_SLIDING_WINDOW = 64   # gemma3's layers attend over this many positions (llama.cpp: 5 of every 6)
GEMMA2_SLIDING_WINDOW = 32   # gemma2's even layers attend over this many positions
GEMMA2_SOFTCAPS = (50.0, 30.0)   # gemma2's attention and final logit soft-capping (its config's)
RERANK_ARCHS = ("qwen3",)     # llama.cpp loads a `cls.output` head (and softmaxes it) for these
RERANK_LABELS = ("yes", "no")  # Qwen3-Reranker's labels: the score is the first one's probability
# `reranker="template"`: the rerank prompt llama.cpp's converter writes for Qwen3-Reranker, as
# `tokenizer.chat_template.rerank` (llama-server fills {query} and {document} instead of its
# BOS query EOS SEP document EOS layout).
QWEN3_RERANK_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    "provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n"
    "<|im_start|>user\n<Instruct>: Given a web search query, retrieve relevant passages that answer the query\n"
    "<Query>: {query}\n<Document>: {document}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n")
TIED_ARCHS = ("gemma2",)     # the LM head is token_embd.weight: no output.weight
PHI3_SLIDING_WINDOW = 32     # phi3's file names a window (llama.cpp b11434 disables phi3's SWA)
PHI3_ORIGINAL_CONTEXT = CONTEXT_LENGTH // 2   # LongRoPE's: a served context past it takes the long factors
Q = gguf.GGMLQuantizationType
DTYPES = {   # dtype -> (ggml type of inner matrices, file type, fallback when rows do not fit)
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32, Q.F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16, Q.F16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0, Q.F16),
    "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0, Q.F16),
    "q5_0": (Q.Q5_0, gguf.LlamaFileType.MOSTLY_Q5_0, Q.F16),
    "q4_1": (Q.Q4_1, gguf.LlamaFileType.MOSTLY_Q4_1, Q.F16),
    "q5_1": (Q.Q5_1, gguf.LlamaFileType.MOSTLY_Q5_1, Q.F16),
    "q4_k": (Q.Q4_K, gguf.LlamaFileType.MOSTLY_Q4_K_S, Q.Q5_0),
    "q5_k": (Q.Q5_K, gguf.LlamaFileType.MOSTLY_Q5_K_S, Q.Q5_1),
    "q6_k": (Q.Q6_K, gguf.LlamaFileType.MOSTLY_Q6_K, Q.Q8_0),
}
TRICK_TENSORS = ("token_embd.weight", "output.weight")   # Q8_0 in every quantised dtype
BIAS_DIM = 0                 # residual dimension held at 1: output.weight[:, BIAS_DIM] = logit bias
SUPPRESS_BIAS = -1000.0      # control / byte / unk tokens: never sampled
RARE_BIAS = -30.0            # never sampled in free text, only when a request or a grammar asks
STRING_VALUE = "paris"       # every free JSON string value the model writes: "paris"
RARE_TOKENS = ("}", '"', STRING_VALUE)
# Bare whitespace tokens are suppressed too: free text still has spaces (words carry a leading
# "▁"), and inside a grammar (tool calls, JSON) optional whitespace is then always skipped,
# so the grammar closes its objects at once instead of padding with spaces.
WHITESPACE_TOKENS = ("\u2581", "\n")
# "token A is always followed by token B": residual dimension FORCED_DIMS[i] is 1 only in
# A's embedding, and its output.weight column gives B FORCE_BIAS. This chain turns a request
# logit_bias on <tool_call> into one complete tool call: llama-server's lazy grammar triggers
# on "<tool_call>\n", the grammar writes the JSON, the call's last "}" is followed by
# </tool_call>, and that by the end-of-generation token (no second call). A grammar that
# masks the forced token leaves the choice to the model. Free string values become "paris".
FORCED_NEXT = [
    ("<tool_call>", "\n"), ("}", "</tool_call>"), ("</tool_call>", "<|im_end|>"),
    ('"', STRING_VALUE), (STRING_VALUE, '"'),
]
# `--vocab spm-call`: for engines without a grammar (velollmd's own), the SPM vocab's last
# piece becomes one USER_DEFINED token holding a whole Hermes call body, and the chain writes
# "<tool_call>" SCRIPTED_CALL "</tool_call>" "<|im_end|>": a real tool call in plain model text.
SCRIPTED_CALL = '{"name": "get_weather", "arguments": {"city": "paris"}}'
SCRIPTED_FORCED_NEXT = [
    ("<tool_call>", SCRIPTED_CALL), (SCRIPTED_CALL, "</tool_call>"), ("</tool_call>", "<|im_end|>"),
    ('"', STRING_VALUE), (STRING_VALUE, '"'),
]
# `--vocab spm-think`: a thinking model for engines that hold JSON mode back until the thinking
# ends. The SPM vocab's last three pieces become "<think>", a whole thought and "</think>"
# (USER_DEFINED), and the chain writes "<think>" SCRIPTED_THOUGHT "</think>": a request
# logit_bias on <think> opens a thought that closes. The file's chat template renders
# Qwen3's empty think block when thinking is off (CHAT_TEMPLATE_THINK).
THINK_TAGS = ["<think>", "</think>"]
SCRIPTED_THOUGHT = "\nThe user wants one JSON object.\n"
SCRIPTED_THINK_FORCED_NEXT = [
    ("<think>", SCRIPTED_THOUGHT), (SCRIPTED_THOUGHT, "</think>"), ('"', STRING_VALUE), (STRING_VALUE, '"'),
]
# `--vocab spm-fim`: Qwen2.5-Coder's FIM tokens (prefix, suffix, middle, pad, file separator).
FIM_TAGS = ["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>", "<|fim_pad|>", "<|file_sep|>"]
FIM_KEYS = [gguf.Keys.Tokenizer.FIM_PRE_ID, gguf.Keys.Tokenizer.FIM_SUF_ID, gguf.Keys.Tokenizer.FIM_MID_ID,
            gguf.Keys.Tokenizer.FIM_PAD_ID, gguf.Keys.Tokenizer.FIM_SEP_ID]
FORCED_DIMS = list(range(1, 1 + len(FORCED_NEXT)))
RESERVED_DIMS = [BIAS_DIM] + FORCED_DIMS   # no layer reads or writes these
FORCE_BIAS = 5000.0
WORD_BIAS = 2.0              # whole words with a leading space: readable output
EMBED_STD = 0.01             # small next to the bias dimension, which then dominates the norm
OUTPUT_STD = 2.0             # per-token logit spread from the content dimensions
LAYER_STD = 0.02

BOS, EOS, UNK = "<s>", "<|im_end|>", "<unk>"
CONTROL_TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
TOOL_TAGS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]
SPACE = "\u2581"             # SentencePiece's visible space
WORDS = """
the of and to a in is it you that he was for on are with as his they be at one have this from
or had by hot word but what some we can out other were all there when up use your how said an
each she which do their time if will way about many then them write would like so these her long
make thing see him two has look more day could go come did number sound no most people my over
know water than call first who may down side been now find any new work part take get place made
live where after back little only round man year came show every good me give our under name very
through just form sentence great think say help low line differ turn cause much mean before move
right boy old too same tell does set three want air well also play small end put home read hand
port large spell add even land here must big high such follow act why ask men change went light
kind off need house picture try us again animal point mother world near build self earth father
head stand own page should country found answer school grow study still learn plant cover food sun
four between state keep eye never last let thought city tree cross farm hard start might story saw
far sea draw left late run while press close night real life few north open seem together next
white children begin got walk example ease paper group always music those both mark often letter
until mile river car feet care second book carry took science eat room friend began idea fish
mountain stop once base hear horse cut sure watch color face wood main enough plain girl usual
young ready above ever red list though feel talk bird soon body dog family direct pose leave song
measure door product black short numeral class wind question happen complete ship area half rock
order fire south problem piece told knew pass since top whole king space heard best hour better
true during hundred five remember step early hold west ground interest reach fast verb sing listen
six table travel less morning ten simple several vowel toward war lay against pattern slow center
love person money serve appear road map rain rule govern pull cold notice voice unit power town
fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest correct
able pound done beauty drive stood contain front teach week final gave green oh quick develop
ocean warm free minute strong special mind behind clear tail produce fact street inch multiply
nothing course stay wheel full force blue object decide surface deep moon island foot system busy
test record boat common gold possible plane stead dry wonder laugh thousand ago ran check game
shape equate miss brought heat snow tire bring yes distant fill east paint language among weather
""".split()

CHAT_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n' }}
{{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and ' }}
{{- 'arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n' }}
{{- '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message.role == 'system' and loop.first %}
{%- elif message.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}
{%- elif message.role == 'assistant' and message.tool_calls %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' + tool_call.name + '", "arguments": ' }}
{%- if tool_call.arguments is string %}{{- tool_call.arguments }}
{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message.role + '\\n' + (message.content or '') + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""
# `--vocab spm-think`'s: CHAT_TEMPLATE, and Qwen3's empty think block when thinking is off
CHAT_TEMPLATE_THINK = CHAT_TEMPLATE.replace(
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}",
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}\n"
    "{%- endif %}")


def tiny_vocab(scripted_call: bool = False, scripted_thought: bool = False, fim: bool = False,
               ) -> tuple[list[str], list[int], list[float]]:
    """Return (tokens, token_types, scores), VOCAB_SIZE each, in token-id order; with
    scripted_call, the last piece is SCRIPTED_CALL (USER_DEFINED); with scripted_thought, the
    last three are <think>, SCRIPTED_THOUGHT and </think> (USER_DEFINED); with fim, the last
    ones are FIM_TAGS (CONTROL)."""
    T = gguf.TokenType
    tokens = [UNK, "<s>", "</s>"]
    types = [T.UNKNOWN, T.CONTROL, T.CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [T.BYTE] * 256
    for tok in CONTROL_TOKENS[2:]:
        tokens.append(tok)
        types.append(T.CONTROL)
    tokens += TOOL_TAGS
    types += [T.USER_DEFINED] * len(TOOL_TAGS)
    pieces = [SPACE, "\n"] + [chr(c) for c in range(0x21, 0x7F)] + [STRING_VALUE]
    for word in WORDS:
        for text in (SPACE + word, word):
            pieces += [text[:end] for end in range(2, len(text) + 1)]
    for piece in dict.fromkeys(pieces):  # ordered, no duplicates
        if len(tokens) == VOCAB_SIZE:
            break
        tokens.append(piece)
        types.append(T.NORMAL)
    assert len(tokens) == VOCAB_SIZE, f"only {len(tokens)} tokens; add words"
    if scripted_call:
        tokens[-1], types[-1] = SCRIPTED_CALL, T.USER_DEFINED
    if scripted_thought:
        tokens[-3:] = [THINK_TAGS[0], SCRIPTED_THOUGHT, THINK_TAGS[1]]
        types[-3:] = [T.USER_DEFINED] * 3
    if fim:
        tokens[-len(FIM_TAGS):] = FIM_TAGS
        types[-len(FIM_TAGS):] = [T.CONTROL] * len(FIM_TAGS)
    scores = [float(len(tok)) if typ == T.NORMAL else 0.0 for tok, typ in zip(tokens, types)]
    return tokens, [int(t) for t in types], scores


# ---- the byte-level BPE ("gpt2") vocabulary: `--vocab bpe` (pre qwen2) or `--vocab bpe:<pre>` ----
BPE_PRES = ("qwen2", "llama3", "gpt-2", "default")
SPM_VOCABS = ("spm", "spm-call", "spm-think", "spm-fim")
VOCABS = (*SPM_VOCABS, "bpe", *(f"bpe:{pre}" for pre in BPE_PRES))
BPE_CONTROL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Merged before the common words, so tokenizer tests meet merged non-ASCII text, digit groups,
# whitespace runs, contractions and a prefix of the special tokens ("<|").
BPE_FIRST_WORDS = [
    STRING_VALUE, " " + STRING_VALUE, "Hello", " world", "über", " über", "Straße", "café", " café",
    "日本", "中文", "東京", "こんにちは", "привет", " мир", "مرحبا", "😀", "12", "123", "000",
    "  ", "    ", "\n\n", "\t", "'t", "'s", "don", " don", "<|", "|>",
]


def gpt2_byte_chars() -> list[str]:
    """GPT-2's byte -> character map (printable Latin-1 bytes stand for themselves)."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    for b in range(256):
        chars.setdefault(b, chr(256 + len(chars) - len(printable)))
    return [chars[b] for b in range(256)]


def bpe_pieces(text: str, byte_chars: list[str]) -> str:
    return "".join(byte_chars[b] for b in text.encode("utf-8"))


def apply_merges(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Plain BPE: merge the lowest-ranked adjacent pair (leftmost first) until none is left."""
    while True:
        candidates = [(ranks[pair], i) for i, pair in enumerate(zip(symbols, symbols[1:])) if pair in ranks]
        if not candidates:
            return symbols
        _, i = min(candidates)
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2:]


def bpe_merges(words: list[str], num_tokens: int) -> tuple[list[str], list[tuple[str, str]]]:
    """Merges that turn each word, in order, into one token, until num_tokens tokens exist.
    A later merge has a higher rank than every earlier one, so earlier words stay one token."""
    byte_chars = gpt2_byte_chars()
    tokens = sorted(byte_chars)               # GPT-2's id order for the 256 byte symbols
    known = set(tokens)
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        symbols = apply_merges(list(bpe_pieces(word, byte_chars)), ranks)
        while len(symbols) > 1:
            if len(tokens) == num_tokens:
                return tokens, merges
            pair = (symbols[0], symbols[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            if pair[0] + pair[1] not in known:
                known.add(pair[0] + pair[1])
                tokens.append(pair[0] + pair[1])
            symbols = apply_merges(symbols, ranks)
    raise AssertionError(f"only {len(tokens)} BPE tokens; add words")


def tiny_bpe_vocab() -> tuple[list[str], list[int], list[str]]:
    """Return (tokens, token_types, merges) of the GPT-2 style vocab, VOCAB_SIZE tokens: the 256
    byte symbols, merged pieces, then <|endoftext|>/<|im_start|>/<|im_end|> (CONTROL) and the
    tool tags (USER_DEFINED)."""
    T = gguf.TokenType
    specials = BPE_CONTROL_TOKENS + TOOL_TAGS
    words = BPE_FIRST_WORDS + [text for word in WORDS for text in (word, " " + word)]
    tokens, merges = bpe_merges(words, VOCAB_SIZE - len(specials))
    types = [T.NORMAL] * len(tokens) + [T.CONTROL] * len(BPE_CONTROL_TOKENS)
    types += [T.USER_DEFINED] * len(TOOL_TAGS)
    return tokens + specials, [int(t) for t in types], [f"{a} {b}" for a, b in merges]


def sampling_view(vocab: str = "spm") -> tuple[list[str], list[int]]:
    """(pieces, types) that logit_bias_column and FORCED_NEXT read: the SPM vocab as it is; BPE
    tokens in SPM notation ("Ġthe" -> "▁the", "Ċ" -> "\n"), with the tokens that are not valid
    UTF-8 on their own, ASCII controls and whitespace-only tokens typed BYTE (suppressed)."""
    if vocab in SPM_VOCABS:
        tokens, types, _ = spm_vocab(vocab)
        return tokens, types
    tokens, types, _ = tiny_bpe_vocab()
    byte_of = {char: b for b, char in enumerate(gpt2_byte_chars())}
    pieces, view_types = [], []
    for token, typ in zip(tokens, types):
        if typ != gguf.TokenType.NORMAL:
            pieces.append(token)
            view_types.append(typ)
            continue
        raw = bytes(byte_of[c] for c in token)
        text = raw.decode("utf-8", errors="replace")
        byte_ish = "\ufffd" in text or (len(raw) == 1 and not text.isspace() and not 0x20 < raw[0] < 0x7F)
        pieces.append(token if byte_ish else text.replace(" ", SPACE))
        view_types.append(int(gguf.TokenType.BYTE) if byte_ish or text.isspace() else typ)
    return pieces, view_types


def logit_bias_column(tokens: list[str], types: list[int]) -> np.ndarray:
    """The per-token logit bias carried by output.weight[:, BIAS_DIM]."""
    T = gguf.TokenType
    bias = np.zeros(len(tokens), dtype=np.float32)  # (vocab,) float32
    whole_words = {SPACE + w for w in WORDS}
    for token_id, (tok, typ) in enumerate(zip(tokens, types)):
        if typ in (T.CONTROL, T.BYTE, T.UNKNOWN) or tok in WHITESPACE_TOKENS:
            bias[token_id] = SUPPRESS_BIAS
        elif typ == T.USER_DEFINED or tok in RARE_TOKENS:
            bias[token_id] = RARE_BIAS
        elif tok in whole_words:
            bias[token_id] = WORD_BIAS
    return bias


def model_tensors(rng: np.random.Generator, bias: np.ndarray, forced_pairs: list[tuple[int, int]],
                  shape: ModelShape = SHAPES["tiny"], arch: str = "llama") -> dict[str, np.ndarray]:
    """All weights as float32 numpy arrays, shaped (out, in) as gguf expects."""
    def normal(*dims: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, size=dims).astype(np.float32)

    vocab_size = len(bias)
    tensors = {"token_embd.weight": token_embedding(normal, forced_pairs, shape, vocab_size)}
    for layer in range(shape.n_layer):
        tensors.update(layer_tensors(normal, layer, shape))
        tensors.update(arch_layer_tensors(normal, layer, shape, arch))
    tensors.update(output_tensors(normal, bias, forced_pairs, shape))
    if arch in TIED_ARCHS:     # drawn anyway: the other tensors keep their bytes
        del tensors["output.weight"]
    if arch == "phi3":
        tensors.update(phi3_fused(tensors, shape))
    return tensors


def phi3_fused(tensors: dict[str, np.ndarray], shape: ModelShape) -> dict[str, np.ndarray]:
    """phi3's tensors from llama's (removed from tensors): each layer's Q/K/V as one attn_qkv,
    gate and up as one ffn_up (the gate first: ggml's swiglu), and LongRoPE's two factor sets."""
    fused = {}
    for layer in range(shape.n_layer):
        prefix = f"blk.{layer}."
        fused[prefix + "attn_qkv.weight"] = np.concatenate(
            [tensors.pop(prefix + f"attn_{part}.weight") for part in "qkv"])    # (q_dim + 2*kv_dim, n_embd)
        fused[prefix + "ffn_up.weight"] = np.concatenate(
            [tensors.pop(prefix + "ffn_gate.weight"), tensors.pop(prefix + "ffn_up.weight")])   # (2*n_ff, n_embd)
    half = shape.head_dim // 2
    fused["rope_factors_long.weight"] = np.geomspace(1.0, 16.0, half).astype(np.float32)    # (n_rot/2,)
    fused["rope_factors_short.weight"] = np.geomspace(1.0, 1.5, half).astype(np.float32)    # (n_rot/2,)
    return fused


def phi3_attn_factor() -> float:
    """The attention factor convert_hf_to_gguf.py's Phi3MiniModel writes for LongRoPE:
    sqrt(1 + ln(scale) / ln(original context)), scale = context / original context."""
    return float(np.sqrt(1 + np.log(CONTEXT_LENGTH / PHI3_ORIGINAL_CONTEXT) / np.log(PHI3_ORIGINAL_CONTEXT)))


def token_embedding(normal, forced_pairs: list[tuple[int, int]], shape: ModelShape,
                    vocab_size: int) -> np.ndarray:
    token_embd = normal(vocab_size, shape.n_embd, std=EMBED_STD)  # (vocab, n_embd)
    token_embd[:, RESERVED_DIMS] = 0.0
    token_embd[:, BIAS_DIM] = 1.0
    for dim, (token_id, _) in zip(FORCED_DIMS, forced_pairs):
        token_embd[token_id, dim] = 1.0
    return token_embd


def layer_tensors(normal, layer: int, shape: ModelShape) -> dict[str, np.ndarray]:
    """One transformer block that neither reads nor writes the reserved dimensions."""
    n_embd, n_ff = shape.n_embd, shape.n_ff
    q_dim, kv_dim = shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
    std, down_std = layer_stds(shape)
    content = np.ones(n_embd, dtype=np.float32)  # (n_embd,) norm weight: 0 on reserved dims
    content[RESERVED_DIMS] = 0.0
    attn_output = normal(n_embd, q_dim, std=std)      # (n_embd, n_head*head_dim)
    ffn_down = normal(n_embd, n_ff, std=down_std)     # (n_embd, n_ff)
    attn_output[RESERVED_DIMS, :] = 0.0
    ffn_down[RESERVED_DIMS, :] = 0.0
    prefix = f"blk.{layer}."
    return {
        prefix + "attn_norm.weight": content,
        prefix + "attn_q.weight": normal(q_dim, n_embd, std=std),    # (n_head*head_dim, n_embd)
        prefix + "attn_k.weight": normal(kv_dim, n_embd, std=std),   # (n_head_kv*head_dim, n_embd)
        prefix + "attn_v.weight": normal(kv_dim, n_embd, std=std),   # (n_head_kv*head_dim, n_embd)
        prefix + "attn_output.weight": attn_output,
        prefix + "ffn_norm.weight": content.copy(),
        prefix + "ffn_gate.weight": normal(n_ff, n_embd, std=std),   # (n_ff, n_embd)
        prefix + "ffn_up.weight": normal(n_ff, n_embd, std=std),     # (n_ff, n_embd)
        prefix + "ffn_down.weight": ffn_down,
    }


def layer_stds(shape: ModelShape) -> tuple[float, float]:
    """Weight std of the layer matrices, and of ffn_down: LAYER_STD scaled by fan-in and depth.

    Wider and deeper models would otherwise grow the residual's content dimensions until they
    drown the reserved ones after output_norm, and the logit-bias tricks would fade. Exactly
    LAYER_STD for the tiny shape.
    """
    tiny = SHAPES["tiny"]
    std = LAYER_STD * float(np.sqrt(tiny.n_embd * tiny.n_layer / (shape.n_embd * shape.n_layer)))
    return std, std * float(np.sqrt(tiny.n_ff / shape.n_ff))


def arch_layer_tensors(normal, layer: int, shape: ModelShape, arch: str) -> dict[str, np.ndarray]:
    """qwen2: Q/K/V biases; qwen3: per-head Q/K RMSNorm weights; gemma3: those and post-norms;
    gemma2: post-norms; llama: nothing more.

    Drawn after the llama tensors of the layer, so arch llama keeps its bytes.
    """
    prefix = f"blk.{layer}."
    if arch == "qwen2":   # a V bias as large as Q/K's would make every token's output the same
        q_dim, kv_dim = shape.n_head * shape.head_dim, shape.n_head_kv * shape.head_dim
        return {prefix + "attn_q.bias": normal(q_dim, std=0.1),    # (n_head*head_dim,)
                prefix + "attn_k.bias": normal(kv_dim, std=0.1),   # (n_head_kv*head_dim,)
                prefix + "attn_v.bias": normal(kv_dim, std=layer_stds(shape)[0])}  # (n_head_kv*head_dim,)
    tensors = {}
    if arch in ("qwen3", "gemma3"):
        tensors = {prefix + "attn_q_norm.weight": 1.0 + normal(shape.head_dim, std=0.1),   # (head_dim,)
                   prefix + "attn_k_norm.weight": 1.0 + normal(shape.head_dim, std=0.1)}   # (head_dim,)
    if arch in ("gemma2", "gemma3"):     # the attention's and the FFN's outputs normed: 0 on the reserved dims
        content = np.ones(shape.n_embd, dtype=np.float32)                                    # (n_embd,)
        content[RESERVED_DIMS] = 0.0
        tensors[prefix + "post_attention_norm.weight"] = content
        tensors[prefix + "post_ffw_norm.weight"] = content.copy()
    return tensors


def output_tensors(normal, bias: np.ndarray, forced_pairs: list[tuple[int, int]],
                   shape: ModelShape) -> dict[str, np.ndarray]:
    """output_norm + output: random logits from content dims, bias and forcing from reserved dims."""
    # After output_norm a reserved dimension at 1 is about sqrt(n_embd) (it dominates the RMS);
    # its norm weight scales it back to ~1.0, so output.weight columns are logits directly.
    n_embd = shape.n_embd
    bias_norm_value = np.sqrt(n_embd / (1.0 + (n_embd - 1) * EMBED_STD**2))
    output_norm = np.ones(n_embd, dtype=np.float32)  # (n_embd,)
    output_norm[RESERVED_DIMS] = 1.0 / bias_norm_value
    content_value = EMBED_STD * bias_norm_value  # a content dimension after output_norm
    output = normal(len(bias), n_embd, std=OUTPUT_STD / (np.sqrt(n_embd) * content_value))  # (vocab, n_embd)
    output[:, RESERVED_DIMS] = 0.0
    output[:, BIAS_DIM] = bias
    for dim, (_, next_id) in zip(FORCED_DIMS, forced_pairs):
        output[next_id, dim] = FORCE_BIAS
    return {"output_norm.weight": output_norm, "output.weight": output}


def tensor_type(name: str, array: np.ndarray, dtype: str) -> Q:
    """The ggml type a tensor is written in (see "Variants" in the module docstring)."""
    wanted, _, fallback = DTYPES[dtype]
    if array.ndim == 1 or wanted == Q.F32:
        return Q.F32
    if wanted != Q.F16 and name in TRICK_TENSORS:
        return Q.Q8_0
    for qtype in (wanted, fallback):
        if array.shape[-1] % gguf.GGML_QUANT_SIZES[qtype][0] == 0:
            return qtype
    return Q.F16


def encode_tensor(array: np.ndarray, qtype: Q) -> np.ndarray:
    """float32 (rows, cols) -> what GGUFWriter.add_tensor takes for qtype."""
    if qtype == Q.F32:
        return array
    if qtype == Q.F16:
        return array.astype(np.float16)
    if qtype == Q.Q4_K:
        return quantize_q4_k(array)
    if qtype == Q.Q5_K:
        return quantize_q5_k(array)
    if qtype == Q.Q6_K:
        return quantize_q6_k(array)
    return gguf.quants.quantize(array, qtype)


def _f16_bytes(values: np.ndarray) -> np.ndarray:
    """(n,) float32 -> (n, 2) uint8 little-endian halves."""
    return values.astype("<f2").view(np.uint8).reshape(-1, 2)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), 0).astype(np.float32)


def quantize_q4_k(array: np.ndarray) -> np.ndarray:
    """(rows, cols) float32, cols % 256 == 0 -> (rows, cols / 256 * 144) Q4_K bytes.

    Per 32-value sub-block x ~ d*sc*q - dmin*m with 6-bit sc, m and 4-bit q; an all-zero
    sub-block stays exactly zero.
    """
    head, q = _scale_min_blocks(array, 15)                                 # (blocks, 16), (blocks, 8, 32)
    blocks = np.concatenate([head, _nibble_bytes(q)], axis=-1)             # (blocks, 144)
    return blocks.reshape(array.shape[0], -1)


def quantize_q5_k(array: np.ndarray) -> np.ndarray:
    """(rows, cols) float32, cols % 256 == 0 -> (rows, cols / 256 * 176) Q5_K bytes: as Q4_K
    with 5-bit q, the 5th bits in 32 bytes (bit s of byte i: value i of sub-block s)."""
    head, q = _scale_min_blocks(array, 31)                                 # (blocks, 16), (blocks, 8, 32)
    bits = np.arange(8, dtype=np.uint8)[None, :, None]                     # (1, 8, 1)
    qh = np.bitwise_or.reduce((q >> 4) << bits, axis=1).astype(np.uint8)   # (blocks, 32)
    blocks = np.concatenate([head, qh, _nibble_bytes(q & 0x0F)], axis=-1)  # (blocks, 176)
    return blocks.reshape(array.shape[0], -1)


def _scale_min_blocks(array: np.ndarray, levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Q4_K/Q5_K: (rows, cols) float32 -> per 256 values the 16 bytes d, dmin, packed scales and
    mins (blocks, 16) uint8, and q (blocks, 8, 32) uint8 in 0..levels."""
    x = array.reshape(-1, 8, 32).astype(np.float32)                        # (blocks, 8, 32)
    low = np.minimum(x.min(axis=-1), 0.0)                                  # (blocks, 8)
    scale = (x.max(axis=-1) - low) / float(levels)                         # (blocks, 8)
    d = (scale.max(axis=-1) / 63.0).astype(np.float16).astype(np.float32)  # (blocks,)
    dmin = ((-low).max(axis=-1) / 63.0).astype(np.float16).astype(np.float32)  # (blocks,)
    sc = np.clip(np.round(_safe_div(scale, d[:, None])), 0, 63).astype(np.uint8)   # (blocks, 8)
    m = np.clip(np.round(_safe_div(-low, dmin[:, None])), 0, 63).astype(np.uint8)  # (blocks, 8)
    step = (d[:, None] * sc)[..., None]                                    # (blocks, 8, 1)
    offset = (dmin[:, None] * m)[..., None]                                # (blocks, 8, 1)
    q = np.clip(np.round(_safe_div(x + offset, np.broadcast_to(step, x.shape))), 0, levels).astype(np.uint8)
    packed_scales = np.concatenate([sc[:, :4] | ((sc[:, 4:] >> 4) << 6), m[:, :4] | ((m[:, 4:] >> 4) << 6),
                                    (sc[:, 4:] & 0x0F) | ((m[:, 4:] & 0x0F) << 4)], axis=-1)  # (blocks, 12)
    return np.concatenate([_f16_bytes(d), _f16_bytes(dmin), packed_scales], axis=-1), q


def _nibble_bytes(q: np.ndarray) -> np.ndarray:
    """(blocks, 8, 32) values 0..15 -> (blocks, 128) bytes: sub-block 2j low, 2j + 1 high."""
    return (q[:, 0::2, :] | (q[:, 1::2, :] << 4)).reshape(-1, 128)


def quantize_q6_k(array: np.ndarray) -> np.ndarray:
    """(rows, cols) float32, cols % 256 == 0 -> (rows, cols / 256 * 210) Q6_K bytes.

    Per 16-value sub-block x ~ d*sc*(q - 32) with int8 sc and 6-bit q; zeros stay zeros.
    """
    rows = array.shape[0]
    x = array.reshape(-1, 16, 16).astype(np.float32)                       # (blocks, 16, 16)
    scale = np.abs(x).max(axis=-1) / 31.0                                  # (blocks, 16)
    d = (scale.max(axis=-1) / 127.0).astype(np.float16).astype(np.float32) # (blocks,)
    sc = np.clip(np.round(_safe_div(scale, d[:, None])), 0, 127).astype(np.int8)  # (blocks, 16)
    step = np.broadcast_to((d[:, None] * sc)[..., None], x.shape)          # (blocks, 16, 16)
    q = (np.clip(np.round(_safe_div(x, step)), -32, 31) + 32).astype(np.uint8)
    q = q.reshape(-1, 2, 4, 32)                                            # (blocks, half, group, 32)
    nib = q & 0x0F
    ql = (nib[:, :, 0:2, :] | (nib[:, :, 2:4, :] << 4)).reshape(-1, 128)   # (blocks, 128)
    hi = q >> 4                                                            # (blocks, 2, 4, 32)
    qh = (hi[:, :, 0] | (hi[:, :, 1] << 2) | (hi[:, :, 2] << 4) | (hi[:, :, 3] << 6)).reshape(-1, 64)
    blocks = np.concatenate([ql, qh, sc.view(np.uint8), _f16_bytes(d)], axis=-1)  # (blocks, 210)
    return blocks.reshape(rows, -1)


def add_metadata(writer: gguf.GGUFWriter, seed: int, file_type: int,
                 shape: ModelShape = SHAPES["tiny"], arch: str = "llama") -> None:
    """Hyperparameters under `{arch}.*` (the writer prefixes its architecture)."""
    writer.add_name(f"velollm-tiny-seed{seed}")
    writer.add_file_type(file_type)
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.head_dim)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB_SIZE)
    if arch in ("qwen3", "gemma2", "gemma3"):
        writer.add_key_length(shape.head_dim)
        writer.add_value_length(shape.head_dim)
    if arch == "gemma3":
        writer.add_sliding_window(GEMMA3_SLIDING_WINDOW)
    if arch == "gemma2":
        writer.add_sliding_window(GEMMA2_SLIDING_WINDOW)
        writer.add_attn_logit_softcapping(GEMMA2_SOFTCAPS[0])
        writer.add_final_logit_softcapping(GEMMA2_SOFTCAPS[1])
    if arch == "phi3":
        writer.add_sliding_window(PHI3_SLIDING_WINDOW)
        writer.add_rope_scaling_orig_ctx_len(PHI3_ORIGINAL_CONTEXT)
        writer.add_rope_scaling_attn_factors(phi3_attn_factor())


def spm_vocab(vocab: str) -> tuple[list[str], list[int], list[float]]:
    """tiny_vocab of one of SPM_VOCABS."""
    return tiny_vocab(scripted_call=vocab == "spm-call", scripted_thought=vocab == "spm-think",
                      fim=vocab == "spm-fim")


def add_tokenizer(writer: gguf.GGUFWriter, vocab: str = "spm", chat_template: str | None = None,
                  add_bos: bool | None = None) -> None:
    """The vocab's tokenizer keys; chat_template and add_bos (None: the vocab's default) may differ."""
    chat_template = chat_template or (CHAT_TEMPLATE_THINK if vocab == "spm-think" else CHAT_TEMPLATE)
    if vocab not in SPM_VOCABS:
        add_bpe_tokenizer(writer, pre=vocab.partition(":")[2] or "qwen2", chat_template=chat_template,
                          add_bos=add_bos)
        return
    tokens, types, scores = spm_vocab(vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokens.index(BOS))
    writer.add_eos_token_id(tokens.index(EOS))
    writer.add_unk_token_id(tokens.index(UNK))
    writer.add_add_bos_token(bool(add_bos))
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(chat_template)
    if vocab == "spm-fim":
        for key, tag in zip(FIM_KEYS, FIM_TAGS):
            writer.add_uint32(key, tokens.index(tag))


def add_bpe_tokenizer(writer: gguf.GGUFWriter, pre: str, chat_template: str = CHAT_TEMPLATE,
                      add_bos: bool | None = None) -> None:
    """No scores (as converted GPT-2 style vocabs); bos/pad <|endoftext|>, eos <|im_end|>; pre
    llama3 adds BOS as real Llama-3 files do, the others do not."""
    tokens, types, merges = tiny_bpe_vocab()
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(tokens.index("<|endoftext|>"))
    writer.add_eos_token_id(tokens.index(EOS))
    writer.add_pad_token_id(tokens.index("<|endoftext|>"))
    writer.add_add_bos_token(pre == "llama3" if add_bos is None else add_bos)
    writer.add_add_eos_token(False)
    writer.add_chat_template(chat_template)


def build_tiny_gguf(out_path: str | os.PathLike, seed: int = 0, dtype: str = "f16",
                    arch: str = "llama", shape: str = "tiny", vocab: str = "spm", reranker: bool | str = False) -> Path:
    """Write the tiny model to out_path (atomically: temp file + rename); return the path.
    vocab: "spm" (SentencePiece), "bpe" (GPT-2 byte-level BPE, pre qwen2) or "bpe:<pre>"."""
    check_choice("dtype", dtype, DTYPES)
    check_choice("arch", arch, ARCHS)
    if reranker:
        check_choice("a reranker's arch", arch, RERANK_ARCHS)
    check_choice("shape", shape, SHAPES)
    check_choice("vocab", vocab, VOCABS)
    out_path = Path(out_path)
    tokens, types = sampling_view(vocab)
    chain = {"spm-call": SCRIPTED_FORCED_NEXT, "spm-think": SCRIPTED_THINK_FORCED_NEXT}.get(vocab, FORCED_NEXT)
    forced_pairs = [(tokens.index(a), tokens.index(b)) for a, b in chain]
    tensors = model_tensors(np.random.default_rng(seed), logit_bias_column(tokens, types), forced_pairs,
                            SHAPES[shape], arch)
    if reranker:
        tensors["cls.output.weight"] = rerank_head(seed, SHAPES[shape])
    tmp_path = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp_path), arch)
    try:
        add_metadata(writer, seed, int(DTYPES[dtype][1]), SHAPES[shape], arch)
        add_tokenizer(writer, vocab)
        if reranker:
            writer.add_pooling_type(gguf.PoolingType.RANK)
            writer.add_classifier_output_labels(list(RERANK_LABELS))
            if reranker == "template":
                writer.add_string("tokenizer.chat_template.rerank", QWEN3_RERANK_TEMPLATE)
        write_tensors(writer, tensors, dtype)
    finally:
        writer.close()
    os.replace(tmp_path, out_path)
    return out_path


def rerank_head(seed: int, shape: ModelShape) -> np.ndarray:
    """The classifier head `cls.output.weight`, (len(RERANK_LABELS), n_embd), from a stream of its
    own so the model's other tensors are those of the same seed without it. Scaled like a row of
    output.weight, so the two labels' logits differ by a few units and the scores spread out."""
    rng = np.random.default_rng([seed, len(RERANK_LABELS)])
    return rng.normal(0.0, 1.0 / np.sqrt(shape.n_embd), size=(len(RERANK_LABELS), shape.n_embd)).astype(np.float32)


def write_tensors(writer: gguf.GGUFWriter, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """The tensors stored as a `dtype` file stores them (tensor_type's rules), then the whole file
    written: header, metadata (already added) and tensors."""
    for name, array in tensors.items():
        qtype = tensor_type(name, array, dtype)
        encoded = encode_tensor(array, qtype)
        writer.add_tensor(name, encoded, raw_dtype=qtype if encoded.dtype == np.uint8 else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()


def check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, not {value!r}")


def force_tool_call_bias() -> dict[str, float]:
    """A request `logit_bias` (token id -> bias) that makes the model open a `<tool_call>`."""
    tokens, _, _ = tiny_vocab()
    return {str(tokens.index("<tool_call>")): 100.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="path of the GGUF file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="f16")
    parser.add_argument("--arch", choices=ARCHS, default="llama")
    parser.add_argument("--shape", choices=tuple(SHAPES), default="tiny")
    parser.add_argument("--vocab", choices=VOCABS, default="spm")
    parser.add_argument("--reranker", action="store_true", help="a reranker (arch qwen3): pooling rank + cls.output")
    parser.add_argument("--rerank-template", action="store_true",
                        help="with --reranker: Qwen3-Reranker's tokenizer.chat_template.rerank")
    args = parser.parse_args(argv)
    path = build_tiny_gguf(args.out, seed=args.seed, dtype=args.dtype, arch=args.arch, shape=args.shape,
                           vocab=args.vocab, reranker="template" if args.rerank_template else args.reranker)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
