/* Text featurizer "hash-ngram-v1": hashed word and character n-grams.
 *
 * The numpy reference in edge_eco/featurizer.py implements the same spec and
 * tests/test_native.py proves the two agree exactly on every CLINC150 test query.
 * No allocation: callers pass scratch and output buffers sized by
 * ee_featurizer_capacity().
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "edge_eco.h"

#define FNV_BASIS 2166136261u
#define FNV_PRIME 16777619u
#define MAX_WORDS_NGRAM 3u
#define MAX_CHAR_NGRAM 8u

static inline uint32_t fmix32(uint32_t h) {
    h ^= h >> 16;
    h *= 0x85ebca6bu;
    h ^= h >> 13;
    h *= 0xc2b2ae35u;
    h ^= h >> 16;
    return h;
}

static inline uint32_t fnv_step(uint32_t h, uint32_t byte) { return (h ^ byte) * FNV_PRIME; }

static inline int is_word_byte(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c >= 0x80 || (c >= 'A' && c <= 'Z');
}

static inline unsigned char lower(unsigned char c) {
    return (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : c;
}

/* Keys of the char n-grams of one size over padded[0, len), appended at keys[n]; returns the new n.
 * Sizes 2-4 (the shipped featurizer's) get a fixed-length loop the compiler unrolls. */
static inline unsigned long char_ngrams_of(const unsigned char *padded, unsigned long len, unsigned sz,
                                           uint32_t seed, uint32_t mask, unsigned weight, uint64_t *keys,
                                           unsigned long n) {
    for (unsigned long off = 0; off + sz <= len; off++) {
        uint32_t h = seed;
        for (unsigned j = 0; j < sz; j++) h = fnv_step(h, padded[off + j]);
        keys[n++] = ((uint64_t)(fmix32(h) & mask) << 8) | weight;
    }
    return n;
}

static unsigned long char_ngrams(const unsigned char *padded, unsigned long len, unsigned sz, uint32_t seed,
                                 uint32_t mask, unsigned weight, uint64_t *keys, unsigned long n) {
    switch (sz) {
    case 2: return char_ngrams_of(padded, len, 2, seed, mask, weight, keys, n);
    case 3: return char_ngrams_of(padded, len, 3, seed, mask, weight, keys, n);
    case 4: return char_ngrams_of(padded, len, 4, seed, mask, weight, keys, n);
    default: return char_ngrams_of(padded, len, sz, seed, mask, weight, keys, n);
    }
}

static int config_ok(const ee_featurizer_t *cfg) {
    if (cfg->dim < 256u || cfg->dim > (1u << 24) || (cfg->dim & (cfg->dim - 1u)) != 0) return 0;
    if (cfg->word_ngram_max > MAX_WORDS_NGRAM) return 0;
    if (cfg->char_ngram_max > MAX_CHAR_NGRAM) return 0;
    if (cfg->char_ngram_max > 0 && (cfg->char_ngram_min < 1 || cfg->char_ngram_min > cfg->char_ngram_max))
        return 0;
    if (cfg->word_ngram_max == 0 && cfg->char_ngram_max == 0) return 0;
    if (cfg->word_weight == 0 || cfg->word_weight > 255 || cfg->char_weight == 0 || cfg->char_weight > 255)
        return 0;
    return 1;
}

ee_status ee_featurizer_capacity(const ee_featurizer_t *cfg, unsigned long n_bytes,
                                 unsigned long *out_cap) {
    if (cfg == NULL || out_cap == NULL) return EE_ERR_NULL;
    if (!config_ok(cfg)) return EE_ERR_CONFIG;
    /* Words: at most (n+1)/2 tokens; each word-start emits <= word_ngram_max n-grams.
     * Chars: a token of length L padded to L+2 emits <= L+2 n-grams per size. */
    unsigned long sizes = cfg->char_ngram_max ? cfg->char_ngram_max - cfg->char_ngram_min + 1 : 0;
    *out_cap = (n_bytes / 2 + 1) * cfg->word_ngram_max + (n_bytes + 2 * (n_bytes / 2 + 1)) * sizes + 1;
    return EE_OK;
}

static void insertion_sort(uint64_t *keys, unsigned long n) {
    for (unsigned long i = 1; i < n; i++) {
        const uint64_t key = keys[i];
        unsigned long j = i;
        while (j > 0 && (keys[j - 1] >> 8) > (key >> 8)) {
            keys[j] = keys[j - 1];
            j--;
        }
        keys[j] = key;
    }
}

/* Sort keys ascending by the index held in bits 8..31 of each key (order among equal indices is
 * free: the merge sums their weights). Short inputs: insertion sort. Up to 2,048 keys: one
 * counting pass on the index's top 6-8 bits puts every key in its bucket (hashed indices are
 * uniform, so a few keys each) and an insertion sort fixes the order inside the buckets. Longer
 * inputs: LSD radix over the index's bytes (dim <= 2^16 needs two passes, not three). */
