"""Every .cu compiles on its own and with the engine's defines; its PTX assembles for sm_80 and
sm_90 with ptxas -v, no spills, no local memory, no warnings. Registers are reported."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.cuda import report, toolchain
from velollmd.cuda import sources

pytestmark = pytest.mark.skipif(toolchain.missing_tools() is not None,
                                reason=f"CUDA compile checks need the toolkit: {toolchain.missing_tools()}")

ENGINE_CONFIGS = {   # what an engine build passes: head_dim, block_size, f16 cache, GQA group
    "d64-bs32-f16-g4": sources.engine_defines(64, 32, True, 4),
    "d128-bs16-f16-g8": sources.engine_defines(128, 16, True, 8),
    "d96-bs16-f32-g2": sources.engine_defines(96, 16, False, 2),
    "d256-bs16-f16-g4": sources.engine_defines(256, 16, True, 4),
    "d32-bs16-f32-g2": sources.engine_defines(32, 16, False, 2),      # the tiny model's, as gpu_model builds it
}
ATTENTION_FILES = ("paged_attention.cu", "prefill_attention.cu", "cache_write.cu")
BUILDS = [(file, "default", {}) for file in sources.KERNEL_FILES]
BUILDS += [(file, name, defines) for file in ATTENTION_FILES for name, defines in ENGINE_CONFIGS.items()]
BUILDS += [(file, "d64-bs32-f16-g4", ENGINE_CONFIGS["d64-bs32-f16-g4"])     # defines they ignore
           for file in sources.KERNEL_FILES if file not in ATTENTION_FILES]
BUILDS += [("paged_attention.cu", "dense-baseline", {"DENSE_LAYOUT": 1})]   # benchmarks/kernels.py's
# the paged decode's TOKENS_PER_WARP variant (U rows in flight per warp, one softmax update for
# them) for every engine config; at U = 4 the largest, head_dim 256 / group 4, takes 168-180
# registers (head_dim 256 / group 8, no config here, 251 of the 255)
BUILDS += [("paged_attention.cu", f"{name}-u{u}", {**defines, "TOKENS_PER_WARP": u})
           for name, defines in ENGINE_CONFIGS.items() for u in (2, 4)]


def _build(file: str, defines: dict, out_dir):
    ptx, result = toolchain.compile_ptx(file, defines, out_dir)
    if result.returncode != 0:
        return result, []
    return result, [toolchain.assemble(ptx, arch) for arch in toolchain.ARCHS]


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    """All builds, started at once on two workers (the machine's cores), cached for the session."""
    out_dir = tmp_path_factory.mktemp("cuda-builds")
    pool = ThreadPoolExecutor(max_workers=2)
    futures = {(file, name): pool.submit(_build, file, defines, out_dir) for file, name, defines in BUILDS}
    alone = {file: pool.submit(toolchain.compile_cubin_alone, file, tmp_path_factory.mktemp("alone"))
             for file in sources.KERNEL_FILES}
    yield futures, alone
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("file", list(sources.KERNEL_FILES))
def test_compiles_on_its_own_for_sm_90(file, builds):
    result = builds[1][file].result()
    assert result.returncode == 0, result.stderr
    assert "warning" not in result.stderr.lower(), result.stderr


@pytest.mark.parametrize("file,config", [(file, name) for file, name, _ in BUILDS])
def test_ptx_assembles_without_spills_or_warnings(file, config, builds):
    result, assembled = builds[0][(file, config)].result()
    assert result.returncode == 0 and "warning" not in result.stderr.lower(), result.stderr
    for arch in assembled:
        assert arch.ok, arch.log
        assert set(arch.entries) == set(sources.KERNEL_FILES[file]), arch.log
        for entry, stats in arch.entries.items():
            assert stats.spill_bytes == 0 and stats.stack_bytes == 0, f"{entry} {arch.arch}: {stats}"
            report.REGISTERS.append((file, config, f"{entry} {arch.arch}", stats.registers))


def test_a_spill_fails_the_check(builds, tmp_path):
    """The same PTX squeezed into 24 registers spills: the check must say so, not pass."""
    ptx, result = toolchain.compile_ptx("paged_attention.cu", {}, tmp_path)
    assert result.returncode == 0, result.stderr
    squeezed = toolchain.assemble(ptx, "sm_90", extra=("--maxrregcount=24",))
    assert not squeezed.ok
    assert "spill" in squeezed.log.lower() or "local memory" in squeezed.log.lower()

