"""The engine's model catalogue: a file, a folder, and Ollama's on-disk store."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from velollmd.engine.store import find_models, ollama_name, ollama_store_dirs, sources_state


def rewrite_in_place(path: Path, data: bytes) -> None:
    """`data` written over `path` (same size, same inode), its mtime then set back to the
    old one to the nanosecond: a rewrite within one mtime tick, or a `touch -r` / `cp -p`.
    The ctime moves on; when the rewrite lands in the same clock tick as the file's last
    change, the mtime is set again until it does (nothing by stat could tell it otherwise)."""
    before = path.stat()
    assert len(data) == before.st_size
    with open(path, "r+b") as file:
        file.write(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    while path.stat().st_ctime_ns == before.st_ctime_ns:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def write_ollama_model(store: Path, parts: tuple[str, ...], payload: bytes, *, extra_layers=()) -> str:
    """An Ollama store entry as `ollama pull` leaves it: manifest + content-addressed blob."""
    import hashlib
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    (store / "blobs").mkdir(parents=True, exist_ok=True)
    (store / "blobs" / digest.replace(":", "-")).write_bytes(payload)
    manifest = store / "manifests" / Path(*parts)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    layers = [*extra_layers, {"mediaType": "application/vnd.ollama.image.model", "digest": digest,
                              "size": len(payload)}]
    manifest.write_text(json.dumps({"schemaVersion": 2, "layers": layers}))
    return digest


@pytest.mark.parametrize("parts, name", [
    (("registry.ollama.ai", "library", "llama3.2", "1b"), "llama3.2:1b"),
    (("registry.ollama.ai", "library", "qwen2.5", "latest"), "qwen2.5:latest"),
    (("registry.ollama.ai", "someone", "tuned", "q4"), "someone/tuned:q4"),
    (("hf.co", "org", "repo-GGUF", "Q4_K_M"), "hf.co/org/repo-GGUF:Q4_K_M"),
])
def test_ollama_names_follow_ollamas_short_form(parts, name):
    assert ollama_name(parts) == name


def test_file_then_folder_then_ollama_store(tmp_path):
    one = tmp_path / "mine.gguf"
    one.write_bytes(b"GGUF one")
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "b.gguf").write_bytes(b"GGUF b")
    (folder / "a.GGUF").write_bytes(b"GGUF a")
    (folder / "notes.txt").write_text("not a model")
    store = tmp_path / "ollama"
    digest = write_ollama_model(store, ("registry.ollama.ai", "library", "llama3.2", "1b"), b"GGUF blob",
                                extra_layers=[{"mediaType": "application/vnd.ollama.image.template",
                                               "digest": "sha256:00"}])
    found = find_models(str(one), "alias-one", str(folder), [store, tmp_path / "absent"])
    assert list(found.models) == ["alias-one", "a", "b", "llama3.2:1b"]
    blob = found.models["llama3.2:1b"]
    assert (blob.source, blob.digest, blob.identity) == ("ollama", digest, digest)
    assert blob.path.read_bytes() == b"GGUF blob"
    assert found.models["alias-one"].source == "file" and found.problems == {}


def test_first_source_wins_a_name_clash(tmp_path):
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "same.gguf").write_bytes(b"from folder")
    found = find_models(str(tmp_path / "x.gguf"), "same", str(folder))
    assert "same" in found.problems and "cannot read" in found.problems["same"]
    assert found.models["same"].path == folder / "same.gguf"


def test_broken_manifests_are_reported_not_trusted(tmp_path):
    store = tmp_path / "ollama"
    write_ollama_model(store, ("registry.ollama.ai", "library", "good", "latest"), b"GGUF")
    bad = store / "manifests" / "registry.ollama.ai" / "library"
    (bad / "notjson").mkdir(parents=True)
    (bad / "notjson" / "latest").write_text("{broken")
    (bad / "noblob").mkdir()
    (bad / "noblob" / "latest").write_text(json.dumps({"layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:" + "0" * 64}]}))
    (bad / "nomodel").mkdir()
    (bad / "nomodel" / "latest").write_text(json.dumps({"layers": []}))
    (bad / "escape").mkdir()
    (bad / "escape" / "latest").write_text(json.dumps({"layers": [
        {"mediaType": "application/vnd.ollama.image.model", "digest": "sha256:../../etc/passwd"}]}))
    found = find_models(ollama_dirs=[store])
    assert list(found.models) == ["good:latest"]
    assert "unreadable Ollama manifest" in found.problems["notjson:latest"]
    assert "missing blob" in found.problems["noblob:latest"]
    assert "no model layer" in found.problems["nomodel:latest"]
    assert "bad model digest" in found.problems["escape:latest"]


def test_missing_folder_is_a_problem(tmp_path):
    found = find_models(models_dir=str(tmp_path / "nope"))
    assert found.models == {} and "cannot list" in found.problems[str(tmp_path / "nope")]


def test_store_dirs_honour_ollama_models(tmp_path):
    dirs = ollama_store_dirs({"OLLAMA_MODELS": str(tmp_path)})
    assert dirs[0] == tmp_path and dirs[-1] == Path("/usr/share/ollama/.ollama/models")
    assert ollama_store_dirs({})[0] == Path.home() / ".ollama" / "models"


def test_sources_state_changes_with_what_a_scan_would_find(tmp_path):
    """The cheap check a listing makes before it rescans: a GGUF added, replaced or removed,
    a manifest for a new tag, a blob removed all change it; a file the scan ignores does not."""
    folder, store = tmp_path / "models", tmp_path / "ollama"
    folder.mkdir()
    (folder / "a.gguf").write_bytes(b"GGUF a")
    write_ollama_model(store, ("registry.ollama.ai", "library", "llama3.2", "1b"), b"GGUF 1b")

    def state():
        return sources_state(str(tmp_path / "one.gguf"), str(folder), [store, tmp_path / "absent"])
    states = [state()]
    (folder / "notes.txt").write_text("not a model")
    states.append(state())
    (folder / "b.gguf").write_bytes(b"GGUF b")
    states.append(state())
    (folder / "a.gguf").write_bytes(b"GGUF a, a newer one")
    states.append(state())
    write_ollama_model(store, ("registry.ollama.ai", "library", "llama3.2", "3b"), b"GGUF 3b")
    states.append(state())
    blob = next((store / "blobs").iterdir())
    blob.unlink()
    states.append(state())
    (folder / "b.gguf").unlink()
    states.append(state())
    (tmp_path / "one.gguf").write_bytes(b"GGUF one")
    states.append(state())
    assert states[0] == states[1] and state() == states[-1]
    assert len(set(states[1:])) == len(states) - 1          # every other step is a change


def test_a_same_size_rewrite_with_the_same_mtime_changes_the_state_and_the_identity(tmp_path):
    """A GGUF rewritten in place, same size, its mtime equal to the nanosecond: the cheap
    check still sees it (by the ctime) and the file's identity (the probe's and the cache
    key's) is a new one, else the old probe of the file would be trusted."""
    folder = tmp_path / "models"
    folder.mkdir()
    (folder / "a.gguf").write_bytes(b"GGUF good")
    (tmp_path / "one.gguf").write_bytes(b"GGUF one")

    def state():
        return sources_state(str(tmp_path / "one.gguf"), str(folder))

    def identities():
        return {n: f.identity for n, f in find_models(str(tmp_path / "one.gguf"), "", str(folder)).models.items()}
    states, seen = [state()], [identities()]
    rewrite_in_place(folder / "a.gguf", b"XXXX good")
    states.append(state()), seen.append(identities())
    rewrite_in_place(tmp_path / "one.gguf", b"XXXX one")
    states.append(state()), seen.append(identities())
    assert len(set(states)) == 3
    assert seen[0]["a"] != seen[1]["a"] and seen[1]["one"] != seen[2]["one"]
    assert seen[0]["one"] == seen[1]["one"] and seen[1]["a"] == seen[2]["a"]
