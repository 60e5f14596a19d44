"""A tuned `llama-server` command line from a TunePlan, with a speculative-decoding draft.

A draft model must share the target's vocabulary (llama.cpp checks tokenizer type, size and
special tokens), so candidates are matched on `ModelSpec.vocab_key` read from GGUF headers.
Expected gain per target step (Leviathan et al. 2023) with acceptance rate a, draft length k
and draft/target cost ratio c (about their size ratio, decoding being memory-bound):

    speedup = (1 - a^(k+1)) / ((1 - a) * (1 + k * c))
"""
from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path

from .gguf_header import GGUF_MAGIC, GGUFError
from .modelspec import ModelSpec, from_gguf
from .tune import TunePlan, kv_cache_mib

DRAFT_MAX_CHOICES = (4, 8, 16)
PLANNING_ACCEPTANCE = 0.7        # typical for a same-family draft on chat and code
MAX_DRAFT_RATIO = 0.35           # a bigger draft costs more than it saves
IDEAL_DRAFT_RATIO = 0.1
MAX_SCAN_FILES = 500


@dataclass(frozen=True)
class DraftChoice:
    model: ModelSpec
    size_ratio: float            # draft weights / target weights
    draft_max: int
    extra_mib: int               # the draft's weights + KV cache
    fits_on_gpu: bool


def expected_speedup(acceptance: float, draft_max: int, cost_ratio: float) -> float:
    tokens_per_step = (1 - acceptance ** (draft_max + 1)) / (1 - acceptance)
    return tokens_per_step / (1 + draft_max * cost_ratio)


def best_draft_max(cost_ratio: float, acceptance: float = PLANNING_ACCEPTANCE) -> int:
    return max(DRAFT_MAX_CHOICES, key=lambda k: expected_speedup(acceptance, k, cost_ratio))


def scan_gguf_files(directory: str) -> list[str]:
    """Files under `directory` that start with the GGUF magic (Ollama blobs have no suffix)."""
    found = []
    for path in sorted(Path(directory).rglob("*"))[:MAX_SCAN_FILES]:
        try:
            if path.is_file() and path.open("rb").read(4) == GGUF_MAGIC:
                found.append(str(path))
        except OSError:
            continue
    return found


def load_candidates(paths: list[str]) -> tuple[list[ModelSpec], list[str]]:
    models, notes = [], []
    for path in paths:
        try:
            models.append(from_gguf(path))
        except (OSError, GGUFError, ValueError) as exc:
            notes.append(f"draft candidate {path}: {exc}")
    return models, notes


def choose_draft(p: TunePlan, candidates: list[ModelSpec]) -> DraftChoice | None:
    """The compatible candidate whose size ratio is closest to 1/10 (log scale)."""
    target = p.model
    if target.vocab_key is None:
        return None
    usable = [c for c in candidates if c.vocab_key == target.vocab_key and c.path != target.path
              and c.weights_mib <= target.weights_mib * MAX_DRAFT_RATIO]
    if not usable:
        return None
    best = min(usable, key=lambda c: abs(math.log(max(c.weights_mib, 1) / target.weights_mib
                                                  / IDEAL_DRAFT_RATIO)))
    ratio = max(best.weights_mib, 1) / target.weights_mib
    extra = best.weights_mib + int(kv_cache_mib(best, p.context, p.parallel, p.cache_type))
    return DraftChoice(best, ratio, best_draft_max(ratio), extra,
                       p.full_offload and extra <= p.headroom_mib)


def llama_server_argv(p: TunePlan, model_path: str, draft: DraftChoice | None = None) -> list[str]:
    argv = ["llama-server", "-m", model_path, "-ngl", str(p.num_gpu_layers),
            "-c", str(p.context * p.parallel), "--parallel", str(p.parallel),
            "-b", "2048", "-ub", str(p.num_batch),
            "--flash-attn", "on" if p.flash_attention else "off",
            "--cache-type-k", p.cache_type, "--cache-type-v", p.cache_type,
            "--threads", str(p.num_thread)]
    if draft:
        argv += ["--model-draft", draft.model.path or "DRAFT.gguf", "--draft-max", str(draft.draft_max),
                 "--draft-min", "1", "-ngld", str(draft.model.num_layers + 1 if draft.fits_on_gpu else 0)]
    return argv


def explain(p: TunePlan, draft: DraftChoice | None) -> list[str]:
    lines = [f"-c {p.context * p.parallel} is the total context: {p.parallel} slot(s) x {p.context} tokens",
             f"KV cache {p.cache_type}: {p.kv_mib} MiB; weights {p.model.weights_mib} MiB; "
             f"{p.num_gpu_layers} layers offloaded (-ngl)"]
    if draft is None:
        return lines + ["no speculative draft: no smaller model with the same vocabulary was given "
                        "(--draft-candidates PATHS or --models-dir DIR, with --gguf for the target)"]
    speedups = ", ".join(f"{a:.0%}: {expected_speedup(a, draft.draft_max, draft.size_ratio):.2f}x"
                         for a in (0.5, 0.7, 0.85))
    return lines + [
        f"draft {draft.model.name} ({draft.size_ratio:.0%} of the target's size, same vocabulary) "
        f"proposes up to {draft.draft_max} tokens; the target checks them in one batch",
        f"expected speedup by acceptance rate: {speedups}",
        "same-family drafts usually accept 60-80% of tokens on code and structured output, "
        "40-60% on free-form creative text; each rejected token wastes draft time",
        f"the draft costs {draft.extra_mib} MiB more (weights + its KV cache)"
        + ("" if draft.fits_on_gpu else "; it does not fit beside the target on the GPU: -ngld 0 runs it on the CPU"),
    ]


def format_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)
