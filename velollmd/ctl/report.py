"""Human-readable text for `velollmctl detect`: a short aligned table."""
from __future__ import annotations

from ..hw.info import CpuInfo, HardwareInfo, MemoryInfo, OsInfo


def yes_no(flag, unknown: str = "n/a") -> str:
    """yes / no for a bool, `unknown` for None; any other value as it is."""
    return {True: "yes", False: "no", None: unknown}.get(flag, str(flag))


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
            ["simd", f"AVX2 {yes_no(cpu.avx2)}, AVX-512 {yes_no(cpu.avx512)}, NEON {yes_no(cpu.neon)}"],
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
                     yes_no(gpu.mig)])
    lines += format_columns(rows, right={3, 4}) if hw.gpus else ["gpus  none detected"]
    if hw.notes:
        lines += ["", "notes:"] + [f"  - {note}" for note in hw.notes]
    return "\n".join(lines) + "\n"


def format_plan(p, hw_notes=()) -> str:
    """The model, the memory budget and the plan, for `velollmctl optimize`."""
    m = p.model
    rows = [["model", f"{m.name}: {m.weights_mib} MiB weights, {m.num_layers} layers, "
                      f"{m.num_kv_heads} KV heads x {m.head_dim} ({m.shape_source})"],
            ["memory", f"{p.budget.device}: {p.budget.mib} MiB ({p.budget.source})"],
            ["plan", f"{p.context} ctx x {p.parallel} slot(s), KV cache {p.cache_type} "
                     f"{p.kv_mib} MiB, headroom {p.headroom_mib} MiB"]]
    lines = format_columns(rows)
    lines += [f"note    {n}" for n in tuple(p.notes) + tuple(hw_notes)]
    return "\n".join(lines) + "\n"


def format_diff(rows, written: bool = False) -> str:
    title = "Ollama server settings" + ("" if written else " (dry run: nothing written)")
    table = [["", "SETTING", "CURRENT", "RECOMMENDED", "REASON"]]
    for row in rows:
        current = "(unset)" if row.current is None else f"{row.current} [{_short_source(row.source)}]"
        table.append([row.mark, row.key, current, row.recommended, row.reason])
    legend = "+ new, ~ changed, = unchanged"
    return "\n".join([title] + format_columns(table) + [legend]) + "\n"


def format_request_options(recs) -> str:
    table = [["OPTION", "VALUE", "REASON"]]
    table += [[r.key, r.value, r.reason] for r in recs if r.scope == "request"]
    return "\n".join(["Per-request options (Ollama \"options\")"] + format_columns(table)) + "\n"


def _short_source(source: str | None) -> str:
    return "env" if source in (None, "env") else source.rsplit("/", 1)[-1]
