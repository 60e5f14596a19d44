"""Parsers on captured real-format outputs (tests/fixtures/)."""

import pytest

from tests.hw.fixtures import FIXTURES, fixture
from velollmd.hw import amd, apple, cpu, fields, nvidia


def test_nvidia_query_one_gpu():
    [gpu] = nvidia.parse_query_csv(fixture("nvidia_smi_query_1gpu.csv"))
    assert (gpu.vendor, gpu.index, gpu.name) == ("nvidia", 0, "NVIDIA GeForce RTX 4090")
    assert (gpu.memory_total_mib, gpu.memory_free_mib) == (24564, 23892)
    assert (gpu.driver, gpu.compute_capability, gpu.mig) == ("550.54.15", "8.9", None)


def test_nvidia_query_four_gpus():
    gpus = nvidia.parse_query_csv(fixture("nvidia_smi_query_4gpu.csv"))
    assert [g.index for g in gpus] == [0, 1, 2, 3]
    assert [g.memory_free_mib for g in gpus] == [81050, 40211, 81050, 2]
    assert all(g.mig is False and g.compute_capability == "8.0" for g in gpus)


def test_nvidia_query_mig_enabled():
    gpus = nvidia.parse_query_csv(fixture("nvidia_smi_query_mig.csv"))
    assert [g.mig for g in gpus] == [True, False]
    assert gpus[0].name == "NVIDIA H100 80GB HBM3" and gpus[0].compute_capability == "9.0"


def test_nvidia_query_old_driver_na_fields():
    gpus = nvidia.parse_query_csv(fixture("nvidia_smi_query_old_driver.csv"))
    assert [g.name for g in gpus] == ["Tesla K80", "Tesla K80", "NVIDIA Jetson-class GPU"]
    assert gpus[0].mig is None and gpus[0].compute_capability == "3.7"
    assert (gpus[2].memory_total_mib, gpus[2].memory_free_mib, gpus[2].compute_capability) == (None, None, None)


def test_nvidia_query_ignores_error_text():
    assert nvidia.parse_query_csv(fixture("nvidia_smi_no_driver.txt")) == []


def test_nvidia_table_two_gpus():
    gpus = nvidia.parse_table(fixture("nvidia_smi_table.txt"))
    assert [(g.index, g.name) for g in gpus] == [(0, "NVIDIA GeForce RTX 3090"), (1, "NVIDIA GeForce RTX 3060")]
    assert [(g.memory_total_mib, g.memory_free_mib) for g in gpus] == [(24576, 23734), (12288, 12282)]
    assert {g.driver for g in gpus} == {"535.161.07"} and [g.mig for g in gpus] == [None, None]


def test_nvidia_table_mig_enabled_has_no_memory():
    [gpu] = nvidia.parse_table(fixture("nvidia_smi_table_mig.txt"))
    assert (gpu.name, gpu.mig, gpu.memory_total_mib) == ("NVIDIA H100 PCIe", True, None)


def test_nvidia_table_old_layout():
    gpus = nvidia.parse_table(fixture("nvidia_smi_table_old.txt"))
    assert [(g.name, g.memory_total_mib, g.memory_free_mib) for g in gpus] == [
        ("GeForce GTX 680", 4095, 4086)] * 2
    assert gpus[0].driver == "331.62"


@pytest.mark.parametrize("name, expected", [
    ("nvidia_smi_no_driver.txt", "NVIDIA driver not loaded"),
    ("nvidia_smi_nvml_mismatch.txt", "version mismatch"),
    ("nvidia_smi_invalid_field.txt", "query field 'compute_cap'"),
])
def test_nvidia_error_notes(name, expected):
    assert expected in nvidia.nvidia_error_note(fixture(name))


def test_nvidia_error_note_none_for_good_output():
    assert nvidia.nvidia_error_note(fixture("nvidia_smi_query_1gpu.csv")) is None


def test_rocm_json_two_cards():
    gpus = amd.parse_rocm_json(fixture("rocm_smi.json"))
    assert [(g.name, g.compute_capability) for g in gpus] == [
        ("Radeon RX 7900 XTX", "gfx1100"), ("Radeon RX 7600", "gfx1102")]
    assert (gpus[0].memory_total_mib, gpus[0].memory_free_mib) == (24560, 23271)


def test_rocm_json_old_lowercase_keys_and_driver():
    [gpu] = amd.parse_rocm_json(fixture("rocm_smi_old.json"))
    assert gpu.name == "Arcturus GL-XL [AMD Instinct MI100]"
    assert (gpu.memory_total_mib, gpu.driver) == (32752, "5.13.20.5.1")


def test_rocm_json_rejects_text():
    with pytest.raises(ValueError):
        amd.parse_rocm_json(fixture("rocm_smi.txt"))


