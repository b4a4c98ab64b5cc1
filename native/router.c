/* Router kernel "deferral-linear": fixed-point sparse scoring and utility ranking.
 *
 * The numpy reference is edge_eco/router.py (route_reference); tests/test_router_native.py
 * proves they agree on every CLINC150 test query. No allocation; k <= 64.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "edge_eco.h"

#define MAX_K 64u
#define FIXED_ONE 32768.0f

/* rint() for 0 <= x < 2^22 in the default rounding mode (ties to even), without a libm call:
 * adding 2^23 leaves no fraction bits, so the FPU rounds; -ffp-contract=off keeps it exact. */
static inline int32_t fixed_q(float value) {
    const float x = value * FIXED_ONE;
    return (int32_t)((x + 8388608.0f) - 8388608.0f);
}

#define LANES 16u

/* Small k (<= LANES): every row is read as LANES int8 lanes, a fixed-length loop that compilers
 * vectorise (SSE2 on x86-64, NEON on ARM; q and the weight fit int16, so a widening 16x16 -> 32
 * multiply); lanes k..LANES-1 read the next row's bytes and are discarded. Lanes accumulate in
 * uint32, which wraps where int32 could overflow (in the discarded lanes only: the kept sums fit
 * int32, see score()), so the kept lanes are exact. Rows whose LANES bytes would pass the end of
 * weight, and q = 32768 (value 1.0, outside int16), take the plain loop. */
static ee_status score_lanes(const ee_router_t *r, const int *idx, const float *val, unsigned long nnz,
                             int64_t *acc) {
    const unsigned int k = r->k;
    const size_t last_row = ((size_t)r->dim * k - LANES) / k; /* rows 0..last_row have LANES bytes */
    uint32_t lane[LANES] = {0};
    for (unsigned long i = 0; i < nnz; i++) {
        if (idx[i] < 0 || (unsigned int)idx[i] >= r->dim) return EE_ERR_CONFIG;
        const int32_t q = fixed_q(val[i]);
        const signed char *row = r->weight + (size_t)idx[i] * k;
        if ((size_t)idx[i] <= last_row && q < 32768) {
            const int16_t q16 = (int16_t)q;
            for (unsigned int c = 0; c < LANES; c++) {
                const int16_t w = row[c];
                lane[c] += (uint32_t)((int32_t)q16 * (int32_t)w);
            }
        } else {
            for (unsigned int c = 0; c < k; c++) lane[c] += (uint32_t)(q * (int32_t)row[c]);
        }
    }
    for (unsigned int c = 0; c < k; c++) acc[c] = (int32_t)lane[c];
    return EE_OK;
}

/* acc[c] = sum_i q_i * weight[idx_i, c]. Values are L2-normalised (sum q_i <= 32768 sqrt(nnz)),
 * so |acc| <= 127 * 32768 * sqrt(nnz) fits int32 while nnz <= 16384; longer inputs use int64. */
static ee_status score(const ee_router_t *r, const int *idx, const float *val, unsigned long nnz,
                       int64_t *acc) {
    const unsigned int k = r->k;
    if (nnz <= 16384ul && k <= LANES && (size_t)r->dim * k >= LANES) return score_lanes(r, idx, val, nnz, acc);
    if (nnz <= 16384ul) {
        int32_t acc32[MAX_K] = {0};
        for (unsigned long i = 0; i < nnz; i++) {
            if (idx[i] < 0 || (unsigned int)idx[i] >= r->dim) return EE_ERR_CONFIG;
            const int32_t q = fixed_q(val[i]);
            const signed char *row = r->weight + (size_t)idx[i] * k;
            for (unsigned int c = 0; c < k; c++) acc32[c] += q * (int32_t)row[c];
        }
        for (unsigned int c = 0; c < k; c++) acc[c] = acc32[c];
        return EE_OK;
    }
    for (unsigned int c = 0; c < k; c++) acc[c] = 0;
    for (unsigned long i = 0; i < nnz; i++) {
        if (idx[i] < 0 || (unsigned int)idx[i] >= r->dim) return EE_ERR_CONFIG;
        const int64_t q = fixed_q(val[i]);
        const signed char *row = r->weight + (size_t)idx[i] * k;
        for (unsigned int c = 0; c < k; c++) acc[c] += q * row[c];
    }
    return EE_OK;
}

static ee_status check_router(const ee_router_t *r, const int *idx, const float *val, unsigned long nnz) {
    if (r == NULL || r->weight == NULL || r->scale == NULL || r->bias == NULL || r->cost == NULL)
        return EE_ERR_NULL;
    if ((nnz > 0 && (idx == NULL || val == NULL)) || r->k == 0 || r->k > MAX_K || r->dim == 0)
        return EE_ERR_CONFIG;
    return EE_OK;
}

