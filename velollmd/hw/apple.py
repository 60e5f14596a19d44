"""Parsers for macOS `sysctl` and `system_profiler SPDisplaysDataType` output."""
from __future__ import annotations

import re

from .fields import to_int, vendor_of
from .info import MIB, CpuInfo, GpuInfo

SYSCTL_KEYS = ("machdep.cpu.brand_string", "hw.memsize", "hw.physicalcpu", "hw.logicalcpu",
               "hw.perflevel0.physicalcpu", "hw.perflevel1.physicalcpu", "hw.optional.neon",
               "hw.optional.avx2_0", "hw.optional.avx512f", "vm.swapusage")
SYSCTL_ARGV = ("sysctl",) + SYSCTL_KEYS
PROFILER_ARGV = ("system_profiler", "SPDisplaysDataType")

_SYSCTL_LINE = re.compile(r"^([\w.]+):\s*(.*?)\s*$")
_GPU_HEADER = re.compile(r"^ {4}(\S.*):\s*$")
_GPU_FIELD = re.compile(r"^ {6}([^:]+):\s*(.+?)\s*$")
_VRAM = re.compile(r"(\d+)\s*(MB|GB)", re.I)


def parse_sysctl(text: str) -> dict[str, str]:
    """`name: value` lines (sysctl prints unknown names to stderr, which we ignore)."""
    out = {}
    for line in text.splitlines():
        match = _SYSCTL_LINE.match(line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


def _int(values: dict, key: str) -> int | None:
    return to_int(values.get(key))


def _flag(values: dict, key: str) -> bool | None:
    value = _int(values, key)
    return None if value is None else value == 1


def cpu_from_sysctl(values: dict[str, str], arch: str) -> CpuInfo:
    neon = _flag(values, "hw.optional.neon")
    if neon is None and arch in ("arm64", "aarch64"):
        neon = True                  # NEON (AdvSIMD) is mandatory on AArch64
    return CpuInfo(model=values.get("machdep.cpu.brand_string", "unknown"), arch=arch,
                   physical_cores=_int(values, "hw.physicalcpu"),
                   logical_cores=_int(values, "hw.logicalcpu"),
                   performance_cores=_int(values, "hw.perflevel0.physicalcpu"),
                   avx2=_flag(values, "hw.optional.avx2_0"),
                   avx512=_flag(values, "hw.optional.avx512f"), neon=neon)


def memsize_mib(values: dict[str, str]) -> int | None:
    size = _int(values, "hw.memsize")
    return size // MIB if size is not None else None


def parse_system_profiler_displays(text: str, memsize_mib: int | None = None) -> list[GpuInfo]:
    """GPU blocks (4-space header, 6-space fields). Apple GPUs share system memory."""
    blocks: list[dict[str, str]] = []
    for line in text.splitlines():
        header = _GPU_HEADER.match(line)
        if header:
            blocks.append({"_name": header.group(1)})
            continue
        field = _GPU_FIELD.match(line)
        if field and blocks:
            blocks[-1][field.group(1).strip()] = field.group(2)
    return [_gpu(i, block, memsize_mib) for i, block in enumerate(blocks)]


def _gpu(index: int, block: dict[str, str], memsize_mib: int | None) -> GpuInfo:
    name = block.get("Chipset Model", block["_name"])
    vendor_field = block.get("Vendor", "")
    unified = vendor_field.startswith("Apple") or name.startswith("Apple")
    vram = next((v for k, v in block.items() if k.startswith("VRAM")), None)
    total = memsize_mib if unified else _vram_mib(vram)
    vendor = "apple" if unified else vendor_of(vendor_field)
    cores = block.get("Total Number of Cores")
    metal = block.get("Metal Support") or block.get("Metal Family")
    return GpuInfo(vendor, index, name, total, None, None, metal, None, unified,
                   int(cores) if cores and cores.isdigit() else None, "system_profiler")


def _vram_mib(text: str | None) -> int | None:
    match = _VRAM.search(text or "")
    if not match:
        return None
    return int(match.group(1)) * (1024 if match.group(2).upper() == "GB" else 1)
