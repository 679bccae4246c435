/* bench_recommend.c -- latency of a recommendation (model_recommend: the
 * top-n scan over W leaving out the profile) on a real model of M items.
 *
 * The model is built by folding one event per item, then half as many
 * more on items of the user's group (k groups, users of about 30 items
 * each), then refined; each request is
 * one model_recommend for a random user, timed on the wall clock, the way
 * GET /users/ID/recommend calls it (one core, the caller's thread). W is
 * M x k floats (64 MB at 1M items, k = 16): far beyond the cache, so the
 * scan runs at memory bandwidth; requests in a row do not find W cached.
 *
 *   bench_recommend [k [n [requests [items...]]]]
 *       defaults: 16 10 500 100000 1000000
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "model.h"
#include "rng.h"

static int bench(uint32_t k, uint32_t n, int requests, uint32_t items)
{
    struct model_params p;
    model_params_default(&p);
    p.k = k;
    struct model *m = model_new(&p);
    if (!m)
        return 1;
    uint32_t users = items / 20 ? items / 20 : 1;
    struct rng r;
    rng_seed(&r, 7);
    double t0 = bench_wall_ms();
    for (uint32_t e = 0; e < items + items / 2; e++) {
        char us[24], is[24];
        /* Users in k groups, each group's items a run of ids: the data
         * has k topics to find. */
        uint32_t u = (uint32_t)rng_below(&r, users);
        uint32_t i = (u % k) * (items / k) + (uint32_t)rng_below(&r, items / k);
        if (e < items) { /* every item once, by a user of its group */
            i = e;
            u = (uint32_t)(rng_below(&r, users / k + 1) * k + i / (items / k));
            u %= users;
        }
        int ul = snprintf(us, sizeof(us), "u%u", u);
        int il = snprintf(is, sizeof(is), "i%u", i);
        if (model_fold(m, us, (size_t)ul, is, (size_t)il, 1, e)) {
            fprintf(stderr, "fold failed\n");
            return 1;
        }
    }
    for (int x = 0; x < 3; x++)
        model_refine(m, SIZE_MAX);
    double build = bench_wall_ms() - t0;
    uint32_t *out = malloc(n * sizeof(uint32_t));
    float *sc = malloc(n * sizeof(float));
    double *lat = malloc((size_t)requests * sizeof(double));
    uint32_t U = model_user_slots(m);
    uint64_t got = 0;
    for (int q = 0; q < requests; q++) {
        uint32_t u = (uint32_t)rng_below(&r, U);
        double a = bench_wall_ms();
        int c = model_recommend(m, u, n, out, sc);
        lat[q] = bench_wall_ms() - a;
        got += c > 0 ? (uint64_t)c : 0;
    }
    /* The scan alone, with no profile to leave out, for comparison. */
    struct model_user_view v;
    double scan = 1e300;
    for (int q = 0; q < 20; q++) {
        if (model_user_get(m, (uint32_t)rng_below(&r, U), &v))
            continue;
        double a = bench_wall_ms();
        model_top_scores(model_W(m), model_item_slots(m), k, v.h, NULL, 0, n,
                         out, sc);
        a = bench_wall_ms() - a;
        if (a < scan)
            scan = a;
    }
    qsort(lat, (size_t)requests, sizeof(double), bench_cmp_double);
    printf("items=%u k=%u n=%u requests=%d p50_ms=%.3f p99_ms=%.3f "
           "max_ms=%.3f W_MB=%.1f mean_returned=%.1f scan_best_ms=%.3f "
           "build_s=%.1f\n",
           model_item_slots(m), k, n, requests, lat[requests / 2],
           lat[(size_t)(requests * 0.99)], lat[requests - 1],
           (double)model_item_slots(m) * k * 4 / 1e6, (double)got / requests,
           scan, build / 1e3);
    free(out);
    free(sc);
    free(lat);
    model_free(m);
    return 0;
}

int main(int argc, char **argv)
{
    uint32_t k = argc > 1 ? (uint32_t)atoi(argv[1]) : 16;
    uint32_t n = argc > 2 ? (uint32_t)atoi(argv[2]) : 10;
    int requests = argc > 3 ? atoi(argv[3]) : 500;
    if (k < 1 || k > MODEL_K_MAX || n < 1 || requests < 1) {
        fprintf(stderr,
                "usage: bench_recommend [k [n [requests [items...]]]]\n");
        return 2;
    }
    if (argc <= 4)
        return bench(k, n, requests, 100000) || bench(k, n, requests, 1000000);
    for (int a = 4; a < argc; a++)
        if (bench(k, n, requests, (uint32_t)atol(argv[a])))
            return 1;
    return 0;
}
