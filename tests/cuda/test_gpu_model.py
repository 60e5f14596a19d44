"""The engine's CUDA forward pass (engine/gpu_model.py) against the CPU engine's float32 forward
pass on the same GGUF: through the kernels' numpy mirrors on every machine ("mirror"), through the
real kernels on a GPU ("gpu": skipped, with the reason, without one)."""
from __future__ import annotations

import gc
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.cuda.cases import max_error
from tests.cuda.mirror_kernels import DeviceMisuse, MirrorKernels
from tests.engine.weights import write_random_gguf
from tests.rig.llama import make_tiny_model
from velollmd.config import SchedulerConfig
from velollmd.cuda import kernels
from velollmd.cuda.sources import engine_defines
from velollmd.engine import gpu_model, loader
from velollmd.engine.gguf import read_gguf
from velollmd.engine.gpu_model import GpuKVCache, GpuModel
from velollmd.engine.kvcache import PagedKVCache
from velollmd.engine.model import Batch, Model, ModelConfig, SeqChunk
from velollmd.engine.sampling import SamplingParams
from velollmd.errors import Unavailable

BLOCK_SIZE = 16
NUM_BLOCKS = 12
# max abs logit error against the CPU's float32 forward (logits of these models reach ~10): the
# same weights, float32 sums in another order; a K-quant is multiplied as F16 on the device
BOUND = {"f32": 1e-4, "f16": 1e-4, "q8_0": 1e-4, "q4_k": 2e-2}


