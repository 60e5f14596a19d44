"""Recommend Ollama / llama.cpp settings: pure functions of hardware, model and settings.

The memory model: the weights plus the KV cache plus a fixed overhead (CUDA/Metal context,
compute buffers) must fit in the memory budget (free VRAM, Metal's working set, or free RAM).

    kv_cache_bytes = 2 (K and V) x num_layers x num_kv_heads x head_dim x context
                     x bytes_per_element(cache type) x parallel

Ollama gives every one of OLLAMA_NUM_PARALLEL slots its own full num_ctx, hence `x parallel`.
The plan: pick the KV cache type (f16 unless it does not fit at the target context), then as
many parallel slots as fit (up to 4), then grow the context while 4 slots still fit. A model
whose weights do not fit is split: as many layers as fit go to the GPU (num_gpu).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..hw.info import MIB, HardwareInfo
from .modelspec import ModelSpec

KV_BYTES_PER_ELEMENT = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}   # ggml block sizes
OVERHEAD_MIB = {"gpu": 768, "unified": 512, "cpu": 512}
MIN_CONTEXT, DEFAULT_CONTEXT, MAX_CONTEXT = 2048, 8192, 32768
MAX_PARALLEL = 4
UNIFIED_FRACTION = 0.75          # Metal's recommended working set is about 3/4 of RAM
CPU_FRACTION = 0.9               # leave a tenth of free RAM to the rest of the system
LOAD_GB_PER_S = 2.0              # weights read from an NVMe disk, for the keep-alive reason


@dataclass(frozen=True)
class MemoryBudget:
    device: str                  # gpu | unified | cpu
    mib: int                     # memory the model may use
    ram_available_mib: int       # for the CPU share of a partially offloaded model
    source: str                  # one line: where the number comes from


@dataclass(frozen=True)
class Recommendation:
    key: str                     # OLLAMA_* (scope "env") or num_* (scope "request")
    value: str
    reason: str
    scope: str


@dataclass(frozen=True)
class TunePlan:
    model: ModelSpec
    budget: MemoryBudget
    context: int                 # per slot
    parallel: int
    cache_type: str
    flash_attention: bool
    num_gpu_layers: int          # layers on the GPU, output layer included (llama.cpp -ngl)
    full_offload: bool           # everything on the GPU (or unified memory)
    fits: bool                   # weights + KV cache fit in the budget (GPU or RAM)
    num_batch: int
    num_thread: int
    kv_mib: int                  # the whole KV cache: all slots
    headroom_mib: int            # budget left after weights, KV cache and overhead
    notes: tuple[str, ...] = ()


def kv_cache_mib(model: ModelSpec, context: int, parallel: int, cache_type: str) -> float:
    per_token = 2 * model.num_layers * model.num_kv_heads * model.head_dim
    return per_token * context * KV_BYTES_PER_ELEMENT[cache_type] * parallel / MIB


def memory_budget(hw: HardwareInfo, vram_mib: int | None = None) -> MemoryBudget:
    mem = hw.memory
    ram = mem.ram_available_mib if mem.ram_available_mib is not None else (mem.ram_total_mib or 0)
    if vram_mib is not None:
        return MemoryBudget("gpu", vram_mib, ram, f"--vram-mib {vram_mib}")
    if any(g.unified_memory for g in hw.gpus):
        usable = int(min(ram, (hw.memory.ram_total_mib or ram) * UNIFIED_FRACTION))
        return MemoryBudget("unified", usable, ram, "unified memory: min(available RAM, 3/4 of RAM)")
    gpus = [g for g in hw.gpus
            if g.memory_free_mib is not None and g.vendor in ("nvidia", "amd") and not g.mig]
    if gpus:
        vendor = max(gpus, key=lambda g: g.memory_free_mib).vendor
        same = [g for g in gpus if g.vendor == vendor]
        free = sum(g.memory_free_mib for g in same)
        return MemoryBudget("gpu", free, ram, f"free VRAM of {len(same)} {vendor} GPU(s)")
    return MemoryBudget("cpu", int(ram * CPU_FRACTION), ram, "9/10 of available RAM (no usable GPU)")


def flash_attention_ok(hw: HardwareInfo) -> tuple[bool, str]:
    for gpu in hw.gpus:
        if gpu.vendor == "nvidia" and gpu.compute_capability:
            try:
                if float(gpu.compute_capability) < 6.0:
                    return False, f"compute capability {gpu.compute_capability} predates Pascal: no FA kernels"
            except ValueError:
                pass
    return True, "less memory for attention and the only way to a quantized KV cache"


def _physical_threads(hw: HardwareInfo) -> int:
    cpu = hw.cpu
    return max(1, cpu.performance_cores or cpu.physical_cores or cpu.logical_cores or 1)


def _fit_cache_and_context(model, free_kv_mib, target, cache_types):
    """First cache type that holds one slot of `target`; else halve the context."""
    context = target
    while context >= min(MIN_CONTEXT, target):
        for cache_type in cache_types:
            if kv_cache_mib(model, context, 1, cache_type) <= free_kv_mib:
                return cache_type, context
        context //= 2
    return None, 0


def _parallel_and_growth(model, free_kv_mib, context, cache_type, max_parallel, max_context):
    one = kv_cache_mib(model, context, 1, cache_type)
    parallel = max(1, min(max_parallel, int(free_kv_mib // one)))
    while (parallel == max_parallel and context * 2 <= max_context
           and kv_cache_mib(model, context * 2, parallel, cache_type) <= free_kv_mib):
        context *= 2
    return parallel, context


def plan(hw: HardwareInfo, model: ModelSpec, target_context: int = DEFAULT_CONTEXT,
         vram_mib: int | None = None) -> TunePlan:
    p = _fit(hw, model, target_context, vram_mib)
    return replace(p, notes=_mig_notes(hw, vram_mib) + p.notes)


def _mig_notes(hw: HardwareInfo, vram_mib: int | None) -> tuple[str, ...]:
    """A GPU in MIG mode reports the whole GPU's memory, but a process runs on one slice."""
    mig = [str(g.index) for g in hw.gpus if g.mig]
    if not mig or vram_mib is not None:
        return ()
    return (f"GPU {', '.join(mig)} in MIG mode: left out of the memory budget (a process runs on one "
            "MIG slice, not the whole GPU); give the slice's memory with --vram-mib",)


