"""Q4_0, Q5_0, Q4_1 and Q5_1 weights kept quantised (engine/legacyweight.py) and their integer
kernels (matmul_legacy.c): what only these types have (their integers, their parts stacked with
Q8_0 and Q4_K ones) and such models' logits against the real llama-server. What every kept type
passes (bit for bit the numpy reference, tests/engine/legacy_reference.py, and ggml's own
mul_mat, on every path this CPU has, whatever the batch size and thread count):
test_quant_types.py."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from tests.engine.quant_harness import CASES, encoded_tensor, file_weight, random_x
from tests.engine.test_model import LLAMA_ARGS, engine_probs, server_top_probs, top10_nmse
from tests.rig.llama import tiny_gguf_tool
from velollmd.engine import kernels
from velollmd.engine.gguf import read_gguf
from velollmd.engine.legacyweight import LegacyMinWeight
from velollmd.engine.loader import read_model
from velollmd.engine.model import ModelConfig
from velollmd.engine.q4kweight import Q4KWeight
from velollmd.engine.q8weight import Q8Weight
from velollmd.engine.quants import dequantize
from velollmd.engine.quantweight import StackedWeight

Q = gguf.GGMLQuantizationType
pytestmark = pytest.mark.skipif(not kernels.COMPILED, reason="the compiled extension is not built")


@pytest.mark.parametrize("dtype, low, high", [("q4_0", -8, 7), ("q5_0", -16, 15), ("q4_1", 0, 15),
                                              ("q5_1", 0, 31)])
def test_the_values_are_the_files_integers(dtype, low, high):
    """Low nibbles first, then high ones (with their fifth bits), minus the offset: dequantize's
    values (less the mins) divided by the scales, over the whole range."""
    rng = np.random.default_rng(4)
    case = CASES[dtype]
    raw = encoded_tensor(rng, case.ggml_type, 64, 256)
    w = case.cls.from_raw(raw, (64, 256))
    values = w.values(slice(None))                                                # (64, 8, 32) int8
    assert values.dtype == np.int8 and values.min() == low and values.max() == high
    scales = np.repeat(w.d, 32, axis=1)                                           # (64, 256)
    scaled = scales * values.reshape(64, 256).astype(np.float32)
    if isinstance(w, LegacyMinWeight):
        scaled += np.repeat(w.m, 32, axis=1)
    assert np.array_equal(scaled, dequantize(raw, case.ggml_type, (64, 256)))


def test_legacy_parts_stack_with_q8_0_and_q4_k_parts_on_one_rounding_of_x_per_type():
    """A fused weight of these parts is each part's product side by side (Q4_0, Q5_0 and Q8_0
    share a Q8_0 x, Q4_1 and Q5_1 a Q8_1 x; a Q4_K part, as in a Q4_K_M file with Q5_0
    fallbacks, a Q8_K x)."""
    rng = np.random.default_rng(7)
    parts = (file_weight(rng, CASES["q4_0"], 48, 256), file_weight(rng, CASES["q5_1"], 8, 256),
             file_weight(rng, CASES["q5_0"], 8, 256),
             Q8Weight.from_raw(encoded_tensor(rng, int(Q.Q8_0), 16, 256), (16, 256)),
             file_weight(rng, CASES["q4_1"], 8, 256),
             Q4KWeight.from_raw(encoded_tensor(rng, int(Q.Q4_K), 8, 256), (8, 256)))
    x = random_x(rng, 5, 256)
    stacked = StackedWeight(parts)
    assert stacked.shape == (96, 256)
    assert np.array_equal(stacked.matmul(x), np.concatenate([part.matmul(x) for part in parts], axis=1))


@pytest.mark.parametrize("arch, dtype", [("llama", "q4_0"), ("qwen2", "q4_0"), ("llama", "q5_0"),
                                         ("qwen2", "q5_0"), ("llama", "q4_1"), ("qwen2", "q5_1")])
def test_top10_probabilities_match_llama_server(arch, dtype, tmp_path, llama_server_factory):
    """make_tiny_gguf's file of the type, its matrices kept quantised, against llama-server (no
    repacking: its repacked Q4_0 kernels are host-dependent)."""
    path = tiny_gguf_tool().build_tiny_gguf(tmp_path / f"{arch}-{dtype}.gguf", seed=5, dtype=dtype, arch=arch)
    with read_gguf(path) as gguf_file:
        config = ModelConfig.from_metadata(gguf_file.metadata, gguf_file.tensors)
        model = read_model(gguf_file, config)
    assert isinstance(model.layers[0].w_gate_up, CASES[dtype].cls)
    server = llama_server_factory(model_path=path, parallel=1, ctx_size=512, extra_args=LLAMA_ARGS)
    ids, theirs = server_top_probs(server, "the world of water and fire is a great story")
    ours = engine_probs(model, config, ids)                                       # (n_vocab,)
    top_ids = list(theirs)
    nmse = top10_nmse(ours, theirs)
    print(f"{arch} {dtype}: top-10 normalised MSE vs llama-server = {nmse:.2e}")
    assert len(theirs) == 10 and int(np.argmax(ours)) == top_ids[0]
    assert nmse < 1e-3