static void logits_of(const ee_router_t *r, const int64_t *acc, float *out_logit) {
    for (unsigned int c = 0; c < r->k; c++) {
        const float s = r->scale[c] * (1.0f / FIXED_ONE);
        out_logit[c] = (float)acc[c] * s + r->bias[c];
    }
}

ee_status ee_router_route(const ee_router_t *r, const int *idx, const float *val, unsigned long nnz,
                          const unsigned char *mask, double lambda, float *out_logit,
                          int *out_order, double *out_prob, unsigned int *out_n) {
    ee_status st = check_router(r, idx, val, nnz);
    if (st != EE_OK) return st;
    if (mask == NULL || out_logit == NULL || out_order == NULL || out_prob == NULL || out_n == NULL)
        return EE_ERR_NULL;
    int64_t acc[MAX_K];
    st = score(r, idx, val, nnz, acc);
    if (st != EE_OK) return st;
    logits_of(r, acc, out_logit);
    double utility[MAX_K];
    unsigned int n = 0;
    for (unsigned int c = 0; c < r->k; c++) {
        if (!mask[c]) continue;
        const double p = 1.0 / (1.0 + exp(-(double)out_logit[c]));
        const double u = p - lambda * (double)r->cost[c];
        /* Insertion into the ranked list: higher utility first, equal utility keeps index order. */
        unsigned int j = n;
        while (j > 0 && utility[j - 1] < u) {
            utility[j] = utility[j - 1];
            out_order[j] = out_order[j - 1];
            out_prob[j] = out_prob[j - 1];
            j--;
        }
        utility[j] = u;
        out_order[j] = (int)c;
        out_prob[j] = p;
        n++;
    }
    *out_n = n;
    return EE_OK;
}

/* Rank eligible candidates by logit (ties by index); probabilities = softmax(logit / temperature). */
static ee_status softmax_rank(const ee_router_t *r, const int *idx, const float *val, unsigned long nnz,
                              const unsigned char *mask, double temperature, float *out_logit,
                              int *out_order, double *out_prob, unsigned int *out_n) {
    ee_status st = check_router(r, idx, val, nnz);
    if (st != EE_OK) return st;
    int64_t acc[MAX_K];
    st = score(r, idx, val, nnz, acc);
    if (st != EE_OK) return st;
    logits_of(r, acc, out_logit);
    unsigned int n = 0;
    for (unsigned int c = 0; c < r->k; c++) {
        if (!mask[c]) continue;
        unsigned int j = n;
        while (j > 0 && out_logit[out_order[j - 1]] < out_logit[c]) {
            out_order[j] = out_order[j - 1];
            j--;
        }
        out_order[j] = (int)c;
        n++;
    }
    *out_n = n;
    if (n == 0) return EE_OK;
    const double top = (double)out_logit[out_order[0]] / temperature;
    double total = 0.0;
    for (unsigned int j = 0; j < n; j++) {
        out_prob[j] = exp((double)out_logit[out_order[j]] / temperature - top);
        total += out_prob[j];
    }
    for (unsigned int j = 0; j < n; j++) out_prob[j] /= total;
    return EE_OK;
}

ee_status ee_route_text(const ee_featurizer_t *f, const ee_router_t *r, const unsigned char *text,
                        unsigned long n_bytes, unsigned long long *scratch, int *out_idx, float *out_val,
                        unsigned long cap, unsigned long *out_nnz, const unsigned char *mask,
                        int mode, double param, float *out_logit, int *out_order, double *out_prob,
                        unsigned int *out_n) {
    if (mode != EE_ROUTE_SOFTMAX && mode != EE_ROUTE_UTILITY) return EE_ERR_CONFIG;
    if (mode == EE_ROUTE_SOFTMAX ? !(param > 0.0) : !(param >= 0.0)) return EE_ERR_CONFIG;
    if (mask == NULL || out_logit == NULL || out_order == NULL || out_prob == NULL || out_n == NULL)
        return EE_ERR_NULL;
    ee_status st = ee_featurizer_run(f, text, n_bytes, scratch, out_idx, out_val, cap, out_nnz);
    if (st != EE_OK) return st;
    if (mode == EE_ROUTE_UTILITY)
        return ee_router_route(r, out_idx, out_val, *out_nnz, mask, param, out_logit, out_order, out_prob, out_n);
    return softmax_rank(r, out_idx, out_val, *out_nnz, mask, param, out_logit, out_order, out_prob, out_n);
}

ee_status ee_route_job_run(ee_route_job_t *job, const unsigned char *text, unsigned long n_bytes) {
    if (job == NULL) return EE_ERR_NULL;
    return ee_route_text(job->featurizer, job->router, text, n_bytes, job->scratch, job->idx, job->val, job->cap,
                         &job->nnz, job->mask, job->mode, job->param, job->logit, job->order, job->prob, &job->n);
}
