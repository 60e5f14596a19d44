"""From a GGUF file to a running engine: probe it, load it, size its KV cache.

`probe(path)` reads only the header (metadata and tensor table, mmapped) and says why a file
cannot be served (not a GGUF, truncated, an architecture or tensor type the engine does not
run, a tokenizer or chat template it does not know), or else its architecture. `load(path, options)` does the
work: matrices of model.KEPT_WEIGHTS' types (Q8_0, Q4_K, Q5_K, Q6_K, Q4_0, Q5_0, Q4_1, Q5_1) kept
quantised (q8weight.py, q4kweight.py, q5kweight.py, q6kweight.py, legacyweight.py), the other
weights dequantised to float32 (with each one's ggml type, so that the model rounds activations as
llama.cpp does: model.py, vecdot.py), the tokenizer, the template, a paged KV cache on the CFFI
block allocator, the scheduler and the runner (not started).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import psutil

from ..config import SchedulerConfig
from ..sched.kvblocks import BlockPool
from ..sched.scheduler import Scheduler
from . import kernels
from .gguf import GGUFFile, read_gguf
from .gpu_model import GpuKVCache, GpuModel
from .kvcache import KV_CACHE_DTYPES, PagedKVCache, kv_bytes_per_token
from .model import KEPT_WEIGHTS, Model, ModelConfig, UnsupportedModel
from .quants import GGML_TYPE_NAMES, SUPPORTED_TYPES
from .quantweight import QuantWeight
from .rerank import RankHead, reranker_problem
from .runner import Runner
from .store import ModelFile
from .templates import ChatTemplate, find_template
from .tokenizer import Tokenizer

log = logging.getLogger("velollmd.engine")

DEFAULT_NUM_CTX = 4096          # per sequence, when neither the config nor a smaller model says
MIB = 1 << 20
CPU_ONLY_ARCHS = ("gemma2", "gemma3", "phi3")   # cuda_runs: their layers exist on the CPU path only


@dataclass(frozen=True)
class EngineOptions:
    num_ctx: int = 0                # 0: min(the model's context, DEFAULT_NUM_CTX)
    kv_cache_mb: int = 0            # 0: num_ctx x max_running tokens, at most 1/4 of free memory
    block_size: int = 16
    kv_cache_type: str = "f16"      # the CPU path's K/V: f16 | f32 (the CUDA path's is float32 either way)
    max_batch_tokens: int = 512
    max_running: int = 16
    chat_template: str = ""
    threads: int = 0                # matmul and BLAS threads, process-wide (0: physical cores)
    device: str = "cpu"             # where the forward pass runs: cpu | cuda (device.choose_device's verdict)


@dataclass
class LoadedModel:
    name: str
    path: Path
    config: ModelConfig
    tokenizer: Tokenizer
    template: ChatTemplate | None       # None: completions only (the reason in template_error)
    template_error: str
    runner: Runner
    num_ctx: int
    nbytes_weights: int
    last_used: float = 0.0
    file: ModelFile | None = None       # what it was loaded from (listed in /api/ps while it runs, file gone or not)
    probe: Probe | None = None          # that file's probe, kept while loaded (the catalogue forgets a file gone)
    device: str = "cpu"                 # where its weights and KV cache are: cpu | cuda
    chat_template_source: str = ""      # the GGUF's tokenizer.chat_template it renders; "" when none or overridden
    rank_head: RankHead | None = None   # a reranker's classifier and prompt layout; None: not a reranker

    @property
    def identity(self) -> str:
        """The file's (store.ModelFile.identity) when it was loaded."""
        return self.file.identity if self.file is not None else ""

    @property
    def kv(self) -> PagedKVCache:
        return self.runner.kv


class Probe(NamedTuple):
    problem: str | None                 # why the file cannot be served; None: it can
    arch: str = ""                      # its architecture (llama, qwen2...) when it can
    file_type: str = ""                 # its most common weight type (Q4_K, F16...) when it can
    context_length: int = 0             # its trained context (metadata), 0 when it does not say
    thinks: bool = False                # its chat template thinks (Ollama's `thinking` capability)
    rerank_problem: str | None = "the file cannot be served"   # why it cannot rerank; None: a reranker


