"""What the tuner needs to know about a model: weight size and KV-cache shape.

Three sources, one result (`ModelSpec`): a size label (`--model-size 8B --quant Q4_K_M`,
shape taken from a typical model of that size), a GGUF header, or Ollama's `/api/show`
JSON (whose `model_info` uses the same keys as GGUF metadata).

The name: `ModelSpec`, not `ModelInfo`, because `velollmd.backends.base.ModelInfo` is another
thing, a model a backend lists (its id and backend); this one is a model's size and shape as
`velollmctl optimize` sizes memory for it, and reads like the spec sheet it is.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..hw.info import MIB
from . import remote
from .gguf_header import ArrayInfo, read_gguf_header

DEFAULT_QUANT = "Q4_K_M"

# Effective bits per weight (scales included) of llama.cpp quantizations.
BITS_PER_WEIGHT = {"F32": 32.0, "F16": 16.0, "BF16": 16.0, "Q8_0": 8.5, "Q6_K": 6.56,
                   "Q5_K_M": 5.69, "Q5_K_S": 5.54, "Q5_0": 5.5, "Q5_1": 6.0, "Q4_K_M": 4.85,
                   "Q4_K_S": 4.58, "Q4_0": 4.55, "Q4_1": 5.0, "IQ4_XS": 4.25, "IQ4_NL": 4.5,
                   "Q3_K_L": 4.27, "Q3_K_M": 3.91, "Q3_K_S": 3.5, "Q2_K": 3.35}
# llama.cpp's LLAMA_FTYPE values, as found in `general.file_type`.
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1",
              10: "Q2_K", 11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M",
              16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 25: "IQ4_NL", 30: "IQ4_XS", 32: "BF16"}
# Typical shapes by size: (max params in B, num_layers, num_kv_heads, num_heads, head_dim,
# context_length, the model the row is taken from).
TYPICAL_SHAPES = (
    (0.7, 24, 2, 14, 64, 32768, "Qwen2.5-0.5B"),
    (1.5, 16, 8, 32, 64, 131072, "Llama-3.2-1B"),
    (4.5, 28, 8, 24, 128, 131072, "Llama-3.2-3B"),
    (9.5, 32, 8, 32, 128, 131072, "Llama-3.1-8B"),
    (16.0, 48, 8, 40, 128, 32768, "Qwen2.5-14B"),
    (36.0, 64, 8, 40, 128, 32768, "Qwen2.5-32B"),
    (80.0, 80, 8, 64, 128, 131072, "Llama-3.1-70B"),
    (float("inf"), 126, 8, 128, 128, 131072, "Llama-3.1-405B"),
)
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([bBmM])\s*$")


@dataclass(frozen=True)
class ModelSpec:
    """A model's weights and attention shape, for memory planning (see the module's note on the name)."""
    name: str
    params_b: float                   # parameters, billions
    quant: str
    weights_mib: int                  # the weights' size in memory (= GGUF file size)
    num_layers: int
    num_kv_heads: int
    num_heads: int
    head_dim: int
    context_length: int               # the context the model was trained for
    arch: str = "unknown"
    path: str | None = None
    vocab_key: tuple | None = None    # (tokenizer model, vocab size, bos id, eos id)
    shape_source: str = ""            # where num_layers/num_kv_heads/head_dim came from


def parse_size_label(label: str) -> float:
    """"8B" -> 8.0, "500M" -> 0.5; raises ValueError."""
    match = _SIZE.match(label)
    value = float(match.group(1)) if match else 0.0
    if value <= 0:
        raise ValueError(f"model size {label!r}: expected a number above 0 with B or M, e.g. 8B")
    return value if match.group(2) in "bB" else value / 1000


def weights_mib(params_b: float, quant: str) -> int:
    bits = BITS_PER_WEIGHT.get(quant.upper())
    if bits is None:
        raise ValueError(f"unknown quantization {quant!r}; known: {', '.join(BITS_PER_WEIGHT)}")
    return int(params_b * 1e9 * bits / 8 / MIB)


def from_size(label: str, quant: str = DEFAULT_QUANT) -> ModelSpec:
    params_b = parse_size_label(label)
    row = next(r for r in TYPICAL_SHAPES if params_b <= r[0])
    _, layers, kv_heads, heads, head_dim, ctx, ref = row
    return ModelSpec(f"{label} {quant.upper()}", params_b, quant.upper(), weights_mib(params_b, quant),
                     layers, kv_heads, heads, head_dim, ctx, shape_source=f"typical shape of {ref}")


def _int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def from_metadata(kv: dict, name: str, file_size: int | None = None, quant: str | None = None,
                  path: str | None = None) -> ModelSpec:
    """From GGUF metadata keys (`llama.block_count`, `llama.attention.head_count_kv`, ...)."""
    arch = kv.get("general.architecture", "llama")
    get = lambda key: _int(kv.get(f"{arch}.{key}"))  # noqa: E731
    layers, heads, embd = get("block_count"), get("attention.head_count"), get("embedding_length")
    if not (layers and heads and embd):
        raise ValueError(f"{name}: metadata lacks {arch}.block_count / head_count / embedding_length")
    kv_heads = get("attention.head_count_kv") or heads
    head_dim = get("attention.key_length") or embd // heads
    quant = (quant or FILE_TYPES.get(_int(kv.get("general.file_type")), "F16")).upper()
    params = _int(kv.get("general.parameter_count"))
    params_b = params / 1e9 if params else (file_size or 0) * 8 / BITS_PER_WEIGHT.get(quant, 16) / 1e9
    size_mib = file_size // MIB if file_size else weights_mib(params_b, quant)
    return ModelSpec(name, params_b, quant, size_mib, layers, kv_heads, heads, head_dim,
                     get("context_length") or 4096, arch, path, _vocab_key(kv), f"{arch} metadata")


def _vocab_key(kv: dict) -> tuple | None:
    tokens = kv.get("tokenizer.ggml.tokens")
    size = tokens.count if isinstance(tokens, ArrayInfo) else (len(tokens) if isinstance(tokens, list) else None)
    if size is None:
        return None
    return (kv.get("tokenizer.ggml.model"), size, kv.get("tokenizer.ggml.bos_token_id"),
            kv.get("tokenizer.ggml.eos_token_id"))


def from_gguf(path: str) -> ModelSpec:
    header = read_gguf_header(path)
    name = header.metadata.get("general.name") or path.rsplit("/", 1)[-1]
    return from_metadata(header.metadata, str(name), header.file_size, path=path)


def from_ollama_show(show: dict, name: str) -> ModelSpec:
    """From the parsed JSON of Ollama's POST /api/show."""
    details = show.get("details") or {}
    quant = details.get("quantization_level") or None
    return from_metadata(show.get("model_info") or {}, name, quant=quant)


