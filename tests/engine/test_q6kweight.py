"""Q6_K weights kept quantised (engine/q6kweight.py) and their integer kernel (matmul_q6k.c): Q6_K
parts stacked with Q4_K or Q5_K ones, as in Q4_K_M and Q5_K_M files. What every kept type passes
(bit for bit a numpy reference and ggml's own ggml_vec_dot_q6_K_q8_K, whatever the batch size and
thread count): test_quant_types.py."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from tests.engine.quant_harness import encoded_tensor, write_k_m_gguf
from velollmd.engine import kernels
from velollmd.engine.gguf import read_gguf
from velollmd.engine.loader import read_model
from velollmd.engine.model import ModelConfig, linear
from velollmd.engine.q4kweight import Q4KWeight
from velollmd.engine.q5kweight import Q5KWeight
from velollmd.engine.q6kweight import Q6KWeight
from velollmd.engine.quantweight import StackedWeight

Q = gguf.GGMLQuantizationType
pytestmark = pytest.mark.skipif(not kernels.COMPILED, reason="the compiled extension is not built")


def test_a_stacked_weight_is_its_parts_side_by_side(ggml_mul_mat):
    rng = np.random.default_rng(4)
    raws = encoded_tensor(rng, int(Q.Q4_K), 64, 512), encoded_tensor(rng, int(Q.Q6_K), 32, 512)
    parts = Q4KWeight.from_raw(raws[0], (64, 512)), Q6KWeight.from_raw(raws[1], (32, 512))
    w = StackedWeight(parts)
    x = rng.standard_normal((3, 512)).astype(np.float32)
    expected = np.concatenate([ggml_mul_mat(raws[0], int(Q.Q4_K), (64, 512), x),
                               ggml_mul_mat(raws[1], int(Q.Q6_K), (32, 512), x)], axis=1)
    assert w.shape == (96, 512) and w.nbytes == parts[0].nbytes + parts[1].nbytes
    assert np.array_equal(linear(x, w), expected)
    every_row = np.concatenate([p.rows(slice(None)) for p in parts])             # (96, 512)
    assert np.array_equal(w.rows(np.array([65, 1])), every_row[[65, 1]])


@pytest.mark.parametrize("dtype, cls", [("q4_k", Q4KWeight), ("q5_k", Q5KWeight)])
def test_read_model_stacks_k_m_parts(dtype, cls, tmp_path, monkeypatch, ggml_mul_mat):
    """A Q4_K_M- or Q5_K_M-like file: V and the down projection Q6_K, the rest Q4_K or Q5_K; the
    stacked Q/K/V multiplies as ggml multiplies each part."""
    path = write_k_m_gguf(tmp_path / f"{dtype}_m.gguf", dtype, monkeypatch)
    x = np.random.default_rng(4).standard_normal((3, 256)).astype(np.float32)
    with read_gguf(path) as gguf_file:
        config = ModelConfig.from_metadata(gguf_file.metadata, gguf_file.tensors)
        model = read_model(gguf_file, config)
        infos = [gguf_file.tensors[f"blk.0.attn_{p}.weight"] for p in "qkv"]
        expected = np.concatenate([ggml_mul_mat(gguf_file.raw(f"blk.0.attn_{p}.weight"), info.ggml_type,
                                                info.shape, x) for p, info in zip("qkv", infos)], axis=1)
    layer = model.layers[0]
    assert isinstance(layer.wqkv, StackedWeight)
    assert [type(p) for p in layer.wqkv.parts] == [cls, Q6KWeight]
    assert layer.wqkv.shape == (model.q_dim + 2 * model.kv_dim, 256)
    assert isinstance(layer.w_down, Q6KWeight) and isinstance(layer.w_gate_up, cls)
    assert np.array_equal(layer.wqkv.matmul(x), expected)
