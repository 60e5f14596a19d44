"""Which device the engine computes on, and why: the seam where the CUDA kernels plug in.

`device = "cpu"` is the numpy forward pass (model.Model). `"auto"` and `"cuda"` ask
velollmd.cuda whether pycuda imports and a CUDA device answers; when one does, each model loads
onto it (gpu_model.GpuModel: weights and the paged KV cache in device memory, the kernels of
velollmd/cuda), else everything computes on the CPU. The reason says which, so that /health and
the log tell an operator exactly what happened. Never raises: a machine without libcuda serves
on the CPU.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..cuda import kernels


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
    return DeviceChoice(requested, "cuda", f"CUDA device {found.detail}")
