"""`tools/velollmctl` run as a real subprocess."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ctl.ggufs import write_gguf
from tests.hw.fakebin import prints, write_tool

ROOT = Path(__file__).resolve().parents[2]
CTL = ROOT / "tools" / "velollmctl"


@pytest.fixture
def fake_bin(tmp_path):
    path = tmp_path / "bin"
    path.mkdir()
    write_tool(path, "nvidia-smi", prints("nvidia_smi_query_1gpu.csv"))
    write_tool(path, "rocm-smi", "exit 127")
    write_tool(path, "lspci", "exit 0")
    return path


def velollmctl(*args, bin_dir=None, env_extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLLAMA_")}
    if bin_dir:
        env["PATH"] = f"{bin_dir}{os.pathsep}{os.path.dirname(sys.executable)}{os.pathsep}/usr/bin{os.pathsep}/bin"
    env.update(env_extra or {})
    return subprocess.run([str(CTL), *args], capture_output=True, text=True, env=env, timeout=60)


def test_detect_json(fake_bin):
    result = velollmctl("detect", "--json", bin_dir=fake_bin)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert list(out) == ["os", "cpu", "memory", "gpus", "notes", "engine_device"]
    device = out["engine_device"]                  # no pycuda / no driver on a test machine: the CPU, and why
    assert device["requested"] == "auto" and device["used"] in ("cpu", "cuda") and device["reason"]
    assert out["gpus"][0]["name"] == "NVIDIA GeForce RTX 4090" and out["gpus"][0]["memory_free_mib"] == 23892
    assert out["memory"]["ram_total_mib"] > 0 and out["cpu"]["logical_cores"] >= 1


def test_detect_table(fake_bin):
    result = velollmctl("detect", bin_dir=fake_bin)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("os    ") and any(l.startswith("cpu   ") for l in lines)
    assert lines[-1].startswith("engine device (auto): ") and "(" in lines[-1]
    header = next(l for l in lines if l.startswith("GPU"))
    row = lines[lines.index(header) + 1]
    assert row.index("24564") + len("24564") == header.index("TOTAL MiB") + len("TOTAL MiB")  # right-aligned


def test_optimize_dry_run_shows_diff_and_writes_nothing(fake_bin, tmp_path):
    dropins = tmp_path / "ollama.service.d"
    dropins.mkdir()
    (dropins / "override.conf").write_text('[Service]\nEnvironment="OLLAMA_KEEP_ALIVE=5m"\n')
    result = velollmctl("optimize", "--model-size", "8B", "--dropin-dir", str(dropins),
                        bin_dir=fake_bin, env_extra={"OLLAMA_NUM_PARALLEL": "4"})
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "dry run: nothing written" in out
    rows = {l.split()[1]: l for l in out.splitlines() if l[:1] in "+~=" and "OLLAMA_" in l}
    assert rows["OLLAMA_NUM_PARALLEL"].startswith("=") and "4 [env]" in rows["OLLAMA_NUM_PARALLEL"]
    assert rows["OLLAMA_KEEP_ALIVE"].startswith("~") and "5m [override.conf]" in rows["OLLAMA_KEEP_ALIVE"]
    assert rows["OLLAMA_KV_CACHE_TYPE"].startswith("+")
    assert sorted(p.name for p in dropins.iterdir()) == ["override.conf"]


def test_optimize_writes_dropin_with_backup_and_env_file(fake_bin, tmp_path):
    dropins = tmp_path / "ollama.service.d"
    dropins.mkdir()
    (dropins / "velollm.conf").write_text("[Service]\n# old\n")
    env_file = tmp_path / "ollama.env"
    result = velollmctl("optimize", "--model-size", "8B", "--write-systemd", str(dropins),
                        "--write-env", str(env_file), bin_dir=fake_bin)
    assert result.returncode == 0, result.stderr
    conf = (dropins / "velollm.conf").read_text()
    assert '[Service]\nEnvironment="OLLAMA_NUM_PARALLEL=4"\n' in conf
    assert 'Environment="OLLAMA_CONTEXT_LENGTH=32768"' in conf
    assert (dropins / "velollm.conf.bak").read_text() == "[Service]\n# old\n"
    assert "export OLLAMA_KV_CACHE_TYPE=f16" in env_file.read_text()
    assert "daemon-reload" in result.stdout


def test_optimize_explicit_dry_run_writes_nothing(fake_bin, tmp_path):
    dropins = tmp_path / "ollama.service.d"
    result = velollmctl("optimize", "--dry-run", "--dropin-dir", str(dropins), bin_dir=fake_bin)
    assert result.returncode == 0, result.stderr
    assert "dry run: nothing written" in result.stdout and "wrote" not in result.stdout
    assert not dropins.exists()


@pytest.mark.parametrize("option, name", [("--write-systemd", "ollama.service.d"), ("--write-env", "ollama.env")])
def test_optimize_dry_run_with_a_write_option_is_a_usage_error(fake_bin, tmp_path, option, name):
    target = tmp_path / name
    result = velollmctl("optimize", "--dry-run", option, str(target), bin_dir=fake_bin)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("velollmctl optimize: --dry-run contradicts --write-systemd / --write-env")
    assert not target.exists()


def test_optimize_json_still_writes_what_was_asked(fake_bin, tmp_path):
    env_file = tmp_path / "ollama.env"
    result = velollmctl("optimize", "--json", "--write-env", str(env_file), bin_dir=fake_bin)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["plan"]["parallel"] == 4           # stdout stays pure JSON
    assert "export OLLAMA_NUM_PARALLEL=4" in env_file.read_text() and f"wrote {env_file}" in result.stderr


def test_optimize_llamacpp_with_draft(fake_bin, tmp_path):
    target = write_gguf(tmp_path / "target.gguf", name="Big", pad_bytes=40 * 1024 * 1024)
    draft = write_gguf(tmp_path / "draft.gguf", name="Small", layers=4, pad_bytes=4 * 1024 * 1024)
    result = velollmctl("optimize", "--gguf", target, "--llamacpp", "--draft-candidates", draft,
                        bin_dir=fake_bin)
    assert result.returncode == 0, result.stderr
    command = next(l for l in result.stdout.splitlines() if l.strip().startswith("llama-server"))
    assert f"-m {target}" in command and f"--model-draft {draft}" in command and "--draft-max" in command
    assert "expected speedup by acceptance rate" in result.stdout


def test_optimize_bad_gguf_is_one_line_error(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"nope")
    result = velollmctl("optimize", "--gguf", str(bad))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot read the model" in result.stderr


def test_usage_error():
    assert velollmctl().returncode == 2


@pytest.mark.parametrize("args, needle", [
    (["--context", "0"], "--context"), (["--context", "-4096"], "--context"),
    (["--vram-mib", "-5"], "--vram-mib"), (["--vram-mib", "0"], "--vram-mib"),
    (["--model-size", "0B"], "model size"), (["--model-size", "0.0M"], "model size")])
def test_optimize_refuses_sizes_that_are_not_positive(fake_bin, args, needle):
    result = velollmctl("optimize", *args, bin_dir=fake_bin)
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert needle in result.stderr.splitlines()[-1]


def test_output_into_a_closed_pipe_is_no_traceback(fake_bin):
    # `velollmctl optimize | head -3`: the reader is gone before velollmctl writes.
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}/usr/bin{os.pathsep}/bin"}
    try:
        result = subprocess.run([sys.executable, "-m", "velollmd.ctl", "optimize"], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, timeout=60)
    finally:
        os.close(write_end)
    assert result.returncode == 1 and result.stderr == ""


@pytest.mark.parametrize("verb", ["detect", "optimize", "bench", "status", "reload"])
def test_each_verbs_help_says_what_it_does(verb):
    listed = {line.split()[0]: " ".join(line.split()[1:]) for line in velollmctl("--help").stdout.splitlines()
              if line.startswith("    ") and line.split()[0] in ("detect", "optimize", "bench", "status", "reload")}
    result = velollmctl(verb, "--help")
    assert result.returncode == 0
    description = " ".join(result.stdout.split("\n\n")[1].split())       # the paragraph after the usage
    assert listed[verb] and description.startswith(listed[verb].split(" (")[0])
    assert "as described" not in result.stdout
