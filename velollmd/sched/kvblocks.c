/* KV block allocator (see kvblocks.h). Mirrored line for line by pyblocks.py, the pure-Python
 * model that the randomized test compares against: keep the two in step.
 *
 * Free blocks live in two places: a LIFO stack of never-hashed blocks, and an LRU list of
 * freed-but-hashed blocks (ref_cnt 0, still findable by hash). New blocks come from the stack
 * first; only when it is empty is the least recently freed cached block evicted.
 */
#undef NDEBUG /* invariants are checked in release builds too: they are O(1) each */
#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "kvblocks.h"

typedef struct {
    int32_t *block_ids;  /* (cap,) block table; the first num_blocks entries are in use */
    int32_t num_blocks, cap;
    int64_t num_tokens;
    uint64_t last_hash;  /* hash of the last full block, KV_ROOT_HASH when none */
    int32_t *partial;    /* (block_size,) token ids of the partially filled last block */
    int live;
} kv_seq;

struct kv_pool {
    int32_t num_blocks, block_size;
    int32_t *ref_cnt;        /* (num_blocks,) */
    uint64_t *block_hash;    /* (num_blocks,) valid where is_hashed */
    uint8_t *is_hashed;      /* (num_blocks,) */
    int32_t *free_stack;     /* (num_blocks,) never-hashed free blocks, top at num_free - 1 */
    int32_t num_free;
    int32_t *lru_prev, *lru_next; /* (num_blocks,) cached free blocks, head = evicted first */
    int32_t lru_head, lru_tail, num_lru;
    uint64_t *ht_keys;       /* (ht_mask + 1,) open addressing, linear probing */
    int32_t *ht_vals;        /* (ht_mask + 1,) block id, -1 = empty */
    uint64_t ht_mask;
    int32_t num_hashed;
    kv_seq *seqs;            /* (num_seqs,) */
    int32_t num_seqs;
    int32_t *free_seqs;      /* (num_seqs,) recycled seq ids, LIFO */
    int32_t num_free_seqs;
    uint64_t *scratch;       /* (scratch_cap,) block hashes of the prompt being allocated */
    int64_t scratch_cap;
};

uint64_t kv_hash_block(uint64_t parent_hash, const int32_t *token_ids, int32_t num_tokens) {
    uint64_t h = parent_hash;
    for (int32_t i = 0; i < num_tokens; i++)
        h = (h ^ (uint32_t)token_ids[i]) * 0x100000001b3ULL; /* FNV-1a step on 32-bit words */
    h ^= h >> 30; h *= 0xbf58476d1ce4e5b9ULL;                 /* splitmix64 finalizer */
    h ^= h >> 27; h *= 0x94d049bb133111ebULL;
    return h ^ (h >> 31);
}

/* ---- hash table: hash -> block id ---- */

static int32_t ht_find(const kv_pool *p, uint64_t key) {
    uint64_t i = key & p->ht_mask;
    while (p->ht_vals[i] >= 0) {
        if (p->ht_keys[i] == key) return p->ht_vals[i];
        i = (i + 1) & p->ht_mask;
    }
    return -1;
}

static void ht_insert(kv_pool *p, uint64_t key, int32_t block_id) {
    uint64_t i = key & p->ht_mask;
    while (p->ht_vals[i] >= 0) i = (i + 1) & p->ht_mask;
    p->ht_keys[i] = key;
    p->ht_vals[i] = block_id;
}

static void ht_remove(kv_pool *p, uint64_t key) {
    uint64_t i = key & p->ht_mask, j;
    while (p->ht_keys[i] != key || p->ht_vals[i] < 0) {
        assert(p->ht_vals[i] >= 0);
        i = (i + 1) & p->ht_mask;
    }
    for (j = i;;) { /* backward-shift deletion: no tombstones */
        p->ht_vals[i] = -1;
        for (;;) {
            j = (j + 1) & p->ht_mask;
            if (p->ht_vals[j] < 0) return;
            uint64_t home = p->ht_keys[j] & p->ht_mask;
            int stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
            if (!stays) break;
        }
        p->ht_keys[i] = p->ht_keys[j];
        p->ht_vals[i] = p->ht_vals[j];
        i = j;
    }
}

