"""Fixtures of tests/engine/."""
from __future__ import annotations

import pytest

from tests.engine.ggml_lib import GgmlMulMat


@pytest.fixture(scope="module")
def ggml_mul_mat(llama_binary) -> GgmlMulMat:
    """ggml-cpu's own mul_mat (the real llama.cpp build's library)."""
    return GgmlMulMat(llama_binary)
