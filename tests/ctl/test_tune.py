"""Known hardware -> known recommendations."""
from tests.hw.fixtures import fixture
from velollmd.ctl import modelspec, tune
from velollmd.ctl.settings import Setting
from velollmd.hw.info import CpuInfo, GpuInfo, HardwareInfo, MemoryInfo
from velollmd.hw.nvidia import parse_query_csv

CPU8 = CpuInfo("Test CPU", "x86_64", 8, 16, None, True, False, None)
RAM64 = MemoryInfo(65536, 60000, 8192, 8192)
LLAMA8B = modelspec.from_size("8B")            # 4625 MiB, 32 layers, 8 KV heads x 128


def rtx4090() -> HardwareInfo:
    return HardwareInfo(cpu=CPU8, memory=RAM64, gpus=tuple(parse_query_csv(fixture("nvidia_smi_query_1gpu.csv"))))


def values(recs) -> dict:
    return {r.key: r.value for r in recs}


def test_kv_cache_formula():
    # 2 x 32 layers x 8 kv heads x 128 dims x 8192 tokens x 2 bytes = 1 GiB per slot
    assert tune.kv_cache_mib(LLAMA8B, 8192, 1, "f16") == 1024
    assert tune.kv_cache_mib(LLAMA8B, 8192, 4, "q8_0") == 4096 * 34 / 32 / 2
    assert tune.kv_cache_mib(LLAMA8B, 8192, 1, "q4_0") == 1024 * 18 / 32 / 2


def test_24gb_gpu_gets_four_slots_and_grown_context():
    hw = rtx4090()
    p = tune.plan(hw, LLAMA8B)
    recs = tune.recommendations(hw, p)
    assert values(recs) == {
        "OLLAMA_NUM_PARALLEL": "4", "OLLAMA_MAX_LOADED_MODELS": "1", "OLLAMA_KEEP_ALIVE": "30m",
        "OLLAMA_CONTEXT_LENGTH": "32768", "OLLAMA_FLASH_ATTENTION": "1", "OLLAMA_KV_CACHE_TYPE": "f16",
        "num_ctx": "32768", "num_batch": "1024", "num_gpu": "33", "num_thread": "8"}
    assert (p.kv_mib, p.headroom_mib) == (16384, 23892 - 768 - 4625 - 16384)
    assert all(r.reason for r in recs)


def test_8gb_gpu_two_slots():
    p = tune.plan(rtx4090(), LLAMA8B, vram_mib=8192)
    assert (p.context, p.parallel, p.cache_type, p.num_batch) == (8192, 2, "f16", 512)


def test_6gb_gpu_quantizes_kv_cache():
    hw = rtx4090()
    p = tune.plan(hw, LLAMA8B, vram_mib=6144)
    assert (p.context, p.parallel, p.cache_type) == (8192, 1, "q8_0")
    assert "halves the KV cache" in values_reasons(tune.recommendations(hw, p))["OLLAMA_KV_CACHE_TYPE"]


def values_reasons(recs) -> dict:
    return {r.key: r.reason for r in recs}