def probe(path: Path, chat_template: str = "") -> Probe:
    """Reads the header only."""
    try:
        with read_gguf(path) as gguf:
            config = ModelConfig.from_metadata(gguf.metadata, gguf.tensors.keys())
            unsupported = {info.ggml_type for info in gguf.tensors.values()} - SUPPORTED_TYPES
            if unsupported:
                names = ", ".join(sorted(GGML_TYPE_NAMES.get(t, str(t)) for t in unsupported))
                return Probe(f"{path}: tensor type(s) the engine cannot dequantise: {names}")
            Tokenizer.from_gguf(gguf.metadata)
            file_type = _file_type(gguf)
            template, _ = _template(gguf.metadata.get("tokenizer.chat_template"), chat_template)
            rerank_problem = reranker_problem(gguf.metadata, config.arch, gguf.tensors.keys())
    except (OSError, ValueError) as exc:
        return Probe(problem_with(path, exc))
    return Probe(None, config.arch, file_type, config.context_length or 0, template is not None and template.thinks,
                 rerank_problem)


def context_for(configured: int, trained: int) -> int:
    """A sequence's context: the config's num_ctx, else the model's own up to DEFAULT_NUM_CTX."""
    return configured or min(trained or DEFAULT_NUM_CTX, DEFAULT_NUM_CTX)


def problem_with(path: Path, exc: Exception) -> str:
    """Why `path` cannot be served, naming it once (the GGUF reader's errors name it already)."""
    reason = str(exc)
    return reason if str(path) in reason else f"{path}: {reason}"


def load(name: str, path: Path, options: EngineOptions, scheduler_config: SchedulerConfig,
         make_ops=None) -> LoadedModel:
    """make_ops(config, options): the kernels a device = "cuda" load runs on (default cuda_ops:
    the real ones on the device; tests pass the numpy mirror's)."""
    make_ops = make_ops or cuda_ops
    kernels.set_num_threads(options.threads)
    with read_gguf(path) as gguf:
        config = ModelConfig.from_metadata(gguf.metadata, gguf.tensors.keys())
        tokenizer = Tokenizer.from_gguf(gguf.metadata)
        template, template_error = _template(gguf.metadata.get("tokenizer.chat_template"), options.chat_template)
        source = _rendered_source(gguf.metadata.get("tokenizer.chat_template"), options.chat_template, template)
        num_ctx = context_for(options.num_ctx, config.context_length or 0)
        config = config.for_context(num_ctx)     # LongRoPE's factor set, as llama.cpp picks it by n_ctx
        on_device = _load_on_device(gguf, config, options, num_ctx, make_ops) \
            if options.device == "cuda" and cuda_runs(config) else None
        model, kv = on_device or (read_model(gguf, config), _host_kv_cache(config, options, num_ctx))
        rank_head = _rank_head(gguf, config)
    scheduler = Scheduler(scheduler_settings(scheduler_config, options), options.max_running,
                          BlockPool(kv.num_blocks, options.block_size), reserve_output=False)
    runner = Runner(model, kv, scheduler, tokenizer, max_batch_tokens=options.max_batch_tokens, num_ctx=num_ctx)
    return LoadedModel(name, path, config, tokenizer, template, template_error, runner, num_ctx, model.nbytes,
                       device="cuda" if on_device else "cpu", chat_template_source=source, rank_head=rank_head)


def _rank_head(gguf: GGUFFile, config: ModelConfig) -> RankHead | None:
    """A reranker's classifier head (pooling RANK with cls.output), read while the file is open."""
    if reranker_problem(gguf.metadata, config.arch, gguf.tensors.keys()) is not None:
        return None
    types = {name: info.ggml_type for name, info in gguf.tensors.items()}
    return RankHead.read(gguf.metadata, config.arch, types, gguf.dequantize)


def scheduler_settings(scheduler_config: SchedulerConfig, options: EngineOptions) -> SchedulerConfig:
    """[scheduler] as a loaded model's own scheduler takes it: its KV block size, and no queue
    limit of its own: every request here was admitted by the daemon's queue for this backend,
    which bounds them (max_running x (1 + backend_queue_per_slot) sent in, max_queue waiting
    before that); a second limit here refused requests it had admitted."""
    return dataclasses.replace(scheduler_config, block_size=options.block_size, max_queue=sys.maxsize)


def read_model(gguf: GGUFFile, config: ModelConfig) -> Model:
    """The file's weights (Q8_0, Q4_K, Q5_K, Q6_K and the legacy 4/5-bit matrices kept quantised where the integer
    kernels pay, the rest dequantised to float32), and their types for the activation rounding."""
    types = {name: info.ggml_type for name, info in gguf.tensors.items()}
    kept = (lambda tensor: _kept(gguf, tensor)) if kernels.integer_kernels_pay() else None
    return Model(config, gguf.dequantize, types, kept)


def _kept(gguf: GGUFFile, name: str) -> QuantWeight:
    info = gguf.tensors[name]
    return KEPT_WEIGHTS[info.ggml_type].from_raw(gguf.raw(name), info.shape)


