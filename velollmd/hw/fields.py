"""Readings every vendor parser shares: an integer field, a GPU vendor from a name."""
from __future__ import annotations


def to_int(text: str | None) -> int | None:
    """`"24564"` -> 24564, `"24564.0"` -> 24564; None for None, `[N/A]` or any other non-number."""
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        return None


def vendor_of(name: str) -> str:
    """nvidia | amd | intel | other, from a device or vendor name as lspci or macOS print it
    (`NVIDIA Corporation ...`, `Advanced Micro Devices, Inc. [AMD/ATI] ...`, `ATI (0x1002)`)."""
    lowered = name.lower()
    if "nvidia" in lowered:
        return "nvidia"
    if "amd" in lowered or "ati" in lowered.split():
        return "amd"
    return "intel" if "intel" in lowered else "other"
