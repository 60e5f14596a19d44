"""Parsers for `nvidia-smi` output: pure functions over text.

Two sources: the CSV query (preferred, exact numbers) and the plain table (the fallback when
the query fails, e.g. `compute_cap` is unknown to drivers before 510). Driver errors are
printed on stdout with a non-zero exit; `nvidia_error_note` turns them into one line.
"""
from __future__ import annotations

import re

from .fields import to_int
from .info import GpuInfo

QUERY_FIELDS = ("index", "name", "memory.total", "memory.free", "driver_version",
                "compute_cap", "mig.mode.current")
QUERY_ARGV = ("nvidia-smi", "--query-gpu=" + ",".join(QUERY_FIELDS),
              "--format=csv,noheader,nounits")
TABLE_ARGV = ("nvidia-smi",)

_MISSING = {"", "[n/a]", "n/a", "[not supported]", "not supported", "[unknown error]"}
_ERRORS = (
    (re.compile(r"couldn't communicate with the NVIDIA driver", re.I),
     "NVIDIA driver not loaded (nvidia-smi could not communicate with it)"),
    (re.compile(r"Driver/library version mismatch", re.I),
     "NVIDIA driver/library version mismatch (reboot or reload the nvidia module)"),
    (re.compile(r"Failed to initialize NVML:\s*(.+)", re.I), "NVML failed to initialize: {0}"),
    (re.compile(r"No devices were found", re.I), "nvidia-smi found no NVIDIA devices"),
    (re.compile(r"Unable to determine the device handle for GPU\s*([0-9A-Fa-f:.]+):\s*(.+)", re.I),
     "GPU {0} does not answer ({1}): left out"),
    (re.compile(r'Field "([^"]+)" is not a valid field', re.I),
     "nvidia-smi too old for query field {0!r}"),
)
_TABLE_DRIVER = re.compile(r"Driver Version:\s*([\w.]+)")
_TABLE_NAME = re.compile(r"^\|\s+(\d+)\s+(.+?)\s+(?:On|Off)\s*\|")
_TABLE_MEMORY = re.compile(r"\|\s*(\d+)MiB\s*/\s*(\d+)MiB\s*\|")
_TABLE_MIG = re.compile(r"^\|\s+\|\s+\|\s+(Enabled|Disabled|N/A)\s*\|")
_TABLE_END = re.compile(r"^\|\s*(?:Compute )?Processes:|MIG devices:", re.I | re.M)


def nvidia_error_note(text: str) -> str | None:
    """One line for a known nvidia-smi failure message, or None."""
    for pattern, template in _ERRORS:
        match = pattern.search(text)
        if match:
            return template.format(*(g.strip() for g in match.groups()))
    return None


def _value(field: str) -> str | None:
    field = field.strip()
    return None if field.lower() in _MISSING else field


def _mig(field: str | None) -> bool | None:
    if field is None:
        return None
    return field.lower() == "enabled"


def parse_query_csv(text: str) -> list[GpuInfo]:
    """Rows of `--query-gpu=<QUERY_FIELDS> --format=csv,noheader,nounits`."""
    gpus = []
    for line in text.splitlines():
        fields = [_value(f) for f in line.split(",")]
        if len(fields) != len(QUERY_FIELDS) or to_int(fields[0]) is None:
            continue
        index, name, total, free, driver, cc, mig = fields
        gpus.append(GpuInfo("nvidia", int(index), name or "unknown", to_int(total), to_int(free),
                            driver, cc, _mig(mig), source="nvidia-smi --query-gpu"))
    return gpus


def parse_table(text: str) -> list[GpuInfo]:
    """The plain `nvidia-smi` table, old (331) to current layouts. Free = total - used."""
    driver_match = _TABLE_DRIVER.search(text)
    driver = driver_match.group(1) if driver_match else None
    gpus: list[dict] = []
    for line in _TABLE_END.split(text)[0].splitlines():
        name = _TABLE_NAME.match(line)
        if name:
            gpus.append({"index": int(name.group(1)), "name": name.group(2), "mig": None})
            continue
        if not gpus:
            continue
        memory = _TABLE_MEMORY.search(line)
        if memory and "total" not in gpus[-1]:
            used, total = int(memory.group(1)), int(memory.group(2))
            gpus[-1].update(total=total, free=max(total - used, 0))
        mig = _TABLE_MIG.match(line)
        if mig:
            gpus[-1]["mig"] = _mig(_value(mig.group(1)))
    return [GpuInfo("nvidia", g["index"], g["name"], g.get("total"), g.get("free"), driver,
                    None, g["mig"], source="nvidia-smi") for g in gpus]
