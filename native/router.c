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

ee_status ee_router_route(const ee_router_t *r, const int *idx, const float *val, unsigned long nnz,
                          const unsigned char *mask, double lambda, float *out_logit,
                          int *out_order, double *out_prob, unsigned int *out_n) {
    if (r == NULL || r->weight == NULL || r->scale == NULL || r->bias == NULL || r->cost == NULL ||
        mask == NULL || out_logit == NULL || out_order == NULL || out_prob == NULL || out_n == NULL)
        return EE_ERR_NULL;
    if ((nnz > 0 && (idx == NULL || val == NULL)) || r->k == 0 || r->k > MAX_K || r->dim == 0)
        return EE_ERR_CONFIG;
    const unsigned int k = r->k;
    int64_t acc[MAX_K] = {0};
    for (unsigned long i = 0; i < nnz; i++) {
        if (idx[i] < 0 || (unsigned int)idx[i] >= r->dim) return EE_ERR_CONFIG;
        const int64_t q = (int64_t)nearbyintf(val[i] * FIXED_ONE);
        const signed char *row = r->weight + (size_t)idx[i] * k;
        for (unsigned int c = 0; c < k; c++) acc[c] += q * row[c];
    }
    double utility[MAX_K];
    unsigned int n = 0;
    for (unsigned int c = 0; c < k; c++) {
        const float s = r->scale[c] * (1.0f / FIXED_ONE);
        const float logit = (float)acc[c] * s + r->bias[c];
        out_logit[c] = logit;
        if (!mask[c]) continue;
        const double p = 1.0 / (1.0 + exp(-(double)logit));
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

ee_status ee_route_text(const ee_featurizer_t *f, const ee_router_t *r, const unsigned char *text,
                        unsigned long n_bytes, unsigned long long *scratch, int *out_idx, float *out_val,
                        unsigned long cap, unsigned long *out_nnz, const unsigned char *mask,
                        double temperature, float *out_logit, int *out_order, double *out_prob,
                        unsigned int *out_n) {
    if (!(temperature > 0.0)) return EE_ERR_CONFIG;
    ee_status st = ee_featurizer_run(f, text, n_bytes, scratch, out_idx, out_val, cap, out_nnz);
    if (st != EE_OK) return st;
    st = ee_router_route(r, out_idx, out_val, *out_nnz, mask, 0.0, out_logit, out_order, out_prob, out_n);
    if (st != EE_OK || *out_n == 0) return st;
    /* Re-rank by logit itself (sigmoid saturates to 1.0 for large logits); ties keep index order. */
    for (unsigned int j = 1; j < *out_n; j++) {
        const int c = out_order[j];
        unsigned int i = j;
        while (i > 0 && (out_logit[out_order[i - 1]] < out_logit[c] ||
                         (out_logit[out_order[i - 1]] == out_logit[c] && out_order[i - 1] > c))) {
            out_order[i] = out_order[i - 1];
            i--;
        }
        out_order[i] = c;
    }
    const double top = (double)out_logit[out_order[0]] / temperature;
    double total = 0.0;
    for (unsigned int j = 0; j < *out_n; j++) {
        out_prob[j] = exp((double)out_logit[out_order[j]] / temperature - top);
        total += out_prob[j];
    }
    for (unsigned int j = 0; j < *out_n; j++) out_prob[j] /= total;
    return EE_OK;
}
