"""Parsers for Linux `/proc/cpuinfo` and `lspci` display-controller lines."""
from __future__ import annotations

import re

from .fields import vendor_of
from .info import CpuInfo, GpuInfo

LSPCI_ARGV = ("lspci",)

# CPU part numbers of common Arm cores (implementer 0x41); aarch64 cpuinfo has no model name.
_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd05": "Cortex-A55", "0xd08": "Cortex-A72",
              "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1",
              "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2", "0xd80": "Cortex-A520"}
_LSPCI_GPU = re.compile(
    r"^(\S+)\s+(?:VGA compatible controller|3D controller|Display controller):\s*(.+?)"
    r"(?:\s+\(rev \w+\))?\s*$")


def _blocks(text: str) -> list[dict[str, str]]:
    """One dict per `processor` block: `key : value` lines, keys stripped."""
    blocks: list[dict[str, str]] = []
    for chunk in re.split(r"\n\s*\n", text):
        fields = {}
        for line in chunk.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" in fields:
            blocks.append(fields)
    return blocks


def parse_cpuinfo(text: str, arch: str = "unknown") -> CpuInfo:
    blocks = _blocks(text)
    if not blocks:
        return CpuInfo(arch=arch)
    first = blocks[0]
    flags = set((first.get("flags") or first.get("Features") or "").split())
    physical = {(b.get("physical id"), b.get("core id")) for b in blocks if "core id" in b}
    is_arm = "Features" in first or arch in ("aarch64", "arm64")
    return CpuInfo(model=_model_name(first), arch=arch,
                   physical_cores=len(physical) or len(blocks), logical_cores=len(blocks),
                   avx2=None if is_arm else "avx2" in flags,
                   avx512=None if is_arm else "avx512f" in flags,
                   neon=("asimd" in flags or "neon" in flags) if is_arm else None)


def _model_name(first: dict[str, str]) -> str:
    if first.get("model name"):
        return first["model name"]
    part = first.get("CPU part")
    if part:
        return _ARM_PARTS.get(part.lower(), f"Arm CPU part {part}")
    return first.get("Hardware", "unknown")


def parse_lspci(text: str) -> list[GpuInfo]:
    """VGA / 3D / Display controllers; memory is unknown from lspci alone."""
    gpus = []
    for line in text.splitlines():
        match = _LSPCI_GPU.match(line)
        if match:
            name = match.group(2)
            gpus.append(GpuInfo(vendor_of(name), len(gpus), name, source=f"lspci {match.group(1)}"))
    return gpus