def _fit(hw: HardwareInfo, model: ModelSpec, target_context: int, vram_mib: int | None) -> TunePlan:
    budget = memory_budget(hw, vram_mib)
    fa, _ = flash_attention_ok(hw)
    cache_types = ("f16", "q8_0", "q4_0") if fa else ("f16",)
    on_cpu = budget.device == "cpu"
    max_parallel = (2 if (hw.cpu.physical_cores or 1) >= 8 else 1) if on_cpu else MAX_PARALLEL
    max_context = min(model.context_length,
                      max(target_context, DEFAULT_CONTEXT if on_cpu else MAX_CONTEXT))
    target = min(model.context_length, target_context)
    free_kv = budget.mib - OVERHEAD_MIB[budget.device] - model.weights_mib
    cache_type, context = _fit_cache_and_context(model, free_kv, target, cache_types)
    if cache_type is None:
        return _partial_plan(hw, model, budget, target, fa, cache_types[-1])
    parallel, context = _parallel_and_growth(model, free_kv, context, cache_type,
                                             max_parallel, max(max_context, context))
    kv = kv_cache_mib(model, context, parallel, cache_type)
    headroom = int(free_kv - kv)
    num_batch = 1024 if budget.device != "cpu" and headroom >= 2048 else 512
    layers = 0 if on_cpu else model.num_layers + 1
    return TunePlan(model, budget, context, parallel, cache_type, fa, layers, not on_cpu, True,
                    num_batch, _physical_threads(hw), int(kv), headroom, _context_notes(context, target))


def _context_notes(context: int, target: int) -> tuple[str, ...]:
    return () if context >= target else (f"context cut to {context} (wanted {target}) to fit memory",)


