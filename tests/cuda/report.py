"""Figures the CUDA tests collect for the end-of-run summary (tests/cuda/conftest.py prints them)."""
from __future__ import annotations

ERRORS: list[tuple[str, str, float, float]] = []    # (what, dtype, max abs error, bound)
REGISTERS: list[tuple[str, str, str, int]] = []     # (file, config, "entry arch", registers per thread)


def error_lines() -> list[str]:
    return [f"{what:<58} {dtype:<8} {error:9.2e}  (bound {bound:.0e})" for what, dtype, error, bound in ERRORS]


def register_lines() -> list[str]:
    return [f"{file:<22} {config:<18} {entry:<46} {registers:4d}" for file, config, entry, registers in REGISTERS]
