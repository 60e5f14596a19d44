from tests.ctl.ggufs import write_gguf
from velollmd.ctl import llamacpp_cmd, modelspec, tune
from velollmd.hw.info import CpuInfo, GpuInfo, HardwareInfo, MemoryInfo

MIB = 1024 * 1024
HW = HardwareInfo(cpu=CpuInfo("c", "x86_64", 8, 16), memory=MemoryInfo(65536, 60000, 0, 0),
                  gpus=(GpuInfo("nvidia", 0, "NVIDIA GeForce RTX 4090", 24564, 23892, "550", "8.9"),))


def test_llama_server_argv_from_plan():
    p = tune.plan(HW, modelspec.from_size("8B"))
    argv = llamacpp_cmd.llama_server_argv(p, "/models/llama.gguf")
    assert argv == ["llama-server", "-m", "/models/llama.gguf", "-ngl", "33", "-c", "131072",
                    "--parallel", "4", "-b", "2048", "-ub", "1024", "--flash-attn", "on",
                    "--cache-type-k", "f16", "--cache-type-v", "f16", "--threads", "8"]


def test_speedup_model():
    assert llamacpp_cmd.expected_speedup(0.0, 4, 0.1) == 1 / 1.4     # every draft rejected
    assert llamacpp_cmd.best_draft_max(0.1, 0.7) == 4
    assert llamacpp_cmd.best_draft_max(0.01, 0.9) == 16


def test_draft_chosen_from_same_vocabulary(tmp_path):
    target = write_gguf(tmp_path / "target.gguf", name="Big", pad_bytes=40 * MIB)
    draft = write_gguf(tmp_path / "draft.gguf", name="Small", layers=4, pad_bytes=4 * MIB)
    write_gguf(tmp_path / "other.gguf", name="OtherVocab", vocab=2000, pad_bytes=4 * MIB)
    write_gguf(tmp_path / "too-big.gguf", name="Medium", pad_bytes=30 * MIB)
    (tmp_path / "notes.txt").write_text("not a model")
    p = tune.plan(HW, modelspec.from_gguf(target))
    paths = llamacpp_cmd.scan_gguf_files(str(tmp_path))
    assert len(paths) == 4
    candidates, notes = llamacpp_cmd.load_candidates(paths)
    choice = llamacpp_cmd.choose_draft(p, candidates)
    assert choice.model.path == draft and choice.fits_on_gpu and notes == []
    argv = llamacpp_cmd.llama_server_argv(p, target, choice)
    assert argv[argv.index("--model-draft") + 1] == draft
    assert argv[argv.index("--draft-max") + 1] == str(choice.draft_max)
    assert argv[argv.index("-ngld") + 1] == "5"
    text = "\n".join(llamacpp_cmd.explain(p, choice))
    assert "expected speedup by acceptance rate" in text and "same vocabulary" in text


def test_no_draft_without_target_vocabulary():
    p = tune.plan(HW, modelspec.from_size("8B"))
    assert llamacpp_cmd.choose_draft(p, []) is None
    assert "no speculative draft" in llamacpp_cmd.explain(p, None)[-1]
