"""The compiled silu(gate) * up (engine/activations.c) against its numpy reference (ops.silu)."""
from __future__ import annotations

import numpy as np
import pytest

from velollmd.engine import kernels, ops


@pytest.fixture(autouse=True)
def restore_threads():
    before = kernels.num_threads()
    yield
    kernels.set_num_threads(before)


def reference(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):          # e^-x past float32's range: silu is 0 there
        return ops.silu(gate) * up


def fused(rows: int, n: int, scale: float, seed: int = 0) -> np.ndarray:
    """(rows, 2n): gate and up side by side, as the FFN's one gate_up product."""
    return (np.random.default_rng(seed).standard_normal((rows, 2 * n)) * scale).astype(np.float32)


@pytest.mark.parametrize("rows, n, scale", [(1, 7, 1.0), (8, 2816, 1.0), (3, 13, 100.0), (5, 64, 20.0),
                                            (2, 9, 1e-3)])
def test_the_kernel_equals_the_numpy_reference_on_halves_of_one_product(rows, n, scale):
    gate_up = fused(rows, n, scale)
    got = kernels.silu_mul(gate_up)
    assert got.shape == (rows, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference(gate_up[:, :n], gate_up[:, n:]), rtol=2e-6, atol=1e-30)


def test_extremes_saturate_as_silu_does():
    gate = np.array([[-200.0, -88.0, -20.0, -0.0, 0.0, 1e-30, 20.0, 88.0, 200.0]], dtype=np.float32)
    up = np.ones_like(gate)
    got = kernels.silu_mul(np.concatenate([gate, up], axis=1))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, reference(gate, up), rtol=2e-6, atol=1e-30)


def test_a_row_does_not_depend_on_its_batch_or_the_thread_count():
    gate_up = fused(300, 300, 4.0, seed=3)                     # 90,000 values: enough for threads
    kernels.set_num_threads(3)
    batched = kernels.silu_mul(gate_up)
    kernels.set_num_threads(1)
    for row in (0, 7, 299):
        assert np.array_equal(kernels.silu_mul(gate_up[row:row + 1])[0], batched[row])


@pytest.mark.parametrize("gate_up", [np.zeros((2, 7), np.float32), np.zeros((4,), np.float32),
                                     np.zeros((2, 8), np.float64), np.zeros((2, 16), np.float32)[:, ::2]])
def test_what_is_not_a_contiguous_float32_pair_of_halves_is_refused(gate_up):
    with pytest.raises(ValueError):
        kernels.silu_mul(gate_up)


def test_the_model_falls_back_to_the_reference_without_the_extension(monkeypatch):
    from velollmd.engine import model
    gate_up = fused(3, 40, 2.0, seed=4)
    compiled = model._silu_mul(gate_up, 40)
    monkeypatch.setattr(kernels, "COMPILED", False)
    assert np.array_equal(model._silu_mul(gate_up, 40), reference(gate_up[:, :40], gate_up[:, 40:]))
    np.testing.assert_allclose(compiled, reference(gate_up[:, :40], gate_up[:, 40:]), rtol=2e-6)