/* ---- LRU list of cached free blocks ---- */

static void lru_append(kv_pool *p, int32_t b) {
    p->lru_prev[b] = p->lru_tail;
    p->lru_next[b] = -1;
    if (p->lru_tail >= 0) p->lru_next[p->lru_tail] = b; else p->lru_head = b;
    p->lru_tail = b;
    p->num_lru++;
}

static void lru_remove(kv_pool *p, int32_t b) {
    int32_t prev = p->lru_prev[b], next = p->lru_next[b];
    if (prev >= 0) p->lru_next[prev] = next; else p->lru_head = next;
    if (next >= 0) p->lru_prev[next] = prev; else p->lru_tail = prev;
    p->num_lru--;
}

/* ---- block life cycle ---- */

static int32_t take_block(kv_pool *p) {
    int32_t b;
    if (p->num_free > 0) {
        b = p->free_stack[--p->num_free];
    } else {
        b = p->lru_head;
        assert(b >= 0 && p->is_hashed[b]);
        lru_remove(p, b);
        ht_remove(p, p->block_hash[b]);
        p->is_hashed[b] = 0;
        p->num_hashed--;
    }
    assert(p->ref_cnt[b] == 0);
    p->ref_cnt[b] = 1;
    return b;
}

static void pin_block(kv_pool *p, int32_t b) {
    if (p->ref_cnt[b] == 0) {
        assert(p->is_hashed[b]);
        lru_remove(p, b);
    }
    p->ref_cnt[b]++;
}

static void release_block(kv_pool *p, int32_t b) {
    assert(p->ref_cnt[b] > 0);
    if (--p->ref_cnt[b] > 0) return;
    if (p->is_hashed[b]) lru_append(p, b);
    else p->free_stack[p->num_free++] = b;
}

static void register_block(kv_pool *p, int32_t b, uint64_t h) {
    assert(!p->is_hashed[b]);
    if (ht_find(p, h) >= 0) return; /* same content already cached in another block */
    ht_insert(p, h, b);
    p->block_hash[b] = h;
    p->is_hashed[b] = 1;
    p->num_hashed++;
}

/* ---- pool ---- */

kv_pool *kv_pool_new(int32_t num_blocks, int32_t block_size) {
    if (num_blocks < 1 || block_size < 1) return NULL;
    kv_pool *p = calloc(1, sizeof(*p));
    if (!p) return NULL;
    uint64_t ht_size = 16;
    while (ht_size < 2 * (uint64_t)num_blocks) ht_size <<= 1;
    p->num_blocks = num_blocks;
    p->block_size = block_size;
    p->ref_cnt = calloc(num_blocks, sizeof(int32_t));
    p->block_hash = calloc(num_blocks, sizeof(uint64_t));
    p->is_hashed = calloc(num_blocks, 1);
    p->free_stack = malloc(num_blocks * sizeof(int32_t));
    p->lru_prev = malloc(num_blocks * sizeof(int32_t));
    p->lru_next = malloc(num_blocks * sizeof(int32_t));
    p->ht_keys = calloc(ht_size, sizeof(uint64_t));
    p->ht_vals = malloc(ht_size * sizeof(int32_t));
    if (!p->ref_cnt || !p->block_hash || !p->is_hashed || !p->free_stack || !p->lru_prev ||
        !p->lru_next || !p->ht_keys || !p->ht_vals) {
        kv_pool_delete(p);
        return NULL;
    }
    memset(p->ht_vals, 0xff, ht_size * sizeof(int32_t));
    p->ht_mask = ht_size - 1;
    for (int32_t i = 0; i < num_blocks; i++) p->free_stack[i] = num_blocks - 1 - i; /* pops 0, 1, .. */
    p->num_free = num_blocks;
    p->lru_head = p->lru_tail = -1;
    return p;
}

void kv_pool_delete(kv_pool *p) {
    if (!p) return;
    for (int32_t s = 0; s < p->num_seqs; s++) {
        free(p->seqs[s].block_ids);
        free(p->seqs[s].partial);
    }
    free(p->seqs); free(p->free_seqs); free(p->scratch);
    free(p->ref_cnt); free(p->block_hash); free(p->is_hashed); free(p->free_stack);
    free(p->lru_prev); free(p->lru_next); free(p->ht_keys); free(p->ht_vals);
    free(p);
}

