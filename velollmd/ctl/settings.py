"""Ollama's current settings (environment + systemd drop-ins) and writing new ones.

systemd reads `ollama.service.d/*.conf` in lexical order, later assignments winning; an
`Environment=` line may hold several quoted `K=V` words. The service sees the drop-ins, not
the shell's environment, so drop-in values take precedence over the environment here.
Writes are atomic (temp file, fsync, rename, fsync of the directory) and keep a backup.
"""
from __future__ import annotations

import os
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

DROPIN_DIR = "/etc/systemd/system/ollama.service.d"
DROPIN_NAME = "velollm.conf"


@dataclass(frozen=True)
class Setting:
    value: str
    source: str                      # "env" or the drop-in file's path


def parse_environment_lines(text: str) -> dict[str, str]:
    """`Environment="A=1" "B=2"` / `Environment=A=1` lines of a unit file, in order."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, rest = line.strip().partition("=")
        if not sep or key.strip() != "Environment":
            continue
        try:
            words = shlex.split(rest)
        except ValueError:
            continue
        for word in words:
            name, eq, value = word.partition("=")
            if eq and name:
                values[name] = value
    return values


def read_current(environ: dict[str, str], dropin_dir: str = DROPIN_DIR,
                 prefix: str = "OLLAMA_") -> dict[str, Setting]:
    current = {k: Setting(v, "env") for k, v in environ.items() if k.startswith(prefix)}
    directory = Path(dropin_dir)
    if directory.is_dir():
        for path in sorted(directory.glob("*.conf")):
            try:
                text = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            for key, value in parse_environment_lines(text).items():
                if key.startswith(prefix):
                    current[key] = Setting(value, str(path))
    return current


def render_dropin(env: dict[str, str], header: str) -> str:
    lines = [f"# {line}" for line in header.splitlines()] + ["[Service]"]
    lines += [f'Environment="{key}={value}"' for key, value in env.items()]
    return "\n".join(lines) + "\n"


def render_env_file(env: dict[str, str], header: str) -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in env.items()]
    return "\n".join(lines) + "\n"


def write_atomic(path: str | Path, text: str, backup: bool = True, mode: int = 0o644) -> Path | None:
    """Replace `path` with `text` atomically; returns the backup's path if one was made.

    The backup (`<name>.bak`, not read by systemd, which loads only `*.conf`) is itself
    written atomically before the new file replaces the old one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backup_path = None
    if backup and path.exists():
        backup_path = path.with_name(path.name + ".bak")
        _replace(backup_path, path.read_bytes(), mode)
    _replace(path, text.encode(), mode)
    return backup_path


def _replace(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
