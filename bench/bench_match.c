/* bench_match.c -- what keeping topic ids costs at a re-seed: the
 * matching of a new W's columns to the old ones (model__match: the k x k
 * cosines over every item row, then the assignment), the assignment alone
 * (match_assign, O(k^3)), and for scale the Gram matrix every refresh
 * computes (hals_gram, O(rows k^2)). The new W is the old one with its
 * columns permuted and a little noise, so the matching has a real answer,
 * which is checked.
 *
 *   bench_match [k [rows]]     defaults: 16 1000000
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "hals.h"
#include "match.h"
#include "model_impl.h"

#define REPS 5

int main(int argc, char **argv)
{
    int k = argc > 1 ? atoi(argv[1]) : 16;
    size_t rows = argc > 2 ? (size_t)atol(argv[2]) : 1000000;
    if (k < 1 || k > MODEL_K_MAX || !rows || rows > UINT32_MAX) {
        fprintf(stderr, "usage: bench_match [k [rows]]\n");
        return 2;
    }
    struct rng r;
    rng_seed(&r, 1);
    float *Wo = malloc(rows * k * sizeof(float));
    float *Wn = malloc(rows * k * sizeof(float));
    double *G = malloc((size_t)k * k * sizeof(double));
    double *S = malloc((size_t)k * k * sizeof(double));
    uint32_t perm[MODEL_K_MAX], all[MODEL_K_MAX], to[MODEL_K_MAX];
    if (!Wo || !Wn || !G || !S)
        return 1;
    for (int j = 0; j < k; j++)
        perm[j] = all[j] = (uint32_t)j;
    for (int j = k - 1; j > 0; j--) {
        uint32_t i = (uint32_t)rng_below(&r, (uint64_t)j + 1), t = perm[j];
        perm[j] = perm[i];
        perm[i] = t;
    }
    /* Sparse-ish topics: each item strong in one topic. */
    for (size_t i = 0; i < rows; i++)
        for (int j = 0; j < k; j++)
            Wo[i * k + j] = (float)(rng_uniform(&r) *
                                    (i % (size_t)k == (size_t)j ? 1.0 : 0.05));
    for (size_t i = 0; i < rows; i++)
        for (int j = 0; j < k; j++)
            Wn[i * k + perm[j]] =
                Wo[i * k + j] * (float)(0.9 + 0.2 * rng_uniform(&r));
    for (int a = 0; a < k; a++)
        for (int b = 0; b < k; b++)
            S[a * k + b] = rng_uniform(&r);

    double tm[REPS], ta[REPS], tg[REPS];
    for (int rep = 0; rep < REPS; rep++) {
        double t0 = bench_cpu_ms();
        model__match((uint32_t)rows, (uint32_t)k, Wo, (size_t)k, all, Wn,
                     (size_t)k, all, to);
        double t1 = bench_cpu_ms();
        match_assign((uint32_t)k, S, to + 0 * k);
        double t2 = bench_cpu_ms();
        memset(G, 0, (size_t)k * k * sizeof(double));
        hals_gram((uint32_t)k, (uint32_t)rows, Wo, NULL, G);
        double t3 = bench_cpu_ms();
        tm[rep] = t1 - t0;
        ta[rep] = t2 - t1;
        tg[rep] = t3 - t2;
    }
    model__match((uint32_t)rows, (uint32_t)k, Wo, (size_t)k, all, Wn, (size_t)k,
                 all, to);
    for (int j = 0; j < k; j++)
        if (to[j] != perm[j]) {
            fprintf(stderr, "bench_match: column %d matched to %u, not %u\n", j,
                    to[j], perm[j]);
            return 1;
        }
    qsort(tm, REPS, sizeof(double), bench_cmp_double);
    qsort(ta, REPS, sizeof(double), bench_cmp_double);
    qsort(tg, REPS, sizeof(double), bench_cmp_double);
    printf("k %d rows %zu (median of %d, CPU ms)\n", k, rows, REPS);
    printf("  model__match (cosines + assignment): %.2f ms\n", tm[REPS / 2]);
    printf("  match_assign alone (k x k):          %.3f ms\n", ta[REPS / 2]);
    printf("  hals_gram, for scale:                %.2f ms\n", tg[REPS / 2]);
    free(Wo);
    free(Wn);
    free(G);
    free(S);
    return 0;
}
