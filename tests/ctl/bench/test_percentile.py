"""The project's one percentile definition: linear between closest ranks, as numpy's default."""
from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import benchmarks.common
from velollmd.ctl.bench.stats import percentile

ROOT = Path(__file__).resolve().parents[3]


def test_known_values_of_one_to_ten():
    values = [7.0, 1.0, 10.0, 4.0, 2.0, 9.0, 3.0, 8.0, 6.0, 5.0]        # 1..10, shuffled
    assert percentile(values, 50) == 5.5                               # mean of the middle two
    assert percentile(values, 99) == pytest.approx(9.91)               # rank 8.91: 9 + 0.91 x 1
    assert (percentile(values, 0), percentile(values, 100)) == (1.0, 10.0)
    assert percentile([15, 20, 35, 40, 50], 40) == pytest.approx(29.0)  # rank 1.6: 20 + 0.6 x 15
    assert percentile([42.0], 99) == 42.0


@pytest.mark.parametrize("seed, n", [(0, 1), (1, 2), (2, 3), (3, 10), (4, 101), (5, 1000), (6, 4097)])
def test_equals_numpy_percentile_on_random_data(seed, n):
    rng = np.random.default_rng(seed)
    samples = rng.lognormal(mean=2.0, sigma=1.5, size=n)                # (n,) latency-like, skewed
    for q in (0, 0.1, 1, 25, 50, 90, 99, 99.9, 100):
        assert percentile(samples.tolist(), q) == float(np.percentile(samples, q)), (n, q)


def test_rejects_no_values_and_q_outside_0_to_100():
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match="outside 0..100"):
        percentile([1.0], 101)
    with pytest.raises(ValueError, match="outside 0..100"):
        percentile([1.0], -1)


def test_benchmarks_report_the_same_percentiles():
    assert benchmarks.common.percentile is percentile
    summary = benchmarks.common.summary([float(v) for v in range(1, 11)])
    assert (summary["p50"], summary["p99"]) == (5.5, percentile(range(1, 11), 99))


def test_no_benchmark_script_defines_its_own_percentile():
    """Every benchmark takes percentiles from velollmd.ctl.bench.stats (thin wrappers are fine)."""
    own = []
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("percentile", "quantile", "median") \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in ("np", "numpy"):
                own.append(f"{path.name}:{node.lineno} np.{node.func.attr}")
            if isinstance(node, ast.FunctionDef) and ("percentile" in node.name or node.name == "pct") \
                    and not _calls(node, "percentile"):
                own.append(f"{path.name}:{node.lineno} def {node.name}")
    assert own == []


def _calls(function: ast.FunctionDef, name: str) -> bool:
    return any(isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name
               for n in ast.walk(function))
