"""Detect the machine: GPUs, CPU, memory, OS.

`detect()` runs the vendor tools (nvidia-smi, rocm-smi, sysctl, system_profiler, lspci)
through `run.run_command`, each tool family in its own thread with its own deadline, so the
whole probe returns within one timeout (plus thread start-up) even if every tool hangs. A
fallback for the same tool (CSV query -> plain table, JSON -> text) shares its family's
deadline, and no fallback is tried after a timeout. Everything a tool could not tell us is
None / "unknown", with a one-line note; parsing lives in the vendor modules as pure functions.
"""
from __future__ import annotations

import dataclasses
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor

try:
    import psutil
except ImportError:        # tools/velollmctl may run on a bare python3
    psutil = None

from . import amd, apple, cpu, nvidia
from .info import MIB, CpuInfo, GpuInfo, HardwareInfo, MemoryInfo, OsInfo
from .run import DEFAULT_TIMEOUT_S, MISSING, TIMEOUT, CommandResult, first_line, run_command


class Deadline:
    """Wall-clock budget shared by one tool family's commands."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.end = time.monotonic() + timeout_s

    def run(self, argv) -> CommandResult:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            return CommandResult(tuple(argv), TIMEOUT, None, "", "",
                                 f"{argv[0]}: skipped, probe deadline of {self.timeout_s:g} s spent")
        result = run_command(argv, timeout_s=remaining)
        if result.status == TIMEOUT:
            note = f"{argv[0]}: timed out after {self.timeout_s:g} s (process group killed)"
            result = dataclasses.replace(result, note=note)
        return result


def parsed(result: CommandResult, parse) -> tuple[list[GpuInfo], list[str]]:
    """The GPUs `parse` reads in a tool's output; none is a note quoting the output: a tool
    that exits 0 lists at least one GPU, else it said something we do not understand."""
    gpus = parse(result.stdout)
    if gpus:
        return gpus, []
    return [], [f"{result.argv[0]}: output not understood: {first_line(result.stdout) or '(no output)'}"]


def probe_nvidia(deadline: Deadline) -> tuple[list[GpuInfo], list[str]]:
    result = deadline.run(nvidia.QUERY_ARGV)
    if result.ok:
        return parsed(result, nvidia.parse_query_csv)
    if result.status in (MISSING, TIMEOUT):
        return [], [result.note]
    note = nvidia.nvidia_error_note(result.output)
    answered = nvidia.parse_query_csv(result.stdout)
    if answered:                                    # one GPU failed (fell off the bus), the others answered
        return answered, [note or result.note]
    if note and "query field" not in note:          # the driver itself is broken: no table
        return [], [note]
    table = deadline.run(nvidia.TABLE_ARGV)
    if table.ok:
        gpus, notes = parsed(table, nvidia.parse_table)
        return gpus, [f"{note or result.note}; used the plain table"] + notes
    return [], [note or result.note, nvidia.nvidia_error_note(table.output) or table.note]


def probe_amd(deadline: Deadline) -> tuple[list[GpuInfo], list[str]]:
    result = deadline.run(amd.JSON_ARGV)
    if result.ok:
        try:
            return amd.parse_rocm_json(result.stdout), []
        except ValueError:
            pass
    elif result.status in (MISSING, TIMEOUT):
        return [], [result.note]
    text = deadline.run(amd.TEXT_ARGV)
    if text.ok:
        gpus, notes = parsed(text, amd.parse_rocm_text)
        return gpus, ["rocm-smi --json failed; used the text output"] + notes
    return [], [text.note]


def probe_lspci(deadline: Deadline) -> tuple[list[GpuInfo], list[str]]:
    result = deadline.run(cpu.LSPCI_ARGV)
    return (cpu.parse_lspci(result.stdout), []) if result.ok else ([], [result.note])


def probe_darwin(deadline: Deadline, arch: str) -> tuple[CpuInfo, int | None, list[GpuInfo], list[str]]:
    """sysctl (CPU, memory size) then system_profiler (GPUs) on macOS."""
    notes = []
    result = deadline.run(apple.SYSCTL_ARGV)
    values = apple.parse_sysctl(result.stdout)      # sysctl exits 1 if any name is unknown
    if not values:
        notes.append(result.note or "sysctl: no output")
    memsize = apple.memsize_mib(values)
    profiler = deadline.run(apple.PROFILER_ARGV)
    gpus = apple.parse_system_profiler_displays(profiler.stdout, memsize) if profiler.ok else []
    if not profiler.ok:
        notes.append(profiler.note)
    return apple.cpu_from_sysctl(values, arch), memsize, gpus, notes


def read_cpuinfo(path: str, arch: str) -> CpuInfo:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            info = cpu.parse_cpuinfo(f.read(), arch)
    except OSError:
        info = CpuInfo(arch=arch)
    if info.logical_cores is None:
        physical = psutil.cpu_count(logical=False) if psutil else None
        info = CpuInfo(info.model, arch, physical, os.cpu_count())
    return info


def read_memory() -> MemoryInfo:
    if psutil is None:      # total RAM only; available / swap stay unknown
        try:
            return MemoryInfo(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MIB)
        except (ValueError, OSError):
            return MemoryInfo()
    ram, swap = psutil.virtual_memory(), psutil.swap_memory()
    return MemoryInfo(ram.total // MIB, ram.available // MIB, swap.total // MIB,
                      swap.free // MIB)


def read_os(os_release: str = "/etc/os-release") -> OsInfo:
    distro = "unknown"
    try:
        with open(os_release, encoding="utf-8") as f:
            for line in f:
                if line.startswith("PRETTY_NAME="):
                    distro = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        if platform.system() == "Darwin":
            distro = "macOS " + (platform.mac_ver()[0] or "unknown")
    return OsInfo(platform.system() or "unknown", platform.release() or "unknown", distro,
                  platform.machine() or "unknown")


def detect(timeout_s: float = DEFAULT_TIMEOUT_S, cpuinfo_path: str = "/proc/cpuinfo") -> HardwareInfo:
    """Probe everything; never raises for a missing, failing or hanging tool."""
    os_info = read_os()
    with ThreadPoolExecutor(max_workers=3) as pool:
        if os_info.system == "Darwin":
            darwin = pool.submit(probe_darwin, Deadline(timeout_s), os_info.machine)
            cpu_info, _, gpus, notes = darwin.result()
            return HardwareInfo(os_info, cpu_info, read_memory(), tuple(gpus), tuple(notes))
        families = [pool.submit(probe, Deadline(timeout_s)) for probe in (probe_nvidia, probe_amd)]
        lspci = pool.submit(probe_lspci, Deadline(timeout_s))
        gpus, notes = [], []
        for future in families:
            found, family_notes = future.result()
            gpus += found
            notes += family_notes
        lspci_gpus, lspci_notes = lspci.result()
    if not gpus:       # lspci names GPUs no vendor tool could describe (or no driver at all)
        gpus, notes = lspci_gpus, notes + lspci_notes
    if psutil is None:
        notes.append("psutil not installed: available RAM and swap unknown")
    return HardwareInfo(os_info, read_cpuinfo(cpuinfo_path, os_info.machine), read_memory(),
                        tuple(gpus), tuple(n for n in notes if n))
