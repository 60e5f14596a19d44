"""Reranking with a GGUF reranker, as llama.cpp does (llama-server --reranking).

A file is a reranker the engine runs when its `<arch>.pooling_type` is RANK (4) and it has a
classifier `cls.output.weight` (n_labels, n_embd), e.g. Qwen3-Reranker: llama.cpp takes the
final hidden state (after output_norm) of the LAST token (a causal model), applies cls.output
(and its bias when present), and, for qwen3, softmaxes over `classifier.output_labels`; the
score is the first output (llama-server's send_rerank: `embd[0]`), P("yes") for Qwen3.

Each query/document pair is one prompt, llama-server's format_prompt_rerank: the GGUF's
`tokenizer.chat_template.rerank` with {query} and {document} replaced (special tokens parsed,
none added), or else [BOS] query [EOS] [SEP] document [EOS], each marker only when the vocab
adds it (add_bos_token, add_eos_token, add_sep_token; EOS falls back to SEP).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from . import ops
from .model import ActBands, act_bands, linear

RANK_POOLING = 4                        # llama.cpp's LLAMA_POOLING_TYPE_RANK
SOFTMAX_ARCHS = ("qwen3", "qwen3vl")    # llama.cpp softmaxes the head's outputs for these only
HEAD = "cls.output.weight"
HEAD_BIAS = "cls.output.bias"
DENSE_HEAD = "cls.weight"               # BERT-style dense + tanh before cls.output: not run here
RERANK_TEMPLATE_KEY = "tokenizer.chat_template.rerank"


def reranker_problem(metadata: Mapping[str, Any], arch: str, tensor_names) -> str | None:
    """Why a file is no reranker the engine runs (None: it is one)."""
    pooling = metadata.get(f"{arch}.pooling_type")
    if pooling != RANK_POOLING:
        return f"its GGUF is not a reranker: {arch}.pooling_type is {pooling}, not RANK = {RANK_POOLING}"
    if HEAD not in tensor_names:
        return f"its GGUF has no classifier head {HEAD}"
    if DENSE_HEAD in tensor_names:
        return f"its classifier has a dense {DENSE_HEAD} layer (an encoder's), which the engine does not run"
    return None


@dataclass(frozen=True)
class RankHead:
    """The classifier on the last token's final hidden state, and the prompt layout of a pair."""
    weight: np.ndarray                  # (n_labels, n_embd), dequantised
    act: ActBands                       # the hidden state rounded as ggml rounds it for the head's type
    bias: np.ndarray | None             # (n_labels,) or None
    softmax: bool
    labels: tuple[str, ...]
    template: str | None                # tokenizer.chat_template.rerank, or None
    sep_id: int | None
    add_sep: bool

    @classmethod
    def read(cls, metadata: Mapping[str, Any], arch: str, tensor_types: Mapping[str, int],
             get_tensor: Callable[[str], np.ndarray]) -> "RankHead":
        """tensor_types: each tensor's ggml type (GGUFFile.tensors' ggml_type)."""
        tensor_names = tensor_types.keys()
        weight = np.ascontiguousarray(get_tensor(HEAD), dtype=np.float32)          # (n_labels, n_embd)
        act = act_bands([(weight.shape[0], tensor_types[HEAD])])
        bias = np.ascontiguousarray(get_tensor(HEAD_BIAS), dtype=np.float32) if HEAD_BIAS in tensor_names else None
        sep = metadata.get("tokenizer.ggml.seperator_token_id")                  # sic: llama.cpp's key
        return cls(weight, act, bias, arch in SOFTMAX_ARCHS, tuple(metadata.get(f"{arch}.classifier.output_labels") or ()),
                   metadata.get(RERANK_TEMPLATE_KEY), None if sep is None else int(sep),
                   bool(metadata.get("tokenizer.ggml.add_sep_token", False)))

    def score(self, hidden: np.ndarray) -> float:
        """The score of one pair from its last token's final hidden state (n_embd,)."""
        logits = linear(hidden[None, :], self.weight, self.act)[0]               # (n_labels,)
        if self.bias is not None:
            logits = logits + self.bias
        if self.softmax:
            logits = ops.softmax(logits)
        return float(logits[0])

    def prompt_ids(self, tokenizer, query: str, document: str) -> list[int]:
        """The tokens of one query/document pair, as llama-server lays them out."""
        if self.template is not None:
            text = self.template.replace("{query}", query).replace("{document}", document)
            return tokenizer.encode(text, add_special=False, parse_special=True)
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else self.sep_id
        ids = [tokenizer.bos_id] if tokenizer.add_bos else []
        ids += tokenizer.encode(query, add_special=False, parse_special=False)
        ids += [eos] if tokenizer.add_eos else []
        ids += [self.sep_id] if self.add_sep and self.sep_id is not None else []
        ids += tokenizer.encode(document, add_special=False, parse_special=False)
        ids += [eos] if tokenizer.add_eos else []
        return ids