/* ---- sequences ---- */

static kv_seq *get_seq(const kv_pool *p, int32_t seq) {
    if (seq < 0 || seq >= p->num_seqs || !p->seqs[seq].live) return NULL;
    return &p->seqs[seq];
}

static int reserve_table(kv_seq *s, int64_t num_blocks) {
    if (num_blocks <= s->cap) return KV_OK;
    int64_t cap = s->cap ? s->cap : 8;
    while (cap < num_blocks) cap *= 2;
    int32_t *ids = realloc(s->block_ids, cap * sizeof(int32_t));
    if (!ids) return KV_ENOMEM;
    s->block_ids = ids;
    s->cap = (int32_t)cap;
    return KV_OK;
}

/* A fresh, empty, live seq with room for num_blocks; its id in *out, or KV_ENOMEM. */
static int new_seq(kv_pool *p, int64_t num_blocks, int32_t *out) {
    if (p->num_free_seqs == 0) {
        int32_t n = p->num_seqs ? 2 * p->num_seqs : 16;
        kv_seq *seqs = realloc(p->seqs, n * sizeof(kv_seq));
        if (!seqs) return KV_ENOMEM;
        p->seqs = seqs;
        int32_t *free_seqs = realloc(p->free_seqs, n * sizeof(int32_t));
        if (!free_seqs) return KV_ENOMEM;
        p->free_seqs = free_seqs;
        memset(seqs + p->num_seqs, 0, (n - p->num_seqs) * sizeof(kv_seq));
        for (int32_t s = n - 1; s >= p->num_seqs; s--) p->free_seqs[p->num_free_seqs++] = s;
        p->num_seqs = n;
    }
    int32_t id = p->free_seqs[p->num_free_seqs - 1];
    kv_seq *s = &p->seqs[id];
    if (!s->partial && !(s->partial = malloc(p->block_size * sizeof(int32_t)))) return KV_ENOMEM;
    if (reserve_table(s, num_blocks) != KV_OK) return KV_ENOMEM;
    p->num_free_seqs--;
    s->num_blocks = 0;
    s->num_tokens = 0;
    s->last_hash = KV_ROOT_HASH;
    s->live = 1;
    *out = id;
    return KV_OK;
}

static int reserve_scratch(kv_pool *p, int64_t n) {
    if (n <= p->scratch_cap) return KV_OK;
    uint64_t *buf = realloc(p->scratch, n * sizeof(uint64_t));
    if (!buf) return KV_ENOMEM;
    p->scratch = buf;
    p->scratch_cap = n;
    return KV_OK;
}

/* Hashes the full blocks into scratch and the hit block ids into out; returns the hit count. */
static int32_t match_prefix(kv_pool *p, const int32_t *tokens, int64_t num_full, int32_t *out) {
    int32_t num_hits = 0, hit = 1;
    uint64_t h = KV_ROOT_HASH;
    for (int64_t i = 0; i < num_full; i++) {
        h = kv_hash_block(h, tokens + i * p->block_size, p->block_size);
        p->scratch[i] = h;
        if (hit && (out[i] = ht_find(p, h)) >= 0) num_hits++;
        else hit = 0;
    }
    return num_hits;
}

