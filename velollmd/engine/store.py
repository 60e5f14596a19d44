"""Which GGUF files the engine serves, and under which names.

Three sources, in this order (the first name wins on a clash):
- `model = "/path/file.gguf"`: one file, named by its stem or `alias`;
- `models_dir = "..."`: every `*.gguf` in the folder, named by stem;
- Ollama's local model store (`ollama_store = true`): `$OLLAMA_MODELS`, `~/.ollama/models`,
  `/usr/share/ollama/.ollama/models`. Each manifest under
  `manifests/<registry>/<namespace>/<name>/<tag>` names its layers; the layer whose media type
  is `application/vnd.ollama.image.model` is the GGUF, stored as `blobs/sha256-<hex>`. Its name
  is Ollama's own short form: `llama3.2:1b` for `registry.ollama.ai/library/llama3.2/1b`,
  `user/model:tag` for another namespace, the full path for another registry.

Nothing here opens a GGUF: a listed file may still turn out to be unusable when it is read.
A manifest that is not JSON or points at a missing blob is reported, not trusted.
`sources_state` tells by stats alone whether a scan could find anything new.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

OLLAMA_MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
OLLAMA_REGISTRY = "registry.ollama.ai"
OLLAMA_LIBRARY = "library"


@dataclass(frozen=True)
class ModelFile:
    name: str                 # the model name clients ask for
    path: Path
    source: str               # "file" | "dir" | "ollama"
    size: int = 0
    mtime: float = 0.0
    digest: str = ""          # Ollama's "sha256:..." when the file came from its store
    stamp: tuple = ()         # (inode, mtime_ns, ctime_ns) when it was found: see `file_stamp`

    @property
    def identity(self) -> str:
        """Changes when the file does: part of the response cache key, and what the engine's
        probe of the file is remembered by."""
        return self.digest or f"{self.path}:{self.size}:" + ":".join(map(str, self.stamp or (int(self.mtime),)))


@dataclass
class Catalogue:
    models: dict[str, ModelFile]          # name -> file, in source order
    problems: dict[str, str]              # name or path -> why it is not served


def ollama_store_dirs(env: dict[str, str] | None = None) -> list[Path]:
    """Where Ollama keeps models: $OLLAMA_MODELS, the user's store, the system service's."""
    env = os.environ if env is None else env
    dirs = [Path(env["OLLAMA_MODELS"])] if env.get("OLLAMA_MODELS") else []
    dirs += [Path.home() / ".ollama" / "models", Path("/usr/share/ollama/.ollama/models")]
    return dirs


def find_models(model: str = "", alias: str = "", models_dir: str = "",
                ollama_dirs: list[Path] | tuple[Path, ...] = ()) -> Catalogue:
    catalogue = Catalogue({}, {})
    if model:
        _add_file(catalogue, Path(model), alias or Path(model).stem, "file")
    if models_dir:
        _add_dir(catalogue, Path(models_dir))
    for store in ollama_dirs:
        _add_ollama_store(catalogue, store)
    return catalogue


def _add(catalogue: Catalogue, found: ModelFile) -> None:
    catalogue.models.setdefault(found.name, found)


def _add_file(catalogue: Catalogue, path: Path, name: str, source: str, digest: str = "") -> None:
    try:
        stat = path.stat()
    except OSError as exc:
        catalogue.problems[name] = f"cannot read {path}: {exc.strerror or exc}"
        return
    if not path.is_file():
        catalogue.problems[name] = f"{path} is not a file"
        return
    _add(catalogue, ModelFile(name, path, source, stat.st_size, stat.st_mtime, digest, file_stamp(stat)))


def file_stamp(stat: os.stat_result) -> tuple:
    """What changes when a file is written, beyond its size: its mtime to the nanosecond, and
    its ctime and inode, which also change when the write kept the size and the mtime (a
    rewrite in place within one mtime tick, or one whose mtime was set back: `touch -r`,
    `cp -p`, `rsync -t`). A rewrite that keeps all of them cannot be told by stat."""
    return (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns)


def _add_dir(catalogue: Catalogue, folder: Path) -> None:
    try:
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".gguf")
    except OSError as exc:
        catalogue.problems[str(folder)] = f"cannot list {folder}: {exc.strerror or exc}"
        return
    for path in paths:
        _add_file(catalogue, path, path.stem, "dir")


def _add_ollama_store(catalogue: Catalogue, store: Path) -> None:
    manifests = store / "manifests"
    if not manifests.is_dir():
        return
    for manifest in sorted(p for p in manifests.rglob("*") if p.is_file()):
        parts = manifest.relative_to(manifests).parts
        if len(parts) < 4 or any(part.startswith(".") for part in parts):
            continue                    # not registry/namespace/name/tag
        name = ollama_name(parts)
        blob, problem = _model_blob(store, manifest)
        if problem:
            catalogue.problems.setdefault(name, problem)
        else:
            _add_file(catalogue, blob, name, "ollama", digest=blob.name.replace("-", ":", 1))


def ollama_name(parts: tuple[str, ...]) -> str:
    """registry/namespace/name/tag -> Ollama's short model name."""
    *path, tag = parts
    if path[0] == OLLAMA_REGISTRY:
        path = path[2:] if path[1] == OLLAMA_LIBRARY else path[1:]
    return "/".join(path) + ":" + tag