def fetch_ollama_show(base_url: str, model: str, timeout_s: float = 5.0) -> dict:
    """The parsed JSON of Ollama's POST /api/show for `model` (`velollmctl optimize --ollama-model`).

    Raises remote.ServerError (an OSError) when Ollama is unreachable or answers an error, and
    ValueError when the answer is not a JSON object; each says what happened in one line.
    """
    url = base_url.rstrip("/") + "/api/show"
    status, body = remote.request(base_url, "POST", "/api/show", {"model": model}, timeout_s)
    if status != 200:
        raise remote.ServerError(f"{url} answered HTTP {status}: {remote.error_message(body)}")
    try:
        show = json.loads(body)
    except ValueError:
        show = None
    if not isinstance(show, dict):
        raise ValueError(f"{url} did not answer with a JSON object: is this Ollama?")
    if not _is_show(show):
        raise ValueError(f"{url} answered an object Ollama's /api/show does not send: is this Ollama?")
    return show


def _is_show(show: dict) -> bool:
    """`details` and `model_info` objects (or absent), the quantization a name (or absent):
    what from_ollama_show reads."""
    details, model_info = show.get("details") or {}, show.get("model_info") or {}
    return (isinstance(details, dict) and isinstance(model_info, dict)
            and isinstance(details.get("quantization_level") or "", str))