int kv_allocate(kv_pool *p, const int32_t *tokens, int64_t num_tokens, int64_t num_extra_tokens,
                int32_t *out_block_ids, int32_t *out_seq, int32_t *out_num_cached_blocks) {
    if (num_tokens < 1 || num_extra_tokens < 0) return KV_EINVAL;
    int32_t bs = p->block_size;
    int64_t num_total = (num_tokens + num_extra_tokens + bs - 1) / bs;
    int64_t num_full = num_tokens / bs;
    if (num_total > p->num_blocks) return KV_NO_FIT;
    if (reserve_scratch(p, num_full) != KV_OK) return KV_ENOMEM;
    int32_t num_hits = match_prefix(p, tokens, num_full, out_block_ids);
    if (num_hits > (num_tokens - 1) / bs) num_hits = (int32_t)((num_tokens - 1) / bs);
    int32_t num_hits_free = 0;
    for (int32_t i = 0; i < num_hits; i++) num_hits_free += p->ref_cnt[out_block_ids[i]] == 0;
    if (num_total - num_hits > p->num_free + p->num_lru - num_hits_free) return KV_NO_FIT;
    int32_t id;
    if (new_seq(p, num_total, &id) != KV_OK) return KV_ENOMEM;
    kv_seq *s = &p->seqs[id];
    for (int32_t i = 0; i < num_hits; i++) pin_block(p, out_block_ids[i]);
    for (int64_t i = num_hits; i < num_total; i++) out_block_ids[i] = take_block(p);
    /* register only after all evictions, so an evicted twin cannot take a hash with it */
    for (int64_t i = num_hits; i < num_full; i++) register_block(p, out_block_ids[i], p->scratch[i]);
    memcpy(s->block_ids, out_block_ids, num_total * sizeof(int32_t));
    s->num_blocks = (int32_t)num_total;
    s->num_tokens = num_tokens;
    s->last_hash = num_full ? p->scratch[num_full - 1] : KV_ROOT_HASH;
    memcpy(s->partial, tokens + num_full * bs, (num_tokens - num_full * bs) * sizeof(int32_t));
    *out_seq = id;
    *out_num_cached_blocks = num_hits;
    return KV_OK;
}

/* Replaces shared blocks about to be written with private ones; reports the one holding data. */
static void copy_on_write(kv_pool *p, kv_seq *s, int32_t first, int32_t last,
                          int32_t *out_src, int32_t *out_dst) {
    for (int32_t i = first; i <= last; i++) {
        int32_t b = s->block_ids[i];
        if (p->ref_cnt[b] == 1) continue;
        assert(p->ref_cnt[b] > 1 && !p->is_hashed[b]);
        int32_t nb = take_block(p);
        p->ref_cnt[b]--;
        s->block_ids[i] = nb;
        if ((int64_t)i * p->block_size < s->num_tokens) { *out_src = b; *out_dst = nb; }
    }
}

static void write_tokens(kv_pool *p, kv_seq *s, const int32_t *tokens, int64_t n) {
    int32_t bs = p->block_size;
    for (int64_t i = 0; i < n; i++) {
        int32_t pos = (int32_t)(s->num_tokens % bs);
        s->partial[pos] = tokens[i];
        s->num_tokens++;
        if (pos != bs - 1) continue;
        s->last_hash = kv_hash_block(s->last_hash, s->partial, bs);
        register_block(p, s->block_ids[(s->num_tokens - 1) / bs], s->last_hash);
    }
}

int kv_append(kv_pool *p, int32_t seq, const int32_t *tokens, int64_t num_tokens,
              int32_t *out_copy_src, int32_t *out_copy_dst) {
    kv_seq *s = get_seq(p, seq);
    if (!s) return KV_ENOSEQ;
    if (num_tokens < 0) return KV_EINVAL;
    *out_copy_src = *out_copy_dst = -1;
    if (num_tokens == 0) return KV_OK;
    int32_t bs = p->block_size;
    int64_t new_total = s->num_tokens + num_tokens;
    int64_t num_needed = (new_total + bs - 1) / bs;
    if (num_needed > p->num_blocks) return KV_NO_FIT;
    int64_t num_grow = num_needed > s->num_blocks ? num_needed - s->num_blocks : 0;
    int32_t first = (int32_t)(s->num_tokens / bs);
    int32_t last = (int32_t)((new_total - 1) / bs);
    if (last > s->num_blocks - 1) last = s->num_blocks - 1;
    int64_t num_shared = 0;
    for (int32_t i = first; i <= last; i++) num_shared += p->ref_cnt[s->block_ids[i]] > 1;
    if (num_grow + num_shared > p->num_free + p->num_lru) return KV_NO_FIT;
    if (reserve_table(s, num_needed) != KV_OK) return KV_ENOMEM;
    copy_on_write(p, s, first, last, out_copy_src, out_copy_dst);
    for (int64_t i = 0; i < num_grow; i++) s->block_ids[s->num_blocks++] = take_block(p);
    write_tokens(p, s, tokens, num_tokens);
    return KV_OK;
}

