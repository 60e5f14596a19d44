"""What the Ollama emulator says: model catalog, scripted replies, default replies, embeddings.

Pure functions and dataclasses, no sockets (tests/rig/ollama_emulator.py serves them). Shapes
follow Ollama's docs/api.md: durations in nanoseconds, digests as sha256 hex, tool-call
arguments as JSON objects (not strings).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

DEFAULT_NUM_PREDICT = 8   # words in a default reply when the request sets no num_predict
EMBED_DIM = 64
OLLAMA_VERSION = "0.12.6"
REPLY_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


@dataclass(frozen=True)
class EmulatedModel:
    """One entry of /api/tags; `embedding` models answer /api/embed only."""
    name: str
    family: str = "llama"
    parameter_size: str = "1.1M"
    quantization_level: str = "F16"
    size: int = 1_142_112
    context_length: int = 4096
    embedding_length: int = 128
    embedding: bool = False

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.name.encode()).hexdigest()

    def details(self) -> dict[str, Any]:
        return {"parent_model": "", "format": "gguf", "family": self.family,
                "families": [self.family], "parameter_size": self.parameter_size,
                "quantization_level": self.quantization_level}


DEFAULT_MODELS = (
    EmulatedModel("tiny:latest"),
    EmulatedModel("llama3.2:latest", parameter_size="3.2B", quantization_level="Q4_K_M",
                  size=2_019_393_189, context_length=131072, embedding_length=3072),
    EmulatedModel("nomic-embed-text:latest", family="nomic-bert", parameter_size="137M",
                  size=274_302_450, context_length=2048, embedding_length=768, embedding=True),
)


@dataclass
class ScriptedReply:
    """One reply the emulator gives to the next /api/chat, /api/generate or /v1/chat/completions.

    content is split into word chunks unless `chunks` gives the boundaries. tool_calls are
    `{"name": ..., "arguments": {...}}` dicts. delay_s sleeps before each chunk. error_after=N
    sends N chunks then an NDJSON `{"error": error}` line (Ollama's mid-stream error);
    drop_after=N sends N chunks then closes the connection without finishing the stream.
    status != 200 answers `{"error": error}` with that status instead of generating, with
    `headers` (Retry-After, say).
    """
    content: str = ""
    chunks: list[str] | None = None
    thinking: str = ""                  # message.thinking (reasoning), sent before the content
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    done_reason: str = "stop"
    delay_s: float = 0.0
    error_after: int | None = None
    drop_after: int | None = None
    status: int = 200
    error: str = "an error was encountered while running the model"
    headers: dict[str, str] = field(default_factory=dict)

    def pieces(self) -> list[str]:
        if self.chunks is not None:
            return list(self.chunks)
        return re.findall(r"\s*\S+|\s+$", self.content)


def token_logprobs(pieces: list[str], body: dict[str, Any], start: int = 0) -> list[dict[str, Any]]:
    """Ollama's `logprobs` (0.12.11 on) for generated tokens, one a piece: {token, logprob,
    bytes} and, when `top_logprobs` > 0, that many alternatives, the token itself first."""
    num_top = int(body.get("top_logprobs") or 0)
    entries = []
    for index, piece in enumerate(pieces, start):
        logprob = -0.25 * (index % 4 + 1)
        entry: dict[str, Any] = {"token": piece, "logprob": logprob, "bytes": list(piece.encode())}
        if num_top:
            others = [w for w in REPLY_WORDS if w != piece.strip()][:num_top - 1]
            entry["top_logprobs"] = [{"token": piece, "logprob": logprob, "bytes": list(piece.encode())}] + [
                {"token": " " + w, "logprob": logprob - rank - 1, "bytes": list((" " + w).encode())}
                for rank, w in enumerate(others)]
        entries.append(entry)
    return entries


def now_rfc3339(offset_s: float = 0.0) -> str:
    """Ollama's timestamp format, e.g. 2024-06-04T14:38:31.837530Z."""
    moment = datetime.now(timezone.utc) + timedelta(seconds=offset_s)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_keep_alive(value: Any, default_s: float = 300.0) -> float | None:
    """Seconds to keep a model loaded; None = forever (negative), 0 = unload now."""
    if value is None:
        return default_s
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(value))
        if not match:
            raise ValueError(f"time: invalid duration {value!r}")
        unit = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
        seconds = float(match.group(1)) * unit
    return None if seconds < 0 else seconds