def _partial_plan(hw, model, budget, target, fa, cache_type) -> TunePlan:
    """Weights do not fit: offload as many layers as fit, the rest runs on the CPU."""
    context = min(target, DEFAULT_CONTEXT)
    kv = kv_cache_mib(model, context, 1, cache_type)
    per_layer = (model.weights_mib + kv) / model.num_layers
    room = budget.mib - OVERHEAD_MIB[budget.device]
    layers = 0 if budget.device == "cpu" else max(0, min(model.num_layers, int(room // per_layer)))
    cpu_share = model.weights_mib * (1 - layers / model.num_layers)
    notes = [f"{model.weights_mib} MiB of weights + KV cache do not fit in {budget.mib} MiB: "
             f"{layers}/{model.num_layers} layers on the GPU" if budget.device != "cpu" else
             f"model ({model.weights_mib} MiB) does not fit in {budget.mib} MiB of RAM"]
    if cpu_share > budget.ram_available_mib:
        notes.append("not enough RAM for the CPU share either: pick a smaller model or quantization")
    return TunePlan(model, budget, context, 1, cache_type, fa, layers, False, False, 512,
                    _physical_threads(hw), int(kv), 0, tuple(notes) + _context_notes(context, target))


def max_loaded_models(p: TunePlan) -> int:
    one = p.model.weights_mib + p.kv_mib
    room = p.budget.mib - OVERHEAD_MIB[p.budget.device]
    return max(1, min(3, int(room // one))) if p.fits else 1


def keep_alive(p: TunePlan) -> tuple[str, str]:
    load_s = p.model.weights_mib * MIB / 1e9 / LOAD_GB_PER_S
    if p.full_offload:
        return "30m", f"reloading {p.model.weights_mib / 1024:.1f} GiB costs ~{load_s:.0f} s; keep it warm between bursts"
    return "5m", "the model runs partly or fully on the CPU: give RAM back soon after use"


def recommendations(hw: HardwareInfo, p: TunePlan) -> list[Recommendation]:
    m = p.model
    fa_ok, fa_reason = flash_attention_ok(hw)
    kept, kept_reason = keep_alive(p)
    loaded = max_loaded_models(p)
    env = [
        ("OLLAMA_NUM_PARALLEL", str(p.parallel), _parallel_reason(hw, p)),
        ("OLLAMA_MAX_LOADED_MODELS", str(loaded),
         f"{loaded} model(s) of this size fit in {p.budget.mib} MiB ({p.budget.source})"),
        ("OLLAMA_KEEP_ALIVE", kept, kept_reason),
        ("OLLAMA_CONTEXT_LENGTH", str(p.context),
         f"per-slot context; model trained for {m.context_length}, KV cache {p.kv_mib} MiB in all"),
        ("OLLAMA_FLASH_ATTENTION", "1" if p.flash_attention else "0", fa_reason),
        ("OLLAMA_KV_CACHE_TYPE", p.cache_type, _cache_reason(p.cache_type)),
    ]
    request = [
        ("num_ctx", str(p.context), "same as OLLAMA_CONTEXT_LENGTH; larger values reload the model"),
        ("num_batch", str(p.num_batch), "larger prompt batches while VRAM headroom allows"
         if p.num_batch > 512 else "default batch: little headroom, or CPU-bound prompt processing"),
        ("num_gpu", str(p.num_gpu_layers), _num_gpu_reason(p)),
        ("num_thread", str(p.num_thread), "one thread per physical (performance) core; SMT siblings slow matmuls"),
    ]
    return ([Recommendation(k, v, r, "env") for k, v, r in env]
            + [Recommendation(k, v, r, "request") for k, v, r in request])


def _parallel_reason(hw: HardwareInfo, p: TunePlan) -> str:
    if not p.fits:
        return "the model does not fit whole: one slot leaves the most memory to the weights"
    slots = f"{p.parallel} slot(s) x {p.kv_mib // p.parallel} MiB of KV cache fit beside {p.model.weights_mib} MiB of weights"
    if p.budget.device == "cpu":
        return f"{slots}; {hw.cpu.physical_cores or '?'} CPU cores: more slots would only split the compute"
    return slots


def _num_gpu_reason(p: TunePlan) -> str:
    if p.full_offload:
        return f"all {p.model.num_layers} layers + output on the GPU"
    if p.budget.device == "cpu":
        return "no GPU with known free memory: run on the CPU"
    return f"{p.num_gpu_layers} of {p.model.num_layers + 1} layers fit on the GPU"


def _cache_reason(cache_type: str) -> str:
    return {"f16": "full-precision KV cache fits: no quality cost",
            "q8_0": "halves the KV cache at a negligible quality cost, so the context fits",
            "q4_0": "quarter-size KV cache: needed to fit; some quality loss on long contexts"}[cache_type]


@dataclass(frozen=True)
class DiffRow:
    key: str
    current: str | None
    source: str | None
    recommended: str
    reason: str

    @property
    def mark(self) -> str:
        return "+" if self.current is None else ("=" if self.current == self.recommended else "~")


def diff(recs: list[Recommendation], current: dict) -> list[DiffRow]:
    """Env recommendations against current settings (`settings.Setting` values)."""
    rows = []
    for rec in recs:
        if rec.scope != "env":
            continue
        setting = current.get(rec.key)
        rows.append(DiffRow(rec.key, setting.value if setting else None,
                            setting.source if setting else None, rec.value, rec.reason))
    return rows


def env_values(recs: list[Recommendation]) -> dict[str, str]:
    return {r.key: r.value for r in recs if r.scope == "env"}