def test_rocm_text():
    [gpu] = amd.parse_rocm_text(fixture("rocm_smi.txt"))
    assert gpu.name == "Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]"
    assert (gpu.memory_total_mib, gpu.memory_free_mib, gpu.compute_capability) == (16368, 16351, "gfx1030")


def test_sysctl_apple_silicon():
    values = apple.parse_sysctl(fixture("sysctl_apple_m2pro.txt"))
    info = apple.cpu_from_sysctl(values, "arm64")
    assert (info.model, info.physical_cores, info.logical_cores, info.performance_cores) == (
        "Apple M2 Pro", 12, 12, 8)
    assert (info.neon, info.avx2, info.avx512) == (True, None, None)
    assert apple.memsize_mib(values) == 32768


def test_sysctl_intel_mac():
    info = apple.cpu_from_sysctl(apple.parse_sysctl(fixture("sysctl_intel_mac.txt")), "x86_64")
    assert (info.avx2, info.avx512, info.neon) == (True, False, None)
    assert (info.physical_cores, info.logical_cores) == (8, 16)


def test_system_profiler_apple_unified_memory():
    [gpu] = apple.parse_system_profiler_displays(fixture("system_profiler_displays_m2pro.txt"), 32768)
    assert (gpu.vendor, gpu.name, gpu.num_cores, gpu.compute_capability) == ("apple", "Apple M2 Pro", 19, "Metal 3")
    assert gpu.unified_memory and gpu.memory_total_mib == 32768


def test_system_profiler_intel_mac_two_gpus():
    gpus = apple.parse_system_profiler_displays(fixture("system_profiler_displays_intel_mac.txt"), 16384)
    assert [(g.vendor, g.name, g.memory_total_mib) for g in gpus] == [
        ("intel", "Intel UHD Graphics 630", 1536), ("amd", "AMD Radeon Pro 5500M", 8192)]
    assert not any(g.unified_memory for g in gpus)


def test_lspci_display_controllers():
    gpus = cpu.parse_lspci(fixture("lspci.txt"))
    assert [(g.vendor, g.name) for g in gpus] == [
        ("intel", "Intel Corporation Alder Lake-P GT2 [Iris Xe Graphics]"),
        ("nvidia", "NVIDIA Corporation GA107M [GeForce RTX 3050 Mobile]"),
        ("amd", "Advanced Micro Devices, Inc. [AMD/ATI] Navi 21 [Radeon RX 6800/6800 XT / 6900 XT]")]
    assert gpus[1].memory_total_mib is None and gpus[1].source == "lspci 01:00.0"


def test_cpuinfo_epyc_avx512():
    info = cpu.parse_cpuinfo(fixture("cpuinfo_x86_epyc_avx512.txt"), "x86_64")
    assert (info.model, info.avx2, info.avx512, info.neon) == ("AMD EPYC", True, True, None)
    assert info.logical_cores >= 1 and info.physical_cores >= 1


def test_cpuinfo_intel_smt_avx2_only():
    info = cpu.parse_cpuinfo(fixture("cpuinfo_x86_intel_avx2_smt.txt"), "x86_64")
    assert info.model == "Intel(R) Core(TM) i7-10700K CPU @ 3.80GHz"
    assert (info.physical_cores, info.logical_cores, info.avx2, info.avx512) == (4, 8, True, False)


def test_cpuinfo_aarch64_neon():
    info = cpu.parse_cpuinfo(fixture("cpuinfo_aarch64_neoverse_n1.txt"), "aarch64")
    assert (info.model, info.neon, info.avx2, info.avx512) == ("Neoverse-N1", True, None, None)
    assert (info.physical_cores, info.logical_cores) == (4, 4)


def test_cpuinfo_empty():
    info = cpu.parse_cpuinfo("", "riscv64")
    assert (info.model, info.logical_cores) == ("unknown", None)


def test_fixture_count():
    assert len(list(FIXTURES.iterdir())) >= 12


@pytest.mark.parametrize("name, vendor", [
    ("NVIDIA Corporation AD102 [GeForce RTX 4090]", "nvidia"),
    ("Advanced Micro Devices, Inc. [AMD/ATI] Navi 21 [Radeon RX 6800]", "amd"),
    ("ATI (0x1002)", "amd"),                          # system_profiler's Vendor on older Macs
    ("Intel Corporation Alder Lake-P GT2", "intel"), ("Intel", "intel"),
    ("Matrox Electronics Systems Ltd. G200eR2", "other"), ("", "other")])
def test_vendor_of_names(name, vendor):
    assert fields.vendor_of(name) == vendor


@pytest.mark.parametrize("text, value", [("24564", 24564), ("24564.0", 24564), ("17163091968", 17163091968),
                                         (" 7 ", 7), ("[N/A]", None), ("", None), (None, None), ("inf", None)])
def test_to_int_fields(text, value):
    assert fields.to_int(text) == value
