"""Which device the engine computes on, and why: the seam where the CUDA kernels plug in.

`device = "cpu"` is the numpy forward pass. `"auto"` and `"cuda"` ask velollmd.cuda whether
pycuda imports and a CUDA device answers. The engine's CUDA forward pass (weights and the paged
KV cache in GPU memory, the kernels of velollmd/cuda) is not wired yet, so today every choice
computes on the CPU; the reason says which of the two it was (no device, or not wired yet)
so that /health and the log tell an operator exactly what happened. Never raises: a machine
without libcuda serves on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..cuda import kernels

CUDA_PATH_WIRED = False     # True once model.py runs on the kernels of velollmd/cuda


@dataclass(frozen=True)
class DeviceChoice:
    requested: str          # the config's device: auto | cpu | cuda
    used: str               # what the engine computes on: cpu | cuda
    reason: str

    def to_dict(self) -> dict:
        return {"requested": self.requested, "used": self.used, "reason": self.reason}


def choose_device(requested: str, probe=kernels.probe) -> DeviceChoice:
    if requested == "cpu":
        return DeviceChoice(requested, "cpu", "device = \"cpu\" in the config")
    found = probe()
    if not found.ok:
        return DeviceChoice(requested, "cpu", f"no CUDA device: {found.detail}")
    if not CUDA_PATH_WIRED:
        return DeviceChoice(requested, "cpu", f"CUDA device {found.detail} answers, but the engine's CUDA "
                                              "forward pass is not wired yet (velollmd/cuda holds the kernels)")
    return DeviceChoice(requested, "cuda", f"CUDA device {found.detail}")