def test_70b_on_24gb_is_partially_offloaded():
    hw = rtx4090()
    model = modelspec.from_size("70B")
    p = tune.plan(hw, model)
    assert (p.full_offload, p.fits, p.parallel, p.cache_type) == (False, False, 1, "q4_0")
    assert p.num_gpu_layers == int((23892 - 768) // ((model.weights_mib + p.kv_mib) / 80)) == 44
    recs = values(tune.recommendations(hw, p))
    assert (recs["num_gpu"], recs["OLLAMA_KEEP_ALIVE"], recs["OLLAMA_MAX_LOADED_MODELS"]) == ("44", "5m", "1")


def test_a_partial_offload_says_it_cut_the_context_asked_for():
    p = tune.plan(rtx4090(), modelspec.from_size("70B"), target_context=32768)
    assert (p.fits, p.context) == (False, 8192)
    assert "context cut to 8192 (wanted 32768) to fit memory" in p.notes
    assert not any("context cut" in n for n in tune.plan(rtx4090(), modelspec.from_size("70B")).notes)


def test_old_gpu_gets_no_flash_attention():
    old = GpuInfo("nvidia", 0, "Tesla K80", 11441, 11379, "470.182.03", "3.7")
    hw = HardwareInfo(cpu=CPU8, memory=RAM64, gpus=(old,))
    p = tune.plan(hw, LLAMA8B)
    assert (p.flash_attention, p.cache_type) == (False, "f16")
    assert values(tune.recommendations(hw, p))["OLLAMA_FLASH_ATTENTION"] == "0"


def test_cpu_only_small_machine():
    hw = HardwareInfo(cpu=CpuInfo("Small", "x86_64", 2, 2, None, True, True, None),
                      memory=MemoryInfo(16384, 16000, 0, 0))
    p = tune.plan(hw, LLAMA8B)
    assert (p.budget.device, p.budget.mib, p.parallel, p.context) == ("cpu", 14400, 1, 8192)
    assert tune.plan(hw, LLAMA8B, target_context=32768).context == 32768   # asked for, and fits
    recs = values(tune.recommendations(hw, p))
    assert (recs["num_gpu"], recs["num_thread"], recs["num_batch"], recs["OLLAMA_KEEP_ALIVE"]) == ("0", "2", "512", "5m")


def test_apple_unified_memory_budget():
    gpu = GpuInfo("apple", 0, "Apple M2 Pro", 32768, None, None, "Metal 3", None, True, 19)
    hw = HardwareInfo(cpu=CpuInfo("Apple M2 Pro", "arm64", 12, 12, 8, None, None, True),
                      memory=MemoryInfo(32768, 20000, 2048, 1000), gpus=(gpu,))
    p = tune.plan(hw, LLAMA8B)
    assert (p.budget.device, p.budget.mib, p.num_thread, p.full_offload) == ("unified", 20000, 8, True)


def test_model_context_caps_the_plan():
    small_ctx = modelspec.ModelSpec("tiny", 1.0, "Q4_K_M", 600, 16, 8, 32, 64, 4096)
    p = tune.plan(rtx4090(), small_ctx)
    assert (p.context, p.parallel) == (4096, 4)


def test_diff_marks_new_changed_unchanged():
    recs = tune.recommendations(rtx4090(), tune.plan(rtx4090(), LLAMA8B))
    current = {"OLLAMA_NUM_PARALLEL": Setting("4", "env"),
               "OLLAMA_KEEP_ALIVE": Setting("5m", "/etc/systemd/system/ollama.service.d/override.conf")}
    rows = {row.key: row for row in tune.diff(recs, current)}
    assert len(rows) == 6 and "num_ctx" not in rows
    assert (rows["OLLAMA_NUM_PARALLEL"].mark, rows["OLLAMA_KEEP_ALIVE"].mark, rows["OLLAMA_FLASH_ATTENTION"].mark) == ("=", "~", "+")
    assert rows["OLLAMA_KEEP_ALIVE"].current == "5m"


def test_a_gpu_in_mig_mode_is_left_out_of_the_budget_with_a_note():
    # GPU 0 is in MIG mode: a process gets one slice of it, not its 80 GB.
    hw = HardwareInfo(cpu=CPU8, memory=RAM64, gpus=tuple(parse_query_csv(fixture("nvidia_smi_query_mig.csv"))))
    p = tune.plan(hw, LLAMA8B)
    assert (p.budget.device, p.budget.mib) == ("gpu", 81005)
    assert p.notes[0] == ("GPU 0 in MIG mode: left out of the memory budget (a process runs on one MIG "
                          "slice, not the whole GPU); give the slice's memory with --vram-mib")
    only_mig = HardwareInfo(cpu=CPU8, memory=RAM64, gpus=hw.gpus[:1])
    assert tune.plan(only_mig, LLAMA8B).budget.device == "cpu"
    sliced = tune.plan(only_mig, LLAMA8B, vram_mib=20096)
    assert (sliced.budget.mib, sliced.notes) == (20096, ())
