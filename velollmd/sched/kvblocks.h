/* KV block allocator: a pool of fixed-size token blocks with ref counts, a LIFO free list,
 * copy-on-write fork and a prefix-hash cache (block hash = H(parent hash, block token ids)).
 *
 * "Does not fit" is the return value KV_NO_FIT; errors are negative codes (turned into Python
 * exceptions by velollmd/sched/kvblocks.py, the only importer); broken invariants are asserts.
 * Sequences (one per request) are addressed by an int32 seq id handed out by kv_allocate.
 */
#ifndef VELOLLM_KVBLOCKS_H
#define VELOLLM_KVBLOCKS_H

#include <stdint.h>

#define KV_OK 0
#define KV_NO_FIT 1
#define KV_ENOMEM (-1)
#define KV_EINVAL (-2)
#define KV_ENOSEQ (-3)

#define KV_ROOT_HASH 0xcbf29ce484222325ULL /* parent hash of a sequence's first block */

typedef struct kv_pool kv_pool;

kv_pool *kv_pool_new(int32_t num_blocks, int32_t block_size);
void kv_pool_delete(kv_pool *pool);

/* Allocate blocks for num_tokens prompt tokens plus num_extra_tokens reserved slots, reusing
 * the longest cached prefix (at most num_tokens - 1 tokens). Writes the block table (ceil((n +
 * extra) / block_size) ids) to out_block_ids, the new seq id and the cached block count. */
int kv_allocate(kv_pool *pool, const int32_t *token_ids, int64_t num_tokens,
                int64_t num_extra_tokens, int32_t *out_block_ids, int32_t *out_seq,
                int32_t *out_num_cached_blocks);

/* Append tokens to a sequence, growing it; a write into a shared block copies it first
 * (copy-on-write): *out_copy_src / *out_copy_dst get the block ids to copy, or -1. */
int kv_append(kv_pool *pool, int32_t seq, const int32_t *token_ids, int64_t num_tokens,
              int32_t *out_copy_src, int32_t *out_copy_dst);

/* One decode step of a batch: append token_ids[i] to seqs[i], for i < num_seqs, in order.
 * out_rc[i] is KV_OK or KV_NO_FIT (that sequence unchanged); out_copy_src/dst[i] the
 * copy-on-write pair or -1. Returns KV_OK, or KV_ENOSEQ (and changes nothing) if any seq
 * is unknown. */
int kv_append_step(kv_pool *pool, int32_t num_seqs, const int32_t *seqs, const int32_t *token_ids,
                   int32_t *out_rc, int32_t *out_copy_src, int32_t *out_copy_dst);

/* Fork a sequence into num_children children sharing all of its blocks (ref_cnt + 1 each;
 * copy-on-write on the next write into a shared block): one call for n-way sampling or beam
 * search. Writes the child seq ids to out_child_seqs; on an error no child is left behind. */
int kv_fork(kv_pool *pool, int32_t parent_seq, int32_t num_children, int32_t *out_child_seqs);
int kv_free(kv_pool *pool, int32_t seq);

/* Copies up to cap block ids of seq into out; returns the table length, or KV_ENOSEQ. */
int32_t kv_block_table(const kv_pool *pool, int32_t seq, int32_t *out, int32_t cap);
int64_t kv_num_tokens(const kv_pool *pool, int32_t seq);

/* Number of cached blocks allocate would reuse for these tokens (capped at (n - 1) / bs). */
int32_t kv_find_cached_prefix(const kv_pool *pool, const int32_t *token_ids, int64_t num_tokens);

int32_t kv_num_free_blocks(const kv_pool *pool);   /* never-hashed free + evictable cached */
int32_t kv_num_cached_blocks(const kv_pool *pool); /* blocks registered in the hash table */
int32_t kv_ref_cnt(const kv_pool *pool, int32_t block_id);

uint64_t kv_hash_block(uint64_t parent_hash, const int32_t *token_ids, int32_t num_tokens);

#endif