def prompt_text(body: dict[str, Any]) -> str:
    """The text a request asks about: generate's system+prompt or chat's message contents."""
    if "messages" in body:
        return "\n".join(str(m.get("content") or "") for m in body.get("messages") or [])
    return "\n".join(filter(None, [body.get("system"), body.get("prompt")]))


def count_tokens(text: str) -> int:
    """The emulator's 'tokenizer': one token per word or punctuation mark."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def default_reply(body: dict[str, Any]) -> ScriptedReply:
    """A deterministic reply derived from the prompt, the model and options.seed."""
    options = body.get("options") or {}
    num_predict = int(options.get("num_predict", DEFAULT_NUM_PREDICT))
    if num_predict < 0:
        num_predict = DEFAULT_NUM_PREDICT
    fmt = body.get("format")
    if fmt:
        return ScriptedReply(content=json_for_format(fmt, body), done_reason="stop")
    seed_text = f"{body.get('model')}|{options.get('seed')}|{prompt_text(body)}"
    digest = hashlib.sha256(seed_text.encode("utf-8", "surrogatepass")).digest()   # a lone \ud800 too
    words = [REPLY_WORDS[digest[i % len(digest)] % len(REPLY_WORDS)] for i in range(num_predict)]
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    return ScriptedReply(chunks=pieces, content="".join(pieces), done_reason="length")


def json_for_format(fmt: Any, body: dict[str, Any]) -> str:
    """`format: "json"` gives a small object; a JSON schema gives a minimal matching instance."""
    if fmt == "json":
        return json.dumps({"response": count_tokens(prompt_text(body))})
    return json.dumps(instance_for_schema(fmt))


def instance_for_schema(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """A minimal instance; `$ref`s into `$defs` followed, the first of `anyOf` / `oneOf` /
    `allOf` taken, an array of `minItems` items (what pydantic's schemas use)."""
    root = schema if root is None else root
    if "$ref" in schema:
        section, name = schema["$ref"][2:].split("/", 1)
        return instance_for_schema(root[section][name], root)
    for combined in ("anyOf", "oneOf", "allOf"):
        if schema.get(combined):
            return instance_for_schema(schema[combined][0], root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][0]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = kind[0]
    if kind == "object":
        props = schema.get("properties") or {}
        return {name: instance_for_schema(sub, root) for name, sub in props.items()}
    if kind == "array":
        return [instance_for_schema(schema.get("items") or {"type": "null"}, root)] * schema.get("minItems", 0)
    return {"string": "alpha", "integer": 42, "number": 1.5, "boolean": True, "null": None}.get(kind, None)


def apply_stop(pieces: list[str], stops: list[str]) -> tuple[list[str], bool]:
    """Cut the reply at the first stop string (excluded); return (pieces, stopped)."""
    text = "".join(pieces)
    cut = min((text.find(s) for s in stops if s and s in text), default=-1)
    if cut < 0:
        return pieces, False
    kept, used = [], 0
    for piece in pieces:
        if used + len(piece) >= cut:
            if cut > used:
                kept.append(piece[: cut - used])
            break
        kept.append(piece)
        used += len(piece)
    return kept, True


def embed_text(text: str, dim: int = EMBED_DIM) -> list[float]:
    """A unit-length bag-of-words vector: texts sharing words have a high cosine similarity."""
    vector = [0.0] * dim
    for word in re.findall(r"\w+", text.lower()):
        h = hashlib.sha256(word.encode()).digest()
        vector[h[0] % dim] += 1.0 if h[1] & 1 else -1.0
    norm = math.sqrt(sum(v * v for v in vector))
    if norm == 0.0:
        vector[0], norm = 1.0, 1.0
    return [v / norm for v in vector]


def tool_calls_json(tool_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ollama's shape: [{"function": {"index", "name", "arguments": {...}}}] (object arguments)."""
    return [{"function": {"index": i, "name": c["name"], "arguments": dict(c.get("arguments") or {})}}
            for i, c in enumerate(tool_calls)]


def timings(start_ns: int, end_ns: int, prompt_eval_count: int, eval_count: int) -> dict[str, int]:
    """The final object's statistics, all durations in nanoseconds and > 0."""
    total = max(end_ns - start_ns, 1000)
    load = max(total // 20, 1)
    prompt = max(total // 5, 1)
    return {"total_duration": total, "load_duration": load,
            "prompt_eval_count": prompt_eval_count, "prompt_eval_duration": prompt,
            "eval_count": eval_count, "eval_duration": max(total - load - prompt, 1)}