def mirror_ops(config: ModelConfig, options: loader.EngineOptions) -> MirrorKernels:
    return MirrorKernels(engine_defines(config.head_dim, options.block_size, False,
                                        config.n_head // config.n_head_kv))


@pytest.fixture(params=["mirror", "gpu"])
def make_ops(request):
    """make_ops(config, options) as loader.load takes it: the mirror's, or the real kernels."""
    if request.param == "mirror":
        return mirror_ops
    found = kernels.probe()
    if not found.ok:
        pytest.skip(f"real CUDA kernels not run: {found.detail}")
    return loader.cuda_ops


def load_both(path, make_ops, block_size: int = BLOCK_SIZE) -> tuple[GpuModel, Model, object]:
    """The file on the device (its ops) and on the CPU in float32 throughout (no activation
    rounding, nothing kept quantised): the math the kernels do."""
    with read_gguf(path) as gguf:
        config = ModelConfig.from_metadata(gguf.metadata, gguf.tensors.keys())
        ops = make_ops(config, loader.EngineOptions(block_size=block_size))
        return GpuModel.load(gguf, config, ops), Model(config, gguf.dequantize), ops


def caches(model: Model, ops, num_blocks: int = NUM_BLOCKS) -> tuple[GpuKVCache, PagedKVCache]:
    c = model.config
    return (GpuKVCache(ops, c.n_layer, num_blocks, BLOCK_SIZE, c.n_head_kv, c.head_dim),
            PagedKVCache(c.n_layer, num_blocks, BLOCK_SIZE, c.n_head_kv, c.head_dim))


def passes(rng: np.random.Generator) -> list[Batch]:
    """Prefill of two sequences (one across a block boundary), then a pass mixing one decode with
    the next prefill chunk of a third sequence, then decode only."""
    prompt = lambda n: rng.integers(3, 1000, n).tolist()          # noqa: E731
    return [Batch.pack([SeqChunk(prompt(5), 0, [0]), SeqChunk(prompt(20), 0, [1, 2]),
                        SeqChunk(prompt(9), 0, [3, 4], want_logits=False)]),
            Batch.pack([SeqChunk(prompt(1), 5, [0]), SeqChunk(prompt(14), 9, [3, 4])]),
            Batch.pack([SeqChunk(prompt(1), 6, [0]), SeqChunk(prompt(1), 20, [1, 2]),
                        SeqChunk(prompt(1), 23, [3, 4])])]


@pytest.mark.parametrize("partition", [None, 8], ids=["one-pass-decode", "partitioned-decode"])
@pytest.mark.parametrize("dtype", ["f32", "f16", "q8_0", "q4_k"])
@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_logits_match_the_cpu_float32_forward(tmp_path, make_ops, arch, dtype, partition, monkeypatch,
                                              report_error):
    if partition:
        monkeypatch.setattr(gpu_model, "DECODE_PARTITION", partition)
    path = write_random_gguf(tmp_path / f"{arch}-{dtype}.gguf", arch, seed=3, head_dim=32, dtype=dtype)
    device, cpu, ops = load_both(path, make_ops)
    device_kv, cpu_kv = caches(cpu, ops)
    errors = []
    for batch in passes(np.random.default_rng(4)):
        got, want = device.forward(batch, device_kv), cpu.forward(batch, cpu_kv)   # (num_logits, n_vocab)
        assert got.shape == want.shape
        errors.append(max_error(got, want))
    report_error(f"engine forward {arch}, prefill/mixed/decode, partition {partition}", dtype, max(errors),
                 BOUND[dtype])
    if isinstance(ops, MirrorKernels):
        assert ops.launches["compile_all"] == 1                           # at load, not at the first request
        expected = "paged_attention_decode_partitioned" if partition else "paged_attention_decode"
        assert ops.launches[expected] == cpu.config.n_layer               # the decode-only pass, once a layer
        assert ops.launches["prefill_attention"] == 2 * cpu.config.n_layer
        assert ops.launches.get("add_bias", 0) == (3 * 3 * cpu.config.n_layer if arch == "qwen2" else 0)


def test_a_pass_that_wants_no_logits_still_fills_the_cache(tmp_path, make_ops):
    """A long prompt's non-final chunk: nothing to sample, K/V written all the same."""
    path = write_random_gguf(tmp_path / "llama.gguf", "llama", seed=2, head_dim=32)
    device, cpu, ops = load_both(path, make_ops)
    device_kv, cpu_kv = caches(cpu, ops)
    prompt = np.random.default_rng(1).integers(3, 1000, 12).tolist()
    for model, kv in ((device, device_kv), (cpu, cpu_kv)):
        assert model.forward(Batch.pack([SeqChunk(prompt[:8], 0, [0], want_logits=False)]), kv).shape == \
            (0, cpu.config.n_vocab)
    rest = Batch.pack([SeqChunk(prompt[8:], 8, [0])])
    assert max_error(device.forward(rest, device_kv), cpu.forward(rest, cpu_kv)) < BOUND["f32"]


def test_hidden_states_match(tmp_path, make_ops, report_error):
    path = write_random_gguf(tmp_path / "qwen2.gguf", "qwen2", seed=5, head_dim=32)
    device, cpu, ops = load_both(path, make_ops)
    batch = passes(np.random.default_rng(6))[0]
    got = device.hidden(batch, caches(cpu, ops)[0])
    want = cpu.hidden(batch, caches(cpu, ops)[1])                          # (T, n_embd)
    assert got.shape == want.shape == (34, cpu.config.n_embd)
    report_error("engine hidden states qwen2", "f32", max_error(got, want), 1e-5)


def test_prompt_rows_come_back_as_hidden_states_that_the_head_turns_into_the_dense_logits(tmp_path, make_ops):
    """Model.run's second seam (prompt logprobs): hidden_indices rows as final normed hidden
    states, which `head` turns into what a forward asking logits of every row gives."""
    path = write_random_gguf(tmp_path / "qwen3.gguf", "qwen3", seed=7, head_dim=32)
    device, cpu, ops = load_both(path, make_ops)
    prompt = np.random.default_rng(8).integers(3, 1000, 20)
    def batch(logits_rows, hidden_rows=()) -> Batch:                    # noqa: E306
        return Batch.build(prompt, np.arange(20), [20], [[0, 1]], [0], np.asarray(logits_rows), BLOCK_SIZE,
                           hidden_indices=hidden_rows)
    dense = cpu.forward(batch(np.arange(20)), caches(cpu, ops)[1])       # (20, n_vocab)
    for model, kv in zip((device, cpu), caches(cpu, ops)):
        logits, hidden = model.run(batch([19], np.arange(19)), kv)
        assert logits.shape == (1, cpu.config.n_vocab) and hidden.shape == (19, cpu.config.n_embd)
        assert max_error(logits, dense[19:]) < BOUND["f32"]
        assert max_error(model.head(hidden), dense[:19]) < BOUND["f32"]
        assert max_error(model.head(hidden[5:9]), dense[5:9]) < BOUND["f32"]     # any slice of them
        assert model.run(batch([19]), kv)[1].shape == (0, cpu.config.n_embd)


def test_kept_positions_are_not_written_again(tmp_path, make_ops):
    """Batch.num_kept: a recomputed cached prefix's slots keep what they held (the runner's
    shared blocks); the positions after it are written as always."""
    path = write_random_gguf(tmp_path / "llama.gguf", "llama", seed=9, head_dim=32)
    device, cpu, ops = load_both(path, make_ops)
    prompt = np.random.default_rng(10).integers(3, 1000, 20)
    batch = Batch.build(prompt, np.arange(20), [20], [[0, 1]], [0], np.asarray([19]), BLOCK_SIZE, num_kept=[8])
    plain = Batch.build(prompt, np.arange(20), [20], [[0, 1]], [0], np.asarray([19]), BLOCK_SIZE)
    device_kv, cpu_kv = caches(cpu, ops)
    fresh_device_kv, fresh_cpu_kv = caches(cpu, ops)
    for model, kv, fresh, host in ((device, device_kv, fresh_device_kv, ops.to_host),
                                   (cpu, cpu_kv, fresh_cpu_kv, np.asarray)):
        logits = model.forward(batch, kv)
        for layer in range(cpu.config.n_layer):
            k, v = (host(cache[layer]).reshape(-1, cpu.config.n_head_kv, 32) for cache in (kv.k, kv.v))
            assert not k[:8].any() and not v[:8].any()                    # the zeros they held
            assert k[8:20].any(axis=(1, 2)).all() and v[8:20].any(axis=(1, 2)).all()
        # attention read the kept positions from the cache (zeros here), not from this pass
        assert max_error(logits, model.forward(plain, fresh)) > BOUND["f32"]


def test_a_forked_cache_decodes_as_the_original(tmp_path, make_ops):
    """copy_blocks (copy-on-write for n > 1): a fork's last block copied to a fresh one decodes
    the same as the sequence it came from."""
    path = write_random_gguf(tmp_path / "llama.gguf", "llama", seed=7, head_dim=32)
    device, cpu, ops = load_both(path, make_ops)
    kv = caches(cpu, ops)[0]
    prompt = np.random.default_rng(8).integers(3, 1000, 21).tolist()
    device.forward(Batch.pack([SeqChunk(prompt, 0, [0, 1])]), kv)
    kv.copy_blocks([(1, 5)])
    logits = device.forward(Batch.pack([SeqChunk([42], 21, [0, 1]), SeqChunk([42], 21, [0, 5])]), kv)
    np.testing.assert_array_equal(logits[0], logits[1])
    untouched = device.forward(Batch.pack([SeqChunk([42], 21, [0, 6])]), kv)  # block 6 never written
    assert not np.array_equal(untouched[0], logits[0])


def greedy_tokens(model: loader.LoadedModel, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    """All prompts at once through the model's runner (continuous batching), greedy."""
    tokens: dict[str, list[int]] = {f"r{i}": [] for i in range(len(prompts))}
    ended: set[str] = set()

    def on(request_id: str):
        def record(event) -> None:
            tokens[request_id].extend(event.token_ids)
            if event.finish_reason is not None:
                ended.add(request_id)
        return record
    for i, prompt in enumerate(prompts):
        model.runner.submit(f"r{i}", prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens), on(f"r{i}"))
    for _ in range(10 * max_tokens):
        if len(ended) == len(prompts):
            break
        model.runner.step()
    assert len(ended) == len(prompts)
    return [tokens[f"r{i}"] for i in range(len(prompts))]


def test_the_engine_on_cuda_answers_greedily_as_on_the_cpu(tmp_path, make_ops):
    """loader.load with device "cuda" (the runner, the scheduler and the CFFI allocator over the
    device's model and KV cache) against the CPU engine on the tiny F32 model: the same tokens."""
    path = make_tiny_model(tmp_path / "tiny.gguf", dtype="f32")
    options = loader.EngineOptions(num_ctx=128, kv_cache_mb=4, max_running=4, max_batch_tokens=32,
                                   kv_cache_type="f32")                    # the device's cache type
    on_device = loader.load("tiny", path, loader.EngineOptions(**{**vars(options), "device": "cuda"}),
                            SchedulerConfig(), make_ops=make_ops)
    on_cpu = loader.load("tiny", path, options, SchedulerConfig())
    assert isinstance(on_device.runner.model, GpuModel) and isinstance(on_device.kv, GpuKVCache)
    assert (on_device.device, on_cpu.device) == ("cuda", "cpu")           # /health, /api/ps size_vram
    assert on_device.kv.num_blocks == on_cpu.kv.num_blocks                # kv_cache_mb, the same budget
    prompts = [list(range(5, 5 + n)) for n in (3, 17, 40)]                  # the last one in two chunks
    assert greedy_tokens(on_device, prompts, 16) == greedy_tokens(on_cpu, prompts, 16)
    np.testing.assert_allclose(on_device.runner.embed(prompts[1]), on_cpu.runner.embed(prompts[1]), atol=1e-5)


def test_a_model_the_kernels_cannot_run_or_a_failing_device_is_served_on_the_cpu(tmp_path):
    odd = write_random_gguf(tmp_path / "head16.gguf", "llama", seed=9)           # head_dim 16
    options = loader.EngineOptions(num_ctx=64, kv_cache_mb=1, device="cuda")
    served = loader.load("odd", odd, options, SchedulerConfig(), make_ops=mirror_ops)
    assert isinstance(served.runner.model, Model) and served.device == "cpu"

    def failing_device(config, options):
        raise RuntimeError("cuMemAlloc failed: out of memory")
    tiny = make_tiny_model(tmp_path / "tiny.gguf", dtype="f32")
    served = loader.load("tiny", tiny, options, SchedulerConfig(), make_ops=failing_device)
    assert isinstance(served.runner.model, Model) and isinstance(served.kv, PagedKVCache) and served.device == "cpu"


def test_the_mirror_refuses_what_the_device_would_misread():
    """The strict mirror (mirror_kernels.DeviceArray): each of these runs in numpy, and on a GPU
    reads wrong memory, raises in pycuda, or has no current context."""
    ops = MirrorKernels(engine_defines(32, BLOCK_SIZE, False, 2))
    rows = np.ones((3, 2, 32), np.float32)                                  # (T, kv, d)
    with pytest.raises(DeviceMisuse, match="outside ops.active"):
        ops.to_device(rows)
    with ops.active():
        k_cache, v_cache = ops.zeros((4, BLOCK_SIZE, 2, 32), np.float32), ops.zeros((4, BLOCK_SIZE, 2, 32), np.float32)
        key = ops.to_device(rows)
        with pytest.raises(DeviceMisuse, match="host"):                    # packed by value by pycuda
            ops.reshape_and_cache(k_cache, v_cache, rows, key, ops.to_device(np.arange(3)))
        with pytest.raises(DeviceMisuse, match="int32, the kernel reads int64"):   # long long* slot_mapping
            ops.reshape_and_cache(k_cache, v_cache, key, key, ops.to_device(np.arange(3, dtype=np.int32)))
        with pytest.raises(DeviceMisuse, match="int64, the kernel reads int32"):   # int* token_ids
            ops.embedding(ops.keep_on_device(np.ones((8, 4), np.float32)), ops.to_device(np.arange(3)))
        with pytest.raises(DeviceMisuse, match="float64, the kernel reads float32"):
            ops.rms_norm(ops.to_device(np.ones((3, 64), np.float32)), ops.to_device(np.ones((3, 64), np.float64)),
                         ops.to_device(np.ones(64, np.float32)), 1e-6)
        wide = ops.zeros((4, BLOCK_SIZE, 2, 64), np.float32)
        with pytest.raises(DeviceMisuse, match="shape"):                   # HEAD_DIM 32 built in
            ops.reshape_and_cache(wide, wide, key, key, ops.to_device(np.arange(3)))
        with pytest.raises(DeviceMisuse, match="same shape"):              # GPUArray asserts; numpy broadcasts
            key += ops.to_device(np.ones(32, np.float32))
        with pytest.raises(DeviceMisuse, match="bytes"):                   # gate and up not both there
            ops.matmul(ops.to_device(np.ones((1, 32), np.float32)), ops.keep_on_device(np.zeros(64 * 32 * 2, np.uint8)),
                       "f16", 128)
        q = ops.to_device(np.ones((2, 4, 32), np.float32))
        tables, lens = ops.to_device(np.zeros((2, 2), np.int32)), ops.to_device(np.array([20, 31], np.int32))
        with pytest.raises(DeviceMisuse, match="too few partitions"):
            ops.paged_attention_decode(q, k_cache, v_cache, tables, lens, 1.0, 20, 8)
        with pytest.raises(DeviceMisuse, match="not contiguous"):
            cos = ops.to_device(np.ones((2, 16), np.float32))
            ops.rope(ops.to_device(np.ones((2, 4, 64), np.float32))[:, :, :32], cos, cos, False)


def test_device_memory_goes_back_whichever_thread_unloads(tmp_path, make_ops):
    """pycuda frees an allocation only on a thread where its context is current or on the thread
    that made the context, else warns and leaks it: the daemon loads in asyncio.to_thread, steps
    on the runner's thread, embeds on another worker and unloads on the event loop's. The
    mirror's context keeps that rule (nothing may leak, nothing stays allocated); on a GPU,
    pycuda's own warning says whether anything leaked."""
    made: list = []

    def recording_ops(config, options):
        made.append(make_ops(config, options))
        return made[-1]
    path = make_tiny_model(tmp_path / "tiny.gguf", dtype="f32")
    options = loader.EngineOptions(num_ctx=128, kv_cache_mb=4, max_running=4, max_batch_tokens=32, device="cuda")
    with warnings.catch_warnings(record=True) as caught, \
            ThreadPoolExecutor(1) as loading, ThreadPoolExecutor(1) as embedding:   # both alive: two threads
        warnings.simplefilter("always")
        model = loading.submit(loader.load, "tiny", path, options, SchedulerConfig(), recording_ops).result()
        assert model.device == "cuda"
        assert len(greedy_tokens(model, [list(range(5, 25))], 4)[0]) == 4
        assert embedding.submit(model.runner.embed, list(range(5, 25))).result().shape == (model.config.n_embd,)
        model.runner.stop()                                              # the event loop's unload
        with pytest.raises(Unavailable):
            embedding.submit(model.runner.embed, [5, 6]).result()        # one that came too late
        del model
        gc.collect()
    assert not [str(w.message) for w in caught if "could not be cleaned up" in str(w.message)]
    if isinstance(made[0], MirrorKernels):
        assert made[0].leaked == [] and made[0].live == {}
        assert made[0].launches["release"] == 1
