#!/usr/bin/env python3
"""Write a tiny random-weight Llama GGUF for tests: `make_tiny_gguf.py OUT.gguf [--seed N]`.

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

Usable as a script or imported (tests load it by path): build_tiny_gguf(), tiny_vocab().
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

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


def tiny_vocab() -> tuple[list[str], list[int], list[float]]:
    """Return (tokens, token_types, scores), VOCAB_SIZE each, in token-id order."""
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
    scores = [float(len(tok)) if typ == T.NORMAL else 0.0 for tok, typ in zip(tokens, types)]
    return tokens, [int(t) for t in types], scores


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


def model_tensors(rng: np.random.Generator, bias: np.ndarray,
                  forced_pairs: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """All weights as float32 numpy arrays, shaped (out, in) as gguf expects."""
    def normal(*shape: int, std: float) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    tensors = {"token_embd.weight": token_embedding(normal, forced_pairs)}
    for layer in range(N_LAYER):
        tensors.update(layer_tensors(normal, layer))
    tensors.update(output_tensors(normal, bias, forced_pairs))
    return tensors


def token_embedding(normal, forced_pairs: list[tuple[int, int]]) -> np.ndarray:
    token_embd = normal(VOCAB_SIZE, N_EMBD, std=EMBED_STD)  # (vocab, n_embd)
    token_embd[:, RESERVED_DIMS] = 0.0
    token_embd[:, BIAS_DIM] = 1.0
    for dim, (token_id, _) in zip(FORCED_DIMS, forced_pairs):
        token_embd[token_id, dim] = 1.0
    return token_embd


def layer_tensors(normal, layer: int) -> dict[str, np.ndarray]:
    """One transformer block that neither reads nor writes the reserved dimensions."""
    content = np.ones(N_EMBD, dtype=np.float32)  # (n_embd,) norm weight: 0 on reserved dims
    content[RESERVED_DIMS] = 0.0
    attn_output = normal(N_EMBD, N_HEAD * HEAD_DIM, std=LAYER_STD)  # (n_embd, n_head*head_dim)
    ffn_down = normal(N_EMBD, N_FF, std=LAYER_STD)                   # (n_embd, n_ff)
    attn_output[RESERVED_DIMS, :] = 0.0
    ffn_down[RESERVED_DIMS, :] = 0.0
    prefix = f"blk.{layer}."
    return {
        prefix + "attn_norm.weight": content,
        prefix + "attn_q.weight": normal(N_HEAD * HEAD_DIM, N_EMBD, std=LAYER_STD),     # (n_head*head_dim, n_embd)
        prefix + "attn_k.weight": normal(N_HEAD_KV * HEAD_DIM, N_EMBD, std=LAYER_STD),  # (n_head_kv*head_dim, n_embd)
        prefix + "attn_v.weight": normal(N_HEAD_KV * HEAD_DIM, N_EMBD, std=LAYER_STD),  # (n_head_kv*head_dim, n_embd)
        prefix + "attn_output.weight": attn_output,
        prefix + "ffn_norm.weight": content.copy(),
        prefix + "ffn_gate.weight": normal(N_FF, N_EMBD, std=LAYER_STD),  # (n_ff, n_embd)
        prefix + "ffn_up.weight": normal(N_FF, N_EMBD, std=LAYER_STD),    # (n_ff, n_embd)
        prefix + "ffn_down.weight": ffn_down,
    }


def output_tensors(normal, bias: np.ndarray, forced_pairs: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """output_norm + output: random logits from content dims, bias and forcing from reserved dims."""
    # After output_norm a reserved dimension at 1 is about sqrt(n_embd) (it dominates the RMS);
    # its norm weight scales it back to ~1.0, so output.weight columns are logits directly.
    bias_norm_value = np.sqrt(N_EMBD / (1.0 + (N_EMBD - 1) * EMBED_STD**2))
    output_norm = np.ones(N_EMBD, dtype=np.float32)  # (n_embd,)
    output_norm[RESERVED_DIMS] = 1.0 / bias_norm_value
    content_value = EMBED_STD * bias_norm_value  # a content dimension after output_norm
    output = normal(VOCAB_SIZE, N_EMBD, std=OUTPUT_STD / (np.sqrt(N_EMBD) * content_value))  # (vocab, n_embd)
    output[:, RESERVED_DIMS] = 0.0
    output[:, BIAS_DIM] = bias
    for dim, (_, next_id) in zip(FORCED_DIMS, forced_pairs):
        output[next_id, dim] = FORCE_BIAS
    return {"output_norm.weight": output_norm, "output.weight": output}


def add_metadata(writer: gguf.GGUFWriter, seed: int, file_type: int) -> None:
    writer.add_name(f"velollm-tiny-seed{seed}")
    writer.add_file_type(file_type)
    writer.add_context_length(CONTEXT_LENGTH)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(VOCAB_SIZE)


def add_tokenizer(writer: gguf.GGUFWriter) -> None:
    tokens, types, scores = tiny_vocab()
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(tokens.index(BOS))
    writer.add_eos_token_id(tokens.index(EOS))
    writer.add_unk_token_id(tokens.index(UNK))
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(CHAT_TEMPLATE)


def build_tiny_gguf(out_path: str | os.PathLike, seed: int = 0, dtype: str = "f16") -> Path:
    """Write the tiny model to out_path (atomically: temp file + rename); return the path."""
    if dtype not in ("f16", "f32"):
        raise ValueError(f"dtype must be f16 or f32, not {dtype!r}")
    out_path = Path(out_path)
    tokens, types, _ = tiny_vocab()
    forced_pairs = [(tokens.index(a), tokens.index(b)) for a, b in FORCED_NEXT]
    tensors = model_tensors(np.random.default_rng(seed), logit_bias_column(tokens, types), forced_pairs)
    file_type = gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32
    tmp_path = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(str(tmp_path), "llama")
    try:
        add_metadata(writer, seed, int(file_type))
        add_tokenizer(writer)
        for name, array in tensors.items():
            # 1-D norm weights stay F32 (ggml requires it); matrices follow dtype.
            keep_f32 = dtype == "f32" or array.ndim == 1
            writer.add_tensor(name, array if keep_f32 else array.astype(np.float16))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp_path, out_path)
    return out_path


def force_tool_call_bias() -> dict[str, float]:
    """A request `logit_bias` (token id -> bias) that makes the model open a `<tool_call>`."""
    tokens, _, _ = tiny_vocab()
    return {str(tokens.index("<tool_call>")): 100.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="path of the GGUF file to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=("f16", "f32"), default="f16")
    args = parser.parse_args(argv)
    path = build_tiny_gguf(args.out, seed=args.seed, dtype=args.dtype)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