int kv_append_step(kv_pool *p, int32_t num_seqs, const int32_t *seqs, const int32_t *token_ids,
                   int32_t *out_rc, int32_t *out_copy_src, int32_t *out_copy_dst) {
    for (int32_t i = 0; i < num_seqs; i++)
        if (!get_seq(p, seqs[i])) return KV_ENOSEQ;
    for (int32_t i = 0; i < num_seqs; i++)
        out_rc[i] = kv_append(p, seqs[i], &token_ids[i], 1, &out_copy_src[i], &out_copy_dst[i]);
    return KV_OK;
}

static int fork_one(kv_pool *p, int32_t parent_seq, int32_t *out_child_seq) {
    int32_t id;
    if (new_seq(p, p->seqs[parent_seq].num_blocks, &id) != KV_OK) return KV_ENOMEM;
    kv_seq *parent = &p->seqs[parent_seq], *child = &p->seqs[id]; /* seqs may have moved */
    for (int32_t i = 0; i < parent->num_blocks; i++) {
        assert(p->ref_cnt[parent->block_ids[i]] > 0);
        p->ref_cnt[parent->block_ids[i]]++;
    }
    memcpy(child->block_ids, parent->block_ids, parent->num_blocks * sizeof(int32_t));
    memcpy(child->partial, parent->partial, p->block_size * sizeof(int32_t));
    child->num_blocks = parent->num_blocks;
    child->num_tokens = parent->num_tokens;
    child->last_hash = parent->last_hash;
    *out_child_seq = id;
    return KV_OK;
}

int kv_fork(kv_pool *p, int32_t parent_seq, int32_t num_children, int32_t *out_child_seqs) {
    if (!get_seq(p, parent_seq)) return KV_ENOSEQ;
    if (num_children < 1) return KV_EINVAL;
    for (int32_t n = 0; n < num_children; n++) {
        if (fork_one(p, parent_seq, &out_child_seqs[n]) != KV_OK) {
            while (n-- > 0) kv_free(p, out_child_seqs[n]);
            return KV_ENOMEM;
        }
    }
    return KV_OK;
}

int kv_free(kv_pool *p, int32_t seq) {
    kv_seq *s = get_seq(p, seq);
    if (!s) return KV_ENOSEQ;
    for (int32_t i = s->num_blocks - 1; i >= 0; i--) release_block(p, s->block_ids[i]);
    s->live = 0;
    s->num_blocks = 0;
    p->free_seqs[p->num_free_seqs++] = seq;
    return KV_OK;
}

int32_t kv_block_table(const kv_pool *p, int32_t seq, int32_t *out, int32_t cap) {
    const kv_seq *s = get_seq(p, seq);
    if (!s) return KV_ENOSEQ;
    memcpy(out, s->block_ids, (s->num_blocks < cap ? s->num_blocks : cap) * sizeof(int32_t));
    return s->num_blocks;
}

int64_t kv_num_tokens(const kv_pool *p, int32_t seq) {
    const kv_seq *s = get_seq(p, seq);
    return s ? s->num_tokens : KV_ENOSEQ;
}

int32_t kv_find_cached_prefix(const kv_pool *p, const int32_t *tokens, int64_t num_tokens) {
    if (num_tokens < 1) return 0;
    int64_t max_hits = (num_tokens - 1) / p->block_size;
    uint64_t h = KV_ROOT_HASH;
    int32_t num_hits = 0;
    while (num_hits < max_hits) {
        h = kv_hash_block(h, tokens + (int64_t)num_hits * p->block_size, p->block_size);
        if (ht_find(p, h) < 0) break;
        num_hits++;
    }
    return num_hits;
}

int32_t kv_num_free_blocks(const kv_pool *p) { return p->num_free + p->num_lru; }
int32_t kv_num_cached_blocks(const kv_pool *p) { return p->num_hashed; }

int32_t kv_ref_cnt(const kv_pool *p, int32_t block_id) {
    if (block_id < 0 || block_id >= p->num_blocks) return KV_EINVAL;
    return p->ref_cnt[block_id];
}
