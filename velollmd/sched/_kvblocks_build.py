"""CFFI build script (API mode, out-of-line) for the C block allocator.

setup.py lists this file in `cffi_modules`, so `pip install -e .` (make install) compiles
kvblocks.c into the extension `velollmd.sched._kvblocks`. Only velollmd/sched/kvblocks.py
imports that extension.
"""
import pathlib

from cffi import FFI

HERE = pathlib.Path(__file__).resolve().parent



def _source_path(path: pathlib.Path) -> str:
    """setuptools prefers sources relative to setup.py's directory (the cwd when it runs)."""
    try:
        return str(path.relative_to(pathlib.Path.cwd()))
    except ValueError:
        return str(path)


CDEF = """
#define KV_OK 0
#define KV_NO_FIT 1
#define KV_ENOMEM -1
#define KV_EINVAL -2
#define KV_ENOSEQ -3
#define KV_ROOT_HASH 0xcbf29ce484222325

typedef struct kv_pool kv_pool;

kv_pool *kv_pool_new(int32_t num_blocks, int32_t block_size);
void kv_pool_delete(kv_pool *pool);
int kv_allocate(kv_pool *pool, const int32_t *token_ids, int64_t num_tokens,
                int64_t num_extra_tokens, int32_t *out_block_ids, int32_t *out_seq,
                int32_t *out_num_cached_blocks);
int kv_append(kv_pool *pool, int32_t seq, const int32_t *token_ids, int64_t num_tokens,
              int32_t *out_copy_src, int32_t *out_copy_dst);
int kv_fork(kv_pool *pool, int32_t parent_seq, int32_t *out_child_seq);
int kv_free(kv_pool *pool, int32_t seq);
int32_t kv_block_table(const kv_pool *pool, int32_t seq, int32_t *out, int32_t cap);
int64_t kv_num_tokens(const kv_pool *pool, int32_t seq);
int32_t kv_find_cached_prefix(const kv_pool *pool, const int32_t *token_ids, int64_t num_tokens);
int32_t kv_num_free_blocks(const kv_pool *pool);
int32_t kv_num_cached_blocks(const kv_pool *pool);
int32_t kv_ref_cnt(const kv_pool *pool, int32_t block_id);
uint64_t kv_hash_block(uint64_t parent_hash, const int32_t *token_ids, int32_t num_tokens);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "velollmd.sched._kvblocks",
    '#include "kvblocks.h"',
    sources=[_source_path(HERE / "kvblocks.c")],
    include_dirs=[str(HERE)],
    extra_compile_args=["-O2", "-std=c11"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
