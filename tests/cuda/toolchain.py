"""nvcc and ptxas driven the way the compile tests need: PTX once per (file, defines), then
`ptxas -v` per architecture with spills, local memory and warnings turned into errors."""
from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from velollmd.cuda import sources

ARCHS = ("sm_80", "sm_90")
PTX_ARCH = "compute_80"      # one PTX, assembled for every arch in ARCHS
PTXAS_STRICT = ["-v", "--warn-on-spills", "--warn-on-local-memory-usage", "--warning-as-error"]
TIMEOUT_S = 120


def missing_tools() -> str | None:
    """Why the compile tests cannot run here, or None."""
    missing = [tool for tool in ("nvcc", "ptxas") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not on PATH (install the CUDA toolkit)" if missing else None


@dataclass
class EntryStats:
    registers: int
    spill_bytes: int         # spill stores + spill loads
    stack_bytes: int


@dataclass
class Assembled:
    arch: str
    ok: bool
    log: str
    entries: dict[str, EntryStats]


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)


def compile_ptx(file: str, defines: dict[str, int], out_dir: Path) -> tuple[Path, subprocess.CompletedProcess]:
    tag = "-".join(f"{name}{value}" for name, value in sorted(defines.items())) or "default"
    ptx = out_dir / f"{Path(file).stem}-{tag}.ptx"
    result = run(["nvcc", "--ptx", f"-arch={PTX_ARCH}", "-Werror", "all-warnings",
                  *sources.define_flags(defines), "-o", str(ptx), str(sources.source_path(file))], out_dir)
    return ptx, result


def compile_cubin_alone(file: str, out_dir: Path) -> subprocess.CompletedProcess:
    """`nvcc -cubin -arch=sm_90 FILE.cu` with no defines, from another directory."""
    return run(["nvcc", "-cubin", "-arch=sm_90", "-Werror", "all-warnings", "-o",
                str(out_dir / f"{Path(file).stem}.cubin"), str(sources.source_path(file))], out_dir)


ENTRY = re.compile(r"Compiling entry function '(\w+)' for '(sm_\d+)'")
SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def assemble(ptx: Path, arch: str, extra: tuple[str, ...] = ()) -> Assembled:
    result = run(["ptxas", f"-arch={arch}", *PTXAS_STRICT, *extra, "-o", str(ptx.with_suffix(f".{arch}.cubin")),
                  str(ptx)], ptx.parent)
    log = result.stdout + result.stderr
    entries: dict[str, EntryStats] = {}
    name, stack, spills = None, 0, 0
    for line in log.splitlines():
        if match := ENTRY.search(line):
            name = match.group(1)
        elif (match := SPILLS.search(line)) and name:
            stack, spills = int(match.group(1)), int(match.group(2)) + int(match.group(3))
        elif (match := REGISTERS.search(line)) and name:
            entries[name] = EntryStats(int(match.group(1)), spills, stack)
            name = None
    ok = result.returncode == 0 and "warning" not in log.lower() and "error" not in log.lower()
    return Assembled(arch, ok, log, entries)
