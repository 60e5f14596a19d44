"""tests/cuda: the report_error fixture and an end-of-run summary of errors and registers."""
from __future__ import annotations

import pytest

from tests.cuda import report


@pytest.fixture
def report_error():
    """report_error(what, dtype, error, bound): records the figure and asserts error <= bound."""
    def check(what: str, dtype: str, error: float, bound: float) -> None:
        report.ERRORS.append((what, dtype, float(error), bound))
        assert error <= bound, f"{what} [{dtype}]: max abs error {error:.3g} > {bound:.3g}"
    return check


def pytest_terminal_summary(terminalreporter):
    for title, lines in (("CUDA kernels: max abs error against the reference", report.error_lines()),
                         ("CUDA kernels: registers per thread (ptxas -v; 0 spills)", report.register_lines())):
        if lines:
            terminalreporter.section(title)
            for line in lines:
                terminalreporter.write_line(line)
