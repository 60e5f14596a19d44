"""Run `velollmctl` in-process (ctl.main, output through capsys) or as a real subprocess."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from velollmd.ctl import main as ctl

ROOT = Path(__file__).resolve().parents[3]
DISTRIBUTION_KEYS = ("p50", "p90", "p99", "mean", "n")


def run_ctl(capsys, *args: str) -> tuple[int, str, str]:
    rc = ctl.main([str(a) for a in args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def run_ctl_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "velollmd.ctl", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def bench_json(capsys, tmp_path, *args: str) -> tuple[int, dict, str, str]:
    """Run `bench ... --json FILE` and return (exit code, report, stdout, stderr)."""
    path = tmp_path / "bench.json"
    rc, out, err = run_ctl(capsys, "bench", *args, "--json", path)
    return rc, json.loads(path.read_text()), out, err