static void sort_keys(uint64_t *keys, uint64_t *tmp, unsigned long n, uint32_t dim) {
    if (n <= 48) {
        insertion_sort(keys, n);
        return;
    }
    if (n <= 2048) {
        /* About n / 2 buckets (64 to 256): fewer buckets to clear and sum for short texts. */
        unsigned bits = 0, bucket_bits = 6;
        while ((1u << bits) < dim) bits++;
        while (bucket_bits < 8 && (2ul << bucket_bits) < n) bucket_bits++;
        if (bucket_bits > bits) bucket_bits = bits;
        const unsigned shift = 8 + bits - bucket_bits, buckets = 1u << bucket_bits;
        uint32_t count[257];
        memset(count, 0, (buckets + 1) * sizeof(uint32_t));
        for (unsigned long i = 0; i < n; i++) count[(keys[i] >> shift) + 1]++;
        for (unsigned b = 0; b < buckets; b++) count[b + 1] += count[b];
        for (unsigned long i = 0; i < n; i++) tmp[count[keys[i] >> shift]++] = keys[i];
        memcpy(keys, tmp, n * sizeof(uint64_t));
        insertion_sort(keys, n);
        return;
    }
    const unsigned passes = dim <= (1u << 8) ? 1u : dim <= (1u << 16) ? 2u : 3u;
    uint64_t *const out = keys;
    for (unsigned shift = 8; shift < 8 + 8 * passes; shift += 8) {
        unsigned long count[257];
        memset(count, 0, sizeof(count));
        for (unsigned long i = 0; i < n; i++) count[((keys[i] >> shift) & 0xffu) + 1]++;
        for (unsigned b = 0; b < 256; b++) count[b + 1] += count[b];
        for (unsigned long i = 0; i < n; i++) tmp[count[(keys[i] >> shift) & 0xffu]++] = keys[i];
        uint64_t *swap = keys; keys = tmp; tmp = swap;
    }
    if (keys != out) memcpy(out, keys, n * sizeof(uint64_t));  /* odd pass count: data is in tmp */
}

ee_status ee_featurizer_run(const ee_featurizer_t *cfg, const unsigned char *text,
                            unsigned long n_bytes, unsigned long long *scratch,
                            int *out_idx, float *out_val, unsigned long cap,
                            unsigned long *out_nnz) {
    if (cfg == NULL || scratch == NULL || out_idx == NULL || out_val == NULL || out_nnz == NULL)
        return EE_ERR_NULL;
    if (text == NULL && n_bytes > 0) return EE_ERR_NULL;
    if (!config_ok(cfg)) return EE_ERR_CONFIG;
    unsigned long need = 0;
    ee_featurizer_capacity(cfg, n_bytes, &need);
    if (cap < need) return EE_ERR_CAPACITY;

    uint64_t *keys = (uint64_t *)scratch;     /* [cap] (index << 8 | weight) */
    uint64_t *tmp = (uint64_t *)scratch + cap; /* [cap] radix-sort buffer */
    /* Until the sort, tmp holds the text as hashed: " tok1 tok2 ... " (ASCII letters lowered, one
     * space around every token), at most 1 + n_bytes + (n_bytes + 1) / 2 bytes, well inside the
     * 8 * cap bytes of tmp. Every n-gram is then one contiguous run of it: a char n-gram of " tok "
     * or a word n-gram "tok1 tok2" (tokens joined by one space). */
    unsigned char *buf = (unsigned char *)tmp;
    const uint32_t basis = FNV_BASIS ^ cfg->seed;
    const uint32_t mask = cfg->dim - 1u;
    const unsigned wmax = cfg->word_ngram_max;
    uint32_t word_basis[MAX_WORDS_NGRAM + 1], char_basis[MAX_CHAR_NGRAM + 1];
    for (unsigned g = 0; g <= MAX_WORDS_NGRAM; g++) word_basis[g] = fnv_step(basis, g);      /* kind byte n */
    for (unsigned z = 0; z <= MAX_CHAR_NGRAM; z++) char_basis[z] = fnv_step(basis, 16u + z); /* 16 + size */
    unsigned long n = 0, blen = 0;
    unsigned long starts[MAX_WORDS_NGRAM]; /* offsets in buf of the last wmax tokens (a ring) */
    unsigned long n_tokens = 0;
    buf[blen++] = ' ';

    unsigned long pos = 0;
    while (pos < n_bytes) {
        while (pos < n_bytes && !is_word_byte(text[pos])) pos++;
        if (pos >= n_bytes) break;
        const unsigned long start = blen;
        while (pos < n_bytes && is_word_byte(text[pos])) buf[blen++] = lower(text[pos++]);
        const unsigned long end = blen;
        buf[blen++] = ' ';
        if (wmax > 0) starts[n_tokens % wmax] = start;
        n_tokens++;
        /* Word n-grams ending at this token: buf[first token's start, end). */
        for (unsigned g = 1; g <= wmax && g <= n_tokens; g++) {
            uint32_t h = word_basis[g];
            for (unsigned long i = starts[(n_tokens - g) % wmax]; i < end; i++) h = fnv_step(h, buf[i]);
            keys[n++] = ((uint64_t)(fmix32(h) & mask) << 8) | cfg->word_weight;
        }
        /* Char n-grams of " token " = buf[start - 1, end + 1). */
        if (cfg->char_ngram_max > 0) {
            const unsigned char *padded = buf + start - 1;
            const unsigned long len = end - start + 2;
            for (unsigned sz = cfg->char_ngram_min; sz <= cfg->char_ngram_max && sz <= len; sz++)
                n = char_ngrams(padded, len, sz, char_basis[sz], mask, cfg->char_weight, keys, n);
        }
    }

    sort_keys(keys, tmp, n, cfg->dim);
    /* Merge equal indices, summing integer weights; total is exact in any order. */
    unsigned long nnz = 0;
    uint64_t total = 0;
    for (unsigned long i = 0; i < n; i++) {
        uint32_t idx = (uint32_t)(keys[i] >> 8);
        uint64_t w = keys[i] & 0xffu;
        total += w;
        if (nnz > 0 && (uint32_t)out_idx[nnz - 1] == idx) {
            tmp[nnz - 1] += w;
        } else {
            out_idx[nnz] = (int)idx;
            tmp[nnz] = w;
            nnz++;
        }
    }
    for (unsigned long i = 0; i < nnz; i++)
        out_val[i] = (float)sqrt((double)tmp[i] / (double)total);
    *out_nnz = nnz;
    return EE_OK;
}
