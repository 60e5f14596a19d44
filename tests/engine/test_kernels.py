"""The compiled decode matmul (engine/matmul.c) against numpy, and the engine's thread setting."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

from velollmd.engine import kernels


@pytest.fixture(autouse=True)
def restore_threads():
    before = kernels.num_threads()
    yield
    kernels.set_num_threads(before)


def test_the_extension_is_built():
    assert kernels.COMPILED, "velollmd/engine/_matmul is not built: run `make install`"


@pytest.mark.parametrize("batch", [1, 2, 3, 5, 8, 16, 17])
@pytest.mark.parametrize("k, n", [(64, 96), (1024, 260), (37, 5), (8, 1), (130, 67)])
def test_matmul_nt_equals_numpy(batch, k, n):
    rng = np.random.default_rng(batch * 1000 + k + n)
    x = rng.standard_normal((batch, k), dtype=np.float32)      # (B, K)
    w = rng.standard_normal((n, k), dtype=np.float32)          # (N, K)
    got = kernels.matmul_nt(x, w)                              # (B, N)
    want = (x.astype(np.float64) @ w.T.astype(np.float64))     # (B, N) exact-ish reference
    assert got.shape == (batch, n) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(k))


@pytest.mark.parametrize("batch, k", [(11, 300), (16, 64), (21, 1027)])
def test_a_row_does_not_depend_on_its_batch_or_the_thread_count(batch, k):
    """A sequence's logits are the same alone and batched with others (and with 1 or 3 threads):
    groups of 8 (the wide tile, with AVX-512), of 4 and single inputs all sum alike."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((batch, k), dtype=np.float32)      # (B, K)
    w = rng.standard_normal((517, k), dtype=np.float32)        # (N, K)
    kernels.set_num_threads(3)
    batched = kernels.matmul_nt(x, w)                          # (B, N)
    kernels.set_num_threads(1)
    for row in range(x.shape[0]):
        assert np.array_equal(kernels.matmul_nt(x[row:row + 1], w)[0], batched[row])
    assert np.array_equal(kernels.matmul_nt(x[3:9], w), batched[3:9])


def test_a_non_contiguous_input_is_read_correctly():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 6), dtype=np.float32).T       # (6, 40) strided view
    w = rng.standard_normal((9, 40), dtype=np.float32)
    np.testing.assert_allclose(kernels.matmul_nt(x, w), x @ w.T, rtol=1e-5, atol=1e-5)


def _openblas_threads() -> int:
    for path in kernels._loaded_blas_libraries():
        library = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads"):
            getter = getattr(library, name, None)
            if getter is not None:
                return getter()
    pytest.fail("numpy's OpenBLAS not found in /proc/self/maps")


def test_set_num_threads_sets_numpy_openblas_and_defaults_to_physical_cores():
    np.ones((4, 4)) @ np.ones((4, 4))                          # numpy's BLAS is loaded
    assert kernels.set_num_threads(1) == 1 and _openblas_threads() == 1
    assert kernels.set_num_threads(2) == 2 and _openblas_threads() == 2
    assert kernels.set_num_threads(0) == kernels.default_num_threads() >= 1
    assert _openblas_threads() == kernels.default_num_threads()


def test_the_engine_applies_its_threads_key(tmp_path):
    from tests.rig.llama import make_tiny_model
    from velollmd.config import SchedulerConfig
    from velollmd.engine import loader

    path = make_tiny_model(tmp_path / "tiny.gguf")
    loader.load("tiny", path, loader.EngineOptions(threads=1, kv_cache_mb=1), SchedulerConfig())
    assert kernels.num_threads() == 1 and _openblas_threads() == 1
    loader.load("tiny", path, loader.EngineOptions(kv_cache_mb=1), SchedulerConfig())
    assert kernels.num_threads() == kernels.default_num_threads()
