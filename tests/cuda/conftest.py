"""tests/cuda: compile every kernel (nvcc, ptxas) once per session; report max abs errors."""
from __future__ import annotations

import pytest

ERRORS: list[tuple[str, str, float, float]] = []   # (what, dtype, max abs error, bound)


@pytest.fixture
def report_error():
    """report_error(what, dtype, error, bound): records the figure and asserts error <= bound."""
    def report(what: str, dtype: str, error: float, bound: float) -> None:
        ERRORS.append((what, dtype, float(error), bound))
        assert error <= bound, f"{what} [{dtype}]: max abs error {error:.3g} > {bound:.3g}"
    return report


def pytest_terminal_summary(terminalreporter):
    if not ERRORS:
        return
    terminalreporter.section("CUDA kernels: max abs error against the reference")
    for what, dtype, error, bound in ERRORS:
        terminalreporter.write_line(f"{what:<58} {dtype:<8} {error:9.2e}  (bound {bound:.0e})")
