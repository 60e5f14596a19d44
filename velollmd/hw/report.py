"""Human-readable text for `velollmctl detect`: a short aligned table."""
from __future__ import annotations

from .info import CpuInfo, HardwareInfo, MemoryInfo, OsInfo


def _yes_no(flag: bool | None) -> str:
    return "n/a" if flag is None else ("yes" if flag else "no")


def _num(value) -> str:
    return "?" if value is None else str(value)


def _gib(mib: int | None) -> str:
    return "?" if mib is None else f"{mib / 1024:.1f} GiB"


def format_columns(rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    """Left-align every column (right-align the ones in `right`), two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.rjust(w) if i in right else cell.ljust(w)
                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]


def _summary_rows(os_info: OsInfo, cpu: CpuInfo, mem: MemoryInfo) -> list[list[str]]:
    cores = f"{_num(cpu.physical_cores)} physical / {_num(cpu.logical_cores)} logical cores"
    if cpu.performance_cores:
        cores += f" ({cpu.performance_cores} performance)"
    return [["os", f"{os_info.system} {os_info.release} {os_info.machine} ({os_info.distro})"],
            ["cpu", f"{cpu.model}, {cores}"],
            ["simd", f"AVX2 {_yes_no(cpu.avx2)}, AVX-512 {_yes_no(cpu.avx512)}, NEON {_yes_no(cpu.neon)}"],
            ["ram", f"{_gib(mem.ram_total_mib)} total, {_gib(mem.ram_available_mib)} available"],
            ["swap", f"{_gib(mem.swap_total_mib)} total, {_gib(mem.swap_free_mib)} free"]]


def format_hardware(hw: HardwareInfo) -> str:
    lines = format_columns(_summary_rows(hw.os, hw.cpu, hw.memory))
    lines.append("")
    rows = [["GPU", "VENDOR", "NAME", "TOTAL MiB", "FREE MiB", "DRIVER", "COMPUTE", "MIG"]]
    for gpu in hw.gpus:
        name = gpu.name + (" (unified memory)" if gpu.unified_memory else "")
        rows.append([str(gpu.index), gpu.vendor, name, _num(gpu.memory_total_mib),
                     _num(gpu.memory_free_mib), gpu.driver or "?", gpu.compute_capability or "?",
                     _yes_no(gpu.mig)])
    lines += format_columns(rows, right={3, 4}) if hw.gpus else ["gpus  none detected"]
    if hw.notes:
        lines += ["", "notes:"] + [f"  - {note}" for note in hw.notes]
    return "\n".join(lines) + "\n"
