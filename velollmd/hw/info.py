"""Plain data the probes produce: one GPU, the CPU, memory, OS, the whole machine."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

UNKNOWN = "unknown"
MIB = 1024 * 1024                               # bytes per MiB, the unit of every *_mib field


@dataclass(frozen=True)
class GpuInfo:
    vendor: str                                 # nvidia | amd | apple | intel | other
    index: int
    name: str
    memory_total_mib: int | None = None
    memory_free_mib: int | None = None
    driver: str | None = None
    compute_capability: str | None = None       # "8.9" (CUDA), "gfx1100" (ROCm), "Metal 3"
    mig: bool | None = None                     # None: not reported / not applicable
    unified_memory: bool = False                # Apple Silicon: the GPU shares system RAM
    num_cores: int | None = None                # Apple GPU cores
    source: str = ""                            # which tool reported it


@dataclass(frozen=True)
class CpuInfo:
    model: str = UNKNOWN
    arch: str = UNKNOWN
    physical_cores: int | None = None
    logical_cores: int | None = None
    performance_cores: int | None = None        # Apple perflevel0; None elsewhere
    avx2: bool | None = None
    avx512: bool | None = None
    neon: bool | None = None


@dataclass(frozen=True)
class MemoryInfo:
    ram_total_mib: int | None = None
    ram_available_mib: int | None = None
    swap_total_mib: int | None = None
    swap_free_mib: int | None = None


@dataclass(frozen=True)
class OsInfo:
    system: str = UNKNOWN                       # Linux | Darwin | ...
    release: str = UNKNOWN
    distro: str = UNKNOWN
    machine: str = UNKNOWN


@dataclass(frozen=True)
class HardwareInfo:
    os: OsInfo = field(default_factory=OsInfo)
    cpu: CpuInfo = field(default_factory=CpuInfo)
    memory: MemoryInfo = field(default_factory=MemoryInfo)
    gpus: tuple[GpuInfo, ...] = ()
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """Stable JSON shape: {os, cpu, memory, gpus: [...], notes: [...]}."""
        out = asdict(self)
        out["gpus"] = [asdict(g) for g in self.gpus]
        out["notes"] = list(self.notes)
        return out
