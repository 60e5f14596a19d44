"""detect() against fake nvidia-smi / rocm-smi / lspci executables on PATH."""
import pytest

from tests.hw.fakebin import fake_path, hangs, live_group_members, prints, write_tool
from velollmd.hw import probe


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    path = tmp_path / "bin"
    path.mkdir()
    fake_path(monkeypatch, path)
    write_tool(path, "lspci", "exit 0")       # shadows a real lspci, if any
    write_tool(path, "rocm-smi", "exit 127")  # and a real rocm-smi
    write_tool(path, "nvidia-smi", "exit 127")
    return path


def test_nvidia_query(bin_dir):
    write_tool(bin_dir, "nvidia-smi", prints("nvidia_smi_query_4gpu.csv"))
    hw = probe.detect(timeout_s=5)
    assert [g.index for g in hw.gpus] == [0, 1, 2, 3]
    assert hw.gpus[0].source == "nvidia-smi --query-gpu"


def test_nvidia_old_driver_falls_back_to_table(bin_dir):
    script = ('case "$1" in --query-gpu*) ' + prints("nvidia_smi_invalid_field.txt", 2) + ';; esac\n'
              + prints("nvidia_smi_table.txt"))
    write_tool(bin_dir, "nvidia-smi", script)
    hw = probe.detect(timeout_s=5)
    assert [g.name for g in hw.gpus] == ["NVIDIA GeForce RTX 3090", "NVIDIA GeForce RTX 3060"]
    assert any("used the plain table" in n and "compute_cap" in n for n in hw.notes)


def test_a_lost_gpu_leaves_the_others_listed_with_a_note(bin_dir):
    write_tool(bin_dir, "nvidia-smi", prints("nvidia_smi_query_lost_gpu.csv", 15))
    write_tool(bin_dir, "lspci", prints("lspci.txt"))
    hw = probe.detect(timeout_s=5)
    assert [(g.index, g.source) for g in hw.gpus] == [(0, "nvidia-smi --query-gpu"), (2, "nvidia-smi --query-gpu")]
    assert "GPU 0000:0B:00.0 does not answer (Unknown Error): left out" in hw.notes


def test_driver_mismatch_is_a_note_and_lspci_names_the_gpu(bin_dir):
    write_tool(bin_dir, "nvidia-smi", prints("nvidia_smi_nvml_mismatch.txt", 18))
    write_tool(bin_dir, "lspci", prints("lspci.txt"))
    hw = probe.detect(timeout_s=5)
    assert any("version mismatch" in n for n in hw.notes)
    assert [g.vendor for g in hw.gpus] == ["intel", "nvidia", "amd"]
    assert all(g.memory_total_mib is None for g in hw.gpus)


def test_rocm_json_then_text(bin_dir):
    write_tool(bin_dir, "rocm-smi", 'case "$*" in *--json*) echo "not json";; *) '
               + prints("rocm_smi.txt") + ';; esac')
    hw = probe.detect(timeout_s=5)
    assert [g.name for g in hw.gpus] == ["Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]"]
    assert any("used the text output" in n for n in hw.notes)


def test_nvidia_and_amd_together(bin_dir):
    write_tool(bin_dir, "nvidia-smi", prints("nvidia_smi_query_1gpu.csv"))
    write_tool(bin_dir, "rocm-smi", prints("rocm_smi.json"))
    hw = probe.detect(timeout_s=5)
    assert [g.vendor for g in hw.gpus] == ["nvidia", "amd", "amd"]


@pytest.mark.parametrize("output, note", [
    ("NVIDIA-SMI has failed because of garbage\n???", "nvidia-smi: output not understood: NVIDIA-SMI has failed because of garbage"),
    ("", "nvidia-smi: output not understood: (no output)")])
def test_nvidia_smi_output_that_is_no_gpu_list_is_a_note(bin_dir, output, note):
    write_tool(bin_dir, "nvidia-smi", f"printf '{output}'\nexit 0")
    write_tool(bin_dir, "rocm-smi", 'case "$*" in *--json*) echo "not json";; *) echo "garbage";; esac')
    hw = probe.detect(timeout_s=5)
    assert hw.gpus == () and note in hw.notes
    assert "rocm-smi: output not understood: garbage" in hw.notes


def test_missing_tools_degrade_to_notes(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    hw = probe.detect(timeout_s=5)
    assert hw.gpus == ()
    assert {"nvidia-smi: not found", "rocm-smi: not found", "lspci: not found"} <= set(hw.notes)
    assert hw.memory.ram_total_mib > 0 and hw.cpu.logical_cores >= 1


def test_hanging_nvidia_smi_is_a_timeout_note(bin_dir, tmp_path):
    pid_file = tmp_path / "nvidia.pid"
    write_tool(bin_dir, "nvidia-smi", hangs(pid_file))
    write_tool(bin_dir, "rocm-smi", prints("rocm_smi.json"))
    hw = probe.detect(timeout_s=0.5)
    assert any(n.startswith("nvidia-smi: timed out") for n in hw.notes)
    assert [g.vendor for g in hw.gpus] == ["amd", "amd"]       # other tools still answered
    assert live_group_members(int(pid_file.read_text())) == []


def test_every_tool_hanging_still_returns(bin_dir, tmp_path):
    for name in ("nvidia-smi", "rocm-smi", "lspci"):
        write_tool(bin_dir, name, hangs(tmp_path / f"{name}.pid"))
    hw = probe.detect(timeout_s=0.5)
    assert sum("timed out" in n for n in hw.notes) == 3 and hw.gpus == ()


def test_to_dict_has_stable_keys(bin_dir):
    write_tool(bin_dir, "nvidia-smi", prints("nvidia_smi_query_mig.csv"))
    out = probe.detect(timeout_s=5).to_dict()
    assert list(out) == ["os", "cpu", "memory", "gpus", "notes"]
    assert out["gpus"][0]["mig"] is True and out["gpus"][0]["memory_free_mib"] == 80411
    assert set(out["cpu"]) >= {"model", "physical_cores", "logical_cores", "avx2", "avx512", "neon"}