def _model_blob(store: Path, manifest: Path) -> tuple[Path, str]:
    """The blob holding the model's GGUF, or a problem saying why there is none."""
    try:
        layers = json.loads(manifest.read_text("utf-8")).get("layers", [])
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        return Path(), f"unreadable Ollama manifest {manifest}: {exc}"
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_MEDIA_TYPE:
            digest = str(layer.get("digest", ""))
            if not digest.startswith("sha256:") or "/" in digest:
                return Path(), f"Ollama manifest {manifest} has a bad model digest {digest!r}"
            blob = store / "blobs" / digest.replace(":", "-", 1)
            if not blob.is_file():
                return Path(), f"Ollama manifest {manifest} names a missing blob {blob}"
            return blob, ""
    return Path(), f"Ollama manifest {manifest} has no model layer"


def sources_state(model: str = "", models_dir: str = "",
                  ollama_dirs: list[Path] | tuple[Path, ...] = ()) -> tuple:
    """What `find_models` would read, by stats alone (no file is opened): equal between two
    calls unless a model file, a `*.gguf` of the folder or an Ollama manifest was added,
    removed, replaced or touched, or a blob added or removed, in between. A listing asks it
    before it rescans."""
    state: list = [_stat_of(Path(model))] if model else []
    if models_dir:
        state.append(_gguf_files_state(Path(models_dir)))
    for store in ollama_dirs:
        state += [_names_in(store / "blobs"), _tree_state(store / "manifests")]
    return tuple(state)


def _stat_of(path: Path | os.DirEntry) -> tuple:
    """(device, size, file_stamp) of a file or folder (a link: of its target), or why not."""
    try:
        stat = path.stat()
    except OSError as exc:
        return (exc.errno,)
    return (stat.st_dev, stat.st_size, *file_stamp(stat))


def _names_in(folder: Path) -> tuple:
    """The names in `folder` (Ollama's blobs: content-addressed, so a name is its content)."""
    try:
        return tuple(sorted(os.listdir(folder)))
    except OSError as exc:
        return (exc.errno,)


def _gguf_files_state(folder: Path) -> tuple:
    try:
        with os.scandir(folder) as entries:
            return tuple(sorted((e.name, _stat_of(e)) for e in entries if e.name.lower().endswith(".gguf")))
    except OSError as exc:
        return (exc.errno,)


def _tree_state(folder: Path) -> tuple:
    """Every file under `folder` (Ollama's manifests tree) with its stat, in a stable order."""
    state = [_stat_of(folder)]
    for parent, folders, files in os.walk(folder):
        folders.sort()                  # walked in this order
        state += [(parent, name, _stat_of(Path(parent, name))) for name in sorted(files)]
    return tuple(state)
