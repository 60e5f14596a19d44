"""Parsers for `rocm-smi --showproductname --showmeminfo vram` (JSON, then text)."""
from __future__ import annotations

import json
import re

from .fields import to_int
from .info import MIB, GpuInfo

JSON_ARGV = ("rocm-smi", "--showproductname", "--showmeminfo", "vram", "--json")
TEXT_ARGV = ("rocm-smi", "--showproductname", "--showmeminfo", "vram")

_TEXT_LINE = re.compile(r"^GPU\[(\d+)\]\s*:\s*([^:]+?):\s*(.*?)\s*$")


def parse_rocm_json(text: str) -> list[GpuInfo]:
    """`{"card0": {"Card Series": ..., "VRAM Total Memory (B)": ...}, "system": {...}}`.

    Key case differs between ROCm releases ("Card series" vs "Card Series"): keys are
    compared lower-cased. Raises ValueError on text that is not a JSON object.
    """
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("rocm-smi JSON is not an object")
    system = {k.lower(): v for k, v in (data.get("system") or {}).items()}
    cards = sorted((k for k in data if re.fullmatch(r"card\d+", k)), key=lambda k: int(k[4:]))
    return [_gpu(int(card[4:]), {k.lower(): str(v) for k, v in data[card].items()},
                 system.get("driver version"), "rocm-smi --json") for card in cards]


def parse_rocm_text(text: str) -> list[GpuInfo]:
    """`GPU[0]  : Card Series:  Navi 21 ...` lines, grouped by GPU index."""
    cards: dict[int, dict[str, str]] = {}
    for line in text.splitlines():
        match = _TEXT_LINE.match(line)
        if match:
            cards.setdefault(int(match.group(1)), {})[match.group(2).strip().lower()] = match.group(3)
    return [_gpu(index, fields, None, "rocm-smi") for index, fields in sorted(cards.items())]


def _gpu(index: int, fields: dict[str, str], driver: str | None, source: str) -> GpuInfo:
    total = to_int(fields.get("vram total memory (b)"))
    used = to_int(fields.get("vram total used memory (b)"))
    free = (total - used) // MIB if total is not None and used is not None else None
    total = total // MIB if total is not None else None
    name = fields.get("card series") or fields.get("card model") or "AMD GPU"
    return GpuInfo("amd", index, name, total, free, driver, fields.get("gfx version"),
                   None, source=source)