def cuda_runs(config: ModelConfig) -> bool:
    """Whether the CUDA path runs this model (head_dim a multiple of 32; not gemma2's and gemma3's
    sliding windows, post-norms, GELU and soft-capping, nor phi3's LongRoPE attention factor,
    which only the CPU path has); a model it
    does not run is served on the CPU, with a warning."""
    if config.arch in CPU_ONLY_ARCHS:
        log.warning(f"engine model served on the CPU: the CUDA path does not run {config.arch} yet",
                    extra={"fields": {"arch": config.arch}})
        return False
    if config.head_dim % 32 == 0:
        return True
    log.warning("engine model served on the CPU: the CUDA kernels need head_dim a multiple of 32",
                extra={"fields": {"head_dim": config.head_dim}})
    return False


def cuda_ops(config: ModelConfig, options: EngineOptions):
    """The kernels for this model's shapes on device 0's primary context."""
    from ..cuda import kernels as cuda_kernels
    from ..cuda.sources import engine_defines
    defines = engine_defines(config.head_dim, options.block_size, False, config.n_head // config.n_head_kv)
    return cuda_kernels.Kernels(defines, cuda_kernels.PrimaryContext())


def _load_on_device(gguf: GGUFFile, config: ModelConfig, options: EngineOptions, num_ctx: int,
                    make_ops) -> tuple[GpuModel, GpuKVCache] | None:
    """Weights first, then as many KV blocks as the budget and the device's free memory allow.
    None, logged, when the device fails (out of memory, a driver or compile error): the model
    is then served on the CPU rather than not at all."""
    try:
        ops = make_ops(config, options)
        model = GpuModel.load(gguf, config, ops)
        with ops.active():
            free = ops.free_bytes()
        kv = GpuKVCache(ops, config.n_layer, _num_blocks(config, options, num_ctx, free), options.block_size,
                        config.n_head_kv, config.head_dim)
        if options.kv_cache_type != "f32":      # the default f16: said once a load, not a warning
            log.info("engine kv_cache_type applies to the CPU path: the CUDA KV cache is float32",
                     extra={"fields": {"kv_cache_type": options.kv_cache_type}})
    except UnsupportedModel:
        raise
    except Exception as exc:        # pycuda's driver and compiler errors share no base class but Exception
        log.warning("engine model served on the CPU: loading it on the CUDA device failed",
                    extra={"fields": {"error": f"{type(exc).__name__}: {exc}"}})
        return None
    return model, kv


def _host_kv_cache(config: ModelConfig, options: EngineOptions, num_ctx: int) -> PagedKVCache:
    """The CPU path's KV cache, of options.kv_cache_type: f16 fits twice the tokens in a budget."""
    dtype = KV_CACHE_DTYPES[options.kv_cache_type]
    return PagedKVCache(config.n_layer, _num_blocks(config, options, num_ctx, _host_free_bytes(), dtype),
                        options.block_size, config.n_head_kv, config.head_dim, dtype)


def _host_free_bytes() -> int:
    return psutil.virtual_memory().available


def _template(source: str | None, override: str) -> tuple[ChatTemplate | None, str]:
    try:
        return find_template(source, override or None), ""
    except ValueError as exc:
        return None, str(exc)


def _rendered_source(source, override: str, template: ChatTemplate | None) -> str:
    """The GGUF's template text when it is what renders (recognised, no config family over it):
    a client rendering it itself (vLLM's /tokenizer_info) then writes the engine's prompts."""
    return source if isinstance(source, str) and template is not None and not override else ""


def _num_blocks(config: ModelConfig, options: EngineOptions, num_ctx: int, free_bytes: int,
                dtype: type = np.float32) -> int:
    """KV blocks of dtype for the budget: kv_cache_mb, else num_ctx tokens for each running
    sequence, never more than a quarter of free_bytes (the memory available now: host or
    device, weights loaded)."""
    bytes_per_token = kv_bytes_per_token(config.n_layer, config.n_head_kv, config.head_dim, dtype)
    if options.kv_cache_mb:
        num_tokens = options.kv_cache_mb * MIB // bytes_per_token
    else:
        num_tokens = min(num_ctx * options.max_running, free_bytes // 4 // bytes_per_token)
    return max(1, math.ceil(num_tokens / options.block_size))


def _file_type(gguf: GGUFFile) -> str:
    """The most common weight type, as Ollama's `quantization_level` names it (Q4_K, F16...)."""
    counts: dict[int, int] = {}
    for info in gguf.tensors.values():
        if len(info.shape) == 2:
            counts[info.ggml_type] = counts.get(info.ggml_type, 0) + info.nbytes
    if not counts:
        return "unknown"
    return GGML_TYPE_NAMES.get(max(counts, key=counts.get), "unknown")
